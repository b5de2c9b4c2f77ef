"""The vault replay source: reads an instrument's trade files from where the last run stopped."""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import msgspec

from ..errors import ConfigError, RejectError, SourceError, StateError
from ..instruments import VaultPaths
from ..state import FilePos
from ..trades import LineDecoder, Reject
from . import Batch

_DAY_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.jsonl(\.gz)?$")
_BOM = b"\xef\xbb\xbf"
#: A longer line is rejected without being held in memory whole.
MAX_LINE_BYTES = 4 << 20
_TAIL = 64


class _Reader(Protocol):
    async def read(self, size: int) -> bytes: ...

    async def readinto(self, buffer: bytearray, at: int, size: int) -> int: ...


class _FileReader:
    """Reads a plain file straight into the caller's buffer, in the calling thread.

    A chunk comes from the page cache in a fraction of the time its decoding takes, and a
    hop to a worker thread per chunk cost more than it saved (each one waits for the GIL,
    which the decoding holds): measured with ``python -m bench``.
    """

    def __init__(self, path: Path, offset: int) -> None:
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        try:
            self._file.seek(offset)
        except BaseException:
            self._file.close()
            raise

    async def read(self, size: int) -> bytes:
        return self._file.read(size) or b""

    async def readinto(self, buffer: bytearray, at: int, size: int) -> int:
        with memoryview(buffer) as view:
            return self._file.readinto(view[at : at + size]) or 0

    def close(self) -> None:
        self._file.close()


class _GzipReader:
    """Decompresses in a worker thread so the event loop stays free."""

    def __init__(self, path: Path) -> None:
        self._file = gzip.open(path, "rb")  # noqa: SIM115 - closed in close()

    async def read(self, size: int) -> bytes:
        return await asyncio.to_thread(self._file.read, size)

    async def readinto(self, buffer: bytearray, at: int, size: int) -> int:
        data = await self.read(size)
        buffer[at : at + len(data)] = data
        return len(data)

    def close(self) -> None:
        self._file.close()


def day_files(raw_dir: Path) -> list[tuple[str, Path]]:
    """The ``(date, path)`` of each trade file in ``raw_dir``, in name order.

    A day present both as ``.jsonl`` and ``.jsonl.gz`` is ambiguous and a :class:`SourceError`.
    """
    try:
        names = sorted(os.listdir(raw_dir))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SourceError(f"cannot list {raw_dir}: {exc.strerror or exc}") from exc
    found: dict[str, Path] = {}
    for name in names:
        match = _DAY_FILE.match(name)
        if not match:
            continue
        day = match.group(1)
        if day in found:
            raise SourceError(
                f"{raw_dir}: both {found[day].name} and {name} exist; keep one of them"
            )
        found[day] = raw_dir / name
    return sorted(found.items())


