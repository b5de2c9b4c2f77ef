"""Progress on long replays and imports: one self-rewriting line on a terminal, nothing otherwise.

The display goes to stderr and only when stderr is a terminal, so logs, pipes and schedulers
never see carriage returns. It shows how much of the work is done, the rate and the time left.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol, TextIO

from .sources import Batch
from .sources.replay import day_files
from .state import FilePos


class _Stream(Protocol):
    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...

    def isatty(self) -> bool: ...


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover - loop always returns


def _count(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e4:
        return f"{n / 1e3:.0f}k"
    return f"{n:.0f}"


def _clock_text(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Progress:
    """A one-line progress display: ``label  42.0%  1.2/2.9 GB  310k trades/s  ETA 0:01:05``.

    Work is counted in bytes (``add_total`` / ``advance``), and optionally in items (trades,
    rows) for the rate. It draws at most every ``interval`` seconds, and only when ``stream``
    (stderr by default) is a terminal; otherwise every call is a cheap no-op.
    """

    def __init__(
        self,
        label: str,
        *,
        items: str = "trades",
        stream: _Stream | TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 0.5,
        enabled: bool | None = None,
    ) -> None:
        self.label = label
        self.items_name = items
        self._stream = stream if stream is not None else sys.stderr
        if enabled is None:
            try:
                enabled = bool(self._stream.isatty())
            except (AttributeError, ValueError, OSError):
                enabled = False
        self.enabled = enabled
        self._clock = clock
        self._interval = interval
        self._started = clock()
        self._last_draw = -float("inf")
        self._width = 0
        self.total = 0
        self.done = 0
        self.items = 0

    def add_total(self, nbytes: int) -> None:
        """Announce more work (bytes still to be processed)."""
        self.total += max(0, nbytes)

    def advance(self, nbytes: int = 0, items: int = 0) -> None:
        """Record work done since the last call; redraw if the interval has passed."""
        self.done += nbytes
        self.items += items
        if self.enabled:
            now = self._clock()
            if now - self._last_draw >= self._interval:
                self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The text of the display as of ``now``."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._started, 1e-9)
        parts = [self.label]
        done = min(self.done, self.total) if self.total else self.done
        if self.total:
            parts.append(f"{100.0 * done / self.total:5.1f}%")
            parts.append(f"{_size(done)}/{_size(self.total)}")
        else:
            parts.append(_size(done))
        if self.items:
            parts.append(f"{_count(self.items)} {self.items_name}")
            parts.append(f"{_count(self.items / elapsed)} {self.items_name}/s")
        else:
            parts.append(f"{_size(done / elapsed)}/s")
        if self.total and done > 0:
            left = (self.total - done) * elapsed / done
            parts.append(f"ETA {_clock_text(left)}")
        return "  ".join(parts)

    def _draw(self, now: float) -> None:
        text = self.line(now)
        pad = max(0, self._width - len(text))
        self._width = len(text)
        try:
            self._stream.write("\r" + text + " " * pad)
            self._stream.flush()
        except (OSError, ValueError):
            self.enabled = False  # a closed or broken terminal must not fail the run
        self._last_draw = now

    def close(self) -> None:
        """Draw the final state and end the line (only if anything was drawn)."""
        if self.enabled and self._width:
            self._draw(self._clock())
            try:
                self._stream.write("\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass
        self.enabled = False


def _work(pos: FilePos, size: int, gz: bool) -> int:
    """Bytes of a day file counted as done at ``pos`` (a ``.gz`` counts whole once complete)."""
    if gz:
        return size if pos.complete else 0
    return min(pos.offset, size)


class ProgressSource:
    """Wraps a replay source and reports how far through its trade files it has got.

    It delegates everything to the wrapped source and only looks at each batch's position
    on the way through, so the replay itself is unchanged.
    """

    def __init__(self, source: Any, progress: Progress) -> None:
        self._source = source
        self._progress = progress
        self._sizes: dict[str, tuple[int, bool]] = {}
        self._base: dict[str, int] = {}
        self._reported = 0

    @property
    def inst_ids(self) -> tuple[str, ...]:
        ids: tuple[str, ...] = self._source.inst_ids
        return ids

    @property
    def live(self) -> bool:
        return bool(getattr(self._source, "live", False))

    def check_input(self) -> None:
        check = getattr(self._source, "check_input", None)
        if check is not None:
            check()

    def resume(self, positions: Mapping[str, Any]) -> None:
        self._source.resume(positions)
        raw_dir = self._source.paths.raw_dir
        saved: Mapping[str, FilePos] = positions.get(self._source.inst_id) or {}
        total = 0
        for day, path in day_files(raw_dir):
            try:
                size = path.stat().st_size
            except OSError:
                continue
            gz = path.name.endswith(".gz")
            self._sizes[day] = (size, gz)
            pos = saved.get(day)
            total += size - (_work(pos, size, gz) if pos is not None else 0)
        self._base = {d: _work(p, *self._sizes[d]) for d, p in saved.items() if d in self._sizes}
        self._progress.add_total(total)

    def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = self._source.snapshot()
        return snap

    async def aclose(self) -> None:
        await self._source.aclose()

    def __aiter__(self) -> AsyncIterator[Batch]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Batch]:
        async for batch in self._source:
            done = 0
            if isinstance(batch.position, dict):
                for day, pos in batch.position.items():
                    size, gz = self._sizes.get(day, (pos.offset, False))
                    done += _work(pos, size, gz) - self._base.get(day, 0)
            step = max(0, done - self._reported)
            self._reported = max(self._reported, done)
            self._progress.advance(step, len(batch.trades))
            yield batch
