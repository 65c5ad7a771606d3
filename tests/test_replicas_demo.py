"""`signoff demo --replicas 2` end to end: PostgreSQL, two gateway processes, the scripted agent."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.procs import ROOT, SIGNOFF
from tests.test_demo import section

pytestmark = pytest.mark.postgres


def run_replicas_demo(tmp_path: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}  # never post to Slack
    proc = subprocess.run(
        [*SIGNOFF, "demo", "--replicas", "2", "--any-ports", "--state-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=90,
    )
    logs = "".join(f"--- {p.name} ---\n{p.read_text()}" for p in sorted(tmp_path.glob("gateway-*.log")))
    context = f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}\n{logs}"
    assert proc.returncode == 0, context
    return proc.stdout


def audit_rows(out: str) -> list[list[str]]:
    """Step 3's table: [replica, tool, decision, outcome, by] per call, oldest first."""
    return [
        cells[1:6]
        for cells in (line.split() for line in section(out, 3, 3).splitlines())
        if len(cells) >= 6 and re.fullmatch(r"\d\d:\d\d:\d\d", cells[0])
    ]


@pytest.mark.timeout(150)
def test_a_call_held_on_one_replica_is_approved_through_the_other_and_the_limit_is_shared(
    tmp_path: Path,
) -> None:
    out = run_replicas_demo(tmp_path, "--auto-approve", "2")
    assert re.search(r"Gateways ready in [\d.]+s \(a pid \d+, b pid \d+\)", out), out

    held = section(out, 1, 3)
    seen = held.index("replica b lists it: cancel-job (apr_")  # b sees what a holds: one database
    clicked = held.index("] alice approved cancel-job")
    assert re.search(
        r"\[auto-approve\] alice approved cancel-job \(apr_\w+\) through replica b: Approved\.", held
    )
    ran = held.index("APPROVED after")
    assert seen < clicked < ran, held
    assert "replica a ran it: job-7f3a is CANCELLED." in held

    limit = section(out, 2, 3)
    verdicts = re.findall(r"replica ([ab]): get-job -> (\w+)", limit)
    assert verdicts == [
        ("a", "ALLOWED"),
        ("b", "ALLOWED"),
        ("a", "ALLOWED"),
        ("b", "RATE_LIMITED"),
        ("a", "RATE_LIMITED"),
    ], limit

    rows = audit_rows(out)
    assert ["a", "cancel-job", "require_approval", "ok", "alice"] in rows, out
    # The job's live state was read by a before posting the request and by b again at the click.
    assert sorted(r[0] for r in rows if r[2] == "context_probe") == ["a", "b"], out
    get_jobs = [(r[0], r[3]) for r in rows if r[1] == "get-job" and r[2] != "context_probe"]
    assert sorted(get_jobs) == sorted(
        [("a", "ok"), ("b", "ok"), ("a", "ok"), ("b", "rate_limited"), ("a", "rate_limited")]
    ), out

    assert "Gateways stopped (exit status a: 0, b: 0)" in out
    assert "PostgreSQL stopped and its files removed." in out
    # The approval was decided on b's control port and ran on a: the gateways' own logs say so.
    assert re.search(r"approval apr_\w+: approved \(alice\)", (tmp_path / "gateway-b.log").read_text())
