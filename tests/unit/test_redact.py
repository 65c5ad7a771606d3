"""Secret redaction: by key name and by value shape, without touching ordinary values.

Two masks over one detector: `display_mask` (what an approver sees: exactly the secret is replaced
by a labelled mask, every other byte stays) and `redact` (the audit: generous).
"""

from __future__ import annotations

import copy
import math
import time

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from proxy.redact import (
    REDACTED,
    Finding,
    display_mask,
    display_text,
    find_secrets,
    is_secret_key,
    redact,
    redact_text,
)
from proxy.secret_finder import _every_candidate, may_hold_a_secret


def mask(kind: str, secret: str) -> str:
    return f"\u2039{kind}, {len(secret)} chars\u203a"


# -- the strong mode (audit, logs, outcome replies) -----------------------------------------------


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
        # Only the credential is masked now, not the scheme word before it (spans are exact).
        "Authorization: Bearer abcdefghijklmnopqrstuvwx": f"Authorization: Bearer {REDACTED}",
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
    assert display_mask(args) == args
    assert not is_secret_key("endpoint_id") and is_secret_key("apiKey") and is_secret_key("x-api-key")


def test_long_strings_are_cut_when_asked() -> None:
    out = redact({"blob": "a" * 10_000}, max_text=100)
    assert out["blob"].startswith("a" * 100) and out["blob"].endswith("…[9900 more characters]")


def test_a_secret_straddling_the_cut_leaves_no_readable_prefix() -> None:
    token = "ghp_abcdefghijklmnopqrstuvwxyz0123456789"
    blob = "x" * 90 + " " + token + " tail"
    out = redact({"blob": blob}, max_text=100)["blob"]
    assert out == "x" * 90 + " " + REDACTED + f"…[{len(blob) - 100} more characters]"
    assert "ghp_" not in out


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


# -- the approver's view: "what you see is what runs" ---------------------------------------------

SQL_WITH_A_KEY_MARKER = (
    "SELECT count(*) FROM users; -- -----BEGIN PRIVATE KEY-----\nDROP TABLE users; DROP TABLE invoices;"
)


def test_a_private_key_marker_in_a_sql_comment_does_not_hide_the_statements_after_it() -> None:
    args = {"sql": SQL_WITH_A_KEY_MARKER}
    assert display_mask(args) == args
    assert find_secrets(SQL_WITH_A_KEY_MARKER) == []
    # The audit may hide everything after an unterminated key; it must not show key material.
    assert redact(args) == {"sql": f"SELECT count(*) FROM users; -- {REDACTED}"}


def test_a_key_block_whose_body_is_not_base64_lines_is_shown() -> None:
    text = "-----BEGIN PRIVATE KEY-----\nDROP TABLE users;\n-----END PRIVATE KEY-----"
    assert display_text(text) == text
    spaced = "-----BEGIN PRIVATE KEY-----\nDROP TABLE users\n-----END PRIVATE KEY-----"
    assert display_text(spaced) == spaced
    assert "DROP" not in redact_text(text)


JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7v9jK0abc+/x\nQ2NvbW1lbnQ=\n-----END RSA PRIVATE KEY-----"
ENCRYPTED_PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,0123456789ABCDEF\n\n"
    "MIIEowIBAAKCAQEA7v9jK0abc+/x\n-----END RSA PRIVATE KEY-----"
)
OPENSSH = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----"
PGP = (
    "-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\n\nlQOYBFabcdEFGHijklMNOP\nqrstUV+/==\n=ABCD\n"
    "-----END PGP PRIVATE KEY BLOCK-----"
)
ESCAPED_PEM = "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0B\\n-----END PRIVATE KEY-----"

