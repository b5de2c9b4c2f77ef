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

import aiofiles
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


class _GzipReader:
    """Decompresses in a worker thread so the event loop stays free."""

    def __init__(self, path: Path) -> None:
        self._file = gzip.open(path, "rb")  # noqa: SIM115 - closed in close()

    async def read(self, size: int) -> bytes:
        return await asyncio.to_thread(self._file.read, size)

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
                async with aiofiles.open(path, "rb") as handle:
                    await handle.seek(pos.offset)
                    async for batch in self._chunks(day, handle, pos, complete, st.st_size, tail):
                        yield batch
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
        """Yield a batch per chunk of complete lines; ``tail`` is the 64 bytes before ``pos``."""
        offset = pos.offset
        line_no = pos.lines
        pending = b""
        # A line longer than MAX_LINE_BYTES is skipped, not buffered; the offset stays at its
        # start until its newline is seen, so a run stopped meanwhile reads it again.
        skip_len = 0
        skip_head = b""
        skip_tail = b""
        to_read = None if limit is None else limit - offset
        # The next chunk is read (in a worker thread) while this one is decoded.
        ahead: asyncio.Future[bytes] | None = None
        try:
            while not self._closed:
                size = self.chunk_bytes if to_read is None else min(self.chunk_bytes, to_read)
                if ahead is not None:
                    data, ahead = await ahead, None
                else:
                    data = await reader.read(size) if size > 0 else b""
                if to_read is not None:
                    to_read -= len(data)
                eof = not data
                if not eof:
                    size = self.chunk_bytes if to_read is None else min(self.chunk_bytes, to_read)
                    if size > 0:
                        ahead = asyncio.ensure_future(reader.read(size))
                buffer = pending + data if pending else data
                pending = b""
                rejects: list[Reject] = []
                if skip_len:
                    newline = buffer.find(b"\n")
                    if newline < 0 and not (eof and complete):
                        skip_len += len(buffer)
                        skip_tail = (skip_tail + buffer)[-_TAIL:]
                        if eof:
                            return
                        continue
                    end = len(buffer) if newline < 0 else newline + 1
                    line_no += 1
                    rejects.append(
                        Reject(
                            pos.name,
                            line_no,
                            f"line longer than {MAX_LINE_BYTES} bytes",
                            skip_head.decode("utf-8", "replace")[:1000],
                        )
                    )
                    offset += skip_len + end
                    tail = (tail + skip_tail + buffer[:end])[-_TAIL:]
                    buffer = buffer[end:]
                    skip_len = 0
                cut = buffer.rfind(b"\n")
                if eof and complete and buffer and cut != len(buffer) - 1:
                    body = buffer  # the input is complete: an unterminated last line counts too
                elif cut < 0:
                    body, pending = b"", buffer
                else:
                    body, pending = buffer[: cut + 1], buffer[cut + 1 :]
                if len(pending) > MAX_LINE_BYTES:
                    skip_len, skip_head, skip_tail = len(pending), pending[:4000], pending[-_TAIL:]
                    pending = b""
                if body or rejects:
                    batch, lines = self._decode(pos, body, offset, line_no)
                    batch.rejects[:0] = rejects
                    offset += len(body)
                    line_no += lines
                    tail = (tail + body[-_TAIL:])[-_TAIL:]
                    self._files[day] = msgspec.structs.replace(
                        pos, offset=offset, lines=line_no, tail_crc=zlib.crc32(tail)
                    )
                    batch.position = dict(self._files)
                    if self.strict and batch.rejects:
                        raise self._strict(batch.rejects[0])
                    yield batch
                if eof:
                    return
        finally:
            if ahead is not None:
                # Let a read in flight finish before the caller closes the file under it.
                await asyncio.wait([ahead])
                if not ahead.cancelled():
                    ahead.exception()

    def _decode(self, pos: FilePos, body: bytes, offset: int, line_no: int) -> tuple[Batch, int]:
        """The batch of ``body`` and how many lines it held."""
        bom_only = False
        if offset == 0 and body.startswith(_BOM):
            body = body[len(_BOM) :]
            bom_only = not body  # still one (unterminated, empty) line
        # The whole chunk goes to the decoder as one buffer: no per-line objects on the fast
        # path, and the decoder counts the lines (a second scan of the chunk is not free).
        decoded = self._decoder.decode_body(
            body, file=pos.name, first_line=line_no + 1, now_ms=int(self._clock() * 1000)
        )
        batch = Batch(self.inst_id, decoded.trades, decoded.rejects, decoded.skipped, position=None)
        return batch, 1 if bom_only else decoded.lines

    def _strict(self, reject: Reject) -> RejectError:
        return RejectError(f"{self.inst_id}: {reject.file} line {reject.line}: {reject.error} (--strict)")
