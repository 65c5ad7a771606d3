"""Secret redaction: by key name and by value shape, without touching ordinary values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.redact import REDACTED, is_secret_key, redact, redact_text


def test_secret_keys_are_redacted_at_any_depth() -> None:
    args = {
        "name": "db1",
        "password": "hunter2",
        "nested": {"api_key": "k", "list": [{"Authorization": "x"}]},
        "client_secret": "s",
        "SESSION_ID": "abc",
        "max_tokens": 512,
        "token_count": 3,
    }
    assert redact(args) == {
        "name": "db1",
        "password": REDACTED,
        "nested": {"api_key": REDACTED, "list": [{"Authorization": REDACTED}]},
        "client_secret": REDACTED,
        "SESSION_ID": REDACTED,
        "max_tokens": 512,
        "token_count": 3,
    }
    assert args["password"] == "hunter2"  # never mutates


def test_empty_secret_values_stay_visible() -> None:
    assert redact({"password": "", "token": None}) == {"password": "", "token": None}


def test_secret_shaped_values_are_redacted_inside_text() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
    cases = {
        f"token is {jwt} ok": f"token is {REDACTED} ok",
        "Authorization: Bearer abcdefghijklmnopqrstuvwx": f"Authorization: {REDACTED}",
        "slack xoxb-1234567890-abcdefghij": f"slack {REDACTED}",
        "key AKIAIOSFODNN7EXAMPLE here": f"key {REDACTED} here",
        "gh ghp_abcdefghijklmnopqrstuvwxyz0123456789": f"gh {REDACTED}",
        "connect postgres://admin:s3cr3t@db:5432/x": f"connect postgres://admin:{REDACTED}@db:5432/x",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----": REDACTED,
    }
    for text, expected in cases.items():
        assert redact_text(text) == expected


def test_ordinary_values_are_untouched() -> None:
    args = {
        "job_id": "job-456",
        "endpoint_id": "ep-123",
        "query": "SELECT * FROM t WHERE a = 'b'",
        "url": "https://example.com/a?b=c",
        "n": 3,
        "flag": True,
        "items": [1, 2.5, None],
    }
    assert redact(args) == args
    assert not is_secret_key("endpoint_id") and is_secret_key("apiKey") and is_secret_key("x-api-key")


def test_long_strings_are_cut_when_asked() -> None:
    out = redact({"blob": "a" * 10_000}, max_text=100)
    assert out["blob"].startswith("a" * 100) and out["blob"].endswith("…[9900 more characters]")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=30,
)


@given(json_values)
def test_redact_never_raises_and_keeps_the_shape(value: object) -> None:
    out = redact(value)
    assert type(out) is type(value) or (isinstance(value, tuple) and isinstance(out, list))


def test_pathologically_deep_values_do_not_recurse_forever() -> None:
    deep: dict = {}
    cur = deep
    for _ in range(500):
        cur["x"] = {}
        cur = cur["x"]
    out = redact(deep)
    depth = 0
    while isinstance(out, dict):
        out = out["x"]
        depth += 1
    assert out == "[TOO DEEP]" and depth <= 66


@pytest.mark.timeout(20)
def test_long_adversarial_strings_are_redacted_in_linear_time() -> None:
    # These once backtracked quadratically: a 100 KB argument blocked the gateway for over a minute.
    for text in (
        "x" * 200_000,
        "http://" + "u" * 200_000,
        "scheme://user:" + "p" * 200_000,
        "eyJ" + "a" * 200_000,
    ):
        assert redact_text(text) == text
