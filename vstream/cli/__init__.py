"""The ``vstream`` command line (SPEC §8). The only place that starts an event loop.

One module per command (``replay``, ``live``, ``signals``, ...), each with a ``register``
function that adds its subcommand; ``common`` holds what they share. Commands import
``common`` and the library below it, never this package's top.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from .. import _interrupts
from .alerts import register_alerts
from .chart import register_chart
from .common import PIPE_CLOSED_EXIT, Parser, package_version, report, run_async, stdout_closed
from .demo import register_demo
from .import_okx import register_import_okx
from .levels import register_levels
from .live import register_live
from .nats import (
    register_cluster_status,
    register_ingest,
    register_publish,
    register_sink_jsonl,
    register_worker,
)
from .replay import register_replay
from .signals import register_signals
from .status import register_status

#: Each adds its subcommand and sets ``handler`` (an async function of the parsed arguments).
REGISTRARS: list[Callable[[argparse._SubParsersAction[Any]], None]] = [
    register_replay,
    register_demo,
    register_import_okx,
    register_signals,
    register_status,
    register_chart,
    register_levels,
    register_live,
    register_ingest,
    register_publish,
    register_worker,
    register_sink_jsonl,
    register_cluster_status,
    register_alerts,
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="vstream", description="OKX trades into one-minute order-flow bars.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for register in REGISTRARS:
        register(sub)
    for command in sub.choices.values():
        # Also after the subcommand (vstream replay -q ...). SUPPRESS: when absent there, the
        # subcommand's parse must not reset a -q given before it.
        command.add_argument(
            "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only errors on stderr"
        )
    return parser


class _Version(argparse.Action):
    """``--version``: the installed package's version (looked up only when asked: start-up)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None) -> None:  # fmt: skip
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        print(f"vstream {package_version()}", flush=True)
        parser.exit()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vstream`` command; returns the exit status."""
    try:
        status = _main(argv)
        sys.stdout.flush()  # here, not at interpreter exit, where a closed pipe is only noise
    except BrokenPipeError as exc:
        return _failed(exc)
    return status


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    except Exception as exc:
        # A converter raising past argparse: a ConfigError is a usage error (exit 2), anything
        # else a bug (exit 1); either way one line, never a traceback.
        return _failed(exc)
    logging.basicConfig(
        level=logging.ERROR if args.quiet else logging.WARNING,
        format="vstream: %(message)s",
        stream=sys.stderr,
    )
    handler: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = args.handler
    try:
        if not getattr(args, "releases_interrupts", False):
            _interrupts.release()  # a Ctrl-C held back while the commands loaded ends the run here
        return run_async(lambda: handler(args))
    except KeyboardInterrupt:
        return report(KeyboardInterrupt())
    except Exception as exc:
        return _failed(exc)


def _failed(exc: BaseException) -> int:
    """The exit status of a failure, reported on stderr; stdout's reader going away early
    (``vstream signals ... | head -1``) is none: exit quietly."""
    if stdout_closed(exc):
        return PIPE_CLOSED_EXIT
    return report(exc)


__all__ = ["build_parser", "main"]
