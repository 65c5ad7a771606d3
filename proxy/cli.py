"""The `signoff` command line: serve, check, tools, init, audit, approvals, demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import urllib.error
import urllib.parse
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
    from proxy.errors import StartupError

    config = _load(_config_arg(args))
    try:
        if args.stdio:
            from proxy.edge.stdio_front import serve  # answers initialize before the SDK is even imported

            _run_loop(serve(config))
        else:
            from proxy.app import run

            _run_loop(run(config))
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


PROBE_TIMEOUT = 10.0  # check/tools/init give up on an upstream after this long, or its first failure


async def fetch_tools(config: Config) -> dict[str, list[dict[str, Any]] | str]:
    """Every upstream's tools (or why they could not be listed), connecting to each once, in parallel.

    Unlike the gateway, nothing here retries: the first failure is the answer, with the upstream's
    own error (a stdio upstream's stderr is this process's, so its complaint is printed above).
    """
    from proxy.edge.upstreams import Upstream

    async def one(name: str) -> list[dict[str, Any]] | str:
        async def ignore(*_: Any) -> None:
            return None

        up = Upstream(name, config.upstreams[name], config.base_dir, notify=ignore)
        up.shared.reconnect = False
        up.shared.start()
        try:
            patience = min(up.config.connect_timeout, PROBE_TIMEOUT)
            deadline = asyncio.get_running_loop().time() + patience
            while not up.shared.ready.is_set() and up.shared.last_error is None:
                if asyncio.get_running_loop().time() > deadline:
                    return f"no answer to the MCP handshake within {patience:g}s"
                await asyncio.sleep(0.05)
            if not up.shared.ready.is_set():
                return f"cannot connect: {up.shared.last_error}"
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

    return classify(tool["name"], tool.get("description"), tool.get("annotations"), tool.get("inputSchema"))


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

    words = list(args.words)
    action = words.pop(0) if words and words[0] in ("list", "diff", "accept") else "list"
    tool = None
    if action == "accept":
        if not words:
            print(
                "signoff tools accept: give the tool (as agents see it), e.g. `signoff tools accept "
                "runpod.cancel-job --config signoff.yaml`",
                file=sys.stderr,
            )
            return 2
        tool = words.pop(0)
    if len(words) > 1:
        print(f"signoff tools: unexpected {' '.join(words[1:])}", file=sys.stderr)
        return 2
    args.config_file = words[0] if words else None
    if action == "diff":
        return cmd_tools_diff(args)
    if action == "accept":
        assert tool is not None
        return cmd_tools_accept(args, tool)
    config = _load(_config_arg(args))
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


def _pins_store(config: Config) -> Any:
    from proxy.store import Store

    return Store(config.database_url)


def cmd_tools_diff(args: argparse.Namespace) -> int:
    """Print every tool whose upstream now serves a definition that differs from its pin."""
    from proxy.naming import Names
    from proxy.pins import changed_tools, diff_text

    config = _load(_config_arg(args))
    names = Names(list(config.upstreams), config.tool_separator, config.prefixed)

    async def query() -> list[Any]:
        store = _pins_store(config)
        try:
            await store.open()
            return await changed_tools(store)
        finally:
            await store.close()

    changed = asyncio.run(query())
    if not changed:
        print("No tool definition has changed since it was pinned.")
        return 0
    for pin in changed:
        public = names.public(pin.upstream, pin.tool)
        seen = pin.pending_at.strftime("%Y-%m-%d %H:%M:%S UTC") if pin.pending_at else "?"
        print(f"{public}: changed (seen {seen}); pinned {pin.pinned_at:%Y-%m-%d %H:%M:%S} by {pin.pinned_by}")
        print(_visible(diff_text(pin.definition, pin.pending or {}, public)))
        print(f"  accept with: signoff tools accept {public} --config {_config_arg(args)}\n")
    return 0


def cmd_tools_accept(args: argparse.Namespace, tool: str) -> int:
    """Pin the changed definition of `tool`: gateways serve it normally again."""
    import getpass

    from proxy.naming import Names
    from proxy.pins import diff_text

    config = _load(_config_arg(args))
    names = Names(list(config.upstreams), config.tool_separator, config.prefixed)
    resolved = names.resolve(tool)
    if resolved is None or resolved[0] not in config.upstreams:
        print(f"signoff: no upstream owns {tool!r}", file=sys.stderr)
        return 2
    upstream, own = resolved

    async def accept() -> tuple[Any, Any]:
        store = _pins_store(config)
        try:
            await store.open()
            pin = next((p for p in await store.tool_pins(upstream) if p.tool == own), None)
            if pin is None or pin.pending_digest is None:
                return pin, None
            by = f"{getpass.getuser()} (signoff tools accept)"
            return pin, await store.accept_tool_change(upstream, own, by, pin.pending_digest)
        finally:
            await store.close()

    before, accepted = asyncio.run(accept())
    if before is None:
        print(f"signoff: {tool} has never been seen by a gateway on this database", file=sys.stderr)
        return 1
    if accepted is None:
        print(
            f"signoff: {tool} has no changed definition waiting (`signoff tools diff` lists them)",
            file=sys.stderr,
        )
        return 1
    print(_visible(diff_text(before.definition, accepted.definition, tool)))
    print(f"Accepted: {tool} is pinned to this definition; gateways serve it normally again within seconds.")
    return 0


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

    config = _load(_config_arg(args))
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
    summary = (
        "; policy revision "
        + ", ".join(
            f"{k or 'policy'}={p.revision} ({p.source_format}, {p.mode})"
            for k, p in policies.policies.items()
        )
        if policies.policies
        else "; no policy (everything is allowed)"
    )
    listing = asyncio.run(fetch_tools(config))
    pairs, failed = _listed(listing)
    if failed:
        print(
            "signoff: the config is valid, but not every upstream could be listed, so the decisions "
            "cannot be shown (see above)",
            file=sys.stderr,
        )
        return 1
    rows: list[list[str]] = []
    for upstream, tool in pairs:
        if policies.is_hidden(upstream, tool["name"]):
            rows.append([names.public(upstream, tool["name"]), _risk(tool), "hidden", "(hidden)"])
            continue
        verdict = policies.decide(identity, upstream, tool["name"], {}, tool.get("annotations") or {})
        shadow = "" if verdict.enforced else " [shadow: not enforced]"
        rows.append(
            [
                names.public(upstream, tool["name"]),
                _risk(tool),
                _describe(verdict.decision) + shadow,
                verdict.decision.rule,
            ]
        )
    own = {up: [t["name"] for t in tools] for up, tools in listing.items() if isinstance(tools, list)}
    warnings = policies.unmatched(own)
    verdict = f"config OK with {len(warnings)} warning(s)" if warnings else "config OK"
    print(f"{verdict}: {len(config.upstreams)} upstream(s){summary}")
    print(_table(rows, ["TOOL", "RISK", "DECISION (no arguments)", "RULE"]))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 1 if warnings and args.strict else 0


def cmd_init(args: argparse.Namespace) -> int:
    from proxy.naming import Names
    from proxy.starter import starter_policy

    config = _load(_config_arg(args))
    listing = asyncio.run(fetch_tools(config))
    errors = {k: v for k, v in listing.items() if isinstance(v, str)}
    for upstream, why in errors.items():
        print(f"signoff: upstream {upstream}: {why}", file=sys.stderr)
    if len(errors) == len(listing):
        return 1
    policy = starter_policy(listing, Names(list(config.upstreams), config.tool_separator, config.prefixed))
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
    tools = {tool for rule in policy["rules"] for tool in rule["tools"]}  # a tool may have several rules
    print(
        f"wrote {out}: {len(tools)} tools in {len(policy['rules'])} rules",
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
    from proxy.audit_view import audit_json
    from proxy.store import Store

    path = _config_arg(args, required=False)
    url = args.database or (_load(path).database_url if path else None)
    if url is None:
        print("signoff: give --config FILE or --database URL", file=sys.stderr)
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


APPROVER_TOKEN_ENV = "SIGNOFF_APPROVER_TOKEN"


def _control_base(config: Config) -> str:
    host = config.control.host
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    return f"http://{host if ':' not in host else f'[{host}]'}:{config.control.port}"


def _viewing_token(config: Config) -> str:
    """Your own token if you set one, else the admin token (which can view but never decide)."""
    from proxy.secretfiles import admin_token_path

    token = os.environ.get(APPROVER_TOKEN_ENV, "").strip() or config.control.admin_token or ""
    if not token:
        path = admin_token_path(config.database_url)
        if path is not None and path.exists():
            token = path.read_text().strip()
    if not token:
        raise SystemExit(
            f"signoff: no token to view requests with: set {APPROVER_TOKEN_ENV} to your own approver token "
            "(people.<you> in the config), or control.admin_token"
        )
    return token


def _deciding_token() -> str:
    token = os.environ.get(APPROVER_TOKEN_ENV, "").strip()
    if not token:
        raise SystemExit(
            f"signoff: deciding needs your own approver token in {APPROVER_TOKEN_ENV}.\n"
            "  Ask the gateway's admin to add you under `people:` in the config with a token "
            "(`signoff token` makes one and prints its token_sha256 line), then:\n"
            f"  export {APPROVER_TOKEN_ENV}=<your token>\n"
            "  (The admin token can list requests but never decide.)"
        )
    return token


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
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {"error": f"HTTP {e.code}"}
    except urllib.error.URLError as e:
        raise SystemExit(
            f"signoff: cannot reach the gateway's control port at {base}: {e.reason} "
            "(is a gateway running with this config?)"
        ) from None


def _show(a: dict[str, Any]) -> str:
    """One request as an approver must see it: every argument that will run, and their hash."""
    lines = [
        f"{a['id']}  {a['status']}  {a['tool']}  ({a['risk']})",
        f"  asked by   {a['identity']}"
        + (f" via {a['client']}" if a.get("client") else "")
        + (f" for {a['actsFor']}" if a.get("actsFor") else ""),
        f"  rule       {a['rule']}" + (f": {a['ruleReason']}" if a.get("ruleReason") else ""),
        f"  approvers  {a.get('approvers') or '(anyone signed in)'}"
        + (f", {len(a.get('votes') or [])} of {a['quorum']} approvals" if a.get("quorum", 1) > 1 else ""),
    ]
    if a["status"] == "pending":
        lines.append(f"  expires in {a['secondsLeft']:.0f}s ({a['expiresAt']})")
    else:
        lines.append(
            f"  decided by {a.get('decidedBy') or '-'}" + (f": {a['reason']}" if a.get("reason") else "")
        )
    context = a.get("context")
    if context:
        lines.append(f"  state      {_visible(str(context.get('summary')))}")
        if context.get("changed"):
            lines.append(f"  CHANGED    since the request was shown: {_visible(context['changed'])}")
    for i, d in enumerate(a.get("history") or []):
        lines.append(("  history    " if i == 0 else "             ") + _past(d))
    lines.append(f"  sha256     {a.get('argumentsHash', '')}")
    lines.append("  arguments (exactly what will run; secrets shown as \u2039kind, length\u203a):")
    pretty = _visible(json.dumps(a["arguments"], indent=2, ensure_ascii=False))
    lines += ["    " + line for line in pretty.splitlines()]
    return "\n".join(lines + _show_grant_and_edit(a))


def _show_grant_and_edit(a: dict[str, Any]) -> list[str]:
    """The request's offer to approve for a while, and how it was approved (a grant, an edit)."""
    lines = []
    offer = a.get("grantOffer")
    if offer and a["status"] == "pending":
        same = ", ".join(offer.get("same") or []) or "any arguments"
        lines.append(
            f"  may be approved for a while: {', '.join(offer.get('offerText') or [])} "
            f"(covers the same {same}; `approve {a['id']} --for 30m`)"
        )
    if a.get("grantId"):
        lines.append(f"  grant      {a['grantId']} (`signoff grants list`)")
    edited = a.get("edited")
    if edited:
        lines.append(f"  edited     sha256 {edited['from']} \u2192 {edited['to']}")
        lines.append(f"  changed    {', '.join(edited.get('changed') or []) or '-'}")
        lines.append("  ran with (secrets shown as \u2039kind, length\u203a):")
        pretty = _visible(json.dumps(edited["arguments"], indent=2, ensure_ascii=False))
        lines += ["    " + line for line in pretty.splitlines()]
    return lines


