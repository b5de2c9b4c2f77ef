"""The per-instrument state file, its lock, and the start-of-run consistency checks (SPEC §7).

Resume contract: the state records a position *after* what was consumed — a byte offset per
input file — together with the assembler's open minute and window, and the byte length of
each output after its last durable bar. Bars are made durable first (append, flush, fsync),
then the state is replaced atomically, so a run killed at any instant resumes to the same bytes.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import filelock
import msgspec

from .assembler import AssemblerState
from .errors import ConfigError, LockedError, SinkError, StateError
from .instruments import Kind, VaultPaths, kind_of, missing_ct_val
from .settings import BarShape
from .takeover import TakeOver, take_over

STATE_VERSION = 1

# Bounds checked when a state is decoded: these numbers are used to seek, read and truncate
# files, so one a hand edit made impossible (negative, past a 64-bit offset) makes the state
# unreadable (exit 2, naming --rebuild) instead of reaching the OS as "Invalid argument".
_INT64 = 2**63 - 1
#: A byte offset or length, or a line count.
_Size = Annotated[int, msgspec.Meta(ge=0, le=_INT64)]


class FilePos(msgspec.Struct):
    """How far one input file has been consumed.

    ``offset`` counts bytes of the (decompressed) content up to the end of the last consumed
    line, ``lines`` the lines before it. ``tail_crc`` is the CRC-32 of up to 64 bytes before
    ``offset``, so a file replaced or rewritten under the same name is noticed. For ``.gz``
    files ``size``/``mtime_ns`` describe the compressed file once it was read to its end.
    """

    name: str
    offset: _Size = 0
    lines: _Size = 0
    tail_crc: Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)] = 0  # a CRC-32
    size: Annotated[int, msgspec.Meta(ge=-1, le=_INT64)] = -1  # -1: not read to its end yet
    # A file may be dated before 1970: only the int64 range is checked.
    mtime_ns: Annotated[int, msgspec.Meta(ge=-_INT64 - 1, le=_INT64)] = -1
    complete: bool = False


class AlertLog(msgspec.Struct, kw_only=True):
    """The alerts side of a state: how far the alerts file is history, and the detector.

    ``history`` is the length of the alerts file's first part, made by the runs that built
    the instrument from history (a first run or a rebuild, up to the run that caught up with
    the input: ``catching_up`` until then): it is never delivered unless asked for.
    ``generation`` changes when the file starts over, so a deliverer's byte offsets into an
    older file are never applied to a new one. ``rules`` and ``detector`` are the stored
    :class:`~vstream.alerts.AlertRules` and :class:`~vstream.alerts.DetectorState` as plain
    JSON values (decoded by the engine: this module knows nothing of alerts)."""

    generation: str = ""
    history: _Size = 0
    catching_up: bool = False
    rules: Any = None
    detector: Any = None


class RunTally(msgspec.Struct, kw_only=True):
    """How many input lines a run read and rejected ("nothing silent", SPEC §7).

    ``lines`` counts the lines that held something (blank ones do not count), ``rejected``
    those of them with at least one rejected record (a websocket envelope holding a bad trade
    beside good ones is one of them), ``kept`` the records that were not rejected (trades —
    each of an envelope — and skipped messages). ``first_error`` is the first reject of the
    run as ``{file} line {n}: {error}``.
    """

    lines: _Size = 0
    rejected: _Size = 0
    kept: _Size = 0
    first_error: str = ""

    @property
    def all_rejected(self) -> bool:
        """At least one line was read, and nothing of what was read was kept."""
        return self.rejected > 0 and self.kept == 0

    @property
    def most_rejected(self) -> bool:
        """More than half of the lines were rejected."""
        return self.rejected > 0 and 2 * self.rejected > self.lines


class State(msgspec.Struct, kw_only=True):
    """The content of ``{INSTID}.state.json``."""

    version: int = STATE_VERSION
    instId: str
    fingerprint: str
    #: The settings the bars were built with (absent in states written before they were
    #: stored: then only ``fingerprint`` tells).
    settings: BarShape | None = None
    files: dict[str, FilePos] = msgspec.field(default_factory=dict)
    #: Where a source that does not read vault files resumes (opaque to vstream).
    position: Any = None
    output_length: _Size = 0
    timeframe_lengths: dict[str, _Size] = msgspec.field(default_factory=dict)
    rejects_length: _Size = 0
    #: Length of the alerts file after the last durable alert, and the alerts' own state
    #: (None while no alert rule was ever in force).
    alerts_length: _Size = 0
    alerts: AlertLog | None = None
    assembler: AssemblerState = msgspec.field(default_factory=AssemblerState)
    updated_at: str = ""
    #: What the last run that read any line read and rejected (``status`` reports a run that
    #: rejected most of its lines).
    last_run: RunTally | None = None
    #: Where ``volume_analyzer.py``'s files went when vstream took the instrument over from it.
    took_over: TakeOver | None = None


class _StoredRules(msgspec.Struct):
    rules: Any = None


class _StoredShape(msgspec.Struct):
    """The part of a state a rebuild keeps: the settings it was built with, its alert rules,
    and where ``volume_analyzer.py``'s files went if vstream took over from it."""

    instId: str
    settings: BarShape | None = None
    alerts: _StoredRules | None = None
    took_over: TakeOver | None = None


