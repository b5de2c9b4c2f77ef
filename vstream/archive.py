"""``vstream import-okx``: OKX's official daily trade archives into the vault's raw trade files.

OKX publishes one archive per instrument and day (``BTC-USDT-SWAP-trades-2023-08-21.zip``
holding a CSV). Archive days run on UTC+8, so one archive covers 16:00 UTC of the day before
to 16:00 UTC of its date: its rows are split into UTC-day files, ``raw/okx/trades_*/{INSTID}/
{YYYY-MM-DD}.jsonl``, as flat OKX trade objects (``instId, tradeId, px, sz, side, ts``, all
strings, ``px``/``sz`` exactly as the CSV wrote them).

Formats read: the current header ``instrument_name,trade_id,side,price,size,created_time``;
older files without a header (columns in that order unless ``columns`` says otherwise); and
older bilingual headers in GBK (``trade_id/成交id``...) with the columns in any order.

The lines keep the format the vault already holds (:func:`vstream.recording.choose_format`,
``line_format`` chooses): into an instrument whose day files hold the trader's exporter lines,
exporter lines are written (its twelve string keys, ``ctVal``/``ctType`` as the instrument's
text: see :func:`vstream.recording.record_style`), with the line ends of the file written to
(of the instrument's newest file for a new day file; the platform's for a new instrument).

Importing is idempotent: a trade whose ``tradeId`` is already in its day file is skipped, so
re-importing an archive changes nothing. Rows are written in ``(ts, tradeId)`` order: appended
where they come after a day file's last trade (the normal case, archives imported in date
order), merged into the file where they do not. A merge rewrites the file, which is only safe
while ``vstream replay`` has not read it yet; trades that replay would see as *late* (before
what it already turned into bars) would leave the bars stale. Both are refused with a clear
error unless ``allow_stale`` is set, in which case the report names the instruments to rebuild.

Memory stays small on big archives: rows are spooled to a temporary file and only their keys
(24 bytes a row) are held; an existing day file is read backwards only as far as the rows
being imported reach (plus a margin), not whole.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import mmap
import os
import re
import shutil
import tempfile
import time
import zipfile
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import filelock
import msgspec

from .errors import ConfigError, LockedError, SourceError, StateError
from .formats import FORMATS, exporter
from .formats.common import Trade
from .instruments import VaultPaths, kind_of
from .recording import RecordStyle, choose_format, file_newline, newline_for, record_style
from .state import State, read_state, write_atomic

#: Column names of OKX's current archive CSV, in its order (also the default for no header).
ARCHIVE_COLUMNS = ("instrument_name", "trade_id", "side", "price", "size", "created_time")
MINUTE_MS = 60_000
DAY_MS = 86_400_000
MIN_TS_MS = 1_483_228_800_000  # 2017-01-01: nothing older is an OKX trade
#: How far back past the earliest imported trade an existing day file is read for duplicates.
#: Files recorded live are in arrival order, which can trail trade time by a few seconds.
OVERLAP_MARGIN_MS = 5 * MINUTE_MS
#: Bad rows quoted in the report (the rest are only counted).
MAX_ERRORS_SHOWN = 5

_DECIMAL = re.compile(r"^\d+(?:\.\d+)?(?:[eE][+-]?\d+)?$")
_DATE_IN_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})")
# Header keywords -> column; checked in this order ("trade_id" holds "id", "created_time" "time").
_HEADER_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("price", ("price", "价格")),
    ("size", ("size", "amount", "qty", "quantity", "数量")),
    ("side", ("side", "方向")),
    ("created_time", ("time", "时间")),
    ("instrument_name", ("instrument", "币对", "symbol", "instid", "合约")),
    ("trade_id", ("trade_id", "tradeid", "id")),
)


@dataclass
class ImportReport:
    """What importing one archive did."""

    source: str
    rows: int = 0
    imported: int = 0
    duplicates: int = 0
    bad: int = 0
    other: int = 0
    days: dict[str, dict[str, int]] = field(default_factory=dict)
    merged: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        """Rows not written: duplicates, bad rows and rows of instruments not asked for."""
        return self.duplicates + self.bad + self.other

    def summary(self) -> str:
        """One line for the command line."""
        text = (
            f"{self.source}: rows={self.rows} imported={self.imported} skipped={self.skipped}"
            f" (duplicates={self.duplicates} bad={self.bad}"
            + (f" other_instruments={self.other}" if self.other else "")
            + ")"
        )
        targets = [
            f"{inst} {day} +{n}"
            for inst, days in sorted(self.days.items())
            for day, n in sorted(days.items())
            if n
        ]
        if targets:
            text += " -> " + ", ".join(targets)
        return text


class _Spool:
    """The valid rows of one instrument and UTC day: lines in a temporary file, keys in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed in finish()
        self.ts = array("q")
        self.ids = array("q")
        self.offsets = array("q")
        self.size = 0
        self.ordered = True
        self._last = (-1, -1)

    def add(self, ts: int, tid: int, line: bytes) -> None:
        key = (ts, tid)
        if key < self._last:
            self.ordered = False
        self._last = key
        self.ts.append(ts)
        self.ids.append(tid)
        self.offsets.append(self.size)
        self.handle.write(line)
        self.size += len(line)

    def finish(self) -> None:
        self.handle.close()
        self.offsets.append(self.size)

    def order(self) -> Iterable[int]:
        """Row indexes by ``(ts, tradeId)``; archives are usually ordered already."""
        if self.ordered:
            return range(len(self.ts))
        ts, ids = self.ts, self.ids
        return sorted(range(len(ts)), key=lambda i: (ts[i], ids[i]))