def _past(d: dict[str, Any]) -> str:
    """One earlier decision of the history, as the API gives it."""
    text = f"{(d.get('decidedAt') or '-')[:16].replace('T', ' ')} {d['status']}"
    if d.get("decidedBy") and not str(d["decidedBy"]).startswith("("):
        text += f" by {d['decidedBy']}"
    if d["status"] == "approved":
        text += f", ran {d['outcome']}" if d.get("outcome") else ", did not run"
    elif d.get("reason"):
        text += f": {d['reason']}"
    return _visible(text)


# Characters a terminal would not show, or would use to reorder what is shown (bidi overrides).
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]"
)


def _visible(text: str) -> str:
    """`text` with invisible and direction-changing characters written as `\\uXXXX` escapes."""
    return _INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def cmd_approvals(args: argparse.Namespace) -> int:
    if args.user is not None:
        print(
            f"signoff: --as is gone: you decide as the person whose token is in {APPROVER_TOKEN_ENV}",
            file=sys.stderr,
        )
        return 2
    config = _load(_config_arg(args))
    base = _control_base(config)
    if args.action == "list":
        status, body = _call(base, _viewing_token(config), f"/api/approvals?status={args.status}")
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
                        _first_line(json.dumps(a["arguments"], ensure_ascii=False), 60),
                    ]
                    for a in body["approvals"]
                ],
                ["ID", "STATUS", "TOOL", "IDENTITY", "RISK", "LEFT/BY", "ARGUMENTS"],
            )
        )
        if body["approvals"]:
            print("\n`signoff approvals show ID` prints every argument of a request before you decide.")
        return 0
    if not args.id:
        print(f"signoff: {args.action} needs an approval ID (see `signoff approvals list`)", file=sys.stderr)
        return 2
    if args.action == "show":
        status, body = _call(base, _viewing_token(config), f"/api/approvals/{urllib.parse.quote(args.id)}")
        if status != 200:
            print(f"signoff: {body.get('error', status)}", file=sys.stderr)
            return 1
        print(json.dumps(body, indent=2, ensure_ascii=False) if args.json else _show(body))
        return 0
    if args.action == "deny" and not args.reason:
        print("signoff: deny needs --reason (the agent sees it)", file=sys.stderr)
        return 2
    decision: dict[str, Any] = {"decision": args.action, "reason": args.reason}
    if args.action == "approve":
        extras = _approve_extras(args)
        if isinstance(extras, int):
            return extras
        decision.update(extras)
    elif args.grant_for or args.arguments:
        print("signoff: --for and --arguments go with approve", file=sys.stderr)
        return 2
    if args.confirm_changed:
        decision["confirmChanged"] = True
    status, body = _call(
        base, _deciding_token(), f"/api/approvals/{urllib.parse.quote(args.id)}/decide", decision
    )
    message = body.get("message") or body.get("error") or str(status)
    if body.get("contextChanged"):
        message += " (to approve anyway: add --confirm-changed)"
    print(f"{message} (as {body['by']})" if body.get("by") and status == 200 else message)
    return 0 if status == 200 else 1


