"""The `signoff` command line: serve, check, tools, init, audit, approvals, demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from proxy.config import Config, ConfigError, load_config
from proxy.demo.run import add_arguments as demo_arguments
from proxy.demo.run import run as cmd_demo
from proxy.duration import parse_duration
from proxy.logs import FORMATS, setup_logging


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        print(f"signoff: {e}", file=sys.stderr)
        raise SystemExit(2) from None


# -- serve -------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from proxy.app import StartupError, run

    config = _load(args.config)
    try:
        _run_loop(run(config, stdio=args.stdio))
    except ConfigError as e:
        print(f"signoff: {e}", file=sys.stderr)
        return 2
    except StartupError as e:
        print(f"signoff: cannot start: {e}", file=sys.stderr)
        return 1
    return 0


def _run_loop(main: Any) -> None:
    """Run the gateway on uvloop when it is installed (a faster event loop), else on asyncio's."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


# -- upstream tools: check, tools, init --------------------------------------------------------


async def fetch_tools(config: Config) -> dict[str, list[dict[str, Any]] | str]:
    """Every upstream's tools (or why they could not be listed), connecting to each once."""
    from proxy.upstreams import Upstream

    async def one(name: str) -> list[dict[str, Any]] | str:
        async def ignore(*_: Any) -> None:
            return None

        up = Upstream(name, config.upstreams[name], config.base_dir, notify=ignore)
        up.shared.start()
        try:
            if not await up.shared.wait_ready(up.config.connect_timeout):
                return up.shared.unavailable_reason()
            return list((await up.refresh_tools()).values())
        except Exception as e:
            return f"tools/list failed: {e}"
        finally:
            await up.shared.close()

    results = await asyncio.gather(*(one(name) for name in config.upstreams))
    return dict(zip(config.upstreams, results, strict=True))


def _listed(listing: dict[str, list[dict[str, Any]] | str]) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
    """Every (upstream, tool) listed, and whether some upstream could not be listed (said on stderr)."""
    pairs, failed = [], False
    for upstream, tools in listing.items():
        if isinstance(tools, str):
            print(f"signoff: upstream {upstream}: {tools}", file=sys.stderr)
            failed = True
        else:
            pairs += [(upstream, tool) for tool in tools]
    return pairs, failed


def _risk(tool: dict[str, Any]) -> str:
    from proxy.risk import classify

    return classify(tool["name"], tool.get("description"), tool.get("annotations"))


def _first_line(text: str | None, width: int = 60) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def cmd_tools(args: argparse.Namespace) -> int:
    from proxy.naming import Names

    config = _load(args.config)
    names = Names(list(config.upstreams), config.tool_separator, config.prefixed)
    listing = asyncio.run(fetch_tools(config))
    out: list[dict[str, Any]] = []
    pairs, failed = _listed(listing)
    for upstream, tool in pairs:
        out.append(
            {
                "upstream": upstream,
                "tool": names.public(upstream, tool["name"]),
                "risk": _risk(tool),
                "annotated": bool(tool.get("annotations")),
                "description": tool.get("description"),
            }
        )
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            _table(
                [
                    [t["tool"], t["risk"], "yes" if t["annotated"] else "no", _first_line(t["description"])]
                    for t in out
                ],
                ["TOOL", "RISK", "ANNOTATED", "DESCRIPTION"],
            )
        )
    return 1 if failed else 0


def _describe(decision: Any) -> str:
    action = decision.action
    parts = [action]
    if action == "require_approval" and decision.approval is not None:
        a = decision.approval
        who = f"by {a.approvers}" if a.approvers else "by anyone in the channel"
        quorum = f", {a.quorum} approvals" if a.quorum > 1 else ""
        parts = [f"require_approval ({who}{quorum}, {a.timeout:g}s, {a.mode})"]
    for limit in decision.rate_limits:
        parts.append(f"rate limit {limit.max}/{limit.window:g}s per {limit.per}")
    return "; ".join(parts)