@dataclass
class _Existing:
    """What a day file already holds, as far back as the import reaches."""

    last: tuple[int, int] | None = None
    ids: set[int] = field(default_factory=set)
    size: int = 0
    ends_with_newline: bool = True


@dataclass
class _Plan:
    inst_id: str
    day: str
    spool: _Spool
    target: Path
    gz: bool
    append: array[int] = field(default_factory=lambda: array("q"))
    insert: array[int] = field(default_factory=lambda: array("q"))
    late: int = 0
    consumed: bool = False
    existing: _Existing = field(default_factory=_Existing)
    #: Written as exporter lines in this style (None: OKX objects, as spooled).
    style: RecordStyle | None = None

    @property
    def newline(self) -> bytes:
        return self.style.newline if self.style is not None else b"\n"

    def render(self, line: bytes) -> bytes:
        """A spooled row's line as written to the target."""
        return line if self.style is None else _exporter_line(line, self.style)


# -- reading archives ---------------------------------------------------------------------


def _utc_day(ts: int) -> str:
    return datetime.fromtimestamp(ts // DAY_MS * 86_400, UTC).strftime("%Y-%m-%d")


def _is_header(cells: Sequence[str]) -> bool:
    # A data row has a numeric trade id and time; a header has words (possibly Chinese).
    return any(not c.isascii() or c.strip().lower() in ARCHIVE_COLUMNS for c in cells) or not any(
        c.strip().isdigit() for c in cells
    )


def header_columns(cells: Sequence[str]) -> dict[str, int]:
    """Map a header row (English or bilingual) to the column index of each needed field."""
    found: dict[str, int] = {}
    for index, cell in enumerate(cells):
        text = cell.strip().lower().replace(" ", "_")
        for name, words in _HEADER_WORDS:
            if name in found:
                continue
            if any(w in text for w in words):
                found[name] = index
                break
    missing = [c for c in ARCHIVE_COLUMNS if c not in found]
    if missing:
        raise ConfigError(
            f"archive header {','.join(cells)!r} has no column for {', '.join(missing)}; "
            f"expected {','.join(ARCHIVE_COLUMNS)}"
        )
    return found


def _decode_first(line: bytes) -> tuple[str, str]:
    """The first line as text and the encoding of the file (UTF-8, else GBK for old archives)."""
    if line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]
    for encoding in ("utf-8", "gbk"):
        try:
            return line.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    return line.decode("latin-1"), "latin-1"


