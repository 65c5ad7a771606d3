"""The command line against real upstreams and a running gateway."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from mcp import Client

from tests.conftest import ADMIN_TOKEN, PEOPLE, Admin, executions, gateway_config, person_token, stdio_echo
from tests.procs import ROOT, SIGNOFF, running_gateway, write_config
from tests.test_approvals import APPROVERS, HOLD, call_held, policy


def signoff(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SIGNOFF, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_tools_lists_risk_classes_from_annotations_and_names(tmp_path: Path, exec_log: Path) -> None:
    path = write_config({"upstreams": {"echo": stdio_echo(exec_log)}}, tmp_path / "c.yaml")
    out = signoff("tools", str(path), "--json")
    assert out.returncode == 0, out.stderr
    tools = {t["tool"]: t for t in json.loads(out.stdout)}
    assert tools["echo"]["risk"] == "read" and tools["echo"]["annotated"]  # readOnlyHint
    assert tools["delete_thing"]["risk"] == "destructive"  # destructiveHint
    assert tools["crash"]["risk"] == "destructive"  # no annotation: from the description ("Kill …")
    table = signoff("tools", str(path)).stdout
    assert table.splitlines()[0].split() == ["TOOL", "RISK", "ANNOTATED", "DESCRIPTION"]


def test_check_prints_the_effective_decision_per_tool(tmp_path: Path, exec_log: Path) -> None:
    cfg = {
        "upstreams": {"echo": stdio_echo(exec_log)},
        "people": PEOPLE,
        "approvers": APPROVERS,
        "policy": {
            "default": "deny",
            "hide": ["crash"],
            "rules": [
                HOLD,
                {
                    "name": "reads",
                    "tools": "echo",
                    "action": "allow",
                    "rate_limit": {"max": 5, "window": "1m", "per": "identity"},
                },
            ],
        },
    }
    out = signoff("check", str(write_config(cfg, tmp_path / "c.yaml")))
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[3:]}
    assert "allow; rate limit 5/60s per identity" in rows["echo"]
    assert "require_approval (by oncall, 20s, hold)" in rows["delete_thing"]
    assert "hidden" in rows["crash"] and "(default)" in rows["weather"] and " deny " in rows["weather"]
    assert executions(exec_log) == []  # check never calls a tool


def test_check_refuses_an_invalid_policy_with_every_error(tmp_path: Path, exec_log: Path) -> None:
    cfg = {
        "upstreams": {"echo": stdio_echo(exec_log)},
        "policy": {
            "default": "maybe",
            "rules": [
                {"tools": "x", "action": "allow", "when": [{"path": "a", "op": "gt", "value": "ten"}]},
                {"tools": "y", "action": "require_approval", "approval": {"approvers": "nobody"}},
            ],
        },
    }
    out = signoff("check", str(write_config(cfg, tmp_path / "c.yaml")))
    assert out.returncode == 2
    assert "policy: default:" in out.stderr and "policy: rules.0.when.0.value" in out.stderr
    cfg["policy"] = {
        "default": "allow",
        "rules": [{"tools": "y", "action": "require_approval", "approval": {"approvers": "nobody"}}],
    }
    out = signoff("check", str(write_config(cfg, tmp_path / "c2.yaml")))
    assert out.returncode == 2 and "approver group 'nobody', which is not defined" in out.stderr


def test_init_writes_a_starting_policy_that_loads(tmp_path: Path, exec_log: Path) -> None:
    path = write_config({"upstreams": {"echo": stdio_echo(exec_log)}}, tmp_path / "c.yaml")
    target = tmp_path / "policy.yaml"
    out = signoff("init", str(path), "-o", str(target))
    assert out.returncode == 0, out.stderr
    written = yaml.safe_load(target.read_text())
    rules = {r["name"]: r for r in written["rules"]}
    assert "delete_thing" in rules["destructive tools need on-call approval"]["tools"]
    assert rules["reads are allowed"]["tools"] == ["echo"]
    assert rules["writes are rate-limited"]["rate_limit"]["max"] > 0
    assert signoff("init", str(path), "-o", str(target)).returncode == 1  # no silent overwrite
    cfg = yaml.safe_load(path.read_text()) | {
        "policy": str(target),
        "approvers": {"oncall": {"users": ["a"]}},
    }
    assert signoff("check", str(write_config(cfg, tmp_path / "with-policy.yaml"))).returncode == 0


def signoff_as(person: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI run by `person` (their own token in SIGNOFF_APPROVER_TOKEN), or by nobody in particular."""
    env = {k: v for k, v in os.environ.items() if k != "SIGNOFF_APPROVER_TOKEN"}
    if person is not None:
        env["SIGNOFF_APPROVER_TOKEN"] = person_token(person)
    return subprocess.run([*SIGNOFF, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)


async def test_approvals_cli_shows_and_decides_as_the_person_whose_token_it_has(
    tmp_path: Path, exec_log: Path
) -> None:
    # Two minutes to decide: each CLI run below is a new Python process, slow on a busy machine.
    patient = {**HOLD, "approval": {"approvers": "oncall", "timeout": "2m"}}
    with running_gateway(gateway_config(exec_log, policy(patient), approvers=APPROVERS), tmp_path) as gw:
        conf = str(gw.config_path)
        async with Client(gw.mcp_url, mode="legacy") as client:
            task = asyncio.create_task(call_held(client, "via-cli"))
            [pending] = await Admin(gw.control_url).pending()
            listed = await asyncio.to_thread(signoff, "approvals", "list", "--config", conf)
            assert pending["id"] in listed.stdout and "delete_thing" in listed.stdout
            shown = await asyncio.to_thread(signoff, "approvals", "show", pending["id"], "--config", conf)
            assert shown.returncode == 0, shown.stderr
            assert '"name": "via-cli"' in shown.stdout and pending["argumentsHash"] in shown.stdout
            # Nobody's token: the admin token views but cannot decide, and the CLI says how to get one.
            anonymous = await asyncio.to_thread(
                signoff_as, None, "approvals", "approve", pending["id"], "-c", conf
            )
            assert anonymous.returncode != 0 and "SIGNOFF_APPROVER_TOKEN" in anonymous.stderr
            gone = await asyncio.to_thread(
                signoff_as, "alice", "approvals", "approve", pending["id"], "-c", conf, "--as", "bob"
            )
            assert gone.returncode == 2 and "--as is gone" in gone.stderr
            denied = await asyncio.to_thread(
                signoff_as, "alice", "approvals", "deny", pending["id"], "-c", conf
            )
            assert denied.returncode == 2 and "--reason" in denied.stderr
            assert (await Admin(gw.control_url).get(pending["id"]))["status"] == "pending"
            assert executions(exec_log, "delete_thing") == []
            ok = await asyncio.to_thread(
                signoff_as, "alice", "approvals", "approve", pending["id"], "-c", conf
            )
            assert ok.returncode == 0 and ok.stdout.strip() == "Approved. (as alice)"
            result, _ = await asyncio.wait_for(task, 10)
            assert result.content[0].text == "deleted via-cli"
            again = await asyncio.to_thread(
                signoff_as, "bob", "approvals", "approve", pending["id"], "-c", conf
            )
            assert again.returncode == 1 and "Already approved by alice" in again.stdout


async def test_generated_admin_token_is_kept_for_the_cli_and_never_logged(
    tmp_path: Path, exec_log: Path
) -> None:
    cfg: dict[str, Any] = gateway_config(exec_log, policy(HOLD), approvers=APPROVERS)
    del cfg["control"]["admin_token"]
    with running_gateway(cfg, tmp_path, own_process=True) as gw:  # nothing of the token on its stderr
        token_file = tmp_path / "gateway.db.admin-token"
        token = token_file.read_text().strip()
        assert "approvals page: http://" in gw.output() and token not in gw.output()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "gateway.db").stat().st_mode) == 0o600
        listed = await asyncio.to_thread(signoff, "approvals", "list", "--config", str(gw.config_path))
        assert listed.returncode == 0, listed.stderr
        wrong = Admin(gw.control_url, token=ADMIN_TOKEN)  # the configured-in-tests token is not valid here
        import httpx2

        async with httpx2.AsyncClient(headers=wrong.headers) as http:
            assert (await http.get(gw.control_url + "/api/approvals")).status_code == 401


