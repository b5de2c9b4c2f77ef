"""Ctrl-C while the ``vstream`` command starts up (SPEC §8: one line on stderr, exit 1).

Loading the commands takes a noticeable part of a second. A SIGINT landing meanwhile would
raise KeyboardInterrupt wherever the import happens to be: a traceback, and an exit by the
signal itself (status -2), before any of the command's own handling exists. So the command's
entry (:mod:`vstream.__main__`) calls :func:`hold` first: SIGINT is blocked, and one that
comes waits, pending. The command line calls :func:`release` once it can take one; a
pending interrupt is raised there, as KeyboardInterrupt, and ends the run like any other
interrupt. Nothing touched the vault before that point.

POSIX only (``pthread_sigmask``); on Windows both are no-ops and the entry catches a
KeyboardInterrupt raised while loading instead. Kept free of imports beyond ``signal``:
this module loads before the hold is in place.
"""

from __future__ import annotations

import signal

_held = False


def hold() -> None:
    """Block SIGINT in the calling (main) thread, until :func:`release`."""
    global _held
    if hasattr(signal, "pthread_sigmask") and not _held:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        _held = True


def release() -> None:
    """Undo :func:`hold` (if it was called); a SIGINT that came meanwhile is raised here."""
    global _held
    if _held:
        _held = False
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