@dataclass
class _Member:
    name: str
    size: int
    open: Callable[[], contextlib.AbstractContextManager[IO[bytes]]]


@contextlib.contextmanager
def _open_zip_member(path: Path, name: str) -> Iterator[IO[bytes]]:
    with zipfile.ZipFile(path) as zf, zf.open(name) as handle:
        yield handle


@contextlib.contextmanager
def _open_file(path: Path) -> Iterator[IO[bytes]]:
    with open(path, "rb") as handle:
        yield handle


def _looks_zipped(path: Path) -> bool:
    """Named ``.zip`` or starting as a zip does (a local file header, or an empty archive)."""
    if path.suffix.lower() == ".zip":
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(4) in (b"PK\x03\x04", b"PK\x05\x06")
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc}") from exc


def _require_file(path: Path) -> None:
    """:class:`ConfigError` unless ``path`` is a file that can be opened for reading."""
    if path.is_dir():
        raise ConfigError(f"archive {path} is a folder; give the .zip or .csv files in it")
    if not path.exists():
        raise ConfigError(f"archive {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"archive {path} is not a regular file")


def _members(path: Path) -> list[_Member]:
    if not path.exists():
        raise ConfigError(f"archive {path} does not exist")
    if _looks_zipped(path):
        # A zip's directory is at its end: without it (a download cut short) the bytes would
        # otherwise be read as CSV, and a stored archive's rows would import cut off.
        if not zipfile.is_zipfile(path):
            raise SourceError(
                f"archive {path.name} is broken: its zip directory is missing (truncated "
                f"download?); nothing was imported from it"
            )
        try:
            with zipfile.ZipFile(path) as zf:
                infos = [i for i in zf.infolist() if i.filename.lower().endswith(".csv")]
        except (zipfile.BadZipFile, OSError) as exc:
            raise SourceError(f"archive {path.name} is broken: {exc}; nothing was imported from it") from exc
        if not infos:
            raise ConfigError(f"archive {path} holds no .csv file")
        return [
            _Member(
                f"{path.name}:{i.filename}",
                i.file_size,
                lambda name=i.filename: _open_zip_member(path, name),  # type: ignore[misc]
            )
            for i in infos
        ]
    return [_Member(path.name, path.stat().st_size, lambda: _open_file(path))]


def _read_member(
    member: _Member,
    columns: Sequence[str] | None,
    on_bytes: Callable[[int], None],
) -> Iterator[tuple[int, list[str], dict[str, int]]]:
    """Yield ``(line number, cells, column map)`` for each data row of one CSV."""
    with member.open() as raw:
        first = raw.readline()
        on_bytes(len(first))
        text, encoding = _decode_first(first)
        first_cells = next(csv.reader([text]), [])
        if columns is not None:
            mapping = {name: columns.index(name) for name in ARCHIVE_COLUMNS}
            has_header = _is_header(first_cells)
        elif first_cells and _is_header(first_cells):
            mapping = header_columns(first_cells)
            has_header = True
        else:
            mapping = {name: i for i, name in enumerate(ARCHIVE_COLUMNS)}
            has_header = False
        if first_cells and not has_header:
            yield 1, first_cells, mapping
        stream = io.TextIOWrapper(raw, encoding=encoding, errors="replace", newline="")

        def counted() -> Iterator[str]:
            pending = 0
            for line in stream:
                pending += len(line)
                if pending >= 1 << 20:
                    on_bytes(pending)
                    pending = 0
                yield line
            on_bytes(pending)

        for line_no, cells in enumerate(csv.reader(counted()), start=2):
            if cells:
                yield line_no, cells, mapping


def _check_row(
    cells: list[str], mapping: dict[str, int], now_ms: int
) -> tuple[str, str, int, str, str, str, int] | str:
    """``(inst, tradeId, id, side, px, sz, ts)`` of a valid row, else the reason it is bad."""
    if len(cells) <= max(mapping.values()):
        return f"expected {max(mapping.values()) + 1} columns, got {len(cells)}"
    inst = cells[mapping["instrument_name"]].strip()
    tid = cells[mapping["trade_id"]].strip()
    side = cells[mapping["side"]].strip().lower()
    px = cells[mapping["price"]].strip()
    sz = cells[mapping["size"]].strip()
    created = cells[mapping["created_time"]].strip()
    if not inst:
        return "instrument_name is empty"
    if not (tid.isascii() and tid.isdigit() and len(tid) <= 18):
        return f"trade_id must be a decimal integer, got {tid[:40]!r}"
    if side not in ("buy", "sell"):
        return f"side must be buy or sell, got {side[:40]!r}"
    for name, value in (("price", px), ("size", sz)):
        if not _DECIMAL.match(value):
            return f"{name} must be a decimal number, got {value[:40]!r}"
        number = float(value)
        if not (number > 0 and number != float("inf")):
            return f"{name} must be > 0, got {value!r}"
    if not (created.isascii() and created.isdigit()):
        return f"created_time must be integer milliseconds, got {created[:40]!r}"
    ts = int(created)
    if ts < MIN_TS_MS:
        return f"created_time {ts} is before 2017-01-01 (seconds instead of milliseconds?)"
    if ts > now_ms + DAY_MS:
        return f"created_time {ts} is more than a day in the future"
    return inst, tid, int(tid), side, px, sz, ts


def _spool_archive(
    path: Path,
    tmp: Path,
    report: ImportReport,
    *,
    inst_filter: set[str] | None,
    columns: Sequence[str] | None,
    progress: Any,
    now_ms: int,
) -> dict[tuple[str, str], _Spool]:
    spools: dict[tuple[str, str], _Spool] = {}
    known: dict[str, bool] = {}
    members = _members(path)
    if progress is not None:
        progress.add_total(sum(m.size for m in members))
    for member in members:
        count = 0

        def on_bytes(n: int) -> None:
            nonlocal count
            if progress is not None:
                progress.advance(n, count)
            count = 0

        try:
            for line_no, cells, mapping in _read_member(member, columns, on_bytes):
                report.rows += 1
                count += 1
                checked = _check_row(cells, mapping, now_ms)
                if isinstance(checked, str):
                    _bad(report, f"{member.name} line {line_no}: {checked}")
                    continue
                inst, tid, iid, side, px, sz, ts = checked
                ok = known.get(inst)
                if ok is None:
                    try:
                        kind_of(inst)
                        ok = True
                    except ConfigError:
                        ok = False
                    known[inst] = ok
                if not ok:
                    _bad(report, f"{member.name} line {line_no}: unsupported instrument {inst[:40]!r}")
                    continue
                if inst_filter is not None and inst not in inst_filter:
                    report.other += 1
                    continue
                day = _utc_day(ts)
                spool = spools.get((inst, day))
                if spool is None:
                    spool = spools[(inst, day)] = _Spool(tmp / f"{len(spools)}.jsonl")
                spool.add(
                    ts,
                    iid,
                    (
                        f'{{"instId":"{inst}","tradeId":"{tid}","px":"{px}","sz":"{sz}",'
                        f'"side":"{side}","ts":"{ts}"}}\n'
                    ).encode(),
                )
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise SourceError(
                f"archive {member.name} is damaged: {exc}; nothing was imported from it"
            ) from exc
        except (OSError, csv.Error) as exc:
            raise SourceError(f"cannot read archive {member.name}: {exc}") from exc
    for spool in spools.values():
        spool.finish()
    return spools


def _bad(report: ImportReport, message: str) -> None:
    report.bad += 1
    if len(report.errors) < MAX_ERRORS_SHOWN:
        report.errors.append(message)


# -- what the vault already holds ---------------------------------------------------------


#: "now" for reading the stamps of lines already in the vault: no upper bound.
_NO_LIMIT_MS = 1 << 62


def _line_keys(line: bytes) -> list[tuple[int, int]]:
    """``(ts, tradeId)`` of each trade in one raw line (flat trade, push envelope or exporter
    line: ``timestamp_utc`` to milliseconds, ``trade_id``)."""
    try:
        obj = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return []
    if isinstance(obj, dict) and exporter.is_exporter(obj):
        ts = exporter.stamp_ms(obj.get("timestamp_utc"), _NO_LIMIT_MS)
        try:
            return [] if isinstance(ts, str) else [(ts, int(obj["trade_id"]))]
        except (TypeError, ValueError):
            return []
    items = obj.get("data") if isinstance(obj, dict) and "data" in obj else [obj]
    keys = []
    if isinstance(items, list):
        for item in items:
            if not isinstance(item, dict):
                continue
            try:
                keys.append((int(item["ts"]), int(item["tradeId"])))
            except (KeyError, TypeError, ValueError):
                continue
    return keys


def _reverse_lines(handle: IO[bytes], size: int, block: int = 1 << 16) -> Iterator[bytes]:
    """The lines of a file from the last to the first."""
    position = size
    rest = b""
    while position > 0:
        step = min(block, position)
        position -= step
        handle.seek(position)
        data = handle.read(step) + rest
        lines = data.split(b"\n")
        rest = lines[0]
        yield from reversed(lines[1:])
    yield rest


def _scan_existing(path: Path, gz: bool, since_ts: int) -> _Existing:
    """Trade ids of ``path`` with ``ts >= since_ts`` and its largest key."""
    found = _Existing()
    if not path.exists():
        return found
    last: tuple[int, int] | None = None

    def take(keys: list[tuple[int, int]]) -> None:
        nonlocal last
        for key in keys:
            if key[0] >= since_ts:
                found.ids.add(key[1])
            if last is None or key > last:
                last = key

    try:
        if gz:
            import gzip

            with gzip.open(path, "rb") as packed:
                for line in packed:
                    take(_line_keys(line))
        else:
            size = path.stat().st_size
            found.size = size
            with open(path, "rb") as handle:
                if size:
                    handle.seek(size - 1)
                    found.ends_with_newline = handle.read(1) == b"\n"
                for line in _reverse_lines(handle, size):
                    keys = _line_keys(line)
                    take(keys)
                    if keys and max(k[0] for k in keys) < since_ts - OVERLAP_MARGIN_MS:
                        break
    except (OSError, EOFError) as exc:
        raise SourceError(f"cannot read {path}: {exc}") from exc
    found.last = last
    return found


def _next_minute(state: State | None) -> int | None:
    """The earliest minute replay still accepts trades for (earlier ones would be *late*)."""
    if state is None:
        return None
    series = state.assembler.series.get("1m")
    if series is None:
        return None
    return series.open.start if series.open is not None else series.next_start


def _plan(inst_id: str, day: str, spool: _Spool, paths: VaultPaths, state: State | None) -> _Plan:
    plain = paths.raw_dir / f"{day}.jsonl"
    packed = paths.raw_dir / f"{day}.jsonl.gz"
    gz = packed.exists() and not plain.exists()
    target = packed if gz else plain
    earliest = min(spool.ts) if len(spool.ts) else 0
    plan = _Plan(inst_id, day, spool, target, gz)
    plan.existing = existing = _scan_existing(target, gz, earliest)
    saved = state.files.get(day) if state is not None else None
    plan.consumed = saved is not None and saved.offset > 0
    next_minute = _next_minute(state)
    ts, ids = spool.ts, spool.ids
    previous: tuple[int, int] | None = None
    for i in spool.order():
        key = (ts[i], ids[i])
        if key == previous or key[1] in existing.ids:
            continue
        previous = key
        if existing.last is None or key > existing.last:
            plan.append.append(i)
        else:
            plan.insert.append(i)
        if next_minute is not None and key[0] // MINUTE_MS < next_minute:
            plan.late += 1
    return plan


# -- writing ------------------------------------------------------------------------------


class _Row(msgspec.Struct):
    instId: str
    tradeId: str
    px: str
    sz: str
    side: str
    ts: str


_row_decoder = msgspec.json.Decoder(_Row)


def _exporter_line(line: bytes, style: RecordStyle) -> bytes:
    """A spooled row (a flat OKX trade, as :func:`_spool_archive` writes it) as an exporter
    line of ``style``."""
    row = _row_decoder.decode(line)
    trade = Trade(
        instId=row.instId, tradeId=row.tradeId, px=row.px, sz=float(row.sz), side=row.side, ts=int(row.ts)
    )
    return style.line(trade)


def _append(plan: _Plan) -> None:
    target = plan.target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(plan.spool.path, "rb") as src, open(target, "ab") as out:
        view = mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_READ) if plan.spool.size else None
        try:
            if plan.existing.size and not plan.existing.ends_with_newline:
                # An unterminated last line (a crashed writer) must not swallow our first row.
                out.write(plan.newline)
            offsets = plan.spool.offsets
            chunk: list[bytes] = []
            for i in plan.append:
                assert view is not None
                chunk.append(plan.render(view[offsets[i] : offsets[i + 1]]))
                if len(chunk) >= 8192:
                    out.write(b"".join(chunk))
                    chunk.clear()
            out.write(b"".join(chunk))
            out.flush()
            os.fsync(out.fileno())
        finally:
            if view is not None:
                view.close()


