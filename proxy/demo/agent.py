"""A short scripted "agent" that talks to the jobs server through signoff, as any MCP client would.

It lists the tools, reads the jobs (allowed), tries to delete an endpoint (denied by the policy),
cancels a running job (held until a human approves or the request expires), then prints the audit
records of its calls from the gateway's control API.

`signoff demo` (and `make demo`) runs it through proxy/demo/run.py. Against a gateway you started yourself:

    python -m proxy.demo.agent --mcp-url http://127.0.0.1:8765/mcp \
        --control-url http://127.0.0.1:8766 --token <admin token>
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.request
from datetime import UTC, datetime
from typing import Any

import mcp_types as types
from mcp import Client

from proxy.demo.console import Progress, cut, say, step, table
from proxy.risk import classify

META = "dev.signoff/decision"  # where signoff explains a refusal in a tool result's _meta
ENDPOINT, JOB = "sdxl-4k7q2m", "job-7f3a"  # the job the agent cancels; see jobs_server.py


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def refusal_of(result: types.CallToolResult) -> dict[str, Any] | None:
    """signoff's machine-readable refusal, or None when the result came from the jobs server itself."""
    info = (result.meta or {}).get(META)
    return info if isinstance(info, dict) else None


def parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


async def list_tools(client: Client) -> None:
    step(1, "The agent asks which tools it has")
    tools = (await client.list_tools()).tools
    rows = [["tool", "risk class", "what it does"]]
    for tool in tools:
        annotations = tool.annotations.model_dump(exclude_none=True) if tool.annotations else None
        risk = classify(tool.name, tool.description, annotations)
        args = ", ".join((tool.input_schema or {}).get("properties", {}))
        first_sentence = (tool.description or "").split(". ")[0].split(", ")[0].rstrip(".")
        rows.append([f"{tool.name}({args})", risk, cut(first_sentence, 40)])
    table(rows)
    if not any(t.annotations for t in tools):
        say("     The jobs server declares no MCP annotations (neither does RunPod's),")
        say("     so the risk class is signoff's reading of the tool names.")


async def read_jobs(client: Client) -> None:
    step(2, "list-jobs: the agent reads the jobs (a read)")
    result = await client.call_tool("list-jobs", {})
    if result.is_error:
        report_refusal(result)
        return
    jobs = (parse_json(text_of(result)) or {}).get("jobs", [])
    say(f"     -> ALLOWED: the call ran. {len(jobs)} jobs:")
    rows = [["job", "endpoint", "status", "input"]]
    rows += [[j["id"], j["endpoint_id"], j["status"], cut(j["input"].get("prompt"), 34)] for j in jobs]
    table(rows, indent="        ")


async def delete_endpoint(client: Client) -> None:
    step(3, f"delete-endpoint {ENDPOINT}: the agent tries to delete an endpoint")
    result = await client.call_tool("delete-endpoint", {"endpoint_id": ENDPOINT})
    if refusal_of(result) is None:
        say(f"     -> it ran (check the demo's policy.yaml): {cut(text_of(result), 80)}")
        return
    report_refusal(result)


def report_refusal(result: types.CallToolResult) -> None:
    info = refusal_of(result) or {}
    reason = info.get("reason", "tool error")
    say(f"     -> {reason.upper()} by signoff; nothing reached the jobs server.")
    rule = f", rule: {info['rule']}" if info.get("rule") else ""
    say(f"        machine-readable reason (result._meta): {reason}{rule}")
    say(f"        what the agent reads: {text_of(result)}")