def cmd_check(args: argparse.Namespace) -> int:
    from proxy.identity import ANONYMOUS, Identity
    from proxy.naming import Names
    from proxy.policies import PolicySet

    config = _load(args.config)
    names = Names(list(config.upstreams), config.tool_separator, config.prefixed)
    try:
        policies = PolicySet(config, names)
        missing = sorted(policies.approver_groups() - set(config.approvers))
        if missing:
            raise ConfigError(
                [f"approvers: the policy names approver group {m!r}, which is not defined" for m in missing]
            )
    except ConfigError as e:
        print(f"signoff: {e}", file=sys.stderr)
        return 2
    identity = ANONYMOUS
    if args.identity:
        cfg = config.identities.get(args.identity)
        if cfg is None:
            print(f"signoff: no identity {args.identity!r} in the config", file=sys.stderr)
            return 2
        identity = Identity(args.identity, frozenset(cfg.groups), cfg.slack_user)
    print(
        f"config OK: {len(config.upstreams)} upstream(s); policy revision "
        + ", ".join(
            f"{k or 'policy'}={p.revision} ({p.source_format}, {p.mode})"
            for k, p in policies.policies.items()
        )
        if policies.policies
        else f"config OK: {len(config.upstreams)} upstream(s); no policy (everything is allowed)"
    )
    listing = asyncio.run(fetch_tools(config))
    rows: list[list[str]] = []
    pairs, failed = _listed(listing)
    for upstream, tool in pairs:
        if policies.is_hidden(upstream, tool["name"]):
            rows.append([names.public(upstream, tool["name"]), _risk(tool), "hidden", "(hidden)"])
            continue
        verdict = policies.decide(identity, upstream, tool["name"], {})
        shadow = "" if verdict.enforced else " [shadow: not enforced]"
        rows.append(
            [
                names.public(upstream, tool["name"]),
                _risk(tool),
                _describe(verdict.decision) + shadow,
                verdict.decision.rule,
            ]
        )
    print(_table(rows, ["TOOL", "RISK", "DECISION (no arguments)", "RULE"]))
    return 1 if failed else 0


def starter_policy(listing: dict[str, list[dict[str, Any]] | str], config: Config) -> dict[str, Any]:
    """Reads allowed, writes rate-limited, destructive tools behind approval (signoff's native format)."""
    from proxy.naming import Names

    names = Names(list(config.upstreams), config.tool_separator, config.prefixed)
    by_risk: dict[str, list[str]] = {"read": [], "write": [], "destructive": []}
    for upstream, tools in listing.items():
        if isinstance(tools, list):
            for tool in tools:
                by_risk[_risk(tool)].append(names.public(upstream, tool["name"]))
    rules: list[dict[str, Any]] = []
    if by_risk["destructive"]:
        rules.append(
            {
                "name": "destructive tools need on-call approval",
                "tools": sorted(by_risk["destructive"]),
                "action": "require_approval",
            }
        )
    if by_risk["write"]:
        rules.append(
            {
                "name": "writes are rate-limited",
                "tools": sorted(by_risk["write"]),
                "action": "allow",
                "rate_limit": {"max": 30, "window": "1m", "per": "identity"},
            }
        )
    if by_risk["read"]:
        rules.append({"name": "reads are allowed", "tools": sorted(by_risk["read"]), "action": "allow"})
    return {
        "mode": "enforce",
        "default": "require_approval",
        "approval_defaults": {"approvers": "oncall", "timeout": "10m", "quorum": 1, "mode": "hold"},
        "rules": rules,
    }


def cmd_init(args: argparse.Namespace) -> int:
    config = _load(args.config)
    listing = asyncio.run(fetch_tools(config))
    errors = {k: v for k, v in listing.items() if isinstance(v, str)}
    for upstream, why in errors.items():
        print(f"signoff: upstream {upstream}: {why}", file=sys.stderr)
    if len(errors) == len(listing):
        return 1
    policy = starter_policy(listing, config)
    text = (
        "# Starting policy written by `signoff init`: reads allowed, writes rate-limited,\n"
        "# destructive tools behind on-call approval, anything new needs approval too.\n"
        "# Define the `oncall` approver group in your config (approvers: {oncall: {users: [U0123]}}).\n"
        + yaml.safe_dump(policy, sort_keys=False)
    )
    if args.output == "-":
        print(text, end="")
        return 0
    out = Path(args.output)
    if out.exists() and not args.force:
        print(f"signoff: {out} exists; use --force to overwrite", file=sys.stderr)
        return 1
    out.write_text(text)
    print(
        f"wrote {out}: {sum(len(r['tools']) for r in policy['rules'])} tools in {len(policy['rules'])} rules",
        file=sys.stderr,
    )
    return 0


# -- audit ---------------------------------------------------------------------------------------


def _since(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).astimezone(UTC)
    except ValueError:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(value))


def cmd_audit(args: argparse.Namespace) -> int:
    from proxy.store import Store
    from proxy.webui import audit_json

    url = args.database or (_load(args.config).database_url if args.config else None)
    if url is None:
        print("signoff: give --config or --database", file=sys.stderr)
        return 2

    async def query() -> list[Any]:
        store = Store(url)
        try:
            await store.open()
            return await store.audit(
                since=_since(args.since),
                until=_since(args.until),
                identity=args.identity,
                tool=args.tool,
                decision=args.decision,
                outcome=args.outcome,
                limit=args.limit,
            )
        finally:
            await store.close()

    try:
        records = asyncio.run(query())
    except ValueError as e:
        print(f"signoff: {e}", file=sys.stderr)
        return 2
    if args.jsonl:
        for r in records:
            print(json.dumps(audit_json(r), ensure_ascii=False))
        return 0
    print(
        _table(
            [
                [
                    r.at.strftime("%Y-%m-%d %H:%M:%S"),
                    r.identity,
                    r.tool,
                    r.decision + ("" if r.enforced else "*"),
                    r.rule or "",
                    r.approvers or "",
                    r.outcome,
                    f"{r.latency_ms:.1f}",
                ]
                for r in records
            ],
            ["TIME (UTC)", "IDENTITY", "TOOL", "DECISION", "RULE", "APPROVERS", "OUTCOME", "MS"],
        )
    )
    return 0