def _merge(plan: _Plan) -> None:
    """Rewrite the day file with the new rows merged in by ``(ts, tradeId)`` (atomically)."""
    target = plan.target
    try:
        existing_lines = target.read_bytes().splitlines(keepends=True)
    except OSError as exc:
        raise SourceError(f"cannot read {target}: {exc}") from exc
    if existing_lines and not existing_lines[-1].endswith(b"\n"):
        existing_lines[-1] += plan.newline
    keyed: list[tuple[tuple[int, int], bytes]] = []
    key = (-1, -1)
    for line in existing_lines:
        keys = _line_keys(line)
        if keys:
            key = min(keys)
        keyed.append((key, line))  # a line without trades stays after its predecessor
    spool = plan.spool
    new_rows = sorted([*plan.append, *plan.insert], key=lambda i: (spool.ts[i], spool.ids[i]))
    out: list[bytes] = []
    with open(spool.path, "rb") as src:
        data = src.read()
    j = 0
    for row in new_rows:
        row_key = (spool.ts[row], spool.ids[row])
        while j < len(keyed) and keyed[j][0] <= row_key:
            out.append(keyed[j][1])
            j += 1
        out.append(plan.render(data[spool.offsets[row] : spool.offsets[row + 1]]))
    out.extend(line for _, line in keyed[j:])
    write_atomic(target, b"".join(out))


