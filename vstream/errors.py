"""Typed errors. Every error vstream raises derives from :class:`VStreamError`.

Third-party exceptions (OS errors, msgspec, websockets) are translated into these only at
I/O boundaries, with the original chained as ``__cause__``.
"""

from __future__ import annotations


class VStreamError(Exception):
    """Root of all vstream errors."""

    #: Process exit status the command line uses for this kind of failure.
    exit_code: int = 1


class ConfigError(VStreamError):
    """Bad settings, usage or environment: fix the configuration and run again (exit 2)."""

    exit_code = 2


class StateError(VStreamError):
    """The saved state does not match the vault: resuming would risk wrong output (exit 2).

    The message names ``--rebuild`` where starting the instrument over is the fix.
    """

    exit_code = 2


class LockedError(StateError):
    """Another process is working on the same instrument."""


class SourceError(VStreamError):
    """A source failed to deliver trades (an unreadable file, a lost connection, ...)."""


class RejectError(SourceError):
    """An input line was rejected while running with ``strict`` set."""


class InputRejectedError(SourceError):
    """A run rejected every input line it read (SPEC §7, "nothing silent"): exit 1."""


class SinkError(VStreamError):
    """A sink failed to write (disk full, read-only folder, a failing user callback)."""


class LeaseLostError(VStreamError):
    """A distributed worker lost an instrument's lease: another worker owns it now.

    Its writes are fenced off by the server; the worker stops working the instrument.
    """


class DeliveryError(VStreamError):
    """An alert could not be delivered to a destination (it stays in the alerts file and is
    sent on the next attempt). The message never holds the destination's URL or token."""