async def cancel_job(client: Client) -> str:
    step(4, f"cancel-job {JOB}: the agent cancels a running job (destructive)")
    say("     The call is sent; signoff holds it until a human decides.")
    progress = Progress()
    started = time.monotonic()
    result = await client.call_tool(
        "cancel-job", {"endpoint_id": ENDPOINT, "job_id": JOB}, progress_callback=progress
    )
    progress.done()
    waited = time.monotonic() - started
    info = refusal_of(result)
    if info is None and not result.is_error:
        data = parse_json(text_of(result)) or {}
        job, status = data.get("id", JOB), data.get("status", "?")
        say(f"     -> APPROVED after {waited:.1f}s and run: {job} is {status}.")
        outcome = "approved"
    elif info is None:
        say(f"     -> approved, but the jobs server failed: {text_of(result)}")
        outcome = "tool_error"
    else:
        outcome = info.get("reason", "refused")
        if outcome == "expired":
            say(f"     -> EXPIRED after {waited:.1f}s: nobody decided in time, so signoff denied the call.")
        elif outcome == "denied":
            who = info.get("decidedBy") or "a human"
            say(f"     -> DENIED by {who}: {info.get('humanReason') or '(no reason given)'}")
        else:
            say(f"     -> {outcome.upper()}")
        say(f"        what the agent reads: {text_of(result)}")

    check = await client.call_tool("get-job", {"job_id": JOB})
    status = (parse_json(text_of(check)) or {}).get("status", "?")
    say(f"     get-job {JOB} -> status {status}")
    return outcome


def fetch_audit(control_url: str, token: str, limit: int = 50) -> list[dict[str, Any]]:
    request = urllib.request.Request(
        f"{control_url}/api/audit?limit={limit}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)["records"]


async def show_audit(control_url: str, token: str, since: datetime, calls: int) -> None:
    step(5, "The audit log: one record per call (GET /api/audit on the control port)")
    records: list[dict[str, Any]] = []
    probes: list[dict[str, Any]] = []
    deadline = time.monotonic() + 5  # records are written in batches; give the last one a moment
    while time.monotonic() < deadline:
        found = [
            r
            for r in await asyncio.to_thread(fetch_audit, control_url, token)
            if datetime.fromisoformat(r["at"]) >= since
        ]
        # signoff's own reads of the job's state for the approvers are audited too, as "(signoff)".
        records = [r for r in found if r["decision"] != "context_probe"]
        probes = [r for r in found if r["decision"] == "context_probe"]
        if len(records) >= calls:
            break
        await asyncio.sleep(0.2)
    if not records:
        say("     (no records yet)")
        return
    rows = [["time", "tool", "decision", "outcome", "by", "rule"]]
    for r in records:
        when = datetime.fromisoformat(r["at"]).astimezone().strftime("%H:%M:%S")
        rows.append([when, r["tool"], r["decision"], r["outcome"], r["approvers"] or "-", cut(r["rule"], 36)])
    table(rows)
    for r in probes:
        when = datetime.fromisoformat(r["at"]).astimezone().strftime("%H:%M:%S")
        say(
            f"     and signoff's own read of the job for the approvers: {r['tool']} at {when} "
            f"(context_probe, {r['outcome']})"
        )


async def run_agent(mcp_url: str, control_url: str | None = None, token: str | None = None) -> str:
    """Play the script; returns how the cancel ended (approved / denied / expired / …)."""
    since = datetime.now(UTC)
    info = types.Implementation(name="demo-agent", version="1.0.0")
    async with Client(mcp_url, mode="legacy", client_info=info) as client:
        await list_tools(client)
        await read_jobs(client)
        await delete_endpoint(client)
        outcome = await cancel_job(client)
    if control_url and token:
        await show_audit(control_url, token, since, calls=4)
    else:
        say()
        say("(no --control-url/--token: skipping the audit log)")
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description="The signoff demo's scripted agent.")
    parser.add_argument("--mcp-url", default="http://127.0.0.1:8765/mcp", help="the gateway's MCP endpoint")
    parser.add_argument("--control-url", default="http://127.0.0.1:8766", help="the gateway's control port")
    parser.add_argument("--token", help="the gateway's admin token (for the audit log)")
    args = parser.parse_args()
    asyncio.run(run_agent(args.mcp_url, args.control_url, args.token))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