def _sort_key(path: Path) -> tuple[str, str]:
    match = _DATE_IN_NAME.search(path.name)
    return (match.group(1) if match else "", path.name)


def import_archives(
    vault: str | os.PathLike[str],
    archives: Sequence[str | os.PathLike[str]],
    *,
    inst_ids: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    allow_stale: bool = False,
    progress: Any = None,
    clock: Callable[[], float] = time.time,
    line_format: str | None = None,
) -> list[ImportReport]:
    """Import OKX daily trade archives (``.zip`` or ``.csv``) into ``vault``; one report each.

    Archives are taken in date order (as found in their names). ``inst_ids`` keeps only those
    instruments' rows; ``columns`` gives the column order of files without a header.
    ``line_format`` (``okx``/``exporter``) is the format to write; None: the one each
    instrument's files hold (see the module docs).
    Raises :class:`StateError` (nothing written for that archive) when rows would land before
    what replay already consumed, unless ``allow_stale``; :class:`LockedError` while another
    vstream process works on the instrument.
    """
    if columns is not None:
        columns = [c.strip() for c in columns]
        if sorted(columns) != sorted(ARCHIVE_COLUMNS) or len(columns) != len(ARCHIVE_COLUMNS):
            raise ConfigError(f"--columns must name each of {','.join(ARCHIVE_COLUMNS)} once")
    for inst in inst_ids or ():
        kind_of(inst)
    if line_format is not None and line_format not in FORMATS:
        raise ConfigError(f"line format must be okx or exporter, not {line_format!r}")
    vault = Path(vault)
    paths_in = sorted((Path(a) for a in archives), key=_sort_key)
    for path in paths_in:
        _require_file(path)  # all of them before any is imported: a typo imports nothing
    reports = []
    for path in paths_in:
        reports.append(
            _import_one(
                vault,
                path,
                inst_filter=set(inst_ids) if inst_ids else None,
                columns=columns,
                allow_stale=allow_stale,
                progress=progress,
                now_ms=int(clock() * 1000),
                line_format=line_format,
            )
        )
    return reports