def _approve_extras(args: argparse.Namespace) -> dict[str, Any] | int:
    """`--for DURATION` and `--arguments FILE` (JSON; `-` reads stdin) as the decision's fields,
    or the exit code after saying what is wrong."""
    extras: dict[str, Any] = {}
    if args.grant_for:
        extras["for"] = args.grant_for
    if args.arguments:
        try:
            text = sys.stdin.read() if args.arguments == "-" else Path(args.arguments).read_text()
        except OSError as e:
            print(f"signoff: cannot read {args.arguments}: {e.strerror}", file=sys.stderr)
            return 2
        from proxy.edits import parse_edit

        edited = parse_edit(text)
        if isinstance(edited, str):
            print(f"signoff: {args.arguments}: {edited}", file=sys.stderr)
            return 2
        extras["arguments"] = edited
    return extras


def cmd_grants(args: argparse.Namespace) -> int:
    """List the grants (approvals for a while) or revoke one; as the person in SIGNOFF_APPROVER_TOKEN."""
    config = _load(_config_arg(args))
    base, token = _control_base(config), _deciding_token()
    if args.action == "list":
        status, body = _call(base, token, f"/api/grants?status={'all' if args.all else 'live'}")
        if status != 200:
            print(f"signoff: {body.get('error', status)}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(body["grants"], indent=2, ensure_ascii=False))
            return 0
        rows = [
            [
                g["id"],
                g["state"],
                f"{g['secondsLeft']:.0f}s" if g["state"] == "live" else (g.get("revokedBy") or "-"),
                g["createdBy"],
                _visible(_first_line(g["covers"], 80)),
            ]
            for g in body["grants"]
        ]
        print(_table(rows, ["ID", "STATE", "LEFT/REVOKED BY", "GIVEN BY", "COVERS"]))
        return 0
    if not args.id:
        print("signoff: revoke needs a grant ID (see `signoff grants list`)", file=sys.stderr)
        return 2
    status, body = _call(base, token, f"/api/grants/{urllib.parse.quote(args.id)}/revoke", {})
    message = body.get("message") or body.get("error") or str(status)
    print(f"{message} (as {body['by']})" if body.get("by") and status == 200 else message)
    return 0 if status == 200 else 1


def cmd_token(args: argparse.Namespace) -> int:
    """Print a new random token and the config line that accepts it (only its SHA-256 goes in the file)."""
    from proxy.tokens import digest, new_token

    token = new_token()
    print(f"token:         {token}")
    print(f'token_sha256:  "{digest(token)}"')
    print(
        "Give the token to its owner (a person: SIGNOFF_APPROVER_TOKEN; an agent: its bearer token);",
        file=sys.stderr,
    )
    print(
        "put the token_sha256 line under people.<name> or identities.<name> in the config.", file=sys.stderr
    )
    return 0


# -- parser ------------------------------------------------------------------------------------


def _add_config(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", "-c", dest="config", help="the YAML (or JSON) config file")
    # `signoff check signoff.yaml` keeps working: a positional file is an alias of --config.
    p.add_argument("config_file", nargs="?", metavar="CONFIG", help=argparse.SUPPRESS)
    p.set_defaults(config_required=required)


def _config_arg(args: argparse.Namespace, required: bool = True) -> str | None:
    """The config file given as --config or positionally (not both, unless they agree)."""
    flag, positional = getattr(args, "config", None), getattr(args, "config_file", None)
    if flag and positional and flag != positional:
        raise SystemExit(
            f"signoff: two config files given ({flag} and {positional}); give one, with --config"
        )
    path = flag or positional
    if path is None and required:
        raise SystemExit(f"signoff {args.command}: give the config file with --config FILE")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signoff", description="An MCP gateway with human approval.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (to stderr)")
    parser.add_argument(
        "--log-format", choices=FORMATS, default="text", help="json: one JSON object per line (log shippers)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway")
    _add_config(p)
    p.add_argument("--stdio", action="store_true", help="serve one MCP client on stdin/stdout")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", help="validate a config and print the decision for every upstream tool")
    _add_config(p)
    p.add_argument("--as", dest="identity", help="evaluate for this configured identity")
    p.add_argument("--strict", action="store_true", help="exit 1 when a policy names a tool no upstream has")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "tools",
        help="list upstream tools with their risk class; diff / accept changed tool definitions",
        description="`signoff tools [list] --config F` lists the upstreams' tools. A tool whose upstream "
        "changed its definition since signoff pinned it is held back: `signoff tools diff --config F` shows "
        "the changes, `signoff tools accept TOOL --config F` pins the new definition.",
    )
    p.add_argument("words", nargs="*", metavar="[list | diff | accept TOOL]", help=argparse.SUPPRESS)
    p.add_argument("--config", "-c", dest="config", help="the YAML (or JSON) config file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tools, config_required=True)

    p = sub.add_parser("init", help="write a starting policy from the upstreams' tools")
    _add_config(p)
    p.add_argument("-o", "--output", default="policy.yaml", help="file to write, or - for stdout")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("audit", help="print or export the audit log")
    _add_config(p, required=False)
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

    p = sub.add_parser(
        "approvals",
        help="list, show or decide approval requests on a running gateway",
        description=f"Decisions are made as the person whose own token is in {APPROVER_TOKEN_ENV}.",
    )
    p.add_argument("action", choices=["list", "show", "approve", "deny"])
    p.add_argument("id", nargs="?")
    p.add_argument("--config", "-c", dest="config", required=True, help="the gateway's config file")
    p.add_argument("--as", dest="user", help=argparse.SUPPRESS)  # gone; refused with an explanation
    p.add_argument("--reason")
    p.add_argument(
        "--confirm-changed",
        action="store_true",
        help="approve even though the target's live state changed since the request was shown",
    )
    p.add_argument("--status", default="pending", help="list: pending (default), all, approved, denied, …")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--for",
        dest="grant_for",
        metavar="DURATION",
        help="approve: also let the same calls run without asking for this long (one the rule offers)",
    )
    p.add_argument(
        "--arguments",
        metavar="FILE",
        help="approve: run the call with these arguments instead (a JSON object; - reads stdin)",
    )
    p.set_defaults(func=cmd_approvals)

    p = sub.add_parser(
        "grants",
        help="list or revoke approvals for a while on a running gateway",
        description=f"As the person whose own token is in {APPROVER_TOKEN_ENV}.",
    )
    p.add_argument("action", choices=["list", "revoke"])
    p.add_argument("id", nargs="?")
    p.add_argument("--config", "-c", dest="config", required=True, help="the gateway's config file")
    p.add_argument("--all", action="store_true", help="list: ended and revoked grants too")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_grants)

    p = sub.add_parser("token", help="make a new token and print the token_sha256 line for the config")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("demo", help="run the demo: a gateway, the demo jobs server and a scripted agent")
    demo_arguments(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `signoff` console script."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.log_format)
    quiet = ("check", "tools", "init", "audit", "approvals", "grants", "demo")
    if args.command in quiet and not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