class ReplaySource:
    """Reads ``raw/okx/trades_*/{INSTID}/{DATE}.jsonl[.gz]`` in name order, in chunks.

    Only lines whose newline has been written are consumed; a trailing partial line of the
    newest file is left for the next run unless ``final`` says the input is complete (older
    files and ``.gz`` archives are complete by definition). Each yielded :class:`Batch` carries
    the position after it: a ``{date: FilePos}`` mapping.
    """

    live = False

    def __init__(
        self,
        vault: str | os.PathLike[str],
        inst_id: str,
        *,
        final: bool = False,
        strict: bool = False,
        chunk_bytes: int = 1 << 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if chunk_bytes < 1024:
            raise ConfigError("chunk_bytes must be at least 1024")
        self.paths = VaultPaths.of(Path(vault), inst_id)
        self.inst_id = inst_id
        self.final = final
        self.strict = strict
        self.chunk_bytes = chunk_bytes
        self._clock = clock
        self._files: dict[str, FilePos] = {}
        self._decoder = LineDecoder(inst_id)
        self._closed = False

    @property
    def inst_ids(self) -> tuple[str, ...]:
        return (self.inst_id,)

    def resume(self, positions: Mapping[str, Any]) -> None:
        saved = positions.get(self.inst_id)
        self._files = dict(saved) if saved else {}

    def snapshot(self) -> dict[str, Any]:
        return {self.inst_id: dict(self._files)}

    async def aclose(self) -> None:
        self._closed = True

    def __aiter__(self) -> AsyncIterator[Batch]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Batch]:
        files = await asyncio.to_thread(day_files, self.paths.raw_dir)
        present = {day for day, _ in files}
        for day, pos in self._files.items():
            if day not in present and pos.offset > 0:
                raise StateError(
                    f"{self.inst_id}: input file {pos.name} was consumed up to byte {pos.offset} "
                    f"but is gone; run again with --rebuild to start over"
                )
        newest = files[-1][0] if files else None
        for day, path in files:
            if self._closed:
                return
            complete = path.name.endswith(".gz") or day != newest or self.final
            async for batch in self._read_file(day, path, complete):
                yield batch
        if self.final:
            yield Batch(self.inst_id, [], position=dict(self._files), end=True)

    def _changed(self, pos: FilePos, what: str) -> StateError:
        return StateError(
            f"{self.inst_id}: input file {pos.name} {what} since it was consumed up to byte "
            f"{pos.offset}; run again with --rebuild to start over"
        )

    async def _read_file(self, day: str, path: Path, complete: bool) -> AsyncIterator[Batch]:
        pos = self._files.get(day) or FilePos(name=path.name)
        gz = path.name.endswith(".gz")
        try:
            st = await asyncio.to_thread(path.stat)
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if gz and pos.complete and pos.size == st.st_size and pos.mtime_ns == st.st_mtime_ns:
            return
        if not gz:
            if st.st_size < pos.offset:
                raise self._changed(pos, f"is now shorter ({st.st_size} bytes)")
            tail = b""
            if pos.offset > 0:
                tail = await asyncio.to_thread(self._read_tail, path, pos)
            if st.st_size == pos.offset:
                return
        pos = msgspec.structs.replace(pos, name=path.name)
        try:
            if gz:
                reader = _GzipReader(path)
                try:
                    tail = await self._skip_to(reader, pos)
                    async for batch in self._chunks(day, reader, pos, complete, None, tail):
                        yield batch
                finally:
                    reader.close()
                done = self._files.get(day, pos)
                self._files[day] = msgspec.structs.replace(
                    done, size=st.st_size, mtime_ns=st.st_mtime_ns, complete=True
                )
                # Saved with the next checkpoint, so later runs skip the archive unopened.
                yield Batch(self.inst_id, [], position=dict(self._files))
            else:
                plain = _FileReader(path, pos.offset)
                try:
                    async for batch in self._chunks(day, plain, pos, complete, st.st_size, tail):
                        yield batch
                finally:
                    plain.close()
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise SourceError(f"cannot read {path}: {exc}") from exc

    def _read_tail(self, path: Path, pos: FilePos) -> bytes:
        start = max(0, pos.offset - _TAIL)
        with open(path, "rb") as handle:
            handle.seek(start)
            tail = handle.read(pos.offset - start)
        if zlib.crc32(tail) != pos.tail_crc:
            raise self._changed(pos, "was replaced or rewritten")
        return tail

    async def _skip_to(self, reader: _Reader, pos: FilePos) -> bytes:
        remaining = pos.offset
        tail = b""
        while remaining > 0:
            data = await reader.read(min(remaining, self.chunk_bytes))
            if not data:
                raise self._changed(pos, "is now shorter")
            remaining -= len(data)
            tail = (tail + data)[-_TAIL:]
        if zlib.crc32(tail) != pos.tail_crc:
            raise self._changed(pos, "was replaced or rewritten")
        return tail

    async def _chunks(
        self,
        day: str,
        reader: _Reader,
        pos: FilePos,
        complete: bool,
        limit: int | None,
        tail: bytes,
    ) -> AsyncIterator[Batch]:
        """Yield a batch per chunk of complete lines; ``tail`` is the 64 bytes before ``pos``.

        One buffer serves the whole file: each read lands after the partial line the last
        chunk left, the complete lines are decoded where they lie, and the partial line moves
        to the front. No per-chunk copies or fresh allocations (each would fault its pages in).
        """
        offset = pos.offset
        line_no = pos.lines
        # Reads fill the buffer up, so what follows the last complete line is only ever a
        # partial line (the decoder's passes over the buffer cover nothing stale).
        buffer = bytearray(self.chunk_bytes)
        fill = 0  # bytes in the buffer: a partial line, then what the last read gave
        # A line longer than MAX_LINE_BYTES is skipped, not buffered; the offset stays at its
        # start until its newline is seen, so a run stopped meanwhile reads it again.
        skip_len = 0
        skip_head = b""
        skip_tail = b""
        to_read = None if limit is None else limit - offset
        while not self._closed:
            if fill == len(buffer):  # one line fills it: make room (up to MAX_LINE_BYTES)
                buffer.extend(bytes(len(buffer)))
            # No read is longer than the line limit, so only a line carried over from earlier
            # reads can exceed it (checked below): the limit does not depend on chunking.
            size = min(len(buffer) - fill, self.chunk_bytes, MAX_LINE_BYTES)
            if to_read is not None:
                size = min(size, to_read)
            got = await reader.readinto(buffer, fill, size) if size > 0 else 0
            if to_read is not None:
                to_read -= got
            eof = got == 0
            fill += got
            rejects: list[Reject] = []
            start = 0
            if skip_len:
                newline = buffer.find(b"\n", 0, fill)
                if newline < 0 and not (eof and complete):
                    skip_len += fill
                    skip_tail = (skip_tail + buffer[max(0, fill - _TAIL) : fill])[-_TAIL:]
                    fill = 0
                    if eof:
                        return
                    continue
                start = fill if newline < 0 else newline + 1
                line_no += 1
                rejects.append(self._too_long(pos, line_no, skip_head))
                offset += skip_len + start
                tail = (tail + skip_tail + buffer[max(0, start - _TAIL) : start])[-_TAIL:]
                skip_len = 0
            cut = buffer.rfind(b"\n", start, fill)
            if eof and complete and fill > start and cut != fill - 1:
                stop = fill  # the input is complete: an unterminated last line counts too
            elif cut < 0:
                stop = start
            else:
                stop = cut + 1
            if stop > start:
                first = buffer.find(b"\n", start, stop)
                end = stop if first < 0 else first + 1
                if end - start - (first >= 0) > MAX_LINE_BYTES:
                    line_no += 1
                    rejects.append(self._too_long(pos, line_no, bytes(buffer[start : start + 4000])))
                    offset += end - start
                    tail = (tail + buffer[max(start, end - _TAIL) : end])[-_TAIL:]
                    start = end
            if fill - stop > MAX_LINE_BYTES:
                skip_len = fill - stop
                skip_head = bytes(buffer[stop : stop + 4000])
                skip_tail = bytes(buffer[fill - _TAIL : fill])
            if stop > start or rejects:
                batch, lines = self._decode(pos, buffer, start, stop, offset, line_no)
                batch.rejects[:0] = rejects
                offset += stop - start
                line_no += lines
                tail = (tail + buffer[max(start, stop - _TAIL) : stop])[-_TAIL:]
                self._files[day] = msgspec.structs.replace(
                    pos, offset=offset, lines=line_no, tail_crc=zlib.crc32(tail)
                )
                batch.position = dict(self._files)
                if self.strict and batch.rejects:
                    raise self._strict(batch.rejects[0])
                yield batch
            if eof:
                return
            # The partial line (unless it is being skipped) moves to the front.
            keep = 0 if skip_len else fill - stop
            buffer[:keep] = buffer[fill - keep : fill]
            fill = keep
            if len(buffer) > self.chunk_bytes >= 2 * fill:
                del buffer[self.chunk_bytes :]  # the long line is done: back to one chunk
            # Plain reads do not suspend: let the loop run between chunks, so other tasks
            # stay responsive and the batch just made is taken while it is still in cache.
            await asyncio.sleep(0)

    def _decode(
        self, pos: FilePos, buffer: bytearray, start: int, stop: int, offset: int, line_no: int
    ) -> tuple[Batch, int]:
        """The batch of the lines in ``buffer[start:stop]`` and how many lines they were."""
        bom_only = False
        if offset == 0 and buffer.startswith(_BOM, start, stop):
            start += len(_BOM)
            bom_only = start == stop  # still one (unterminated, empty) line
        # The chunk goes to the decoder where it lies, as one span: no per-line objects on
        # the fast path, and the decoder counts the lines (a second scan is not free).
        decoded = self._decoder.decode_body(
            buffer,
            file=pos.name,
            first_line=line_no + 1,
            now_ms=int(self._clock() * 1000),
            start=start,
            end=stop,
        )
        batch = Batch(self.inst_id, decoded.trades, decoded.rejects, decoded.skipped, position=None)
        return batch, 1 if bom_only else decoded.lines

    @staticmethod
    def _too_long(pos: FilePos, line_no: int, head: bytes) -> Reject:
        raw = head.decode("utf-8", "replace")[:1000]
        return Reject(pos.name, line_no, f"line longer than {MAX_LINE_BYTES} bytes", raw)

    def _strict(self, reject: Reject) -> RejectError:
        return RejectError(f"{self.inst_id}: {reject.file} line {reject.line}: {reject.error} (--strict)")