def _import_one(
    vault: Path,
    path: Path,
    *,
    inst_filter: set[str] | None,
    columns: Sequence[str] | None,
    allow_stale: bool,
    progress: Any,
    now_ms: int,
    line_format: str | None = None,
) -> ImportReport:
    report = ImportReport(path.name)
    scratch = vault / "state" / "tmp"
    try:
        scratch.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="import-okx-", dir=scratch))
    except OSError as exc:
        raise SourceError(f"cannot create a temporary folder under {scratch}: {exc}") from exc
    try:
        spools = _spool_archive(
            path, tmp, report, inst_filter=inst_filter, columns=columns, progress=progress,
            now_ms=now_ms,
        )  # fmt: skip
        by_inst: dict[str, list[tuple[str, _Spool]]] = {}
        for (inst, day), spool in sorted(spools.items()):
            by_inst.setdefault(inst, []).append((day, spool))
        for inst, days in by_inst.items():
            _import_instrument(vault, inst, days, report, allow_stale, line_format)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            scratch.rmdir()
    return report


def _import_instrument(
    vault: Path,
    inst: str,
    days: list[tuple[str, _Spool]],
    report: ImportReport,
    allow_stale: bool,
    line_format: str | None = None,
) -> None:
    paths = VaultPaths.of(vault, inst)
    try:
        paths.state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SourceError(f"cannot create {paths.state_dir}: {exc}") from exc
    lock = filelock.FileLock(paths.lock, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout as exc:
        raise LockedError(
            f"{inst}: another vstream process is working on this instrument "
            f"(lock {paths.lock}); import when it has finished"
        ) from exc
    try:
        state = read_state(paths.state) if paths.state.exists() else None
        plans = [_plan(inst, day, spool, paths, state) for day, spool in days]
        late = sum(p.late for p in plans)
        rewritten = [p for p in plans if p.insert and p.consumed]
        if (late or rewritten) and not allow_stale:
            what = []
            if late:
                what.append(f"{late} trades fall in minutes replay has already turned into bars")
            if rewritten:
                files = ", ".join(p.target.name for p in rewritten)
                what.append(f"trades would have to be inserted into {files}, already read by replay")
            raise StateError(
                f"{inst}: importing {report.source} would leave the bars stale: "
                + "; ".join(what)
                + f". Nothing was written for it. Add --allow-stale to import anyway, then run "
                f"`vstream replay --rebuild --instId {inst}`"
            )
        for plan in plans:
            if (plan.append or plan.insert) and plan.gz:
                raise ConfigError(
                    f"{inst}: {plan.target} is a compressed archive and cannot take new trades; "
                    f"decompress it (gunzip) and import again"
                )
        writing = [p for p in plans if p.append or p.insert]
        if writing and choose_format(vault, inst, line_format) == "exporter":
            # Settled before anything is written: new day files all get the same line ends.
            style = record_style(vault, inst, newline=newline_for(paths.raw_dir))
            for plan in writing:
                # The line ends of the file written to, where it has a line already.
                newline = file_newline(plan.target) or style.newline
                plan.style = dataclasses.replace(style, newline=newline)
        for plan in plans:
            added = len(plan.append) + len(plan.insert)
            report.duplicates += len(plan.spool.ts) - added
            if not added:
                continue
            if plan.insert:
                _merge(plan)
                report.merged.append(str(plan.target))
            else:
                _append(plan)
            report.imported += added
            report.days.setdefault(inst, {})[plan.day] = added
        if late or rewritten:
            report.stale.append(inst)
    finally:
        lock.release(force=True)
