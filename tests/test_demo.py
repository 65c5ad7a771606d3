"""`make demo` end to end: `signoff demo` as a real process (gateway, jobs server, scripted agent)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.procs import ROOT, SIGNOFF

DENY_REASON = "Deleting an endpoint destroys its workers; do it in the console."


def run_demo(tmp_path: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}  # never post to Slack
    proc = subprocess.run(
        [*SIGNOFF, "demo", "--any-ports", "--state-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    out = proc.stdout
    log = tmp_path / "gateway.log"
    context = f"--- stdout ---\n{out}\n--- stderr ---\n{proc.stderr}\n--- gateway log ---\n" + (
        log.read_text() if log.exists() else "(none)"
    )
    assert proc.returncode == 0, context
    assert "Gateway stopped (exit status 0)" in out, context
    pid = int(re.search(r"\(pid (\d+)\)", out).group(1))
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    return out


def section(out: str, n: int, total: int = 5) -> str:
    """The text of step n/total (up to the next step)."""
    start = out.index(f"\n{n}/{total} ")
    end = out.find(f"\n{n + 1}/{total} ", start)
    return out[start : end if end != -1 else len(out)]


def audit_rows(out: str) -> dict[str, list[str]]:
    """The audit table of step 5: tool -> [decision, outcome, by] (one row per call)."""
    rows: dict[str, list[str]] = {}
    for line in section(out, 5).splitlines():
        cells = line.split()
        if len(cells) >= 5 and re.fullmatch(r"\d\d:\d\d:\d\d", cells[0]):
            assert cells[1] not in rows, f"two audit records for {cells[1]}:\n{out}"
            rows[cells[1]] = cells[2:5]
    return rows


def check_common_steps(out: str) -> None:
    # The banner gives each on-call person their own sign-in link, and the generated config's path.
    assert re.search(r"alice\s+http://127\.0\.0\.1:\d+/approvals#signin=\S+", out)
    assert re.search(r"bob\s+http://127\.0\.0\.1:\d+/approvals#signin=\S+", out)
    assert "signoff approvals list --config " in out

    tools = section(out, 1)
    for name, risk in [
        ("list-jobs(endpoint_id)", "read"),
        ("get-job(job_id)", "read"),
        ("cancel-job(endpoint_id, job_id)", "destructive"),
        ("delete-endpoint(endpoint_id)", "destructive"),
    ]:
        assert re.search(rf"{re.escape(name)}\s+{risk}\s", tools), tools

    reads = section(out, 2)
    assert "ALLOWED" in reads
    assert re.search(r"job-7f3a\s+sdxl-4k7q2m\s+IN_PROGRESS", reads), reads

    delete = section(out, 3)
    assert "DENIED by signoff" in delete
    assert "machine-readable reason (result._meta): denied" in delete
    assert DENY_REASON in delete


def test_demo_unattended_approval(tmp_path: Path) -> None:
    # The approver waits 4 s, the gateway reports progress every 1 s: under a loaded CI machine a
    # 1 s margin was not always enough for the first progress line to print before the click.
    out = run_demo(tmp_path, "--auto-approve", "4")
    check_common_steps(out)

    cancel = section(out, 4)
    assert "waiting for approval on the approvals page" in cancel  # held: progress while it waited
    assert re.search(r"\[auto-approve\] alice approved cancel-job \(apr_\w+\): Approved\.", cancel)
    assert "APPROVED after" in cancel and "job-7f3a is CANCELLED" in cancel
    assert "get-job job-7f3a -> status CANCELLED" in cancel  # the jobs server really cancelled it
    # Held until the approval: the outcome comes after the approver's click.
    assert cancel.index("waiting for approval") < cancel.index("[auto-approve]") < cancel.index("APPROVED")

    assert audit_rows(out) == {
        "list-jobs": ["allow", "ok", "-"],
        "delete-endpoint": ["deny", "denied", "-"],
        "cancel-job": ["require_approval", "ok", "alice"],
        "get-job": ["allow", "ok", "-"],
    }
    assert "the cancel was approved by a human and ran" in out
    assert re.search(r"approval apr_\w+: approved \(alice\)", (tmp_path / "gateway.log").read_text())


def test_demo_nobody_approves_and_the_request_expires(tmp_path: Path) -> None:
    out = run_demo(tmp_path, "--timeout", "2s")
    check_common_steps(out)
    assert "Nobody decides within 2s: the call is denied." in out

    cancel = section(out, 4)
    assert "[auto-approve]" not in cancel
    assert "EXPIRED after" in cancel
    assert "Nobody approved this call before the request expired, so it was denied. It did not run." in cancel
    assert "get-job job-7f3a -> status IN_PROGRESS" in cancel  # nothing ran

    assert audit_rows(out) == {
        "list-jobs": ["allow", "ok", "-"],
        "delete-endpoint": ["deny", "denied", "-"],
        "cancel-job": ["require_approval", "expired", "(timeout)"],
        "get-job": ["allow", "ok", "-"],
    }
    assert "nobody decided in time, so the cancel was denied and did not run" in out
