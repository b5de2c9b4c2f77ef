"""``python -m vstream`` and the ``vstream`` command (its entry point is :func:`main`)."""

from __future__ import annotations

import signal
import sys

from . import _interrupts


def main() -> int:
    """Run the command line on ``sys.argv``; return the exit status.

    Ctrl-C is held back while the commands load (see :mod:`vstream._interrupts`), and
    ignored once the command is over: its output is written and its status decided, and an
    interrupt during the interpreter's shutdown (joining threads, exit handlers) would only
    print a traceback.
    """
    _interrupts.hold()
    try:
        from .cli import main as command

        status = command()
    except KeyboardInterrupt:  # where SIGINT cannot be held (Windows), or at the very end
        print("vstream: interrupted", file=sys.stderr, flush=True)
        status = 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