_encoder = msgspec.json.Encoder()


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on Windows.
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def take_instrument(paths: VaultPaths, lock: filelock.FileLock) -> None:
    """Make the instrument's vault folders and take its lock (one process per instrument,
    SPEC §7): :class:`StateError` if the folders cannot be made, :class:`LockedError` if
    another process holds the lock."""
    try:
        paths.state_dir.mkdir(parents=True, exist_ok=True)
        paths.derived_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"{paths.inst_id}: cannot create vault folders: {exc}") from exc
    try:
        lock.acquire()
    except filelock.Timeout as exc:
        raise LockedError(
            f"{paths.inst_id}: another vstream process is working on this instrument "
            f"(lock {paths.lock}); wait for it to finish"
        ) from exc


class InstrumentStore:
    """One instrument's state, lock and output files in a vault.

    ``wanted`` is the bar shape the caller asks for and ``given`` names which of its fields the
    caller chose (``None``: all of them). :meth:`open` takes the lock, settles the shape —
    a chosen value must equal the stored one, the others are taken from the state (``wanted``'s
    for a new instrument) — loads and checks the state against the outputs (cutting back an
    output that ran ahead of the state) and returns it; :attr:`shape` is then the shape in
    force. :meth:`commit` saves a new state atomically; :meth:`close` releases the lock.
    The constructor does no I/O.
    """

    def __init__(
        self,
        paths: VaultPaths,
        wanted: BarShape,
        *,
        given: Iterable[str] | None = None,
        own_contracts: bool = False,
    ) -> None:
        self.paths = paths
        self.wanted = wanted
        # The instrument's trade lines carry their own ctVal: it may have none of its own.
        self.own_contracts = own_contracts
        self.given = frozenset(wanted.__struct_fields__ if given is None else given)
        self.shape = wanted
        #: Set by :meth:`open` when it moved ``volume_analyzer.py``'s files aside.
        self.took_over: TakeOver | None = None
        self._lock = filelock.FileLock(paths.lock, timeout=0, thread_local=False)
        #: What :meth:`open` noticed that the caller should say (an alerts file shortened).
        self.notes: list[str] = []

    @property
    def inst_id(self) -> str:
        return self.paths.inst_id

    @property
    def fingerprint(self) -> str:
        return self.shape.fingerprint()

    @property
    def timeframes(self) -> tuple[str, ...]:
        return self.shape.timeframes

    def open(self, *, rebuild: bool = False) -> State:
        """Lock the instrument and return the state to resume from (a fresh one if none).

        Where the instrument holds ``volume_analyzer.py``'s state or bars instead of vstream's,
        they are moved aside (:func:`~vstream.takeover.take_over`, recorded in
        :attr:`took_over` and in the state) and the instrument starts over, as with ``rebuild``.
        """
        take_instrument(self.paths, self._lock)
        try:
            self._remove_stale_temporaries()
            took = take_over(self.paths, rebuild=rebuild)
            if took is not None:
                self.took_over = took
                rebuild = True
            if rebuild:
                # Starting over keeps the stored settings the caller did not choose anew.
                kept = self._stored()
                stored = kept.settings if kept is not None else None
                self._settle(stored.overlay(self.wanted, self.given) if stored else self.wanted)
                # The fresh state goes first: a run killed from here on resumes as a fresh
                # start (outputs cut back to 0), never as "output without a state".
                state = self.fresh()
                state.took_over = took or (kept.took_over if kept is not None else None)
                if kept is not None and kept.alerts is not None and kept.alerts.rules is not None:
                    state.alerts = AlertLog(rules=kept.alerts.rules)  # a new file: the engine names it
                self.commit(state)
                self._remove_all()
                return state
            return self._load()
        except BaseException:
            self._lock.release()
            raise

    def fresh(self) -> State:
        return State(instId=self.inst_id, fingerprint=self.fingerprint, settings=self.shape)

    def _settle(self, shape: BarShape) -> None:
        if shape.ct_val is None and kind_of(self.inst_id) is not Kind.SPOT and not self.own_contracts:
            raise missing_ct_val(self.inst_id)
        self.shape = shape

    def _stored(self) -> _StoredShape | None:
        """What a rebuild keeps of a readable state of this instrument, if any."""
        try:
            # Only these fields: the rest may be what the rebuild is for.
            state = msgspec.json.decode(self.paths.state.read_bytes(), type=_StoredShape)
        except (OSError, msgspec.DecodeError):
            return None
        return state if state.instId == self.inst_id else None

    def _outputs(self) -> dict[str, Path]:
        return {tf: self.paths.output(tf) for tf in self.timeframes}

    def _remove_stale_temporaries(self) -> None:
        # Left by a process killed inside write_atomic; we hold the lock, so none is in use.
        for path in self.paths.state_dir.glob(glob.escape(self.paths.state.name) + ".*.tmp"):
            with contextlib.suppress(OSError):
                path.unlink()

    def _remove_all(self) -> None:
        targets = [*self._outputs().values(), self.paths.rejects, self.paths.alerts]
        targets += [self.paths.output(tf) for tf in ("5m", "15m", "1h")]
        for path in targets:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _load(self) -> State:
        state_path = self.paths.state
        hint = f"run again with --rebuild to start {self.inst_id} over from the first input byte"
        try:
            raw = state_path.read_bytes()
        except FileNotFoundError:
            self._settle(self.wanted)
            for path in self._outputs().values():
                if path.exists() and path.stat().st_size > 0:
                    raise StateError(
                        f"{self.inst_id}: output {path} exists but state {state_path} does not; {hint}"
                    ) from None
            # Saved before any bar is written, so a first run killed after appending bars
            # finds a state (recording 0 bytes) and cuts the output back (SPEC §7).
            state = self.fresh()
            self.commit(state)
            return state
        except OSError as exc:
            raise StateError(f"{self.inst_id}: cannot read state {state_path}: {exc}") from exc
        try:
            state = msgspec.json.decode(raw, type=State)
        except msgspec.DecodeError as exc:
            raise StateError(f"{self.inst_id}: state {state_path} is unreadable ({exc}); {hint}") from exc
        if state.version != STATE_VERSION:
            raise StateError(
                f"{self.inst_id}: state {state_path} has format version {state.version}, "
                f"this vstream writes {STATE_VERSION}; {hint}"
            )
        if state.instId != self.inst_id:
            raise StateError(f"{self.inst_id}: state {state_path} belongs to {state.instId}; {hint}")
        stored = state.settings
        if stored is None:
            # Written before the settings were stored: only the fingerprint can tell.
            if state.fingerprint != self.wanted.fingerprint():
                raise StateError(
                    f"{self.inst_id}: the settings that shape bars (thresholds, ctVal, timeframes, footprint, cvd) "
                    f"changed since the state was written (give the options it was built with "
                    f"once: from then on they are stored), or {hint}"
                )
            self._settle(self.wanted)
            state.settings = self.wanted  # stored with the next checkpoint
        else:
            if state.fingerprint != stored.fingerprint():
                raise StateError(
                    f"{self.inst_id}: state {state_path} records settings that do not match its "
                    f"fingerprint (edited by hand?); {hint}"
                )
            changed = stored.differences(self.wanted, self.given)
            if changed:
                raise ConfigError(
                    f"{self.inst_id}: {'; '.join(changed)}: run again with --rebuild to start "
                    f"{self.inst_id} over with the new settings, or leave them out to keep the stored ones"
                )
            self._settle(stored)
        lengths = {"1m": state.output_length, **state.timeframe_lengths}
        for tf, path in self._outputs().items():
            self._cut_back(path, lengths.get(tf, 0), hint)
        self._cut_back_rejects(state)
        self._cut_back_alerts(state)
        return state

    def _cut_back(self, path: Path, recorded: int, hint: str) -> None:
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            if recorded == 0:
                return  # no bar was durable yet: nothing is lost
            raise StateError(
                f"{self.inst_id}: output {path} is missing but the state records {recorded} bytes; {hint}"
            ) from None
        if actual < recorded:
            raise StateError(
                f"{self.inst_id}: output {path} is shorter ({actual} bytes) than the state "
                f"records ({recorded}); {hint}"
            )
        if actual > recorded:
            # Bars written after the last checkpoint: they will be computed again.
            with open(path, "r+b") as handle:
                handle.truncate(recorded)
                handle.flush()
                os.fsync(handle.fileno())

    def _cut_back_rejects(self, state: State) -> None:
        path = self.paths.rejects
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            state.rejects_length = 0
            return
        if actual > state.rejects_length:
            with open(path, "r+b") as handle:
                handle.truncate(state.rejects_length)
                os.fsync(handle.fileno())
        elif actual < state.rejects_length:
            # A user may clear the rejects file; that loses no bar, so carry on from its size.
            state.rejects_length = actual

    def _cut_back_alerts(self, state: State) -> None:
        """Alerts past the recorded length are cut (they are made again, with the same ids).

        A file shorter than recorded (emptied or deleted by hand) loses no bar: the run
        carries on from its size, as a new file (``generation`` cleared: the engine names a
        new one and starts delivery after what is there)."""
        path = self.paths.alerts
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            actual = 0
        if actual > state.alerts_length:
            with open(path, "r+b") as handle:
                handle.truncate(state.alerts_length)
                os.fsync(handle.fileno())
        elif actual < state.alerts_length:
            self.notes.append(
                f"{self.inst_id}: alerts file {path} is shorter ({actual} bytes) than the state "
                f"records ({state.alerts_length}); carrying on from its end, delivery after what it holds"
            )
            state.alerts_length = actual
            if state.alerts is not None:
                state.alerts.generation = ""

    def commit(self, state: State) -> None:
        """Atomically replace the state file (call only after the outputs were fsynced)."""
        state.updated_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            write_atomic(self.paths.state, _encoder.encode(state))
        except OSError as exc:
            raise SinkError(
                f"{self.inst_id}: cannot write state {self.paths.state}: {exc.strerror or exc}"
            ) from exc

    def close(self) -> None:
        """Release the lock (idempotent)."""
        if self._lock.is_locked:
            self._lock.release(force=True)


def read_state(path: Path) -> State:
    """Load a state file without locking (for ``status``); :class:`StateError` if unreadable."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=State)
    except (OSError, msgspec.DecodeError) as exc:
        raise StateError(f"state {path} is unreadable: {exc}") from exc
