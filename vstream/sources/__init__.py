"""Sources: async iterators of trade batches, with a resume position.

A source is any object with:

* ``inst_ids`` — the instruments it delivers;
* ``resume(positions)`` — called once before iteration with the saved position per instrument
  (``None`` when starting fresh);
* ``__aiter__`` — yields :class:`Batch` objects;
* ``snapshot()`` — the position after the last batch yielded, per instrument;
* ``aclose()`` — releases what it holds; safe to call twice;
* optionally ``check_input()`` — called (in a worker thread) by the engine before it locks or creates
  anything; raises :class:`~vstream.errors.ConfigError` when the source has nothing to read;
* optionally ``realtime = True`` — it delivers trades as they happen (a websocket): alerts made
  from them are never history, and the engine watches its instruments for silence.

Constructors validate their arguments and do no I/O.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..trades import Reject, Trade


@dataclass(slots=True)
class Batch:
    """Trades of one instrument, with what else the source met on the way.

    ``position`` is where to resume after this batch (opaque to the engine, saved in the state).
    ``end`` marks the last batch of an input known to be complete: the engine then finishes the
    open bars. ``gap`` asks the engine to flag the open minute as incomplete (live sources).
    ``now_ms`` (live sources that close minutes in-band) is the wall clock at this point of the
    stream: before feeding the trades the engine closes the minutes that are ``grace`` past
    their end at that time, so wall-clock closes are ordered with the trades.
    """

    inst_id: str
    trades: list[Trade]
    rejects: list[Reject] = field(default_factory=list)
    skipped: int = 0
    position: Any = None
    end: bool = False
    gap: bool = False
    now_ms: int | None = None


@runtime_checkable
class Source(Protocol):
    """What the engine needs of a source."""

    @property
    def inst_ids(self) -> tuple[str, ...]: ...

    def resume(self, positions: Mapping[str, Any]) -> None: ...

    def __aiter__(self) -> AsyncIterator[Batch]: ...

    def snapshot(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


__all__ = ["Batch", "Source"]