# -- approvals (against a running gateway) ----------------------------------------------------------


def _admin(config: Config) -> tuple[str, str]:
    from proxy.app import admin_token_path

    token = config.control.admin_token
    if not token:
        path = admin_token_path(config)
        if path is not None and path.exists():
            token = path.read_text().strip()
    if not token:
        raise SystemExit("signoff: no admin token: set control.admin_token in the config")
    return f"http://{config.control.host}:{config.control.port}", token


def _call(base: str, token: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except urllib.error.URLError as e:
        raise SystemExit(f"signoff: cannot reach the gateway at {base}: {e.reason}") from None


def cmd_approvals(args: argparse.Namespace) -> int:
    config = _load(args.config)
    base, token = _admin(config)
    if args.action == "list":
        status, body = _call(base, token, f"/api/approvals?status={args.status}")
        if status != 200:
            print(f"signoff: {body.get('error', status)}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(body["approvals"], indent=2))
            return 0
        print(
            _table(
                [
                    [
                        a["id"],
                        a["status"],
                        a["tool"],
                        a["identity"],
                        a["risk"],
                        f"{a['secondsLeft']:.0f}s" if a["status"] == "pending" else (a["decidedBy"] or ""),
                        json.dumps(a["arguments"])[:60],
                    ]
                    for a in body["approvals"]
                ],
                ["ID", "STATUS", "TOOL", "IDENTITY", "RISK", "LEFT/BY", "ARGUMENTS"],
            )
        )
        return 0
    if not args.id or not args.user:
        print("signoff: approve/deny need an approval ID and --as USER", file=sys.stderr)
        return 2
    if args.action == "deny" and not args.reason:
        print("signoff: deny needs --reason (the agent sees it)", file=sys.stderr)
        return 2
    status, body = _call(
        base,
        token,
        f"/api/approvals/{args.id}/decide",
        {"decision": args.action, "user": args.user, "reason": args.reason},
    )
    print(body.get("message") or body.get("error") or status)
    return 0 if status == 200 else 1


# -- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signoff", description="An MCP gateway with human approval.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (to stderr)")
    parser.add_argument(
        "--log-format", choices=FORMATS, default="text", help="json: one JSON object per line (log shippers)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", "-c", required=True, help="the YAML (or JSON) config file")
    p.add_argument("--stdio", action="store_true", help="serve one MCP client on stdin/stdout")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", help="validate a config and print the decision for every upstream tool")
    p.add_argument("config")
    p.add_argument("--as", dest="identity", help="evaluate for this configured identity")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("tools", help="list upstream tools with their risk class")
    p.add_argument("config")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tools)

    p = sub.add_parser("init", help="write a starting policy from the upstreams' tools")
    p.add_argument("config")
    p.add_argument("-o", "--output", default="policy.yaml", help="file to write, or - for stdout")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("audit", help="print or export the audit log")
    p.add_argument("config", nargs="?")
    p.add_argument("--database", help="database URL (instead of a config)")
    p.add_argument("--since", help="a duration (1h, 30m) or an ISO time")
    p.add_argument("--until", help="a duration ago or an ISO time")
    p.add_argument("--identity")
    p.add_argument("--tool", help="tool name; * matches anything")
    p.add_argument("--decision", help="allow, deny, require_approval, rate_limited, hidden, …")
    p.add_argument("--outcome", help="ok, tool_error, denied, expired, …")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--jsonl", action="store_true", help="JSON Lines, one record per line")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("approvals", help="list or decide approvals on a running gateway")
    p.add_argument("action", choices=["list", "approve", "deny"])
    p.add_argument("id", nargs="?")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--as", dest="user", help="your approver id (as in the approver group)")
    p.add_argument("--reason")
    p.add_argument("--status", default="pending", help="list: pending (default), all, approved, denied, …")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_approvals)

    p = sub.add_parser("demo", help="run the demo: a gateway, the demo jobs server and a scripted agent")
    demo_arguments(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `signoff` console script."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.log_format)
    if args.command in ("check", "tools", "init", "audit", "approvals", "demo") and not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