async def test_secret_files_are_made_owner_only_whatever_existed_before(
    tmp_path: Path, exec_log: Path
) -> None:
    cfg: dict[str, Any] = gateway_config(exec_log, policy(HOLD), approvers=APPROVERS)
    del cfg["control"]["admin_token"]
    token_file, db = tmp_path / "gateway.db.admin-token", tmp_path / "gateway.db"
    token_file.write_text("kept-from-before\n")
    db.touch()
    for path in (token_file, db):
        os.chmod(path, 0o666)
    with running_gateway(cfg, tmp_path):
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
        assert token_file.read_text().strip() == "kept-from-before"  # shared, never overwritten


def test_check_warns_of_a_rule_that_matches_no_tool_and_strict_fails(tmp_path: Path, exec_log: Path) -> None:
    cfg = {
        "upstreams": {"echo": stdio_echo(exec_log)},
        "people": PEOPLE,
        "approvers": APPROVERS,
        "policy": {"default": "allow", "rules": [{**HOLD, "tools": "delete_things"}]},  # a typo
    }
    path = str(write_config(cfg, tmp_path / "typo.yaml"))
    out = signoff("check", "--config", path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("config OK with 1 warning(s)")
    assert (
        "names 'delete_things', which matches no upstream tool (did you mean 'delete_thing'?)" in out.stderr
    )
    strict = signoff("check", "--config", path, "--strict")
    assert strict.returncode == 1 and "delete_things" in strict.stderr


def test_check_and_tools_fail_fast_with_a_broken_upstreams_own_error(tmp_path: Path) -> None:
    broken = {
        "command": sys.executable,
        "args": ["-c", "import sys; sys.exit('RUNPOD_API_KEY environment variable is required')"],
        # Far longer than a start takes even on a loaded machine: giving up at the first failure is
        # what ends the command, not waiting out this timeout (the old behaviour).
        "connect_timeout": "100s",
    }
    path = str(write_config({"upstreams": {"runpod": broken}}, tmp_path / "broken.yaml"))
    for command in ("check", "tools"):
        started = time.monotonic()
        out = signoff(command, "--config", path, timeout=110)
        assert time.monotonic() - started < 50, command
        assert out.returncode == 1, (command, out.stdout, out.stderr)
        assert "RUNPOD_API_KEY environment variable is required" in out.stderr  # the upstream's own words
        assert "config OK" not in out.stdout and "reconnecting" not in out.stderr


def test_every_subcommand_takes_config_and_a_positional_file_still_works(
    tmp_path: Path, exec_log: Path
) -> None:
    path = str(write_config({"upstreams": {"echo": stdio_echo(exec_log)}}, tmp_path / "c.yaml"))
    assert signoff("tools", "--config", path, "--json").returncode == 0
    assert signoff("tools", path, "--json").returncode == 0
    assert signoff("audit", "--config", path).returncode == 0
    assert signoff("init", "--config", path, "-o", "-").returncode == 0
    both = signoff("tools", path, "--config", str(tmp_path / "other.yaml"))
    assert both.returncode != 0 and "two config files" in both.stderr
    none = signoff("audit")
    assert none.returncode == 2 and "--config FILE or --database URL" in none.stderr
