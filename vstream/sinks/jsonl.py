"""Append-only JSON-lines files made durable on demand (bars, rejects)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiofiles
import msgspec
from aiofiles.threadpool.binary import AsyncBufferedIOBase

from ..errors import SinkError

_encoder = msgspec.json.Encoder()


class JsonlSink:
    """Appends each record (a bar, a reject) as one JSON line to ``path``.

    With ``autoflush`` (the default, for use as a plain sink) every :meth:`write` reaches the
    disk before it returns. The engine's own vault files use ``autoflush=False``: records are
    buffered and made durable together at a checkpoint (:meth:`take` then :meth:`append`, or
    :meth:`flush`), which returns the file's length for the state to record. A failing write
    raises :class:`SinkError`; bytes it may have left past the last recorded length are cut
    back by the next run (SPEC §7).
    """

    def __init__(self, path: str | os.PathLike[str], *, autoflush: bool = True) -> None:
        self.path = Path(path)
        self.autoflush = autoflush
        self._buffer: list[Any] = []
        self._handle: AsyncBufferedIOBase | None = None
        self._length: int | None = None
        self.written = 0

    @property
    def length(self) -> int | None:
        """Bytes in the file after the last append (None before the first)."""
        return self._length

    async def write(self, record: Any) -> None:
        self._buffer.append(record)
        if self.autoflush:
            await self.flush()

    def buffer(self, records: list[Any]) -> None:
        """Queue records for the next :meth:`take` (no I/O)."""
        self._buffer.extend(records)

    def take(self) -> bytes:
        """Encode and remove what is buffered, to be passed to :meth:`append`."""
        if not self._buffer:
            return b""
        data = _encoder.encode_lines(self._buffer)
        self._buffer.clear()
        return data

    async def append(self, data: bytes) -> int:
        """Append ``data``, flush and fsync; return the file's length."""
        try:
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = await aiofiles.open(self.path, "ab")
                self._length = await asyncio.to_thread(os.path.getsize, self.path)
            if data:
                await self._handle.write(data)
                await self._handle.flush()
                self._length = (self._length or 0) + len(data)
                self.written += data.count(b"\n")
            await asyncio.to_thread(os.fsync, self._handle.fileno())
        except OSError as exc:
            raise SinkError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        assert self._length is not None
        return self._length

    async def flush(self) -> int:
        """Make everything written so far durable; return the file's length."""
        return await self.append(self.take())

    async def aclose(self) -> None:
        """Flush what is buffered and close the file."""
        try:
            if self._buffer:
                await self.flush()
        finally:
            handle, self._handle = self._handle, None
            if handle is not None:
                try:
                    await handle.close()
                except OSError as exc:
                    raise SinkError(f"cannot close {self.path}: {exc.strerror or exc}") from exc

    def discard(self) -> None:
        """Drop buffered records (they were never made durable)."""
        self._buffer.clear()
