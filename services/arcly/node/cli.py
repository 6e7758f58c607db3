"""``arcly`` — the command line.

``arcly serve`` runs the single-node role (origin and edge in one process, no Redis, no
Kubernetes). Every flag has an ``ARCLY_*`` env twin; see ``arcly serve --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from arcly import __version__
from arcly.engine import ArclyError

from . import logs
from .config import add_node_options, build_config
from .server import run_node


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed, on asyncio's loop otherwise."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="arcly", description="arcly-stream live video node")
    parser.add_argument("--version", action="version", version=f"arcly {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = {
        "serve": ("single", "run a single node: RTMP in; RTMP, HTTP-FLV and HLS out"),
        "origin": ("origin", "run an origin: RTMP ingest + relay to edges (needs Redis)"),
        "edge": ("edge", "run an edge: viewers, streams relayed from origins (needs Redis)"),
    }
    parsers = {}
    for name, (_, help_text) in commands.items():
        parsers[name] = sub.add_parser(name, help=help_text, description=help_text)
        add_node_options(parsers[name])
    args = parser.parse_args(argv)
    if args.command not in commands:
        parser.print_help()
        return 2
    config = build_config(args, parser=parsers[args.command])
    logs.configure(config.log_level, as_json=config.log_json)
    try:
        _run(run_node(commands[args.command][0], config))
    except (OSError, ValueError, ArclyError) as exc:
        logging.getLogger("arcly.node").error("node failed error=%s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
