"""The `signoff` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from proxy.config import Config, ConfigError, load_config


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        print(f"signoff: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _setup_logging(verbose: bool) -> None:
    # stdout may be the MCP channel (stdio front), so logs always go to stderr.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "httpx2", "mcp", "uvicorn.error", "aiohttp.access", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_serve(args: argparse.Namespace) -> int:
    from proxy.app import StartupError, run

    config = _load(args.config)
    try:
        asyncio.run(run(config, stdio=args.stdio))
    except ConfigError as e:
        print(f"signoff: {e}", file=sys.stderr)
        return 2
    except StartupError as e:
        print(f"signoff: cannot start: {e}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signoff", description="An MCP gateway with human approval.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (to stderr)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", "-c", required=True, help="the YAML (or JSON) config file")
    serve.add_argument("--stdio", action="store_true", help="serve one MCP client on stdin/stdout")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `signoff` console script."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
