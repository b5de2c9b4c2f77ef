"""The late marks of an exporter-format recording: trades live found late only by the clock.

``vstream live`` closes a minute on the wall clock (``grace`` after its end); a trade of that
minute arriving later is *late* in live, though a replay of the raw files would still take it
(replay closes a minute only when a later trade comes). In OKX format the recorder wraps such a
trade as a ``vstream-late`` event, which replay skips. An exporter line cannot be wrapped: the
trader's other tools build a record from every key of a line, and they must still see the
trade. So it is recorded as a plain exporter line, and its place is noted here, in a file of
vstream's own beside the state (never in the raw trade folder, which holds day files only):

``state/volume/okx/{perps|spot|futures}/{INSTID}.late.jsonl``, one JSON line per such trade:
``{"file": "2025-12-14.jsonl", "tradeId": "1234567890", "ts": 1765748096123, "offset": 5120}``
(``offset``: where its line starts in the file).

The replay source drops exactly those trades (counted as skipped), so a replay of the recording
yields the very bars live yielded. A mark names the day (an archived ``.jsonl.gz`` of it keeps
the offsets) and the trade's line by offset and id, so a trade id recorded again elsewhere (a
refetch after a crash) is not dropped by mistake.

Durability: the recorder appends, flushes and fsyncs a mark *before* it writes the trade's
line, so a mark is never missing for a line that exists (a replay would otherwise put the trade
in a bar live left it out of). A mark whose line was never written (killed in between) points
at or past the end of its file; the recorder removes such marks when it resumes, before it
appends anything there. The ``--rebuild`` of an instrument keeps this file: it describes the
raw files, not the bars.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import msgspec

from ..errors import SourceError
from ..state import write_atomic

log = logging.getLogger("vstream")


class LateMark(msgspec.Struct):
    """One trade that live found late only by the wall clock, where its line is."""

    file: str
    tradeId: str
    ts: int
    offset: int

    @property
    def day(self) -> str:
        return self.file[:10]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(LateMark)


def encode(marks: Iterable[LateMark]) -> bytes:
    """The lines of ``marks``, each ending in ``\\n``."""
    return b"".join(_encoder.encode(m) + b"\n" for m in marks)


def read(path: Path) -> list[LateMark]:
    """The marks in ``path`` (none if it does not exist). A torn last line (a recorder killed
    mid-write: its trade's line was never written) is left out; any other unreadable line is
    left out with a warning. An unreadable file is a :class:`SourceError`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
    marks: list[LateMark] = []
    lines = data.split(b"\n")
    bad = 0
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            marks.append(_decoder.decode(line))
        except msgspec.DecodeError:
            if index < len(lines) - 1:  # the last piece has no newline: torn, never whole
                bad += 1
    if bad:
        log.warning("%s: %d unreadable lines ignored", path, bad)
    return marks


def by_day(marks: Iterable[LateMark]) -> dict[str, dict[int, str]]:
    """``{day: {offset: tradeId}}`` of ``marks``."""
    out: dict[str, dict[int, str]] = {}
    for mark in marks:
        out.setdefault(mark.day, {})[mark.offset] = mark.tradeId
    return out


def prune(path: Path, sizes: Mapping[str, int]) -> int:
    """Remove the marks whose line cannot be in its file: at or past the end of it (``sizes``:
    the byte size of each day's file, by day), or of a day with no file. Rewrites ``path`` atomically
    when anything goes (a torn last line too); returns how many marks went."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
    marks = read(path)
    kept = [m for m in marks if m.offset < sizes.get(m.day, 0)]
    fresh = encode(kept)
    if fresh != data:
        try:
            write_atomic(path, fresh)
        except OSError as exc:
            raise SourceError(f"cannot rewrite {path}: {exc.strerror or exc}") from exc
    return len(marks) - len(kept)


__all__ = ["LateMark", "by_day", "encode", "prune", "read"]
