"""What the approver sees is what runs: every byte is shown, secrets masked exactly where they stand.

A real gateway holds a call whose arguments hide a payload behind a private-key header and carry
secrets of many shapes. The approvals API (the page's view) and `signoff approvals show` must show
the payload and the text around every secret; the audit must not hold the secrets; the upstream
must receive the exact arguments whose hash the approver saw.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
from pathlib import Path

import orjson
from mcp import Client

from tests.conftest import Admin, executions, gateway_config
from tests.procs import ROOT, SIGNOFF, running_gateway
from tests.test_approvals import APPROVERS

PAYLOAD = "SELECT count(*) FROM users; -- -----BEGIN PRIVATE KEY-----\nDROP TABLE users; DROP TABLE invoices;"
# (text before the secret, the secret, text after it, the kind the approver is told)
SECRETS = [
    ("aws_secret_access_key = ", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", " (end)", "aws-secret-key"),
    ("temporary key ", "ASIAIOSFODNN7EXAMPLE", " (end)", "aws-access-key"),
    ("gitlab ", "glpat-abcdefghij0123456789", " (end)", "gitlab-token"),
    ("maps ", "AIzaSyA1234567890abcdefghijklmnopqrstuv", " (end)", "google-api-key"),
    ("publish with ", "npm_abcdefghijklmnopqrstuvwxyz0123456789", " (end)", "npm-token"),
    ("cache at redis://:", "hunter2hunter2", "@cache:6379/0 (end)", "password"),
    ("mysql -u root -p", "s3cretPassw0rd", " -e 'select 1' (end)", "password"),
    ("then password=", "correcthorsebattery", " (end)", "password"),
]
TEXT = PAYLOAD + "\n" + "\n".join(f"{before}{secret}{after}" for before, secret, after, _ in SECRETS)
HOLD_ECHO = {
    "name": "echo needs approval",
    "tools": "echo",
    "action": "require_approval",
    "approval": {"approvers": "oncall", "timeout": "30s"},
}


def assert_shown_to_the_approver(shown: str) -> None:
    assert "DROP TABLE users; DROP TABLE invoices;" in shown  # the payload is not swallowed
    for before, secret, after, kind in SECRETS:
        assert f"{before}\u2039{kind}, {len(secret)} chars\u203a{after}" in shown, (kind, shown)
        assert secret not in shown


async def test_the_approver_sees_every_byte_and_the_audit_keeps_no_secret(
    tmp_path: Path, exec_log: Path
) -> None:
    config = gateway_config(exec_log, {"default": "allow", "rules": [HOLD_ECHO]}, approvers=APPROVERS)
    with running_gateway(config, tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            call = asyncio.create_task(client.call_tool("echo", {"text": TEXT}))
            [pending] = await admin.pending()
            assert_shown_to_the_approver(pending["arguments"]["text"])
            exact = hashlib.sha256(orjson.dumps({"text": TEXT}, option=orjson.OPT_SORT_KEYS)).hexdigest()
            assert pending["argumentsHash"] == exact

            shown = await asyncio.to_thread(
                subprocess.run,
                [*SIGNOFF, "approvals", "show", pending["id"], "--config", str(gw.config_path)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert shown.returncode == 0, shown.stderr
            assert exact in shown.stdout
            assert_shown_to_the_approver(shown.stdout.replace("\\n", "\n"))

            assert (await admin.decide(pending["id"], "approve", "alice"))[0] == 200
            result = await asyncio.wait_for(call, 10)
            assert not result.is_error
        [record] = await admin.audit_for(lambda r: r["tool"] == "echo")
        audited = json.dumps(record["arguments"])
        for _, secret, _, _ in SECRETS:
            assert secret not in audited
    # What ran is byte for byte what was approved, secrets included.
    assert [e["args"] for e in executions(exec_log, "echo")] == [{"text": TEXT}]
