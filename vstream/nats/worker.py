"""``vstream worker``: the asyncio shell that turns trade messages into bars on JetStream.

Per instrument it holds (:class:`~vstream.nats.core.LeaseBook`), the worker

1. loads the last checkpoint (``vstream.ckpt.<instId>``, sequence ``c``, or none: ``c = 0``)
   and restores the assembler from it;
2. *takes over*: republishes that checkpoint under its own name, fenced on ``c``. From then on
   a previous owner's writes, fenced on ``c`` too, are refused by the server;
3. reads ``vstream.trades.<instId>`` from the checkpoint's sequence + 1 (an ordered
   consumer) and feeds the assembler (:class:`~vstream.nats.core.InstrumentCore`);
4. publishes each finished bar together with the new checkpoint as one atomic batch fenced on
   the checkpoint subject's last sequence (its own previous write). A refused batch means
   another worker took the instrument over: the worker drops it (log line
   ``lost the lease of ...``) and never writes for it again.

Checkpoints without bars are published every ``checkpoint_interval`` seconds of progress, so
a takeover rereads little. On SIGTERM/SIGINT each instrument's checkpoint is written and its
lease deleted, so another worker picks it up at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import ConfigError, LeaseLostError, VStreamError
from ..instruments import CachedInstrument, InstrumentCache, resolve
from ..settings import Settings
from ..trades import LineDecoder
from .batch import FencedError, last_message, publish_batch
from .connect import (
    BARS_STREAM,
    LEASES_BUCKET,
    TRADES_PREFIX,
    TRADES_STREAM,
    WORKERS_BUCKET,
    ckpt_subject,
    ensure_streams,
    lease_buckets,
    live_keys,
    trades_subject,
    translate,
)
from .core import (
    MAX_BARS_PER_BATCH,
    Checkpoint,
    InstrumentCore,
    LeaseBook,
    Step,
    checkpoint_message,
    decode_checkpoint,
)
from .ingest import H_END, H_GAP, H_NOW

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.kv import KeyValue

log = logging.getLogger("vstream")

#: While catching up, bars of this many seconds of messages go out as one batch.
_MERGE_SECONDS = 0.1


class WorkerInfo(msgspec.Struct, kw_only=True):
    """A worker's presence record in ``VSTREAM_WORKERS`` (renewed with its leases)."""

    worker: str
    host: str
    pid: int
    instruments: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    written_ms: int = 0
    #: Random per process: tells this worker's own record from another's with the same id.
    token: str = ""


def _decode_info(value: bytes | None) -> WorkerInfo | None:
    try:
        return msgspec.json.decode(value or b"", type=WorkerInfo)
    except msgspec.DecodeError:
        return None


def _who(info: WorkerInfo | None) -> str:
    return f"host {info.host}, pid {info.pid}" if info is not None else "an unreadable record"


class LeaseValue(msgspec.Struct, kw_only=True):
    """The value of a lease key."""

    owner: str
    written_ms: int = 0


