"""The starting policy `signoff init` writes from the upstreams' tools (signoff's native format).

Reads are allowed, writes rate-limited, destructive tools behind on-call approval, anything else (a tool
added later, an argument value nobody listed) falls to the default: approval. A tool that is destructive
only for some argument values (RunPod's ``pod-action`` with ``action: terminate``) gets two rules instead
of one: those values need approval, the other listed values are treated as the tool's class otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from proxy.naming import Names
from proxy.policy_spec import glob_escape
from proxy.risk import Classification, explain

Listing = Mapping[str, Sequence[Mapping[str, Any]] | str]  # upstream -> its tools, or why none were listed

WRITE_LIMIT = {"max": 30, "window": "1m", "per": "identity"}


def _classify(tool: Mapping[str, Any]) -> Classification:
    return explain(tool["name"], tool.get("description"), tool.get("annotations"), tool.get("inputSchema"))


def starter_policy(listing: Listing, names: Names) -> dict[str, Any]:
    """Reads allowed, writes rate-limited, destructive calls behind approval; unknown calls need approval."""
    by_risk: dict[str, list[str]] = {"read": [], "write": [], "destructive": []}
    conditional: list[dict[str, Any]] = []
    for upstream, tools in listing.items():
        if isinstance(tools, str):
            continue
        for tool in tools:
            public = names.public(upstream, tool["name"])
            found = _classify(tool)
            if found.dangerous_values and found.base is not None:
                conditional += _value_rules(public, found)
            else:
                by_risk[found.risk].append(public)
    rules = sorted(conditional, key=lambda rule: rule["tools"][0])  # stable per tool: approval rule first
    if by_risk["destructive"]:
        rules.append(
            {
                "name": "destructive tools need on-call approval",
                "tools": _globs(by_risk["destructive"]),
                "action": "require_approval",
            }
        )
    if by_risk["write"]:
        rules.append(
            {
                "name": "writes are rate-limited",
                "tools": _globs(by_risk["write"]),
                "action": "allow",
                "rate_limit": dict(WRITE_LIMIT),
            }
        )
    if by_risk["read"]:
        rules.append({"name": "reads are allowed", "tools": _globs(by_risk["read"]), "action": "allow"})
    return {
        "mode": "enforce",
        "default": "require_approval",
        "approval_defaults": {"approvers": "oncall", "timeout": "10m", "quorum": 1, "mode": "hold"},
        "rules": rules,
    }


def _value_rules(tool: str, found: Classification) -> list[dict[str, Any]]:
    """Approval for the dangerous values of each argument, then the tool's own class for the listed rest."""
    rules: list[dict[str, Any]] = [
        {
            "name": f"{tool}: {' or '.join(values)} in {path} needs approval",
            "tools": [glob_escape(tool)],
            "when": [{"path": path, "op": "in", "value": list(values)}],
            "action": "require_approval",
        }
        for path, values in found.dangerous_values.items()
    ]
    if all(found.other_values.get(path) for path in found.dangerous_values):
        # Only values the schema lists are let through: a value it does not list (another spelling, a
        # new action the server added) or a missing argument falls to the default, approval.
        rest: dict[str, Any] = {
            "name": f"{tool}: other listed values are {'reads' if found.base == 'read' else 'writes'}",
            "tools": [glob_escape(tool)],
            "when": [
                {"path": path, "op": "in", "value": list(found.other_values[path])}
                for path in found.dangerous_values
            ],
            "action": "allow",
        }
        if found.base == "write":
            rest["rate_limit"] = dict(WRITE_LIMIT)
        rules.append(rest)
    return rules


def _globs(tools: list[str]) -> list[str]:
    # Tool names are matched as globs; a name with `*`, `?` or `[` must still match only itself.
    return [glob_escape(name) for name in sorted(tools)]
