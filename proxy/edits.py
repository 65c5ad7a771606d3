"""Edit and approve: checking arguments an approver changed, and saying what changed. Pure functions.

An edit is refused, deciding nothing, when it is not a JSON object, when it still holds a masked
secret (the approver never saw that value, so cannot vouch for it), when it breaks the tool's input
schema, or when the policy would not let the edited call through the same door: denied, hidden, or
needing other approvers than the request being decided.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from proxy.policy_spec import Decision

# `display_mask`'s label for a secret: U+2039 kind, N chars U+203A.
_MASK = re.compile("\u2039[^\u2039\u203a]{1,80}, \\d+ chars?\u203a")
_MAX_SCHEMA_ERRORS = 3


def parse_edit(text: str) -> dict[str, Any] | str:
    """The arguments typed as JSON text, or why they are not a JSON object."""
    try:
        value = json.loads(text)
    except ValueError as e:
        return f"not valid JSON: {e}"
    if not isinstance(value, dict):
        return "the arguments must be a JSON object ({…})"
    return value


def masked_secret(arguments: Any) -> str | None:
    """Where the edited arguments still hold a masked secret (a `display_mask` label), or None."""
    for path, text in _strings(arguments, ""):
        if _MASK.search(text):
            return path or "(top level)"
    return None


def _strings(value: Any, path: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            found.append((where, item))
        elif isinstance(item, dict):
            for k, v in item.items():
                key_path = _join(where, str(k))
                found.append((key_path, str(k)))
                stack.append((key_path, v))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(item))
    return found


def schema_problems(schema: Mapping[str, Any] | None, arguments: Any) -> str | None:
    """Why `arguments` break the tool's input schema (the first few reasons), or None."""
    if not schema:
        return None
    # Imported here: it is slow to import, and only a gateway whose approvers edit a call needs it.
    import jsonschema
    import jsonschema.exceptions

    try:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError as e:
        # The upstream's own schema is broken: nothing can be checked against it, so nothing passes.
        return f"the tool's input schema cannot be checked ({e.message})"
    errors = sorted(cls(schema).iter_errors(arguments), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    shown = [f"{_path(e.absolute_path) or '(arguments)'}: {e.message}" for e in errors[:_MAX_SCHEMA_ERRORS]]
    more = len(errors) - len(shown)
    return "; ".join(shown) + (f" (and {more} more)" if more > 0 else "")


def policy_problem(decision: Decision, enforced: bool, approvers: str | None, quorum: int) -> str | None:
    """Why the policy refuses the edited call for this request, or None. The edit must be something the
    policy allows, or sends to the same approvers with no larger quorum."""
    if not enforced or decision.action == "allow":
        return None
    if decision.action == "require_approval":
        spec = decision.approval
        if spec is None or (spec.approvers == approvers and spec.quorum <= quorum):
            return None
        return (
            f"the policy sends the edited call to rule {decision.rule!r}, which needs other approvers "
            f"({spec.approvers or 'anyone'}, quorum {spec.quorum})"
        )
    if decision.action == "hidden":
        return f"the policy hides the tool for these arguments (rule {decision.rule!r})"
    reason = f": {decision.reason}" if decision.reason else ""
    return f"the policy denies the edited call (rule {decision.rule!r}{reason})"


def changed_paths(before: Any, after: Any) -> list[str]:
    """The JSON paths whose values differ (`name`, `spec.replicas`, `items[2]`); a whole subtree that
    was added, removed or changed type is one path."""
    changed: list[str] = []
    stack: list[tuple[str, Any, Any]] = [("", before, after)]
    while stack:
        path, old, new = stack.pop()
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(set(old) | set(new), key=str, reverse=True):
                sub = _join(path, str(key))
                if key not in old or key not in new:
                    changed.append(sub)
                else:
                    stack.append((sub, old[key], new[key]))
        elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
            stack.extend(
                (f"{path}[{i}]", o, n) for i, (o, n) in reversed(list(enumerate(zip(old, new, strict=True))))
            )
        elif not _same(old, new):
            changed.append(path or "(arguments)")
    return sorted(changed)


def _same(a: Any, b: Any) -> bool:
    # JSON equality: 1 and 1.0 are one number, but true is not 1.
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def agent_note(changed: list[str], old_hash: str, new_hash: str) -> str:
    """The line the agent reads in its result: it ran with changed arguments, and which."""
    what = ", ".join(changed) if changed else "no visible value"
    return (
        f"[signoff] An approver edited the arguments before approving; the call ran with the edited "
        f"arguments. Changed: {what}. (arguments sha256 {old_hash[:12]}… → {new_hash[:12]}…)"
    )


def _join(path: str, key: str) -> str:
    plain = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key) is not None
    if plain:
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out = f"{out}[{part}]" if isinstance(part, int) else _join(out, str(part))
    return out
