"""The vault replay source: reads an instrument's trade files from where the last run stopped."""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import re
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import msgspec

from ..errors import ConfigError, RejectError, SourceError, StateError
from ..formats import Format, sniff_file
from ..instruments import DAY_FILE, Kind, VaultPaths, kind_of
from ..state import FilePos
from ..trades import Decoded, LineDecoder, Reject
from . import Batch, late_marks

log = logging.getLogger("vstream")

_BOM = b"\xef\xbb\xbf"
#: A longer line is rejected without being held in memory whole.
MAX_LINE_BYTES = 4 << 20
_TAIL = 64


class _Reader(Protocol):
    async def read(self, size: int) -> bytes: ...


class _FileReader:
    """Reads a plain file in the calling thread.

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

    def close(self) -> None:
        self._file.close()


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
        match = DAY_FILE.match(name)
        if not match:
            continue
        day = match.group(1)
        if day in found:
            raise SourceError(
                f"{raw_dir}: both {found[day].name} and {name} exist; keep one of them"
            )
        found[day] = raw_dir / name
    return sorted(found.items())


#: A name that looks like it holds trades: ``*.json*`` (plain, compressed or renamed) or ``*.gz``.
_TRADE_LIKE = re.compile(r"(?i)\.json|\.gz$")


def ignored_files(raw_dir: Path) -> list[str]:
    """Names of the files in ``raw_dir`` that look like trade files but replay does not read,
    sorted: not named ``{DATE}.jsonl`` or ``{DATE}.jsonl.gz`` (``BTC-USDT-SWAP-2025-01-03.jsonl``,
    ``2025-01-03.json``, ``2025-01-03.jsonl.bak``). Other files (``notes.txt``, ``desktop.ini``)
    and hidden ones (a writer's ``.2025-01-03.jsonl.tmp``) are no concern of replay's."""
    try:
        with os.scandir(raw_dir) as entries:
            names = [
                e.name for e in entries
                if not DAY_FILE.match(e.name) and not e.name.startswith(".")
                and _TRADE_LIKE.search(e.name) and e.is_file()
            ]  # fmt: skip
    except OSError:
        return []  # no folder (yet): nothing is ignored; listing errors surface in day_files
    return sorted(names)


def describe_ignored(names: list[str], limit: int = 5) -> str:
    """``a.jsonl, b.json`` (at most ``limit`` names, then how many more)."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def warn_passed_over(vault: Path) -> None:
    """Log each folder under ``raw/okx/trades_*`` that ``replay --all`` passes over although
    it holds files: none of them named ``{DATE}.jsonl[.gz]``, or a folder name that is not an
    instrument id of that kind (blocking I/O)."""
    for kind in Kind:
        base = vault / "raw" / "okx" / f"trades_{kind.folder}"
        try:
            children = sorted(c for c in base.iterdir() if c.is_dir())
        except OSError:
            continue
        for child in children:
            try:
                named = kind_of(child.name) is kind
            except ConfigError:
                named = False
            try:
                days = any(DAY_FILE.match(name) for name in os.listdir(child))
            except OSError:
                continue
            ignored = ignored_files(child)
            if not named and (days or ignored):
                log.warning(
                    "not replaying %s: %r is not an instrument id for %s (like %s)",
                    child, child.name, base.name, _EXAMPLE[kind],
                )
            elif not days and ignored:
                log.warning(
                    "not replaying %s: none of its files is named YYYY-MM-DD.jsonl or .jsonl.gz (%s)",
                    child, describe_ignored(ignored),
                )


_EXAMPLE = {Kind.SWAP: "BTC-USDT-SWAP", Kind.FUTURES: "BTC-USD-250627", Kind.SPOT: "BTC-USDT"}


def input_files(paths: VaultPaths) -> list[tuple[str, Path]]:
    """The instrument's trade files (see :func:`day_files`); none at all is a :class:`ConfigError`.

    The message names the vault when it does not exist, else the folder that was looked in:
    a typo must not pass for an instrument with nothing to do.
    """
    files = day_files(paths.raw_dir)
    if files:
        return files
    if not paths.vault.is_dir():
        raise ConfigError(f"vault {paths.vault} does not exist")
    what = "no such folder" if not paths.raw_dir.is_dir() else "no YYYY-MM-DD.jsonl or .jsonl.gz file in it"
    ignored = ignored_files(paths.raw_dir)
    if ignored:
        what += f"; it holds {describe_ignored(ignored)}, not named so"
    raise ConfigError(f"{paths.inst_id}: no trade files in {paths.raw_dir} ({what})")


def vault_format(raw_dir: Path) -> Format | None:
    """The line format an instrument's trade files are in: that of the newest file with a
    line of either format (None while there is none)."""
    for _day, path in reversed(day_files(raw_dir)):
        found = sniff_file(path)
        if found is not None:
            return found
    return None


class ReplaySource:
    """Reads ``raw/okx/trades_*/{INSTID}/{DATE}.jsonl[.gz]`` in name order, in chunks.

    Only lines whose newline has been written are consumed. A file whose last line has no
    newline yet (a writer is mid-line, in any day's file) ends the run there: its later files
    are read once that line is whole, so no trade is read out of order or taken for a reject.
    ``final`` says the input is complete: such a line is then processed as it is. A ``.gz``
    archive is a finished file (its last line counts as it is); a truncated archive is a
    :class:`SourceError`. Each yielded :class:`Batch` carries the position after it: a
    ``{date: FilePos}`` mapping.

    An instrument with no trade files (or a vault that does not exist) is a
    :class:`ConfigError`, raised by :meth:`check_input` and on iteration; ``missing_ok`` (for a
    recorder that is about to create the first file) makes that an empty input instead.

    The trades of an exporter-format recording that live found late only by the wall clock,
    named in the instrument's late marks (:mod:`vstream.sources.late_marks`), are dropped and
    counted as skipped: they are in no bar live made either.
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
        missing_ok: bool = False,
    ) -> None:
        if chunk_bytes < 1024:
            raise ConfigError("chunk_bytes must be at least 1024")
        self.paths = VaultPaths.of(Path(vault), inst_id)
        self.inst_id = inst_id
        self.final = final
        self.strict = strict
        self.chunk_bytes = chunk_bytes
        self._clock = clock
        self.missing_ok = missing_ok
        self._files: dict[str, FilePos] = {}
        self._decoder = LineDecoder(inst_id)
        self._closed = False
        self._torn = 0  # bytes of the unterminated last line the file just read ended with
        self._warned_ignored = False
        self._marks: dict[str, dict[int, str]] = {}  # late marks: {day: {offset: tradeId}}

    @property
    def inst_ids(self) -> tuple[str, ...]:
        return (self.inst_id,)

    def check_input(self) -> None:
        """Raise :class:`ConfigError` if there is nothing to read (blocking I/O).

        The engine calls it before it locks or creates anything in the vault, so a mistyped
        vault or instrument leaves no empty instrument behind.
        """
        if not self.missing_ok:
            input_files(self.paths)

    def carries_contracts(self, inst_id: str) -> bool:
        """Whether the instrument's trade lines may carry their own ctVal (they are
        exporter lines): it then needs no contract value of its own (blocking I/O)."""
        return inst_id == self.inst_id and vault_format(self.paths.raw_dir) == "exporter"

    def _list(self) -> list[tuple[str, Path]]:
        files = day_files(self.paths.raw_dir) if self.missing_ok else input_files(self.paths)
        if not self._warned_ignored:
            self._warned_ignored = True  # once a run: a live recorder lists again and again
            ignored = ignored_files(self.paths.raw_dir)
            if ignored:
                log.warning(
                    "%s: not reading %d file(s) in %s whose names are not YYYY-MM-DD.jsonl or "
                    ".jsonl.gz: %s (rename them to have them replayed)",
                    self.inst_id, len(ignored), self.paths.raw_dir, describe_ignored(ignored),
                )
        return files

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
        files = await asyncio.to_thread(self._list)
        marks = await asyncio.to_thread(late_marks.read, self.paths.late_marks)
        self._marks = late_marks.by_day(marks)
        present = {day for day, _ in files}
        for day, pos in self._files.items():
            if day not in present and pos.offset > 0:
                raise StateError(
                    f"{self.inst_id}: input file {pos.name} was consumed up to byte {pos.offset} "
                    f"but is gone; run again with --rebuild to start over"
                )
        for index, (day, path) in enumerate(files):
            if self._closed:
                return
            self._torn = 0
            async for batch in self._read_file(day, path, self.final or path.name.endswith(".gz")):
                yield batch
            if self._torn:
                # Reading on would put the later files' trades before this line's: wait.
                if await asyncio.to_thread(self._unread, files[index + 1 :]):
                    log.warning(
                        "%s: %s ends in an unterminated line (%d bytes); the later day files are "
                        "read once its newline is written (if its writer is gone for good, "
                        "append a newline to it: the line is then rejected)",
                        self.inst_id, path.name, self._torn,
                    )
                return
        if self.final:
            yield Batch(self.inst_id, [], position=dict(self._files), end=True)

    def _unread(self, files: list[tuple[str, Path]]) -> bool:
        """Whether any of ``files`` holds bytes not yet consumed (they wait behind a torn line)."""
        for day, path in files:
            pos = self._files.get(day)
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if path.name.endswith(".gz") and not (pos is not None and pos.complete):
                return True
            if not path.name.endswith(".gz") and size > (pos.offset if pos is not None else 0):
                return True
        return False

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

        Each chunk is decoded where it lies (a span of the bytes read, never copied); only
        the line it shares with the previous chunk is joined and decoded on its own.
        """
        offset = pos.offset
        line_no = pos.lines
        pending = b""  # the partial line the previous chunk ended with (no newline in it)
        # A line longer than MAX_LINE_BYTES is skipped, not buffered; the offset stays at its
        # start until its newline is seen, so a run stopped meanwhile reads it again.
        skip_len = 0
        skip_head = b""
        skip_tail = b""
        to_read = None if limit is None else limit - offset
        while not self._closed:
            # No read is longer than the line limit, so only a line carried over from earlier
            # reads can exceed it (it is measured): the limit does not depend on chunking.
            size = min(self.chunk_bytes, MAX_LINE_BYTES)
            if to_read is not None:
                size = min(size, to_read)
            data = await reader.read(size) if size > 0 else b""
            if to_read is not None:
                to_read -= len(data)
            eof = not data
            rejects: list[Reject] = []
            start = 0
            if skip_len:
                newline = data.find(b"\n")
                if newline < 0 and not (eof and complete):
                    skip_len += len(data)
                    skip_tail = (skip_tail + data[-_TAIL:])[-_TAIL:]
                    if eof:
                        self._torn = skip_len
                        return
                    continue
                start = len(data) if newline < 0 else newline + 1
                line_no += 1
                rejects.append(self._too_long(pos, line_no, skip_head))
                offset += skip_len + start
                tail = (tail + skip_tail + data[max(0, start - _TAIL) : start])[-_TAIL:]
                skip_len = 0
            head = b""
            if pending:
                newline = data.find(b"\n")
                if newline < 0 and not (eof and complete):
                    pending += data
                    if len(pending) > MAX_LINE_BYTES:
                        skip_len, skip_head, skip_tail = len(pending), pending[:4000], pending[-_TAIL:]
                        pending = b""
                    if eof:
                        self._torn = skip_len or len(pending)
                        return
                    continue
                start = len(data) if newline < 0 else newline + 1
                head, pending = pending + data[:start], b""
            cut = data.rfind(b"\n", start)
            if eof and complete and len(data) > start and cut != len(data) - 1:
                stop = len(data)  # the input is complete: an unterminated last line counts too
            elif cut < 0:
                stop = start
            else:
                stop = cut + 1
            pending = data[stop:]
            if head or stop > start or rejects:
                batch = Batch(self.inst_id, [], rejects, position=None)
                if head:
                    if len(head) - (head[-1] == 0x0A) > MAX_LINE_BYTES:
                        # only a line joined from several reads can be this long
                        line_no += 1
                        batch.rejects.append(self._too_long(pos, line_no, head[:4000]))
                    else:
                        line_no = self._decode_into(batch, pos, head, 0, len(head), offset, line_no)
                    offset += len(head)
                    tail = (tail + head[-_TAIL:])[-_TAIL:]
                if stop > start:
                    line_no = self._decode_into(batch, pos, data, start, stop, offset, line_no)
                    offset += stop - start
                    tail = (tail + data[max(start, stop - _TAIL) : stop])[-_TAIL:]
                self._files[day] = msgspec.structs.replace(
                    pos, offset=offset, lines=line_no, tail_crc=zlib.crc32(tail)
                )
                batch.position = dict(self._files)
                if self.strict and batch.rejects:
                    raise self._strict(batch.rejects[0])
                yield batch
            if eof:
                return
            # Plain reads do not suspend: let the loop run between chunks, so other tasks
            # stay responsive and the batch just made is taken while it is still in cache.
            await asyncio.sleep(0)

    def _decode_into(
        self, batch: Batch, pos: FilePos, data: bytes, start: int, stop: int, offset: int, line_no: int
    ) -> int:
        """Add what the lines of ``data[start:stop]`` hold to ``batch``; the new line count."""
        bom_only = False
        if offset == 0 and data.startswith(_BOM, start, stop):
            start += len(_BOM)
            bom_only = start == stop  # still one (unterminated, empty) line
        # The chunk goes to the decoder where it lies, as one span: no per-line objects on
        # the fast path, and the decoder counts the lines (a second scan is not free).
        decoded = self._decoder.decode_body(
            data,
            file=pos.name,
            first_line=line_no + 1,
            now_ms=int(self._clock() * 1000),
            start=start,
            end=stop,
        )
        marks = self._marks.get(pos.name[:10])
        if marks:
            self._drop_marked(decoded, marks, offset, offset + stop - start)
        if batch.trades:
            batch.trades += decoded.trades
        else:
            batch.trades = decoded.trades
        batch.rejects += decoded.rejects
        batch.skipped += decoded.skipped
        return line_no + (1 if bom_only else decoded.lines)

    @staticmethod
    def _drop_marked(decoded: Decoded, marks: Mapping[int, str], lo: int, hi: int) -> None:
        """Drop the trades of lines from byte ``lo`` to ``hi`` that have a late mark."""
        ids = {tid for offset, tid in marks.items() if lo <= offset < hi}
        if not ids:
            return
        kept = [t for t in decoded.trades if t.tradeId not in ids]
        decoded.skipped += len(decoded.trades) - len(kept)
        decoded.trades = kept

    @staticmethod
    def _too_long(pos: FilePos, line_no: int, head: bytes) -> Reject:
        raw = head.decode("utf-8", "replace")[:1000]
        return Reject(pos.name, line_no, f"line longer than {MAX_LINE_BYTES} bytes", raw)

    def _strict(self, reject: Reject) -> RejectError:
        return RejectError(f"{self.inst_id}: {reject.file} line {reject.line}: {reject.error} (--strict)")
