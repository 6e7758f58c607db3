"""``arcly`` — the command line.

``arcly serve`` runs the single-node role (origin and edge in one process, no Redis, no
Kubernetes). Every flag has an ``ARCLY_*`` env twin; see ``arcly serve --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any
from urllib.parse import urlencode

from arcly import __version__
from arcly.auth import tokens
from arcly.engine import ArclyError, ListenError, StreamKey

from . import logs
from .config import add_node_options, build_config, config_source
from .server import run_node

# The flag that sets each listener's address (for the start-up error).
LISTEN_FLAGS = {"rtmp": "--rtmp-listen", "http": "--http-listen", "srt": "--srt-listen",
                "relay": "--grpc-listen",
                "metrics": "--metrics-listen"}


def _tune_gc() -> None:
    """What the node imported and built at start-up lives for the whole process: move it out
    of the collector's way (``gc.freeze``), so full collections walk only what came since.
    (The young generation keeps CPython's threshold: raised to 20,000 it saved ingest ~1 % of a
    core, but cyclic garbage, e.g. of ended WebRTC sessions, then lingered: +2-14 MB of RSS
    after 100 sessions instead of +0.1-2.)"""
    gc.collect()
    gc.freeze()


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed, on asyncio's loop otherwise."""
    _tune_gc()
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
    token = sub.add_parser("token", help="mint signed publish/play tokens")
    token_sub = token.add_subparsers(dest="token_command", metavar="COMMAND", required=True)
    signer = token_sub.add_parser("sign", help="print the query string that authorizes a "
                                  "publish or play of app/stream until it expires")
    signer.add_argument("--key", default=os.environ.get("ARCLY_TOKEN_SECRET"),
                        help="the shared secret [env ARCLY_TOKEN_SECRET]")
    signer.add_argument("--app", required=True)
    signer.add_argument("--stream", required=True)
    signer.add_argument("--ttl", type=float, default=3600, help="seconds [3600]")
    signer.add_argument("--action", choices=("publish", "play"), default="publish")
    args = parser.parse_args(argv)
    if args.command == "token":
        return _sign(signer, args)
    if args.command not in commands:
        parser.print_help()
        return 2
    config = build_config(args, parser=parsers[args.command])
    logs.configure(config.log_level, as_json=config.log_json)
    try:
        _run(run_node(commands[args.command][0], config, source=config_source(args)))
    except ListenError as exc:  # one line, the way a taken port should read
        flag = LISTEN_FLAGS.get(exc.protocol, "")
        logging.getLogger("arcly.node").error("cannot listen on %s (%s): %s", exc.address, flag,
                                              exc.reason.lower())
        return 2
    except (OSError, ValueError, ArclyError) as exc:
        logging.getLogger("arcly.node").error("node failed error=%s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _sign(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if not args.key:
        parser.error("--key (or ARCLY_TOKEN_SECRET) is required")
    try:
        StreamKey(args.app, args.stream)
    except ArclyError as exc:
        parser.error(str(exc))
    query = tokens.sign(args.key, args.action, args.app, args.stream, ttl=args.ttl)
    print(urlencode(query))
    return 0


if __name__ == "__main__":
    sys.exit(main())
