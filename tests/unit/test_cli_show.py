"""`signoff approvals show`: the request's live state and history as the CLI prints them."""

from __future__ import annotations

from proxy.cli import _show


def test_show_prints_the_state_what_changed_and_the_history() -> None:
    request = {
        "id": "apr_1",
        "status": "pending",
        "tool": "cancel-job",
        "risk": "destructive",
        "identity": "agent",
        "rule": "on-call approves cancels",
        "quorum": 1,
        "secondsLeft": 60,
        "expiresAt": "2026-01-01T00:00:00+00:00",
        "argumentsHash": "0" * 64,
        "arguments": {"job_id": "job-7f3a"},
        "context": {
            "summary": "job-7f3a: status COMPLETED\u202e",
            "changed": "status COMPLETED (was IN_PROGRESS)",
        },
        "history": [
            {
                "status": "denied",
                "decidedBy": "bob",
                "decidedAt": "2026-01-01T10:00:00+00:00",
                "reason": "no",
            },
            {
                "status": "approved",
                "decidedBy": "alice",
                "decidedAt": "2026-01-01T09:00:00+00:00",
                "outcome": "ok",
            },
            {"status": "expired", "decidedBy": "(timeout)", "decidedAt": None},
        ],
    }
    text = _show(request)
    assert "  state      job-7f3a: status COMPLETED\\u202e" in text  # invisible characters made visible
    assert "  CHANGED    since the request was shown: status COMPLETED (was IN_PROGRESS)" in text
    assert "  history    2026-01-01 10:00 denied by bob: no" in text
    assert "             2026-01-01 09:00 approved by alice, ran ok" in text
    assert "             - expired\n" in text
