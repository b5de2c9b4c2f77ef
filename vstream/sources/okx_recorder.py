"""``vstream live --record``: append delivered trades to the vault's raw files.

Every delivered trade is appended, as the line the protocol made of it (the flat OKX object it
arrived as, a wrapped late one, or an exporter line), to
``raw/okx/trades_*/{INSTID}/{DATE}.jsonl`` and flushed *before* the batch carrying it is yielded; :meth:`Recorder.sync` (the engine calls the source's
``sync`` before it commits the state) fsyncs it. The position is the replay source's
(``{day: FilePos}``), so ``replay`` continues where live stopped and the other way round.

A trade is written to the file of its UTC day, except that the recorder never goes back to an
older file than one it already wrote (such a trade is late anyway), so a replay reads the lines
in the order live saw them.

An exporter line of a trade late only by the wall clock gets a late mark
(:mod:`vstream.sources.late_marks`), appended, flushed and fsynced before its line is written;
:meth:`Recorder.prepare` removes the marks of lines a killed recorder never wrote.

Before recording, the source catches the raw files up from the saved position with the replay
reader; :meth:`Recorder.prepare` then cuts a torn last line (a recorder killed mid-write) and
:meth:`Recorder.last_recorded` finds the newest trade when the catch-up replayed none.

The methods do blocking file I/O; the shell runs the slow ones (``prepare``,
``last_recorded``, ``sync``'s fsyncs) in a worker thread, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from io import BufferedWriter
from pathlib import Path
from typing import Final

import msgspec

from ..errors import SourceError
from ..instruments import VaultPaths
from ..state import FilePos
from ..trades import LineDecoder
from . import late_marks
from .late_marks import LateMark
from .replay import day_files

log = logging.getLogger("vstream")

#: Bytes of a file's end kept for the position's ``tail_crc`` (as the replay source does).
_TAIL: Final = 64
#: How far back from the saved offset :meth:`Recorder.last_recorded` looks.
_LOOK_BACK: Final = 256 << 10


@dataclass(slots=True)
class _Track:
    """One instrument's raw files as far as this recorder goes."""

    inst_id: str
    raw_dir: Path
    marks_path: Path
    files: dict[str, FilePos] = field(default_factory=dict)
    tails: dict[str, bytes] = field(default_factory=dict)
    handle: BufferedWriter | None = None
    handle_day: str = ""
    dirty: set[str] = field(default_factory=set)
    rec_day: str = ""
    marks: BufferedWriter | None = None


