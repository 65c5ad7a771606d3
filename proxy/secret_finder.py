"""Finding secrets in text as exact spans, and recognising secret-named keys.

One detector serves both the approver's view (mask exactly the secret, show everything else) and
the audit (mask generously). Patterns are hand-written because detect-secrets, the maintained
library for this, reports matched strings per line rather than spans and its keyword regex
(`\\w*` before the keyword) backtracks quadratically: 10 KB of letters took five seconds.

Arguments reach 4 MB and every audited call is scanned, so every pattern stays linear: a
repetition followed by a required suffix is bounded or possessive, and a run is only tried from
its first character (a look-behind), never rescanned from each of its positions (a quadratic URL
regex once stalled the gateway for a minute on 100 KB). Patterns open with a literal, so the
engine skips ahead to it instead of trying every position.

Display spans never contain whitespace, except a well-formed key block whose body lines are
pure base64, so no statement can hide inside a mask.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True, slots=True)
class Finding:
    """A secret at `text[start:end]`, of a kind such as `aws-access-key` or `password`."""

    start: int
    end: int
    kind: str


# -- key names ----------------------------------------------------------------------------------

_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+")
# A key whose last word is one of these (or ends like the suffixes) names a secret.
_SECRET_WORDS = frozenset(
    [
        "password",
        "passwords",
        "passwd",
        "pass",
        "passphrase",
        "secret",
        "secrets",
        "token",
        "apikey",
        "apikeys",
        "auth",
        "authorization",
        "cred",
        "credential",
        "credentials",
        "creds",
        "cookie",
        "cookies",
        "signature",
        "bearer",
        "otp",
        "pin",
        "privatekey",
        "sessionid",
    ]
)
_SECRET_SUFFIXES = ("password", "passwd", "passphrase", "secret", "secrets", "token", "apikey", "credentials")
_SECRET_PAIRS = frozenset(
    {
        ("api", "key"),
        ("api", "keys"),
        ("access", "key"),
        ("private", "key"),
        ("session", "id"),
        ("session", "key"),
        ("signing", "key"),
        ("encryption", "key"),
        ("master", "key"),
        ("account", "key"),
    }
)
# "secret" anywhere names a secret (`aws_secret_access_key`, `client_secret_value`) unless the key
# ends in one of these, which describe the secret rather than hold it (`secret_name`, `secret_arn`).
_DESCRIBES_SECRET = frozenset(
    [
        "name",
        "names",
        "id",
        "ids",
        "ref",
        "arn",
        "path",
        "file",
        "type",
        "count",
        "length",
        "version",
        "versions",
        "expiry",
        "expires",
        "expiration",
        "ttl",
        "manager",
        "region",
        "provider",
        "store",
        "enabled",
        "rotation",
        "description",
    ]
)
_COUNTS = frozenset({"max", "min", "num", "count", "total"})  # max_token: a number, not a token


@lru_cache(maxsize=4096)
def _key_kind(key: str) -> str | None:
    words = [w.lower() for w in _WORD.findall(key)]
    if not words:
        return None
    last = words[-1]
    if last == "token" and _COUNTS.intersection(words[:-1]):
        return None
    secret = (
        last in _SECRET_WORDS
        or last.endswith(_SECRET_SUFFIXES)
        or tuple(words[-2:]) in _SECRET_PAIRS
        or (any(w.endswith(("secret", "secrets")) for w in words) and last not in _DESCRIBES_SECRET)
    )
    if not secret:
        return None
    if "aws" in words and "secret" in words:
        return "aws-secret-key"
    if any(w in ("pass", "passphrase") or w.endswith(("password", "passwords", "passwd")) for w in words):
        return "password"
    if last.endswith("token"):
        return "token"
    if tuple(words[-2:]) in (("api", "key"), ("api", "keys")) or last.startswith("apikey"):
        return "api-key"
    return "secret"


def is_secret_key(key: str) -> bool:
    """Whether an argument (or environment variable) named `key` holds a secret."""
    return _key_kind(key[-128:]) is not None


# -- value shapes -------------------------------------------------------------------------------

# Each pattern's secret is the group `s`. The look-behind right after a pattern's opening literal
# keeps a token from starting mid-word: `(?<!X...)` has one dot per literal character matched.
_SHAPES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern))
    for kind, pattern in (
        ("jwt", r"(?P<s>eyJ(?<![A-Za-z0-9_-]...)[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]{8,}+)"),
        ("aws-access-key", r"(?P<s>A(?<![A-Za-z0-9].)(?:KIA|SIA|BIA|CCA)[0-9A-Z]{16})(?![A-Za-z0-9])"),
        ("github-token", r"(?P<s>gh(?<![A-Za-z0-9_]..)[pousr]_[A-Za-z0-9]{30,})"),
        ("github-token", r"(?P<s>github_pat_(?<![A-Za-z0-9_]...........)[A-Za-z0-9_]{30,})"),
        (
            "gitlab-token",
            r"(?P<s>gl(?<![A-Za-z0-9_-]..)(?:pat|ptt|dt|rt|soat|cbt|ft|imt)-[A-Za-z0-9_-]{20,})",
        ),
        ("slack-token", r"(?P<s>xox(?<![A-Za-z0-9_-]...)[abposre](?:\.xox[abposr])?-[A-Za-z0-9-]{10,})"),
        ("slack-token", r"(?P<s>xapp-(?<![A-Za-z0-9_-].....)[A-Za-z0-9-]{10,})"),
        ("slack-webhook", r"hooks\.slack\.com/(?:services|workflows|triggers)/(?P<s>[A-Za-z0-9_/-]{20,}+)"),
        ("google-api-key", r"(?P<s>AIza(?<![A-Za-z0-9_-]....)[0-9A-Za-z_-]{35})(?![A-Za-z0-9_-])"),
        ("npm-token", r"(?P<s>npm_(?<![A-Za-z0-9_]....)[A-Za-z0-9]{36})(?![A-Za-z0-9])"),
        ("stripe-key", r"(?P<s>[sr]k_(?<![A-Za-z0-9_]...)(?:live|test)_[A-Za-z0-9]{16,})"),
        ("stripe-key", r"(?P<s>whsec_(?<![A-Za-z0-9_]......)[A-Za-z0-9]{24,})"),
        ("anthropic-key", r"(?P<s>sk-ant-(?<![A-Za-z0-9_-].......)[A-Za-z0-9_-]{20,})"),
        ("openai-key", r"(?P<s>sk-(?<![A-Za-z0-9_-]...)(?!ant-)[A-Za-z0-9_-]{20,})"),
        ("runpod-key", r"(?P<s>rpa_(?<![A-Za-z0-9_]....)[A-Za-z0-9]{20,})"),
        ("bearer-token", r"[Bb](?<![A-Za-z0-9_-].)(?:earer|EARER)[ \t]{1,8}(?P<s>[A-Za-z0-9._~+/=-]{12,})"),
        (
            "basic-auth",
            r"[Aa](?:uthorization|UTHORIZATION)[\"']?[ \t]{0,8}[:=][ \t]{0,8}[\"']?"
            r"(?:Basic|BASIC|basic)[ \t]{1,8}(?P<s>[A-Za-z0-9+/=]{4,})",
        ),
        # scheme://user:password@host, user possibly empty (redis://:pw@host). The password may hold
        # an unencoded `@`: backtracking to the last one is bounded by the 1024 limit.
        ("password", r"://[^\s/?#@:]{0,256}+:(?P<s>[^\s/?#]{1,1024})@"),
    )
)

# A well-formed PEM or PGP private key: BEGIN line, optional armour headers, base64 lines, END
# line. The header values and the body lines cannot hold a `;` or a space, so no command fits.
_KEY_BLOCK = re.compile(
    r"-----BEGIN (?P<label>(?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?)-----"
    r"(?>(?:(?:\r?\n|(?:\\r)?\\n)(?:Proc-Type|DEK-Info|Version|Comment|Hash|Charset)"
    r": [A-Za-z0-9,.:()/+_=@ -]{1,128}+){0,8})"
    r"(?:\r?\n|(?:\\r)?\\n){1,2}(?:[A-Za-z0-9+/=]++(?:\r?\n|(?:\\r)?\\n))++"
    r"-----END (?P=label)-----"
)
_KEY_BEGIN = re.compile(r"-----BEGIN (?P<label>(?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?)-----")

# -- name = value -------------------------------------------------------------------------------

# Names are found backwards from their separator: in the reversed, lower-cased text `Password: x`
# reads `x :drowssap`, so the engine jumps from one `:`/`=` to the next instead of trying every
# letter, and only names holding a secret stem (spelled backwards) reach Python.
_REVERSED_STEMS = (
    "ssap|dwp|terces|nekot|htua|derc|eikooc|erutangis|pto|nip|reraeb"
    "|yek[_.-]?(?:ipa|ssecca|etavirp|gningis|noitpyrcne|retsam|tnuocca)|(?:di|yek)[_.-]?noisses"
)
_REVERSED_NAME = re.compile(
    rf"[:=][ \t]{{0,8}}[\"']?\\?(?=[a-z0-9_.-]{{0,63}}?(?:{_REVERSED_STEMS}))"
    r"(?P<name>[a-z0-9_.-]{1,64}+)(?![a-z0-9_.-])"
)
# `--password hunter2` (with `=` it is an assignment).
_CLI_FLAG = re.compile(
    r"--(?<![A-Za-z0-9_-]..)(?=[A-Za-z0-9_-]{0,63}?(?i:pass|secret|token|key|auth|cred|cookie|signature|otp|pin))"
    r"(?P<name>[A-Za-z][A-Za-z0-9_-]{0,63}+)(?=[ \t]{1,8}[^\s-])"
)
# Kubernetes-style pairs: {"name": "DB_PASSWORD", "value": "..."} in JSON or YAML text.
_NAME_VALUE_PAIR = re.compile(
    r"[Nn](?<![A-Za-z0-9_-].)(?:ame|AME)\\?[\"']?[ \t]{0,8}[:=][ \t]{0,8}\\?[\"']?"
    r"(?P<name>[A-Za-z][A-Za-z0-9_.-]{0,63}+)\\?[\"']?[ \t]{0,8},?[ \t]{0,8}"
    r"(?:\r?\n[ \t]{0,32}(?:-[ \t]{1,8})?)?\\?[\"']?(?:[Vv]alue|VALUE)\\?[\"']?[ \t]{0,8}[:=]"
)
_TERM = r"\s\"'`;,&(){}\[\]<>\\"
# The value after a secret name: quoted (no whitespace inside) or bare up to a delimiter. A bare
# run is matched whole, however long, so the scan resumes after it; the caller decides whether a
# run that long is still a secret. In `Authorization: Bearer <secret>` the scheme word is no secret.
_SCHEME = r"(?i:(?:bearer|basic|token|digest)[ \t]{1,8}(?=\S))?"
_VALUE = re.compile(
    rf"[ \t]{{0,8}}{_SCHEME}(?:\\?\"{_SCHEME}(?P<dq>[^\"\\\s]{{1,4096}}+)\\?\""
    rf"|\\?'{_SCHEME}(?P<sq>[^'\\\s]{{1,4096}}+)\\?'"
    rf"|(?P<bare>[^{_TERM}][^{_TERM}]*+))"
)
_QUOTED_PHRASE = re.compile(r"[ \t]{0,8}(?:\"(?P<dq>[^\"\\\r\n]{1,256}+)\"|'(?P<sq>[^'\\\r\n]{1,256}+)')")
# References and placeholders, not secrets: `${DB_PASSWORD}`, `$(cat f)`, `null`, `****`.
_NOT_A_VALUE = re.compile(r"(?i:null|none|true|false|undefined)|\$.*|\*+")
MAX_SECRET = 4096  # a longer run is data, not a password (a long JWT is caught by its shape)

# mysql -u root -phunter2: the password is glued to -p (a bare -p prompts for it).
_MYSQL = re.compile(
    r"(?:mysql(?<![A-Za-z0-9_-].....)|mariadb(?<![A-Za-z0-9_-].......))[A-Za-z-]{0,16}+[ \t]"
    r"(?P<args>[^\r\n;|&]{0,4096}+)"
)
_MYSQL_PASSWORD = re.compile(
    r"-p(?<![^ \t]..)"
    r"(?:'(?P<sq>[^'\s]{1,256}+)'|\"(?P<dq>[^\"\s]{1,256}+)\"|(?P<bare>[^\s'\"]{1,256}+))(?!\S)"
)

# (start, negated end, rank, kind): sorts by start, longest first, then by the rule's rank.
_Candidate = tuple[int, int, int, str]
# (name, where its value may start, separator)
_Site = tuple[str, int, str]


def _value_span(text: str, at: int, cautious: bool) -> tuple[tuple[int, int] | None, int] | None:
    """The (start, end) of the value at `at` (None when it is no secret) and where the value ends;
    None when there is no value at `at`."""
    m = _VALUE.match(text, at)
    if m is None:
        phrase = _QUOTED_PHRASE.match(text, at) if cautious else None  # "correct horse battery"
        if phrase is None:
            return None
        return phrase.span(phrase.lastgroup), phrase.end()
    start, end = m.span(m.lastgroup)  # the alternatives' groups are the pattern's last ones
    if (
        _NOT_A_VALUE.fullmatch(text, start, end)
        or (end - start > MAX_SECRET and not cautious)
        or text[end : end + 1] == "("  # `token = make_token(user)`: a call, which must stay visible
    ):
        return None, m.end()
    return (start, end), m.end()


def _values_after(text: str, sites: list[_Site], rank: int, cautious: bool, out: list[_Candidate]) -> None:
    """The values at sites given in text order. A secret's value is skipped past, so a site inside it
    is not scanned again (linear); a non-secret name's value is not, so a secret nested in it
    (`url=https://h/?password=pw`) is still found."""
    resume = 0
    for name, at, sep in sites:
        if at <= resume:
            continue
        kind = _key_kind(name)
        if kind is None and name.lower() == "pwd" and sep == "=" and text[at : at + 1] != "/":
            kind = "password"  # ODBC/ADO.NET `PWD=`; a bare `pwd` key is a working directory
        value = _value_span(text, at, cautious) if kind is not None else None
        if value is None:
            continue
        span, resume = value
        if span is not None:
            out.append((span[0], -span[1], rank, kind))


def _assignment_sites(text: str) -> list[_Site]:
    n = len(text)
    # lower() keeps the length of every character but U+0130 (İ), which no name holds.
    reversed_text = text[::-1].replace("\u0130", " ").lower()
    sites = []
    for m in _REVERSED_NAME.finditer(reversed_text):
        sep = m.start()  # offsets in the reversed text
        name = text[n - m.end("name") : n - m.start("name")].lstrip("0123456789_.-")
        if name:
            sites.append((name, n - sep, reversed_text[sep]))
    sites.reverse()
    return sites


def _forward_sites(text: str, pattern: re.Pattern[str], sep: str) -> list[_Site]:
    return [(m["name"], m.end(), sep) for m in pattern.finditer(text)]


def _mysql(text: str, rank: int, out: list[_Candidate]) -> None:
    for line in _MYSQL.finditer(text):
        for m in _MYSQL_PASSWORD.finditer(text, line.start("args"), line.end("args")):
            start, end = m.span(m.lastgroup)
            out.append((start, -end, rank, "password"))


def _key_kind_of_label(label: str) -> str:
    return "pgp-private-key" if label.startswith("PGP ") else "private-key"


def _key_blocks_to_their_end(text: str, out: list[_Candidate]) -> None:
    """Every BEGIN … PRIVATE KEY line to its END line, or to the end of the text if there is none."""
    pos = 0
    while (m := _KEY_BEGIN.search(text, pos)) is not None:
        end_line = f"-----END {m['label']}-----"
        end = text.find(end_line, m.end())
        pos = len(text) if end < 0 else end + len(end_line)
        out.append((m.start(), -pos, 1, _key_kind_of_label(m["label"])))


# Every rule above needs one of these in the lower-cased text: a separator (names, URLs, headers), a
# flag's or a key block's dashes, or a shape's fixed prefix. Most arguments are short and hold none
# ("hello", a path, an id), and for them this one search costs a tenth of the twenty-odd scans it
# spares (the audit redacts every call's arguments). The look-ahead lets the engine skip to a
# possible first letter. tests/unit/test_redact.py checks that no finding is ever without it.
_MAY_HOLD_A_SECRET = re.compile(
    r"(?=[-:=aegmnrswx])(?::|=|--|eyj|a(?:kia|sia|bia|cca|iza)|gh[pousr]_|github_pat_|gl[a-z]{2,4}-"
    r"|xox|xapp-|slack\.com/|npm_|[sr]k_|whsec_|sk-|rpa_|earer|mysql|mariadb)"
)


def may_hold_a_secret(text: str) -> bool:
    """False only for text no rule can find a secret in."""
    return _MAY_HOLD_A_SECRET.search(text.lower()) is not None


# Past this length the quick check costs as much as the rules (it tries its words at every letter
# that starts one): long text goes to the rules directly.
_QUICK_CHECK_UP_TO = 512


def _candidates(text: str, cautious: bool) -> list[_Candidate]:
    if len(text) <= _QUICK_CHECK_UP_TO and not may_hold_a_secret(text):
        return []
    return _every_candidate(text, cautious)


def _every_candidate(text: str, cautious: bool) -> list[_Candidate]:
    out: list[_Candidate] = [
        (m.start(), -m.end(), 0, _key_kind_of_label(m["label"])) for m in _KEY_BLOCK.finditer(text)
    ]
    if cautious:
        _key_blocks_to_their_end(text, out)
    for rank, (kind, pattern) in enumerate(_SHAPES, start=2):
        out.extend((m.start("s"), -m.end("s"), rank, kind) for m in pattern.finditer(text))
    rank = 2 + len(_SHAPES)
    _mysql(text, rank, out)
    _values_after(text, _forward_sites(text, _CLI_FLAG, " "), rank + 1, cautious, out)
    _values_after(text, _forward_sites(text, _NAME_VALUE_PAIR, ":"), rank + 2, cautious, out)
    _values_after(text, _assignment_sites(text), rank + 3, cautious, out)
    return out


def secret_spans(text: str, cautious: bool = False) -> list[tuple[int, int, str]]:
    """Sorted, non-overlapping (start, end, kind) spans; `cautious` adds what only the audit masks:
    an unterminated private key (to the end of the text) and quoted passphrases with spaces."""
    merged: list[tuple[int, int, str]] = []
    last_end = -1
    for start, neg_end, _, kind in sorted(_candidates(text, cautious)):
        end = -neg_end
        if start >= last_end:
            merged.append((start, end, kind))
            last_end = end
        elif end > last_end:  # overlapping rules: cover the union, never leave a tail visible
            merged[-1] = (merged[-1][0], end, merged[-1][2])
            last_end = end
    return merged


def find_secrets(text: str) -> list[Finding]:
    """The secrets in `text`, as sorted, non-overlapping exact spans."""
    return [Finding(start, end, kind) for start, end, kind in secret_spans(text)]
