"""Hostile input: malformed JSON-RPC over HTTP and stdio, oversized and deeply nested arguments,
invalid UTF-8, huge tool names, path- and injection-like strings, and hostile config files.

Each gets a clear error (never a 5xx, a traceback or a hang) and the gateway keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import queue
import random
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import RAW_HEADERS as HEADERS
from tests.conftest import RAW_INIT as INIT
from tests.conftest import RAW_PROTOCOL as PROTOCOL
from tests.conftest import executions, gateway_config, stdio_echo
from tests.procs import ROOT, SIGNOFF, running_gateway, write_config
from tests.reliability.harness import INJECTION, audit_texts, export_audit, gateway_errors

MAX_ARGS = 64 * 1024
# Tools that would make the fuzz slow or need a capable client are refused by policy.
FUZZ_POLICY = {
    "default": "allow",
    # The fuzz is about frames: `delete_thing` (annotated destructive) runs rather than waiting for a person.
    "annotated_destructive": "default",
    "rules": [{"tools": ["sleep", "crash", "ask_name", "fail"], "action": "deny"}],
}


def frames_from(body: bytes, http: httpx2.Client, url: str, headers: dict[str, str]) -> tuple[int, list[Any]]:
    """POST one raw body; return the status and every JSON-RPC message in the answer (JSON or SSE)."""
    r = http.post(url, content=body, headers=headers)
    kind = r.headers.get("content-type", "")
    if "event-stream" in kind:  # SSE lines end at CR, LF or CRLF only (not at U+0085 or U+2028)
        lines = re.split(r"\r\n|\r|\n", r.text)
        return r.status_code, [
            json.loads(ln[5:]) for ln in lines if ln.startswith("data:") and ln[5:].strip()
        ]
    if "json" in kind and r.content:
        return r.status_code, [r.json()]
    return r.status_code, []


def open_session(http: httpx2.Client, url: str) -> dict[str, str]:
    r = http.post(url, json=INIT, headers=HEADERS)
    assert r.status_code == 200, r.text
    headers = dict(
        HEADERS, **{"Mcp-Session-Id": r.headers["mcp-session-id"], "Mcp-Protocol-Version": PROTOCOL}
    )
    http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    return headers


def echo_works(http: httpx2.Client, url: str, headers: dict[str, str], text: str) -> bool:
    body = {
        "jsonrpc": "2.0",
        "id": 424242,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": text}},
    }
    status, msgs = frames_from(json.dumps(body).encode(), http, url, headers)
    return status == 200 and any(
        m.get("id") == 424242 and m.get("result", {}).get("content", [{}])[0].get("text") == text
        for m in msgs
    )


# -- JSON-RPC over HTTP ------------------------------------------------------------------------------

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=15,
)
hostile_text = st.sampled_from(INJECTION) | st.text(max_size=60)
tool_names = (
    st.sampled_from(["echo", "weather", "delete_thing", "fail", "no_such_tool", ""])
    | hostile_text
    | st.text(min_size=2000, max_size=3000)
)
arguments = json_value | st.dictionaries(
    st.sampled_from(["text", "city", "name", "force", "message"]), json_value | hostile_text, max_size=4
)
methods = st.sampled_from(
    [
        "tools/call",
        "tools/list",
        "initialize",
        "ping",
        "resources/read",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "notifications/cancelled",
        "notifications/progress",
        "resources/subscribe",
    ]
) | st.text(max_size=30)
request_ids = (
    st.integers()
    | st.text(max_size=8)
    | st.none()
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_value
)
frames = st.one_of(
    st.binary(max_size=200),  # garbage, invalid UTF-8 included
    json_value.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"jsonrpc": st.sampled_from(["2.0", "1.0", 2, None]), "method": methods},
        optional={"id": request_ids, "params": json_value},
    ).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {
            "jsonrpc": st.just("2.0"),
            "id": st.integers(1, 10**6),
            "method": st.just("tools/call"),
            "params": st.fixed_dictionaries(
                {"name": tool_names}, optional={"arguments": arguments, "_meta": json_value}
            ),
        }
    ).map(lambda v: json.dumps(v).encode()),
)

HTTP_OK = {200, 202, 400, 404, 405, 406, 413, 415, 422}


@pytest.mark.timeout(240)
def test_fuzzed_json_rpc_frames_over_http_get_clear_errors_and_the_gateway_keeps_serving(
    tmp_path: Path, exec_log: Path, figures
) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'fuzz.db'}"
    config = gateway_config(exec_log, FUZZ_POLICY, database_url=db, max_argument_bytes=MAX_ARGS)
    seen: dict[str, int] = {}
    started = time.monotonic()
    with running_gateway(config, tmp_path) as gw, httpx2.Client(timeout=20) as http:
        headers = open_session(http, gw.mcp_url)

        @settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        @given(frame=frames)
        def one(frame: bytes) -> None:
            status, msgs = frames_from(frame, http, gw.mcp_url, headers)
            seen[str(status)] = seen.get(str(status), 0) + 1
            assert status in HTTP_OK, (status, frame[:300], msgs)
            for m in msgs:
                assert m.get("jsonrpc") == "2.0" and ("result" in m or "error" in m or "method" in m), m
                if "error" in m:
                    assert isinstance(m["error"].get("code"), int) and m["error"]["code"] != 0, m
            if status >= 400 and msgs:
                assert "error" in msgs[0], msgs
            # The session survives every frame (a crashed session would answer 404 from now on).
            ping = http.post(
                gw.mcp_url, json={"jsonrpc": "2.0", "id": "ping", "method": "ping"}, headers=headers
            )
            assert ping.status_code == 200, (ping.status_code, frame[:300])

        one()
        assert echo_works(http, gw.mcp_url, headers, "after the fuzz")
        with httpx2.Client(timeout=20) as fresh:
            assert echo_works(fresh, gw.mcp_url, open_session(fresh, gw.mcp_url), "a new session too")
        # The audit writer is still healthy: a fresh call gets its record.
        deadline = time.monotonic() + 10
        while not any(r["arguments"].get("text") == "a new session too" for r in export_audit(db)):
            assert time.monotonic() < deadline, "the audit log stopped being written"
            time.sleep(0.3)
    errors, _ = gateway_errors(gw.output())
    figures(
        f"fuzz http: 200 frames, answers by status {dict(sorted(seen.items()))}, 0 5xx, session alive, "
        f"{len(errors)} gateway errors logged, {time.monotonic() - started:.1f} s"
    )
    assert errors == [], errors


def test_hostile_corpus_over_http(tmp_path: Path, exec_log: Path, figures) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'corpus.db'}"
    config = gateway_config(exec_log, FUZZ_POLICY, database_url=db, max_argument_bytes=MAX_ARGS)

    def call(name: Any, args: Any, id_: int = 7) -> bytes:
        return json.dumps(
            {"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": {"name": name, "arguments": args}}
        ).encode()

    def nested(depth: int) -> bytes:
        return (
            b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x","y":'
            + b'{"a":' * depth
            + b"1"
            + b"}" * depth
            + b"}}}"
        )

    started = time.monotonic()
    with running_gateway(config, tmp_path) as gw, httpx2.Client(timeout=20) as http:
        h = open_session(http, gw.mcp_url)

        def post(body: bytes) -> tuple[int, dict[str, Any]]:
            status, msgs = frames_from(body, http, gw.mcp_url, h)
            return status, (msgs[0] if msgs else {})

        # Deep nesting is refused by the parser, before anything else.
        for depth in (300, 1_000, 10_000):
            status, msg = post(nested(depth))
            assert status == 400 and msg["error"]["code"] == -32700, (depth, status, msg)
        # Arguments over max_argument_bytes: a refusal naming the limit; a body far over it: 413.
        status, msg = post(call("echo", {"text": "x" * (MAX_ARGS + 10)}))
        info = msg["result"]["_meta"]["dev.signoff/decision"]
        assert status == 200 and info["reason"] == "arguments_too_large" and info["limit"] == MAX_ARGS
        status, msg = post(call("echo", {"text": "x" * (4 * MAX_ARGS)}))
        assert status == 413 and f"the limit is {MAX_ARGS + 64 * 1024} bytes" in msg["error"]["message"]
        # The same without a Content-Length (chunked), which the server only learns while reading.
        chunks = iter([call("echo", {"text": "x" * (4 * MAX_ARGS)})])
        r = http.post(gw.mcp_url, content=chunks, headers=h)
        assert r.status_code == 413 and r.json()["error"]["code"] == -32600
        # Invalid UTF-8 and lone surrogates: parse errors.
        bad = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"\xff\xfe"}}}'
        assert post(bad)[0] == 400
        assert (
            post(
                b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"\\ud800"}}}'
            )[0]
            == 400
        )
        # Huge, empty, path-like and injection-like tool names: "Unknown tool", nothing runs.
        for name in [
            "n" * 100_000,
            "",
            "../../etc/passwd",
            "echo\u0000",
            "echo; rm -rf /",
            "<!channel>",
            *INJECTION[:12],
        ]:
            status, msg = post(call(name, {"text": "x"}))
            assert status == 200 and msg["error"]["code"] == -32602, (name[:50], status, msg)
            assert msg["error"]["message"].startswith("Unknown tool")
        # Wrong shapes for name and arguments: invalid params.
        for name, args in ((None, {}), (7, {}), ("echo", "text"), ("echo", [1, 2])):
            status, msg = post(call(name, args))
            assert status == 200 and msg["error"]["code"] == -32602, (name, args, msg)
        # Hostile strings as arguments are data: passed through unchanged, recorded, executed once.
        for i, text in enumerate(INJECTION):
            status, msg = post(call("echo", {"text": text}, 100 + i))
            assert status == 200 and msg["result"]["content"][0]["text"] == text, (text[:40], msg)
        assert echo_works(http, gw.mcp_url, h, "still serving")
        time.sleep(0.6)  # one audit flush
        audited = {r["arguments"].get("text") for r in export_audit(db) if r["tool"] == "echo"}
    ran = [e["args"]["text"] for e in executions(exec_log, "echo")]
    assert sorted(ran) == sorted([*INJECTION, "still serving"])  # each once, and nothing refused ran
    # Longer strings are cut in the audit record, and NUL characters dropped (PostgreSQL cannot store them).
    assert {t.replace("\x00", "") for t in INJECTION if len(t) <= 4096} <= {
        t.replace("\x00", "") for t in audited
    }
    errors, _ = gateway_errors(gw.output())
    assert errors == [], errors
    figures(
        f"hostile corpus http: {len(INJECTION)} injection strings, 3 nesting depths, 19 tool names, "
        f"oversized and invalid UTF-8 bodies: all clear errors, 0 gateway errors, {time.monotonic() - started:.1f} s"
    )


@pytest.mark.parametrize(
    "poison",
    [
        pytest.param(
            b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"ec\\u0000ho","arguments":{}}}',
            id="nul-in-tool-name",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{"text":"n","n":NaN}}}',
            id="nan-argument",
        ),
    ],
)
@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_one_hostile_value_does_not_stop_the_postgres_audit_log(
    tmp_path: Path, exec_log: Path, pg: Any, poison: bytes
) -> None:
    """A value PostgreSQL cannot store (NUL in text, NaN in json) must not stop later records."""
    db = pg.new_database()
    with (
        running_gateway(gateway_config(exec_log, None, database_url=db), tmp_path) as gw,
        httpx2.Client(timeout=20) as http,
    ):
        h = open_session(http, gw.mcp_url)
        frames_from(poison, http, gw.mcp_url, h)
        assert echo_works(http, gw.mcp_url, h, "after the poison")  # the call itself is served
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            texts = asyncio.run(audit_texts(db))
            if "after the poison" in texts:
                break
            time.sleep(0.3)
    assert "after the poison" in texts, "the audit record of a later call was never written"


# -- JSON-RPC over stdio -------------------------------------------------------------------------------


def test_malformed_frames_over_stdio(tmp_path: Path, exec_log: Path, figures) -> None:
    config = {
        "upstreams": {"echo": stdio_echo(exec_log)},
        "control": {"port": 0},
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'stdio.db'}",
        "max_argument_bytes": MAX_ARGS,
        "policy": FUZZ_POLICY,
    }
    path = write_config(config, tmp_path / "stdio.yaml")
    rng = random.Random(8)
    lines: list[bytes] = [
        b"\xff\xfe\xfd not utf-8",
        b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"\xc3\x28"}}}',
        b"{not json",
        b"[]",
        b"[1, 2, 3]",
        b"null",
        b'"just a string"',
        b"   ",
        b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x","y":'
        + b'{"a":' * 5000
        + b"1"
        + b"}" * 5000
        + b"}}}",
        b'{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo","arguments":{"text":"'
        + b"x" * 1_000_000
        + b'"}}}',
        b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"' + b"n" * 100_000 + b'"}}',
        b'{"jsonrpc":"2.0","id":6,"method":"nope/nope"}',
        b'{"jsonrpc":"2.0","id":7}',
        b'{"jsonrpc":"1.0","id":8,"method":"ping"}',
        b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":7}}',
        b'{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"../../etc/passwd","arguments":{}}}',
        b'{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"echo","arguments":"text"}}',
        b'{"jsonrpc":"2.0","result":{},"id":12345}',  # a response to nothing
        b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"nope"}}',
    ]
    lines += [
        bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))).replace(b"\n", b" ") for _ in range(40)
    ]
    lines += [json.dumps(t).encode() for t in INJECTION]
    for i, text in enumerate(INJECTION):
        lines.append(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 1000 + i,
                    "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": text}},
                }
            ).encode()
        )
    final = {
        "jsonrpc": "2.0",
        "id": 99,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "survived"}},
    }
    started = time.monotonic()
    proc = subprocess.Popen(
        [*SIGNOFF, "serve", "--stdio", "--config", str(path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "stdio.log", "wb"),  # noqa: SIM115 - the child owns it
    )
    replies: queue.Queue[bytes | None] = queue.Queue()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            replies.put(line)
        replies.put(None)

    threading.Thread(target=reader, daemon=True).start()
    got: dict[Any, list[dict[str, Any]]] = {}
    try:
        assert proc.stdin is not None
        for line in [
            json.dumps(INIT).encode(),
            b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
            *lines,
            json.dumps(final).encode(),
        ]:
            proc.stdin.write(line + b"\n")
            proc.stdin.flush()
        # Requests are served concurrently: wait for every answer, not just the last one asked.
        expected = {99, 4, 5, 6, 9, 10, 11, *(1000 + i for i in range(len(INJECTION)))}
        deadline = time.monotonic() + 60
        while not expected <= set(got) and time.monotonic() < deadline:
            try:
                line = replies.get(timeout=1)
            except queue.Empty:
                continue
            assert line is not None, "the gateway closed stdout"
            msg = json.loads(line)
            got.setdefault(msg.get("id"), []).append(msg)
        alive = proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    log = (tmp_path / "stdio.log").read_text(errors="replace")
    assert alive and got[99][0]["result"]["content"][0]["text"] == "survived"
    for i, text in enumerate(INJECTION):
        assert got[1000 + i][0]["result"]["content"][0]["text"] == text
    assert got[4][0]["result"]["_meta"]["dev.signoff/decision"]["reason"] == "arguments_too_large"
    for request_id in (5, 9, 10, 11):
        assert got[request_id][0]["error"]["code"] == -32602, got[request_id]
    assert got[6][0]["error"]["code"] == -32601
    parse_errors = sum(1 for m in got.get(None, []) if m["error"]["code"] == -32700)
    assert parse_errors >= 40  # every unparseable line is answered
    assert "Traceback" not in log, log[-3000:]
    figures(
        f"fuzz stdio: {len(lines)} hostile lines, {parse_errors} parse errors answered, "
        f"process alive, final echo served, {time.monotonic() - started:.1f} s"
    )


# -- config files --------------------------------------------------------------------------------------


def _laughs(levels: int = 9) -> str:
    doc = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    prev = "a"
    for name in "bcdefghijk"[: levels - 1]:
        doc += f"{name}: &{name} [" + ",".join(["*" + prev] * 9) + "]\n"
        prev = name
    return doc, prev


def _configs() -> dict[str, tuple[str, str]]:
    """name -> (file name, content): every one must be refused at start."""
    laughs, top = _laughs()
    return {
        "wrong types": (
            "types.yaml",
            "upstreams: 7\nlisten: {port: 'http'}\naudit: {batch_size: [1]}\nmax_argument_bytes: -1\n",
        ),
        "unknown keys": ("unknown.yaml", "upstreams:\n  x: {command: echo, colour: blue}\nsurprise: true\n"),
        "empty": ("empty.yaml", ""),
        "a list": ("list.yaml", "- a\n- b\n"),
        "python tag": ("tag.yaml", "upstreams: !!python/object/apply:os.system ['touch PWNED']\n"),
        "unset variable": ("env.yaml", "upstreams:\n  x: {command: '${SIGNOFF_TEST_NOPE}'}\n"),
        "malformed variable": ("env2.yaml", "upstreams:\n  x: {command: echo}\nlisten: {port: '${1BAD}'}\n"),
        "bad identities": (
            "ids.yaml",
            "upstreams:\n  x: {command: echo}\nidentities:\n  a: {token_sha256: zz}\n  b: {}\nstdio_identity: ghost\n",
        ),
        "bad policy regex": (
            "re.yaml",
            "upstreams:\n  x: {command: echo}\npolicy:\n  default: allow\n  rules:\n    - {tools: '*', when: [{path: a, op: regex, value: '[unclosed'}], action: deny}\n",
        ),
        "policy is a directory": ("dir.yaml", "upstreams:\n  x: {command: echo}\npolicy: /tmp\n"),
        "nan": ("nan.json", '{"upstreams": {"x": {"command": "echo"}}, "max_argument_bytes": NaN}'),
        "not utf-8": ("binary.yaml", bytes(range(256)).decode("latin-1") * 4),
        "deeply nested yaml": ("deep.yaml", "upstreams: " + "[" * 50_000 + "]" * 50_000 + "\n"),
        "deeply nested yaml mapping": (
            "deepmap.yaml",
            "upstreams:\n  x: {command: echo}\npolicy: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n",
        ),
        "deeply nested json": ("deep.json", '{"upstreams": ' + "[" * 50_000 + "]" * 50_000 + "}"),
        "billion laughs": ("laughs.yaml", laughs + f"upstreams:\n  x: {{command: echo, args: *{top}}}\n"),
    }


CONFIG_TIMEOUT = 30.0  # a safety net against a hang: four run at once on two busy cores


@pytest.fixture(scope="module")
def config_outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run `signoff check` on every hostile config once, four at a time.

    `check` reads the file exactly as `serve` does (`proxy.cli._load`) and exits 2 on an invalid one,
    without the seconds of imports `serve` does before reading it.
    """
    root = tmp_path_factory.mktemp("configs")

    def run(case: str) -> Any:
        name, content = _configs()[case]
        folder = root / re.sub(r"\W", "_", case)
        folder.mkdir()
        (folder / name).write_bytes(content.encode("latin-1") if case == "not utf-8" else content.encode())
        started = time.monotonic()
        try:
            out = subprocess.run(
                # `ulimit -v`: a bomb must fail, not take the machine with it (no preexec_fn: threads).
                [
                    "bash",
                    "-c",
                    'ulimit -v 3145728 && exec "$@"',
                    "--",
                    *SIGNOFF,
                    "check",
                    str(folder / name),
                ],
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=CONFIG_TIMEOUT,
                env={"PATH": "/usr/bin:/bin", "HOME": str(folder), "PYTHONPATH": str(ROOT)},
            )
        except subprocess.TimeoutExpired:
            return None, time.monotonic() - started, folder
        return out, time.monotonic() - started, folder

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(_configs(), pool.map(run, _configs()), strict=True))


@pytest.mark.parametrize("case", list(_configs()))
def test_hostile_config_is_refused_clearly(case: str, config_outcomes: dict[str, Any]) -> None:
    out, _took, folder = config_outcomes[case]
    assert out is not None, f"{case}: `signoff check` did not finish within {CONFIG_TIMEOUT:g} s"
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert out.stderr.startswith("signoff:") and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert not (folder / "PWNED").exists()


def test_environment_values_are_not_expanded_twice(tmp_path: Path) -> None:
    """`${VAR}` is replaced once: a value that itself looks like `${OTHER}` stays literal."""
    path = tmp_path / "twice.yaml"
    path.write_text("upstreams:\n  x: {command: '${SIGNOFF_TEST_EVIL}', connect_timeout: 2s}\n")
    out = subprocess.run(
        [*SIGNOFF, "check", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "SIGNOFF_TEST_EVIL": "${HOME}", "HOME": "/should-not-appear"},
    )
    assert out.returncode == 1, out.stderr
    assert "cannot start '${HOME}'" in out.stderr and "/should-not-appear" not in out.stderr
    assert "Traceback" not in out.stderr