def _utc_day(ts_ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts_ms // 1000))


class Recorder:
    """Raw-file writer of ``inst_ids`` in ``vault`` (the constructor does no I/O)."""

    def __init__(self, vault: Path, inst_ids: Sequence[str]) -> None:
        self.vault = vault
        self._tracks = {}
        for inst_id in inst_ids:
            paths = VaultPaths.of(vault, inst_id)
            self._tracks[inst_id] = _Track(inst_id, paths.raw_dir, paths.late_marks)
        self._new_dirs: set[Path] = set()

    def position(self, inst_id: str) -> dict[str, FilePos]:
        """Where a replay resumes after the lines written so far (a copy)."""
        return dict(self._tracks[inst_id].files)

    def snapshot(self) -> dict[str, dict[str, FilePos]]:
        """:meth:`position` of every instrument."""
        return {i: dict(t.files) for i, t in self._tracks.items()}

    # -- getting ready --------------------------------------------------------------------

    def start(self, inst_id: str, files: Mapping[str, FilePos]) -> None:
        """Record after ``files``: the position the catch-up replay ended at."""
        self._tracks[inst_id].files = dict(files)

    def prepare(self, inst_id: str) -> None:
        """Continue the newest day file; cut a torn last line (no newline) past the position
        off each plain file, so that appended lines start on a line of their own."""
        track = self._tracks[inst_id]
        files = day_files(track.raw_dir)
        if files:
            track.rec_day = files[-1][0]
        unread = [
            path for day, path in files
            if not path.name.endswith(".gz")
            and path.stat().st_size > (track.files[day].offset if day in track.files else 0)
        ]  # fmt: skip
        if len(unread) > 1:
            # Replay stopped at a torn line of an earlier file: the later files hold whole
            # lines, not a killed recorder's torn write, and must never be cut.
            raise SourceError(
                f"{inst_id}: cannot record: {unread[0]} ends in a torn line and later day files "
                f"follow it; finish that line (or end it with a newline) and start again"
            )
        for day, path in files:
            if path.name.endswith(".gz"):
                continue
            pos = track.files.get(day)
            offset = pos.offset if pos is not None else 0
            size = path.stat().st_size
            if size > offset:
                # Only a torn last line (no newline) is left unconsumed by the catch-up.
                log.warning(
                    "%s: cutting a torn last line (%d bytes) off %s before recording",
                    inst_id, size - offset, path,
                )
                with open(path, "r+b") as handle:
                    handle.truncate(offset)
                    handle.flush()
                    os.fsync(handle.fileno())
            if offset > 0:
                with open(path, "rb") as handle:
                    handle.seek(max(0, offset - _TAIL))
                    track.tails[day] = handle.read(offset - max(0, offset - _TAIL))
        # Marks of lines never written (killed between a mark and its line, or its line was
        # the torn one just cut) must go before a line is appended where they point.
        sizes = {
            day: (1 << 62) if path.name.endswith(".gz") else path.stat().st_size
            for day, path in files
        }
        gone = late_marks.prune(track.marks_path, sizes)
        if gone:
            log.warning(
                "%s: removed %d late marks of lines that were never written from %s",
                inst_id, gone, track.marks_path,
            )

    def last_recorded(self, inst_id: str, now_ms: int) -> tuple[int, int] | None:
        """The id and time of the newest trade before the saved offset of the newest file."""
        track = self._tracks[inst_id]
        decoder = LineDecoder(inst_id)
        for day in sorted(track.files, reverse=True):
            pos = track.files[day]
            if pos.offset <= 0 or pos.name.endswith(".gz"):
                continue
            start = max(0, pos.offset - _LOOK_BACK)
            try:
                with open(track.raw_dir / pos.name, "rb") as handle:
                    handle.seek(start)
                    blob = handle.read(pos.offset - start)
            except OSError:
                return None
            lines = blob.split(b"\n")
            if start > 0:
                lines = lines[1:]
            decoded = decoder.decode(
                [line for line in lines if line.strip()],
                file=pos.name,
                first_line=0,
                now_ms=now_ms,
            )
            if decoded.trades:
                best = max(decoded.trades, key=lambda t: int(t.tradeId))
                return int(best.tradeId), best.ts
        return None

    # -- recording ------------------------------------------------------------------------

    def write(
        self,
        inst_id: str,
        lines: Sequence[tuple[int, bytes]],
        late: Sequence[tuple[int, str]] = (),
    ) -> None:
        """Append ``(trade ts, line)`` pairs, each to the file of its day, and flush.

        ``late`` names lines (``(index in lines, tradeId)``) to give a late mark: each mark is
        made durable before its line is written."""
        if not lines:
            return
        track = self._tracks[inst_id]
        late_ids = dict(late)
        dated: list[tuple[str, bytes]] = []
        for ts, line in lines:
            day = _utc_day(ts)
            if day < track.rec_day:
                day = track.rec_day
            track.rec_day = day
            dated.append((day, line))
        start = 0
        while start < len(dated):
            day = dated[start][0]
            end = start
            while end < len(dated) and dated[end][0] == day:
                end += 1
            if late_ids:
                self._mark(track, day, lines, start, end, late_ids)
            data = b"".join(line for _, line in dated[start:end])
            self._append(track, day, data, end - start)
            start = end

    def _mark(
        self,
        track: _Track,
        day: str,
        lines: Sequence[tuple[int, bytes]],
        start: int,
        end: int,
        late_ids: Mapping[int, str],
    ) -> None:
        """Make the late marks of ``lines[start:end]`` (about to go to ``day``'s file) durable."""
        pos = track.files.get(day)
        offset = pos.offset if pos is not None else 0
        marks: list[LateMark] = []
        for index in range(start, end):
            ts, line = lines[index]
            tid = late_ids.get(index)
            if tid is not None:
                marks.append(LateMark(file=f"{day}.jsonl", tradeId=tid, ts=ts, offset=offset))
            offset += len(line)
        if not marks:
            return
        path = track.marks_path
        try:
            new = track.marks is None and not path.exists()
            if track.marks is None:
                path.parent.mkdir(parents=True, exist_ok=True)
                track.marks = open(path, "ab")  # noqa: SIM115 - kept open across batches
            track.marks.write(late_marks.encode(marks))
            track.marks.flush()
            # Rare (a trade late by the clock), and a mark must never be missing for a line.
            os.fsync(track.marks.fileno())
            if new:
                _fsync_dir(path.parent)
        except OSError as exc:
            raise SourceError(
                f"{track.inst_id}: cannot write late marks to {path}: {exc.strerror or exc}"
            ) from exc

    def _append(self, track: _Track, day: str, data: bytes, count: int) -> None:
        path = track.raw_dir / f"{day}.jsonl"
        try:
            if track.handle is None or track.handle_day != day:
                if track.handle is not None:
                    track.handle.flush()
                    os.fsync(track.handle.fileno())
                    track.handle.close()
                    track.handle = None
                if (track.raw_dir / f"{day}.jsonl.gz").exists():
                    raise SourceError(
                        f"{track.inst_id}: cannot record into {path}: {day} is already "
                        "archived as .jsonl.gz"
                    )
                if not track.raw_dir.is_dir():
                    track.raw_dir.mkdir(parents=True, exist_ok=True)
                    self._new_dirs.add(track.raw_dir.parent)
                if not path.exists():
                    self._new_dirs.add(track.raw_dir)
                track.handle = open(path, "ab")  # noqa: SIM115 - kept open across batches
                track.handle_day = day
            track.handle.write(data)
            track.handle.flush()
        except OSError as exc:
            raise SourceError(
                f"{track.inst_id}: cannot record into {path}: {exc.strerror or exc}"
            ) from exc
        track.dirty.add(day)
        pos = track.files.get(day) or FilePos(name=path.name)
        tail = (track.tails.get(day, b"") + data)[-_TAIL:]
        track.tails[day] = tail
        track.files[day] = msgspec.structs.replace(
            pos, offset=pos.offset + len(data), lines=pos.lines + count, tail_crc=zlib.crc32(tail)
        )

    # -- durability -----------------------------------------------------------------------

    async def sync(self) -> None:
        """fsync what was appended since the last call, and the folders created for it."""
        for track in self._tracks.values():
            handle = track.handle
            if handle is not None and track.dirty:
                track.dirty.clear()
                await asyncio.to_thread(os.fsync, handle.fileno())
        dirs, self._new_dirs = self._new_dirs, set()
        for folder in dirs:
            await asyncio.to_thread(_fsync_dir, folder)

    def close(self) -> None:
        """Flush, fsync and close the open files (idempotent)."""
        for track in self._tracks.values():
            if track.marks is not None:
                track.marks.close()  # flushed and fsynced at each write
                track.marks = None
            if track.handle is not None:
                with contextlib.suppress(OSError):
                    track.handle.flush()
                    os.fsync(track.handle.fileno())
                track.handle.close()
                track.handle = None


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = ["Recorder"]