@dataclass(slots=True)
class _Running:
    task: asyncio.Task[None]
    core: InstrumentCore | None = None
    pending: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class NatsWorker:
    """A worker of the cluster. Construct, then ``await run(stop_event)``.

    Args:
        nc: a connected client (see :func:`vstream.nats.connect.connect`).
        settings: bar settings; every worker of a cluster must use the same ones.
        worker_id: this worker's name in leases and checkpoints.
        lease_ttl: seconds a lease lives without renewal (bucket setting, same for all).
        inst_ids: the instruments to work; None: every instrument with a trades subject.
        cache: instrument cache for ``ctVal`` (else overrides and the built-in table).
        checkpoint_interval: seconds between checkpoints that carry no bar.
        clock: wall clock in seconds (lease timing, checkpoint stamps).
        replicas: replicas of streams and buckets this worker creates.
    """

    def __init__(
        self,
        nc: Client,
        settings: Settings,
        *,
        worker_id: str | None = None,
        lease_ttl: float = 10.0,
        inst_ids: list[str] | None = None,
        cache: InstrumentCache | None = None,
        checkpoint_interval: float = 5.0,
        clock: Callable[[], float] = time.time,
        replicas: int = 1,
        publish_timeout: float = 5.0,
    ) -> None:
        self.nc = nc
        self.settings = settings
        self.worker_id = worker_id or default_worker_id()
        self.book = LeaseBook(self.worker_id, lease_ttl)
        self.inst_ids = list(inst_ids) if inst_ids else None
        self.cache = cache
        self.checkpoint_interval = checkpoint_interval
        self.clock = clock
        self.replicas = replicas
        self.publish_timeout = publish_timeout
        self.running: dict[str, _Running] = {}
        self.lost: list[str] = []  # instruments given up because another worker took them
        self.batches = 0
        self.bars = 0
        self._leases: KeyValue | None = None
        self._workers: KeyValue | None = None
        self._fatal: BaseException | None = None
        self.token = secrets.token_hex(8)
        self._record_rev: int | None = None  # revision of this worker's record in VSTREAM_WORKERS

    # -- the lease loop ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set; then checkpoint, release the leases and return."""
        js = self.nc.jetstream()
        await ensure_streams(js, replicas=self.replicas)
        self._leases, self._workers = await lease_buckets(js, ttl=self.book.ttl, replicas=self.replicas)
        tick = max(0.05, min(1.0, self.book.ttl / 6))
        await self._claim()
        try:
            while not stop.is_set():
                await self._expire()
                try:
                    await self._round()
                except ConfigError:
                    raise
                except VStreamError as exc:
                    # The server may be failing over or unreachable for a moment: the leases
                    # expire locally meanwhile (above), so nothing is written without one.
                    log.warning("%s: %s; trying again", self.worker_id, exc)
                if self._fatal is not None:
                    raise self._fatal
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), tick)
        finally:
            await self._shutdown()

    async def _instruments(self) -> list[str]:
        if self.inst_ids is not None:
            return self.inst_ids
        js = self.nc.jetstream()
        try:
            info = await js.stream_info(TRADES_STREAM, subjects_filter=TRADES_PREFIX + ">")
        except Exception as exc:
            raise translate(exc, "listing instruments") from exc
        subjects = info.state.subjects or {}
        return sorted(s[len(TRADES_PREFIX):] for s in subjects if s.startswith(TRADES_PREFIX))

    async def _keys(self, bucket: str) -> list[str]:
        return await live_keys(self.nc.jetstream(), bucket)

    async def _expire(self) -> None:
        for inst_id in self.book.expired(self.clock()):
            log.warning("%s: the lease was not renewed within %g s; giving the instrument up", inst_id, self.book.ttl)
            self.book.drop(inst_id)
            await self._stop_instrument(inst_id, checkpoint=False)

    async def _round(self) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        assert self._leases is not None and self._workers is not None
        now = self.clock()
        await self._announce(now)
        try:
            instruments = await self._instruments()
            taken = set(await self._keys(LEASES_BUCKET))
            workers = max(1, len(await self._keys(WORKERS_BUCKET)))
        except VStreamError:
            raise
        except Exception as exc:
            raise translate(exc, "reading the leases") from exc
        await self._expire()
        plan = self.book.plan(self.clock(), instruments, taken, workers)
        for inst_id in plan.release:
            await self._stop_instrument(inst_id, checkpoint=True)
            held = self.book.drop(inst_id)
            if held is not None:
                with contextlib.suppress(Exception):
                    await self._leases.delete(inst_id, last=held.revision)
        value = msgspec.json.encode(LeaseValue(owner=self.worker_id, written_ms=int(now * 1000)))
        for inst_id in plan.renew:
            held = self.book.held.get(inst_id)
            if held is None:
                continue
            sent = self.clock()
            try:
                revision = await self._leases.update(inst_id, value, last=held.revision)
            except KeyWrongLastSequenceError:
                log.warning("%s: lost the lease of %s (another worker holds it); giving it up", self.worker_id, inst_id)
                self.book.drop(inst_id)
                self.lost.append(inst_id)
                await self._stop_instrument(inst_id, checkpoint=False)
                continue
            except Exception as exc:
                # The server may be failing over: try again next round (or expire locally).
                log.info("%s: renewing %s failed: %s", self.worker_id, inst_id, exc)
                continue
            self.book.renewed(inst_id, revision, sent)
        for inst_id in plan.acquire:
            sent = self.clock()
            try:
                revision = await self._leases.create(inst_id, value)
            except KeyWrongLastSequenceError:
                continue  # someone was quicker
            except Exception as exc:
                log.info("%s: acquiring %s failed: %s", self.worker_id, inst_id, exc)
                continue
            self.book.acquired(inst_id, revision, sent)
            self._start_instrument(inst_id)
        # A task that ended by itself (lease lost, error) gives its lease up.
        for inst_id, running in list(self.running.items()):
            if running.task.done():
                self.running.pop(inst_id, None)
                held = self.book.drop(inst_id)
                failure = running.task.exception() if not running.task.cancelled() else None
                if isinstance(failure, ConfigError):
                    self._fatal = failure
                elif failure is not None:
                    log.warning("%s: %s", inst_id, failure)
                if failure is not None and held is not None:
                    # Released (fenced on its revision): another worker need not wait for
                    # the lease to expire, even when this one stops for good.
                    with contextlib.suppress(Exception):
                        await self._leases.delete(inst_id, last=held.revision)

    def _record(self, now: float) -> bytes:
        """This worker's record in ``VSTREAM_WORKERS``."""
        info = WorkerInfo(
            worker=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            written_ms=int(now * 1000),
            instruments={
                i: {
                    "seq": r.core.seq if r.core else 0,
                    "pending": r.pending,
                    "trade_ts": r.core.trade_ts if r.core else 0,
                }
                for i, r in self.running.items()
            },
            token=self.token,
        )
        return msgspec.json.encode(info)

    async def _claim(self) -> None:
        """Take this worker's id in ``VSTREAM_WORKERS``; refused while a live worker holds it.

        A live worker rewrites its record every round; a dead one's record stays until the
        bucket's TTL (``lease_ttl``) drops it. So a record that changes while it is watched
        belongs to a live worker (:class:`ConfigError`); one that does not is waited out until
        it expires, and the id is taken then.
        """
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        assert self._workers is not None
        loop = asyncio.get_running_loop()
        # The record expires ttl after its last write; a margin for a loaded server.
        deadline = loop.time() + 2 * self.book.ttl + 1.0
        poll = max(0.05, min(0.25, self.book.ttl / 20))
        watched: int | None = None
        while True:
            try:
                try:
                    self._record_rev = await self._workers.create(self.worker_id, self._record(self.clock()))
                    return
                except KeyNotFoundError:
                    # nats-py's create found a record, which expired before create looked
                    # whether it was a deleted one: gone, so create again.
                    continue
                except KeyWrongLastSequenceError:
                    pass
                try:
                    entry = await self._workers.get(self.worker_id)
                except KeyNotFoundError:
                    entry = None  # it expired or was deleted meanwhile: create it now
            except Exception as exc:
                raise translate(exc, f"registering worker id {self.worker_id!r}") from exc
            if entry is None:
                continue
            other = _decode_info(entry.value)
            revision = entry.revision or 0
            if watched is None:
                watched = revision
                log.info(
                    "worker id %r is in %s (%s): taking it once that record expires, unless "
                    "its worker is alive", self.worker_id, WORKERS_BUCKET, _who(other),
                )
            elif revision != watched:
                raise ConfigError(
                    f"worker id {self.worker_id!r} is held by another live worker "
                    f"({_who(other)}); give each worker its own --worker-id"
                )
            if loop.time() >= deadline:
                raise ConfigError(
                    f"worker id {self.worker_id!r} is held in {WORKERS_BUCKET} by {_who(other)}, "
                    f"whose record neither changed nor expired within {2 * self.book.ttl + 1:g} s; "
                    f"give this worker another --worker-id"
                )
            await asyncio.sleep(poll)

    async def _announce(self, now: float) -> None:
        """Renew this worker's record, fenced on its revision.

        If the record changed meanwhile: an update of ours whose acknowledgement was lost is
        adopted; a record that expired (this worker was paused or cut off) is made again; a
        record of another worker with the same id, which took it after this one's expired, is
        a :class:`ConfigError` that stops this worker.
        """
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        assert self._workers is not None
        record = self._record(now)
        try:
            try:
                self._record_rev = await self._workers.update(self.worker_id, record, last=self._record_rev)
                return
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await self._workers.get(self.worker_id)
            except KeyNotFoundError:
                self._record_rev = await self._workers.create(self.worker_id, record)
                log.warning("%s: this worker's record had expired (paused?); announced again", self.worker_id)
                return
        except Exception as exc:
            # The server may be failing over: announce again next round.
            log.info("%s: announcing failed: %s", self.worker_id, exc)
            return
        other = _decode_info(entry.value)
        if other is not None and other.token == self.token:
            self._record_rev = entry.revision  # written, its acknowledgement lost
            return
        raise ConfigError(
            f"worker id {self.worker_id!r} was taken by another worker ({_who(other)}) while "
            f"this one did not renew it (paused or cut off); stopping"
        )

    async def _shutdown(self) -> None:
        for inst_id in list(self.running):
            await self._stop_instrument(inst_id, checkpoint=True)
            held = self.book.drop(inst_id)
            if held is not None and self._leases is not None:
                with contextlib.suppress(Exception):
                    await self._leases.delete(inst_id, last=held.revision)
        if self._workers is not None and self._record_rev is not None:
            # Fenced: a record another worker with this id wrote is not ours to delete.
            with contextlib.suppress(Exception):
                await self._workers.delete(self.worker_id, last=self._record_rev)

    def _start_instrument(self, inst_id: str) -> None:
        task = asyncio.create_task(self._guarded(inst_id), name=f"vstream-worker-{inst_id}")
        self.running[inst_id] = _Running(task)

    async def _stop_instrument(self, inst_id: str, *, checkpoint: bool) -> None:
        running = self.running.pop(inst_id, None)
        if running is None:
            return
        if checkpoint:
            running.stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(running.task), self.publish_timeout)
            except BaseException:
                running.task.cancel()
        else:
            running.task.cancel()
        with contextlib.suppress(BaseException):
            await running.task

    # -- one instrument ---------------------------------------------------------------------

    async def _guarded(self, inst_id: str) -> None:
        try:
            await self._work(inst_id)
        except LeaseLostError:
            # Another worker owns the instrument now: forget it at once (its lease key is not
            # ours to delete) and write nothing more for it.
            self.lost.append(inst_id)
            self.book.drop(inst_id)
            self.running.pop(inst_id, None)

    async def _instrument_cache(self, inst_id: str) -> InstrumentCache | None:
        """The given cache, or the row ``ingest`` shared in ``VSTREAM_INSTRUMENTS``."""
        if self.cache is not None and inst_id in self.cache.instruments:
            return self.cache
        from .connect import instruments_bucket

        try:
            bucket = await instruments_bucket(self.nc.jetstream(), replicas=self.replicas)
            entry = await bucket.get(inst_id)
        except Exception:
            return self.cache  # no shared row: overrides and the built-in table decide
        if not entry.value:
            return self.cache
        try:
            row = msgspec.json.decode(entry.value, type=CachedInstrument)
        except msgspec.DecodeError:
            return self.cache
        return InstrumentCache(instruments={inst_id: row})

    async def _work(self, inst_id: str) -> None:
        running = self.running[inst_id]
        # No contract value anywhere: trades that carry their own (from exporter lines)
        # convert themselves, and one without stops this instrument with the clear error.
        instrument = resolve(
            inst_id, self.settings.ct_val, await self._instrument_cache(inst_id), required=False
        )
        subject = ckpt_subject(inst_id)
        # Load and take over (retry if the previous owner wrote in between).
        for _attempt in range(10):
            last = await last_message(self.nc, BARS_STREAM, subject)
            fence = last[0] if last is not None else 0
            saved = decode_checkpoint(last[2], inst_id) if last is not None else None
            core = InstrumentCore(instrument, self.settings, saved, owner=self.worker_id)
            try:
                fence = await self._publish(core, [Step([], core.checkpoint(self._ms()))], fence)
            except LeaseLostError:
                if not self.book.valid(inst_id, self.clock()):
                    raise  # the lease itself is gone: no point in trying again
                continue
            break
        else:
            raise LeaseLostError(f"{inst_id}: could not take over: the checkpoint kept moving")
        running.core = core
        log.info("%s: works %s from trades seq %d", self.worker_id, inst_id, core.seq + 1)
        await self._consume(inst_id, core, fence, running)

    def _ms(self) -> int:
        return int(self.clock() * 1000)

    async def _publish(self, core: InstrumentCore, steps: list[Step], fence: int) -> int:
        """Publish ``steps`` in order, each fenced on the previous; the new fence.

        Nothing is sent for an instrument whose lease this worker cannot know to be valid (its
        last renewal was sent ``lease_ttl`` or more ago): a worker that was paused, or whose
        lease loop fell behind, may no longer own it. (The fence still refuses a batch sent
        just before such a pause and stored after another worker took over.)
        """
        for step in steps:
            if not self.book.valid(core.inst_id, self.clock()):
                log.warning(
                    "%s: the lease of %s was not renewed within %g s; giving it up without writing",
                    self.worker_id, core.inst_id, self.book.ttl,
                )
                raise LeaseLostError(f"{core.inst_id}: the lease expired")
            try:
                ack = await publish_batch(
                    self.nc,
                    step.messages(),
                    fence=(ckpt_subject(core.inst_id), fence),
                    ack_wait=self.publish_timeout,
                    what=f"{core.inst_id} bars",
                )
            except FencedError as exc:
                log.warning(
                    "%s: lost the lease of %s: another worker wrote its checkpoint (%s); giving it up",
                    self.worker_id, core.inst_id, exc,
                )
                raise LeaseLostError(f"{core.inst_id}: another worker took the instrument over") from exc
            fence = ack.seq
            self.batches += 1
            self.bars += len(step.bars)
        return fence

    async def _consume(self, inst_id: str, core: InstrumentCore, fence: int, running: _Running) -> None:
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.api import ConsumerConfig, DeliverPolicy

        js = self.nc.jetstream()
        start = core.seq + 1
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
        try:
            sub = await js.subscribe(trades_subject(inst_id), ordered_consumer=True, config=config)
        except Exception as exc:
            raise translate(exc, f"reading {trades_subject(inst_id)}") from exc
        decoder = LineDecoder(inst_id)
        last_checkpoint = time.monotonic()
        unsaved = False
        # The batch of one message is in flight while the next message is decoded and fed:
        # its fence (the checkpoint's sequence) is awaited only before the next publish.
        inflight: asyncio.Task[int] | None = None

        async def settle(fence: int) -> int:
            nonlocal inflight
            if inflight is None:
                return fence
            task, inflight = inflight, None
            return await task

        held: list[Step] = []  # at most one: the merged steps not yet published
        held_since = 0.0

        async def flush(fence: int) -> int:
            nonlocal inflight
            if not held:
                return fence
            fence = await settle(fence)
            step = held.pop()
            inflight = asyncio.ensure_future(self._publish(core, [step], fence))
            return fence

        try:
            while True:
                if running.stop.is_set():
                    break
                try:
                    msg = await sub.next_msg(timeout=0.2)
                except NatsTimeout:
                    msg = None
                if msg is None:
                    fence = await flush(fence)
                    fence = await settle(fence)
                    if unsaved and time.monotonic() - last_checkpoint >= self.checkpoint_interval:
                        fence = await self._publish(core, [Step([], core.checkpoint(self._ms()))], fence)
                        last_checkpoint, unsaved = time.monotonic(), False
                    continue
                meta = msg.metadata
                seq = meta.sequence.stream
                running.pending = meta.num_pending
                headers = msg.headers or {}
                now_text = headers.get(H_NOW, "")
                trades: list[Any] = []
                if msg.data:
                    decoded = decoder.decode_body(
                        msg.data, file=f"nats:{seq}", first_line=1, now_ms=self._ms(),
                        start=0, end=len(msg.data),
                    )
                    trades = decoded.trades
                    if decoded.rejects:
                        core.assembler.counters.rejects += len(decoded.rejects)
                steps = core.feed(
                    seq,
                    trades,
                    now_ms=int(now_text) if now_text.isdigit() else None,
                    gap=headers.get(H_GAP) == "1",
                    end=headers.get(H_END) == "1",
                    wall_ms=self._ms(),
                )
                if not steps:
                    continue
                due = time.monotonic() - last_checkpoint >= self.checkpoint_interval
                if not steps[-1].bars and not due and not held:
                    steps = steps[:-1]
                    unsaved = True
                for step in steps:
                    # Steps are merged while catching up: an atomic commit costs the server
                    # milliseconds, so one per message would bound a backfill's speed.
                    if held and len(held[0].bars) + len(step.bars) > MAX_BARS_PER_BATCH:
                        fence = await flush(fence)
                    if held:
                        held[0] = Step(held[0].bars + step.bars, step.checkpoint)
                    else:
                        held.append(step)
                        held_since = time.monotonic()
                if held and (
                    running.pending == 0 or time.monotonic() - held_since >= _MERGE_SECONDS
                ):
                    fence = await flush(fence)
                    if core.part == 0:
                        last_checkpoint, unsaved = time.monotonic(), False
            fence = await flush(fence)
            fence = await settle(fence)
            if unsaved:
                await self._publish(core, [Step([], core.checkpoint(self._ms()))], fence)
        except VStreamError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise translate(exc, f"working {inst_id}") from exc
        finally:
            if inflight is not None:
                if inflight.done():
                    if not inflight.cancelled():
                        inflight.exception()  # seen: an error here is already on its way up
                else:
                    inflight.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


def load_cache_if(vault: str | None) -> InstrumentCache | None:
    """The vault's instrument cache when a vault is given (for ``ctVal``)."""
    if not vault:
        return None
    from ..instruments import load_cache

    return load_cache(Path(vault))


__all__ = ["Checkpoint", "LeaseValue", "NatsWorker", "WorkerInfo", "checkpoint_message", "default_worker_id", "load_cache_if"]
