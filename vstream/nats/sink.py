"""``vstream sink-jsonl``: the bars stream into a vault's output files, resumable.

Per instrument the sink reads ``vstream.bars.<instId>.*`` in stream order and appends each
bar (its message body, the exact line replay writes, plus ``\\n``) to
``derived/volume/okx/{market}/{INSTID}/volume_{tf}.jsonl``. Its position is kept in
``state/volume/okx/{market}/{INSTID}.nats-sink.json``: the bars-stream sequence of the last
bar written, and each output's length after it. The order of durability is replay's (SPEC §7):
append, flush and fsync the outputs, then replace the state atomically. At start an output
longer than the state records is cut back (those bars are read again), a shorter one or an
output without a state is an error naming ``--rebuild``. So a sink killed at any instant and
run again loses and doubles no bar.

The sink takes the instrument's vault lock (``{INSTID}.lock``), so it never runs beside a
``replay`` or ``live`` of the same instrument in the same vault, and it refuses a vault where
replay keeps that instrument's state: the two would write the same files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock
import msgspec

from ..assembler import Bar
from ..errors import ConfigError, SinkError, SourceError, StateError
from ..instruments import VaultPaths
from ..settings import TIMEFRAMES
from ..state import take_instrument, write_atomic
from .connect import BARS_PREFIX, BARS_STREAM, check_inst_id, translate
from .readers import PullReader, split_bar_subject

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

log = logging.getLogger("vstream")

SINK_STATE_VERSION = 1
REBUILD_HINT = "run sink-jsonl again with --rebuild to start the instrument over"


class SinkState(msgspec.Struct, kw_only=True):
    """The content of ``{INSTID}.nats-sink.json``."""

    version: int = SINK_STATE_VERSION
    instId: str
    #: When the bars stream was created: a stream deleted and made again is noticed.
    stream_created: str = ""
    #: Bars-stream sequence of the last message of this instrument taken.
    seq: int = 0
    #: Bytes of each timeframe's output after its last durable bar.
    lengths: dict[str, int] = msgspec.field(default_factory=dict)
    #: ``timestamp_utc`` of each timeframe's last bar (a repeated period is dropped).
    last: dict[str, str] = msgspec.field(default_factory=dict)
    bars: int = 0
    repeated: int = 0
    unreadable: int = 0
    updated_at: str = ""


_encoder = msgspec.json.Encoder()
_bar_decoder = msgspec.json.Decoder(Bar)


def sink_state_path(paths: VaultPaths) -> Path:
    return paths.state_dir / f"{paths.inst_id}.nats-sink.json"


class SinkStore:
    """One instrument's sink state, lock and outputs (synchronous file work)."""

    def __init__(self, paths: VaultPaths) -> None:
        self.paths = paths
        self.path = sink_state_path(paths)
        self._lock = filelock.FileLock(paths.lock, timeout=0, thread_local=False)

    @property
    def inst_id(self) -> str:
        return self.paths.inst_id

    def outputs(self) -> dict[str, Path]:
        return {tf: self.paths.output(tf) for tf in TIMEFRAMES}

    def open(self, *, rebuild: bool, stream_created: str) -> SinkState:
        """Lock the instrument, check the files and return the state to resume from."""
        take_instrument(self.paths, self._lock)
        try:
            return self._load(rebuild, stream_created)
        except BaseException:
            self.close()
            raise

    def _load(self, rebuild: bool, stream_created: str) -> SinkState:
        if self.paths.state.exists():
            raise StateError(
                f"{self.inst_id}: replay/live keep this instrument's bars in this vault "
                f"({self.paths.state}); sink-jsonl writes a vault of its own"
            )
        if rebuild:
            for path in [*self.outputs().values(), self.path]:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        if not self.path.exists():
            for path in self.outputs().values():
                if path.exists() and path.stat().st_size > 0:
                    raise StateError(f"{self.inst_id}: output {path} exists without a sink state; {REBUILD_HINT}")
            state = SinkState(instId=self.inst_id, stream_created=stream_created)
            # The state comes before the first bar: a sink killed between its first append
            # and its first state would leave an output without a state, refused next time.
            self._write_state(state)
            return state
        try:
            state = msgspec.json.decode(self.path.read_bytes(), type=SinkState)
        except (OSError, msgspec.DecodeError) as exc:
            raise StateError(f"{self.inst_id}: sink state {self.path} is unreadable ({exc}); {REBUILD_HINT}") from exc
        if state.version != SINK_STATE_VERSION or state.instId != self.inst_id:
            raise StateError(
                f"{self.inst_id}: sink state {self.path} is of version {state.version} for "
                f"{state.instId}; {REBUILD_HINT}"
            )
        if state.stream_created and stream_created and state.stream_created != stream_created:
            raise StateError(
                f"{self.inst_id}: stream {BARS_STREAM} was created again since this vault was "
                f"written (its sequences start over); {REBUILD_HINT}"
            )
        for tf, path in self.outputs().items():
            self._cut_back(path, state.lengths.get(tf, 0))
        return state

    def _cut_back(self, path: Path, recorded: int) -> None:
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            if recorded:
                raise StateError(
                    f"{self.inst_id}: output {path} is missing but the sink state records "
                    f"{recorded} bytes; {REBUILD_HINT}"
                ) from None
            return
        if actual < recorded:
            raise StateError(
                f"{self.inst_id}: output {path} is shorter ({actual} bytes) than the sink state "
                f"records ({recorded}); {REBUILD_HINT}"
            )
        if actual > recorded:
            # Bars appended after the last state: they are read from the stream again.
            with open(path, "r+b") as handle:
                handle.truncate(recorded)
                handle.flush()
                os.fsync(handle.fileno())

    def commit(self, state: SinkState, pending: dict[str, bytearray]) -> None:
        """Append ``pending`` to the outputs and fsync them, then replace the state."""
        try:
            for tf, data in pending.items():
                if not data:
                    continue
                path = self.paths.output(tf)
                with open(path, "ab") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                state.lengths[tf] = state.lengths.get(tf, 0) + len(data)
        except OSError as exc:
            raise SinkError(f"{self.inst_id}: cannot write {exc.filename or 'the outputs'}: {exc.strerror or exc}") from exc
        self._write_state(state)

    def _write_state(self, state: SinkState) -> None:
        """Replace the state file atomically."""
        try:
            state.updated_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            write_atomic(self.path, _encoder.encode(state))
        except OSError as exc:
            raise SinkError(f"{self.inst_id}: cannot write {exc.filename or self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        if self._lock.is_locked:
            self._lock.release(force=True)


@dataclass(slots=True)
class SinkSummary:
    """What one sink run did for one instrument."""

    inst_id: str
    bars: dict[str, int] = field(default_factory=dict)
    repeated: int = 0
    unreadable: int = 0
    seq: int = 0

    def line(self) -> str:
        per_tf = " ".join(f"{tf}={n}" for tf, n in sorted(self.bars.items(), key=lambda i: TIMEFRAMES.get(i[0], 0)))
        total = sum(self.bars.values())
        text = f"{self.inst_id} bars={total}"
        if per_tf:
            text += f" ({per_tf})"
        return f"{text} repeated={self.repeated} unreadable={self.unreadable} stream_seq={self.seq}"


def take(state: SinkState, msgs: list[Msg], summary: SinkSummary) -> dict[str, bytearray]:
    """The output bytes per timeframe of ``msgs`` (state's position and last bars advanced)."""
    pending: dict[str, bytearray] = {}
    for msg in msgs:
        seq = msg.metadata.sequence.stream
        if seq <= state.seq:
            continue
        state.seq = seq
        where = split_bar_subject(msg.subject)
        if where is None or where[0] != state.instId or where[1] not in TIMEFRAMES:
            summary.unreadable += 1
            state.unreadable += 1
            log.warning("%s: skipped message %d on %s: not a bar subject vstream writes", state.instId, seq, msg.subject)
            continue
        tf = where[1]
        try:
            bar = _bar_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            summary.unreadable += 1
            state.unreadable += 1
            log.warning("%s: skipped message %d on %s: not a bar (%s)", state.instId, seq, msg.subject, exc)
            continue
        last = state.last.get(tf)
        if last is not None and bar.timestamp_utc <= last:
            # A period already written (the stream should never repeat one): never twice.
            summary.repeated += 1
            state.repeated += 1
            log.warning("%s: %s bar %s is not after %s; dropped", state.instId, tf, bar.timestamp_utc, last)
            continue
        state.last[tf] = bar.timestamp_utc
        state.bars += 1
        summary.bars[tf] = summary.bars.get(tf, 0) + 1
        buffer = pending.setdefault(tf, bytearray())
        buffer += msg.data
        buffer += b"\n"
    return pending


async def stream_created(nc: Client) -> str:
    """The bars stream's creation time (its identity across runs)."""
    from nats.js.errors import NotFoundError

    try:
        info = await nc.jetstream().stream_info(BARS_STREAM)
    except NotFoundError:
        raise ConfigError(f"stream {BARS_STREAM} does not exist: no worker has run on this server") from None
    except Exception as exc:
        raise translate(exc, f"reading stream {BARS_STREAM}") from exc
    created = info.created
    return created.isoformat() if created is not None else ""


async def sink_instrument(
    nc: Client,
    vault: str | os.PathLike[str],
    inst_id: str,
    *,
    follow: bool = False,
    stop: asyncio.Event | None = None,
    rebuild: bool = False,
    batch: int = 1000,
) -> SinkSummary:
    """Write the bars of ``inst_id`` the vault does not have yet; with ``follow``, keep
    writing new ones until ``stop`` is set. Each fetched batch is made durable at once."""
    check_inst_id(inst_id)
    stop = stop or asyncio.Event()
    paths = VaultPaths.of(Path(vault), inst_id)
    store = SinkStore(paths)
    created = await stream_created(nc)
    state = store.open(rebuild=rebuild, stream_created=created)
    summary = SinkSummary(inst_id, seq=state.seq)
    reader = PullReader(nc, [f"{BARS_PREFIX}{inst_id}.*"], deliver="seq", start_seq=state.seq + 1, batch=batch)
    reader.last_seq = state.seq
    try:
        await reader.open()
        if not follow and await reader.pending() == 0:
            return summary
        while not stop.is_set():
            msgs = await reader.fetch(0.5)
            if msgs:
                pending = take(state, msgs, summary)
                summary.seq = state.seq
                await asyncio.to_thread(store.commit, state, pending)
                if not follow and msgs[-1].metadata.num_pending == 0:
                    break
            elif not follow and await reader.pending() == 0:
                break
    finally:
        with contextlib.suppress(Exception):
            await reader.close()
        store.close()
    return summary


async def bar_instruments(nc: Client) -> list[str]:
    """Instruments with bars in the stream."""
    from nats.js.errors import NotFoundError

    try:
        info = await nc.jetstream().stream_info(BARS_STREAM, subjects_filter=BARS_PREFIX + ">")
    except NotFoundError:
        raise ConfigError(f"stream {BARS_STREAM} does not exist: no worker has run on this server") from None
    except Exception as exc:
        raise translate(exc, f"listing the instruments of {BARS_STREAM}") from exc
    found = set()
    for subject in info.state.subjects or {}:
        where = split_bar_subject(subject)
        if where is not None:
            found.add(where[0])
    return sorted(found)


async def run_sinks(
    nc: Client,
    vault: str | os.PathLike[str],
    inst_ids: list[str] | None,
    *,
    follow: bool,
    stop: asyncio.Event,
    rebuild: bool = False,
    batch: int = 1000,
    rescan: float = 5.0,
    report: Any = None,
) -> list[tuple[str, SinkSummary | BaseException]]:
    """Run one sink per instrument (``None``: every instrument in the stream, rescanned every
    ``rescan`` seconds while following). ``report(inst_id, result)`` hears each one end.

    With ``None`` and no bar in the stream at all: a :class:`SourceError` without ``follow``;
    with it, a warning, and the sinks start as the first bars come.
    """
    tasks: dict[str, asyncio.Task[SinkSummary]] = {}
    results: list[tuple[str, SinkSummary | BaseException]] = []

    def failed(task: asyncio.Task[SinkSummary]) -> None:
        # While following, say at once that an instrument stopped (the others go on).
        if follow and not task.cancelled() and task.exception() is not None:
            log.error("%s: the sink stopped: %s", task.get_name().removeprefix("vstream-sink-"), task.exception())

    def start(inst: str) -> None:
        task = asyncio.create_task(
            sink_instrument(nc, vault, inst, follow=follow, stop=stop, rebuild=rebuild, batch=batch),
            name=f"vstream-sink-{inst}",
        )
        task.add_done_callback(failed)
        tasks[inst] = task

    if inst_ids is None:
        found = await bar_instruments(nc)
        if not found:
            # Nothing silent: an empty stream is said, and without follow it is a failure.
            if not follow:
                raise SourceError(f"no bars in stream {BARS_STREAM} yet (no worker has finished one): nothing to write")
            log.warning("no bars in stream %s yet; following it for the first ones", BARS_STREAM)
        for inst in found:
            start(inst)
    else:
        for inst in inst_ids:
            start(inst)
    try:
        while True:
            running = [t for t in tasks.values() if not t.done()]
            if not running and (not follow or stop.is_set()):
                break
            if follow and inst_ids is None and not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), rescan)
                if not stop.is_set():
                    for inst in await bar_instruments(nc):
                        if inst not in tasks:
                            start(inst)
                continue
            await asyncio.wait(running or [asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.set()
        for inst, task in tasks.items():
            try:
                result: SinkSummary | BaseException = await task
            except Exception as exc:
                result = exc
            results.append((inst, result))
            if report is not None:
                report(inst, result)
    return results


__all__ = [
    "SinkState",
    "SinkStore",
    "SinkSummary",
    "bar_instruments",
    "run_sinks",
    "sink_instrument",
    "sink_state_path",
    "take",
]
