"""The bench's upstream: a small MCP server with `echo`, `sleep` and `hold_me`.

`python bench/upstream.py` serves stdio (the gateway's upstream); `python bench/upstream.py --http PORT`
serves Streamable HTTP on 127.0.0.1:PORT/mcp (the direct path), with the SDK's default framing (SSE
responses) and the same uvicorn settings as the gateway's front, so the two paths differ only by the
gateway.

`hold_me(n)` appends `n <time.time()>` to the file named by $BENCH_EXEC_LOG (one line per call; the
file stays open, each line is flushed), which is how the bench measures decision-to-dispatch.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from mcp.server.mcpserver import MCPServer

mcp = MCPServer("bench-upstream", version="1.0.0", log_level="WARNING")

_EXEC_LOG = os.environ.get("BENCH_EXEC_LOG")
_exec_log = open(_EXEC_LOG, "a", buffering=1) if _EXEC_LOG else None  # noqa: SIM115 - lives as long as we do


@mcp.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@mcp.tool()
async def sleep(seconds: float) -> str:
    """Sleep for `seconds`, then say so."""
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@mcp.tool()
def hold_me(n: int) -> str:
    """A call the bench's policy holds for approval; records when it actually ran."""
    if _exec_log is not None:
        _exec_log.write(f"{n} {time.time():.6f}\n")
    return f"ran {n}"


def serve_http(port: int, json_response: bool = False) -> None:
    import uvicorn

    app = mcp.streamable_http_app(streamable_http_path="/mcp", host="127.0.0.1", json_response=json_response)
    # The gateway's front runs uvicorn with log_level="warning" and otherwise default settings.
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http", type=int, metavar="PORT", help="serve Streamable HTTP instead of stdio")
    parser.add_argument("--json", action="store_true", help="HTTP: JSON replies instead of SSE")
    args = parser.parse_args()
    if args.http is not None:
        serve_http(args.http, args.json)
    else:
        mcp.run("stdio")


if __name__ == "__main__":
    main()
