"""Taking an instrument over from ``volume_analyzer.py``, the script vstream replaces (SPEC §7).

That script keeps its state and its bars at the very paths vstream uses, in its own formats:

* its state is a JSON object with exactly the keys ``last_processed_timestamp_utc``,
  ``last_trade_id``, ``last_minute_processed`` (strings or null) and ``volume_history`` (a list
  of decimal strings, the totals of its last bars);
* its bars are ``json.dumps`` lines whose keys start ``timestamp_utc``, ``open`` (vstream's start
  ``timestamp_utc``, ``instId``), with the instrument, ``market: "perp"``, a tier ``T1``-``T4``
  (never null) and none of the keys only vstream writes (``fill_count``, ``volume_ratio``,
  ``divergence_type``).

:func:`take_over` recognises those files and renames them beside where they were — never
deleting or overwriting anything — so the caller can rebuild the instrument from the first raw
byte. The output goes first and the state last, both named after the state's modification
time: a run killed between the two renames leaves the state, whose next run moves it to the
name that pairs it with the output moved before.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path

import msgspec

from .errors import StateError
from .instruments import Kind, VaultPaths

#: What the moved-aside names carry after the original name: ``volume_1m.jsonl`` becomes
#: ``volume_1m.jsonl.volume_analyzer-20251214T213500Z``.
SUFFIX = ".volume_analyzer-"

_MINUTE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:00Z$")
_MOMENT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")
#: Bytes read at each end of an output to find its first and last bar (its bars are ~500 bytes).
_PROBE = 65536
#: Keys every bar of the old analyzer carries (later versions add volume_anomaly and
#: modified_z_score); the first two in this order.
_OLD_BAR_KEYS = frozenset({
    "timestamp_utc", "open", "high", "low", "close", "price_change_pct", "total_volume",
    "buy_volume", "sell_volume", "delta", "whale_volume", "whale_count", "trade_count",
    "instId", "exchange", "market", "volume_tier", "absorption", "divergence",
})  # fmt: skip
_VSTREAM_ONLY_KEYS = frozenset({"fill_count", "volume_ratio", "divergence_type"})
_TIERS = frozenset({"T1", "T2", "T3", "T4"})


class TakeOver(msgspec.Struct, kw_only=True):
    """Where an instrument's ``volume_analyzer.py`` files went (kept in the state).

    ``state`` and ``output`` are the new names of its state file (in the state folder) and of
    its ``volume_1m.jsonl`` (in the instrument's output folder), ``None`` for one it did not
    have; ``at`` is when vstream took over (UTC).
    """

    at: str
    state: str | None = None
    output: str | None = None

    def paths(self, paths: VaultPaths) -> list[Path]:
        """The moved-aside files, as full paths."""
        found = []
        if self.output is not None:
            found.append(paths.derived_dir / self.output)
        if self.state is not None:
            found.append(paths.state_dir / self.state)
        return found


class _OldState(msgspec.Struct, forbid_unknown_fields=True):
    # No defaults: all four keys must be there, and no other (its loader takes exactly these).
    last_processed_timestamp_utc: str | None
    last_trade_id: str | None
    last_minute_processed: str | None
    volume_history: list[str]


def is_old_state(raw: bytes) -> bool:
    """Whether ``raw`` is a state file ``volume_analyzer.py`` wrote: its four keys, no other,
    each of its type and shape."""
    try:
        old = msgspec.json.decode(raw, type=_OldState)
    except msgspec.DecodeError:
        return False
    if old.last_minute_processed is not None and not _MINUTE.match(old.last_minute_processed):
        return False
    if old.last_processed_timestamp_utc is not None and not _MOMENT.match(old.last_processed_timestamp_utc):
        return False
    for total in old.volume_history:
        try:
            value = Decimal(total)
        except InvalidOperation:
            return False
        if not value.is_finite() or value < 0:
            return False
    return True


def _is_old_bar(line: bytes, inst_id: str) -> bool:
    try:
        bar = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return False
    if not isinstance(bar, dict):
        return False
    keys = list(bar)
    return (
        keys[:2] == ["timestamp_utc", "open"]
        and _OLD_BAR_KEYS.issubset(bar)
        and _VSTREAM_ONLY_KEYS.isdisjoint(bar)
        and bar["instId"] == inst_id
        and bar["market"] == "perp"
        and bar["volume_tier"] in _TIERS
        and isinstance(bar["timestamp_utc"], str)
        and _MINUTE.match(bar["timestamp_utc"]) is not None
    )


class Found(enum.Enum):
    """What is at one of the two paths."""

    ABSENT = "absent"
    EMPTY = "empty"  # an output of 0 bytes
    OLD = "volume_analyzer.py's"
    OTHER = "other"  # vstream's, or anything else


def classify_state(path: Path) -> Found:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Found.ABSENT
    except OSError as exc:
        raise StateError(f"cannot read state {path}: {exc.strerror or exc}") from exc
    return Found.OLD if is_old_state(raw) else Found.OTHER


def classify_output(path: Path, inst_id: str) -> Found:
    """Whether ``path`` holds ``volume_analyzer.py``'s bars of ``inst_id``: its first and its
    last complete line are both one of them (lines end in ``\\n`` or, on Windows, ``\\r\\n``)."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                return Found.EMPTY
            head = handle.read(_PROBE)
            handle.seek(max(0, size - _PROBE))
            tail = handle.read(_PROBE)
    except FileNotFoundError:
        return Found.ABSENT
    except OSError as exc:
        raise StateError(f"cannot read output {path}: {exc.strerror or exc}") from exc
    first = _complete_lines(head, from_start=True)
    last = _complete_lines(tail, from_start=size <= _PROBE)
    if not first or not last:
        return Found.OTHER
    ok = _is_old_bar(first[0], inst_id) and _is_old_bar(last[-1], inst_id)
    return Found.OLD if ok else Found.OTHER


def _complete_lines(block: bytes, *, from_start: bool) -> list[bytes]:
    """The non-blank newline-terminated lines of ``block``; the first is dropped unless the
    block starts at the beginning of the file (it may be the end of a line cut by the read)."""
    cut = block.rfind(b"\n")
    if cut < 0:
        return []
    lines = block[: cut + 1].split(b"\n")[:-1]
    if not from_start:
        lines = lines[1:]
    return [line for line in lines if line.strip()]


class _Plan(msgspec.Struct):
    state: Found
    output: Found
    move_state: bool
    move_output: bool


def _plan(paths: VaultPaths, *, rebuild: bool) -> _Plan | None:
    if paths.kind is not Kind.SWAP:
        return None  # the old analyzer only ever wrote perps
    state = classify_state(paths.state)
    output = classify_output(paths.output("1m"), paths.inst_id)
    if state is Found.OLD and output is Found.OTHER and not rebuild:
        raise StateError(
            f"{paths.inst_id}: state {paths.state} was written by volume_analyzer.py but output "
            f"{paths.output('1m')} does not hold its bars; run again with --rebuild to move that "
            f"state aside and start {paths.inst_id} over from the first input byte (the output "
            f"is then removed)"
        )
    # Old bars beside a state of vstream's are not taken over: that state's checks judge them.
    move_output = (output is Found.OLD and state is not Found.OTHER) or (
        state is Found.OLD and output is Found.EMPTY
    )
    move_state = state is Found.OLD
    if not (move_output or move_state):
        return None
    return _Plan(state, output, move_state, move_output)


def would_take_over(paths: VaultPaths) -> bool:
    """Whether a plain replay would take the instrument over (for ``status``; no I/O but reads)."""
    try:
        return _plan(paths, rebuild=False) is not None
    except StateError:
        return False


def take_over(paths: VaultPaths, *, rebuild: bool) -> TakeOver | None:
    """Move ``volume_analyzer.py``'s state and output aside if that is what the instrument holds.

    Call with the instrument's lock held. Moves the pair, an old state alone (no output, or an
    empty one) or old bars alone (no state file at all); returns where they went, or ``None``
    when neither path holds the old analyzer's file. An old state beside an output that is not
    its bars is a :class:`StateError` (``rebuild`` moves the state aside and leaves that output
    to the rebuild).
    """
    plan = _plan(paths, rebuild=rebuild)
    if plan is None:
        return None
    output_path = paths.output("1m")
    # Named after the old state's last write (the output's when there is no state): the name a
    # run killed after moving the output gives the state too.
    source = paths.state if plan.move_state else output_path
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(_mtime(source)))
    took = TakeOver(at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    try:
        if plan.move_output:
            took.output = move_aside(output_path, stamp).name
        elif plan.output is Found.ABSENT:
            earlier = output_path.with_name(output_path.name + SUFFIX + stamp)
            if earlier.exists():  # moved by a run killed before it moved the state
                took.output = earlier.name
        if plan.move_state:
            took.state = move_aside(paths.state, stamp).name
    except OSError as exc:
        raise StateError(
            f"{paths.inst_id}: cannot move volume_analyzer.py's files aside ({exc}); is it still "
            f"running? Stop it (and take it off the scheduler), then run again"
        ) from exc
    for folder in {paths.state_dir, paths.derived_dir}:
        _fsync_dir(folder)
    return took


def move_aside(path: Path, stamp: str) -> Path:
    """Rename ``path`` to ``{name}.volume_analyzer-{stamp}`` beside it (``-2``, ``-3``, ... if
    that name is taken); never replaces a file. The caller holds the instrument's lock, so no
    vstream process makes such a name meanwhile; on Windows ``os.rename`` refuses an existing
    target anyway, and elsewhere the check before it does."""
    base = path.name + SUFFIX + stamp
    number = 1
    while True:
        target = path.with_name(base if number == 1 else f"{base}-{number}")
        number += 1
        if os.path.lexists(target):
            continue
        try:
            os.rename(path, target)
        except FileExistsError:
            continue
        return target


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _fsync_dir(path: Path) -> None:
    # Makes the renames durable; not possible (nor needed) on Windows.
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