# (text around the secret, the secret, its kind): `{}` marks where the secret goes.
SHAPES = [
    ("key {} here", "AKIAIOSFODNN7EXAMPLE", "aws-access-key"),
    ("temporary key {} here", "ASIAIOSFODNN7EXAMPLE", "aws-access-key"),
    ("aws_secret_access_key = {}\nregion = eu", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws-secret-key"),
    ("gh {} done", "ghp_abcdefghijklmnopqrstuvwxyz0123456789", "github-token"),
    ("gh {} done", "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "github-token"),
    ("gitlab {} done", "glpat-abcdefghij0123456789", "gitlab-token"),
    ("slack {} done", "xoxb-1234567890-abcdefghij", "slack-token"),
    ("rotate {} done", "xoxe-1-abcdefghijklmnopqrstu", "slack-token"),
    ("rotate {} done", "xoxe.xoxp-1-abcdefghijklmnopqrstu", "slack-token"),
    (
        "post to https://hooks.slack.com/services/{} now",
        "T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        "slack-webhook",
    ),
    ("maps key={}&x=1", "AIzaSyA1234567890abcdefghijklmnopqrstuv", "google-api-key"),
    ("//registry.npmjs.org/:_authToken {}", "npm_abcdefghijklmnopqrstuvwxyz0123456789", "npm-token"),
    ("stripe {} done", "sk_live_abcdefghijklmnop0123", "stripe-key"),
    ("openai {} done", "sk-proj-abcdefghijklmnopqrstuvwxyz012345", "openai-key"),
    ("claude {} done", "sk-ant-api03-abcdefghijklmnopqrstuvwxyz", "anthropic-key"),
    ("runpod {} done", "rpa_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123", "runpod-key"),
    ("token is {} ok", JWT, "jwt"),
    ("Authorization: Bearer {}\nAccept: */*", "abcdefghijklmnopqrstuvwx", "bearer-token"),
    ('{{"Authorization": "Basic {}"}}', "dXNlcjpwYXNzd29yZA==", "basic-auth"),
    ("key:\n{}\nnext line", PEM, "private-key"),
    ("key:\n{}\nnext line", ENCRYPTED_PEM, "private-key"),
    ("key: {} end", OPENSSH, "private-key"),
    ('{{"key": "{}"}}', ESCAPED_PEM, "private-key"),
    ("armored:\n{}\nthanks", PGP, "pgp-private-key"),
    ("connect postgres://admin:{}@db:5432/x now", "s3cr3t", "password"),
    ("cache redis://:{}@cache:6379/0", "s3cretpw", "password"),
    ("jdbc:postgresql://h/db?user=u&password={}&ssl=true", "pw1", "password"),
    ("jdbc:sqlserver://h;user=sa;password={};databaseName=x", "pw2", "password"),
    ("Server=db;User Id=sa;Password={};Database=x;", "Hunter2!", "password"),
    ("DRIVER={{SQL Server}};SERVER=db;UID=sa;PWD={};", "Hunter3!", "password"),
    ("mysql -u root -p{} -e 'select 1'", "hunter2", "password"),
    ("mysqldump --password={} db > dump.sql", "hunter2", "password"),
    ("docker login --password {} --username me", "hunter2", "password"),
    ("login failed: password={} rejected", "hunter2hunter2", "password"),
    ("got token: {} from upstream", "abcdef1234567890", "token"),
    ('config {{"password": "{}", "user": "u"}}', "hunter2", "password"),
    ('env: [{{"name": "DB_PASSWORD", "value": "{}"}}]', "s3cr3tval", "password"),
    ("env:\n- name: DB_PASSWORD\n  value: {}\n- name: LOG_LEVEL\n  value: debug", "s3cr3tval", "password"),
    ("client_secret_value: {}\nclient_id: app", "abc123xyz", "secret"),
    ("credentials={} user=me", "c0ffee", "secret"),
    ("export GITHUB_TOKEN={}", "abcdef123456", "token"),
    ("curl -H 'x-api-key: {}' https://api", "k-123456", "api-key"),
]


@pytest.mark.parametrize(("around", "secret", "kind"), SHAPES, ids=[f"{k}:{a[:20]}" for a, _, k in SHAPES])
def test_each_secret_shape_is_masked_exactly(around: str, secret: str, kind: str) -> None:
    text = around.format(secret)
    assert display_text(text) == around.format(mask(kind, secret))
    assert display_mask({"text": text}) == {"text": around.format(mask(kind, secret))}
    start = text.index(secret)
    assert Finding(start, start + len(secret), kind) in find_secrets(text)
    strong = redact_text(text)
    assert secret not in strong and strong == around.format(REDACTED)


# Texts each rule finds something in: every shape in its sentence, and name = value pairs.
FINDABLE = [around.format(secret) for around, secret, _ in SHAPES]


@given(st.sampled_from(FINDABLE), st.integers(0, 300), st.integers(0, 300), st.booleans())
def test_the_quick_check_lets_through_every_text_a_rule_finds_something_in(
    text: str, a: int, b: int, swap: bool
) -> None:
    # The quick check skips the rules for text it says cannot hold a secret: any piece of a findable
    # text, in either case, in which a rule still finds something must get past it.
    piece = text[min(a, b) : max(a, b)]
    piece = piece.swapcase() if swap else piece
    if _every_candidate(piece, cautious=True):
        assert may_hold_a_secret(piece), piece


def test_the_quick_check_passes_every_shape_and_stops_plain_words() -> None:
    for text in FINDABLE + [f"{key}={'S3cr3t-v@lue_123'}" for key in SECRET_KEYS]:
        assert may_hold_a_secret(text), text
    for plain in ("hello", "ok", "/tmp/report.txt", "restart the worker pool", "1234 5678"):
        assert not may_hold_a_secret(plain) and not find_secrets(plain)


SECRET_KEYS = [
    "password",
    "passwords",
    "db_password",
    "DB_PASSWORD",
    "dbPassword",
    "secret",
    "secrets",
    "credentials",
    "credential",
    "api_key",
    "apiKey",
    "x-api-key",
    "token",
    "accessToken",
    "aws_secret_access_key",
    "client_secret",
    "client_secret_value",
    "clientSecretValue",
    "private_key",
    "Authorization",
    "session_id",
    "cookie",
    "passphrase",
]
NOT_SECRET_KEYS = [
    "name",
    "endpoint_id",
    "max_tokens",
    "maxTokens",
    "token_count",
    "prompt_tokens",
    "secret_name",
    "secret_arn",
    "password_file",
    "author",
    "bypass",
    "key",
    "pwd",
    "description",
]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_a_value_under_a_secret_key_is_masked_whole(key: str) -> None:
    value = "S3cr3t-v@lue_123"
    assert is_secret_key(key)
    assert display_mask({key: value, "region": "eu-west-1"}) == {
        key: mask("secret", value),
        "region": "eu-west-1",
    }
    assert redact({key: value}) == {key: REDACTED}


@pytest.mark.parametrize("key", NOT_SECRET_KEYS)
def test_ordinary_key_names_are_not_secret(key: str) -> None:
    assert not is_secret_key(key)
    assert display_mask({key: "plain-value"}) == {key: "plain-value"}


def test_kubernetes_style_name_value_pairs_mask_the_value() -> None:
    env = [
        {"name": "DB_PASSWORD", "value": "s3cr3tval"},
        {"name": "LOG_LEVEL", "value": "debug"},
        {"Name": "API_TOKEN", "Value": "tok-123"},
    ]
    assert display_mask({"env": env}) == {
        "env": [
            {"name": "DB_PASSWORD", "value": mask("secret", "s3cr3tval")},
            {"name": "LOG_LEVEL", "value": "debug"},
            {"Name": "API_TOKEN", "Value": mask("secret", "tok-123")},
        ]
    }
    assert redact({"env": env})["env"][0] == {"name": "DB_PASSWORD", "value": REDACTED}
    assert redact({"env": env})["env"][1] == {"name": "LOG_LEVEL", "value": "debug"}


def test_a_payload_cannot_hide_behind_a_secret_key_name() -> None:
    sql = "SELECT 1;\nDROP TABLE users;"
    assert display_mask({"secret_query": sql}) == {"secret_query": sql}
    one_line = "SELECT 1; DROP TABLE users; -- " + "ghp_abcdefghijklmnopqrstuvwxyz0123456789"
    assert display_mask({"password": one_line}) == {
        "password": "SELECT 1; DROP TABLE users; -- "
        + mask("github-token", "ghp_abcdefghijklmnopqrstuvwxyz0123456789")
    }
    long_blob = "a" * 5000  # longer than any plausible secret: shown, not hidden whole
    assert display_mask({"token": long_blob}) == {"token": long_blob}
    assert redact({"secret_query": sql}) == {"secret_query": REDACTED}


def test_non_string_values_under_secret_keys_are_walked() -> None:
    args = {"password": 12345, "credentials": {"user": "alice", "password": "hunter2"}, "token": None}
    assert display_mask(args) == {
        "password": 12345,
        "credentials": {"user": "alice", "password": mask("secret", "hunter2")},
        "token": None,
    }
    assert display_mask({"api_keys": ["k1", "k2"]}) == {
        "api_keys": [mask("secret", "k1"), mask("secret", "k2")]
    }


def test_references_and_placeholders_are_not_secrets() -> None:
    for text in (
        "password: ${DB_PASSWORD}",
        "token=$TOKEN",
        "token=$(cat /run/secrets/t) && deploy",
        "password: null",
        "password=****",
    ):
        assert display_text(text) == text and redact_text(text) == text


def test_code_after_a_secret_name_stays_visible() -> None:
    code = "token = eval(payload)\nsecret = make_secret(user)\nquery(password=[1, 2])"
    assert display_text(code) == code


def test_a_quoted_passphrase_with_spaces_is_only_hidden_in_the_audit() -> None:
    text = 'password: "correct horse battery staple"'
    assert display_text(text) == text  # a mask never spans whitespace in the approver's view
    assert redact_text(text) == f'password: "{REDACTED}"'


def test_a_secret_nested_in_a_non_secret_value_is_found() -> None:
    text = "token_url=https://h/cb?password=pw9&x=1"
    assert display_text(text) == f"token_url=https://h/cb?password={mask('password', 'pw9')}&x=1"


def test_findings_are_exact_sorted_and_disjoint() -> None:
    text = "postgres://u:pw@h and password=hunter2 and AKIAIOSFODNN7EXAMPLE"
    assert find_secrets(text) == [
        Finding(13, 15, "password"),
        Finding(31, 38, "password"),
        Finding(43, 63, "aws-access-key"),
    ]
    with pytest.raises(AttributeError):
        find_secrets(text)[0].start = 0  # type: ignore[misc]


SAFE_TEXT = st.text(alphabet=" .,;!?\n0123456789()[]", max_size=40)
SPACED_SHAPES = [shape for shape in SHAPES if " {} " in shape[0]]


@given(SAFE_TEXT, st.sampled_from(SPACED_SHAPES), SAFE_TEXT)
def test_only_the_secret_changes_whatever_surrounds_it(before: str, shape: tuple, after: str) -> None:
    around, secret, kind = shape
    text = before + " " + around.format(secret) + " " + after
    assert display_text(text) == before + " " + around.format(mask(kind, secret)) + " " + after


@given(st.text(max_size=200))
def test_text_without_a_finding_is_shown_unchanged(text: str) -> None:
    assume(not find_secrets(text))
    assert display_text(text) == text


def _keys_and_strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_keys_and_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _keys_and_strings(v)]
    return []


@given(json_values)
def test_display_mask_keeps_values_without_secrets_byte_identical(value: object) -> None:
    assume(not any(find_secrets(s) or is_secret_key(s) for s in _keys_and_strings(value)))
    assert display_mask(value) == value


@given(json_values)
def test_neither_mask_mutates_its_input(value: object) -> None:
    before = copy.deepcopy(value)
    display_mask(value)
    redact(value)
    assert value == before


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_odd_values_never_raise() -> None:
    cyclic: list = [1]
    cyclic.append(cyclic)
    odd = {
        "nan": math.nan,
        "inf": math.inf,
        "huge": 10**400,
        1: "int key",
        None: "none key",
        (1, 2): ["tuple key"],
        Unprintable(): "password=hunter2",
        "bytes": b"password=hunter2",
        "set": {1, 2},
        "cyclic": cyclic,
        "tuple": ("password=hunter2",),
    }
    shown = display_mask(odd)
    assert math.isnan(shown["nan"]) and shown["huge"] == 10**400 and shown[None] == "none key"
    assert shown["tuple"] == [f"password={mask('password', 'hunter2')}"]
    assert shown["cyclic"][1] is shown["cyclic"]
    audited = redact(odd)
    assert audited["1"] == "int key" and audited["tuple"] == [f"password={REDACTED}"]


def test_deep_nesting_is_shown_in_full_to_the_approver() -> None:
    deep: list = ["password=hunter2"]
    for _ in range(5000):  # deeper than the interpreter's recursion limit
        deep = [deep]
    shown = display_mask(deep)
    for _ in range(5000):
        shown = shown[0]
    assert shown == [f"password={mask('password', 'hunter2')}"]


# -- time: a regression guard against quadratic patterns, not a benchmark -------------------------


def _megabyte(unit: str) -> str:
    return (unit * (1_000_000 // len(unit) + 1))[:1_000_000]


ADVERSARIAL = {
    "letters": "a" * 1_000_000,
    "spaces": " " * 1_000_000,
    "scheme": _megabyte("a://"),
    "userinfo": _megabyte("a://u:p"),
    "at signs": _megabyte("a://:" + "@" * 50),
    "password=": _megabyte("password="),
    "password: x": _megabyte("password: x "),
    "a=": _megabyte("a="),
    "key=": _megabyte("key="),
    "BEGIN": _megabyte("-----BEGIN "),
    "BEGIN PRIVATE KEY": _megabyte("-----BEGIN PRIVATE KEY-----\n"),
    "BEGIN with body": _megabyte("-----BEGIN PRIVATE KEY-----\nMIIE\n"),
    "PGP headers": _megabyte("-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: x\n"),
    "jwt starts": _megabyte("eyJa"),
    "jwt segments": _megabyte("eyJaaaaaaaaa."),
    "ghp_": _megabyte("ghp_"),
    "bearer": _megabyte("Bearer "),
    "name/value": _megabyte('{"name": "DB_PASSWORD", "value": "x"}, '),
    "mysql": _megabyte("mysql -px "),
    "--password": _megabyte("--password "),
    "jdbc": _megabyte("jdbc:postgresql://h/db?user=u&password=pw;"),
    "quotes": _megabyte('password: "a b '),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_a_megabyte_of_adversarial_text_is_processed_in_linear_time(name: str) -> None:
    text = ADVERSARIAL[name]
    for fn in (display_text, redact_text):
        started = time.process_time()  # CPU time: other processes on the machine do not count
        fn(text)
        assert time.process_time() - started < 1.0, f"{fn.__name__} on {name!r}"


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
