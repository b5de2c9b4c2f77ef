"""The decisions of a distributed worker, without I/O: leases and what to publish.

* :class:`LeaseBook` — which instruments to acquire, renew, release or consider lost, given
  the time (passed in), the instruments, who holds a lease and how many workers are alive.
* :class:`InstrumentCore` — one instrument's bar assembler fed with trade messages in stream
  order; it says which bars and which checkpoint to publish together (one atomic batch).

The asyncio shell in :mod:`vstream.nats.worker` only carries these decisions out.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec

from ..assembler import AssemblerState, Bar, BarAssembler
from ..errors import ConfigError
from ..instruments import Instrument
from ..kernel import MINUTE_MS, minute_cuts, stamp_bounds
from ..settings import Settings
from ..trades import Trade
from .batch import H_MSG_ID, H_ROLLUP, MAX_BATCH_MESSAGES, Message
from .connect import bars_subject, ckpt_subject

#: Checkpoint format version.
CHECKPOINT_VERSION = 1
#: Bars in one atomic batch (the checkpoint makes one more message).
MAX_BARS_PER_BATCH = min(900, MAX_BATCH_MESSAGES - 1)

_encoder = msgspec.json.Encoder()


class Checkpoint(msgspec.Struct, kw_only=True):
    """The last message on ``vstream.ckpt.<instId>``: where the instrument's bars stand.

    ``seq`` is the trades-stream sequence of the last trade message consumed whole, ``part``
    how many trades of the next message are already in (a message that finished more bars
    than one batch holds is published in parts). ``state`` is the assembler's.
    """

    v: int = CHECKPOINT_VERSION
    instId: str
    fingerprint: str
    seq: int = 0
    part: int = 0
    state: AssemblerState = msgspec.field(default_factory=AssemblerState)
    owner: str = ""
    trade_ts: int = 0  # ts of the newest trade fed (lag in seconds)
    written_ms: int = 0  # writer's wall clock


_ckpt_decoder = msgspec.json.Decoder(Checkpoint)


def decode_checkpoint(body: bytes, inst_id: str) -> Checkpoint:
    """A checkpoint from a message body; a bad one is a :class:`ConfigError`."""
    try:
        ckpt = _ckpt_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{inst_id}: unreadable checkpoint on {ckpt_subject(inst_id)}: {exc}") from exc
    if ckpt.v != CHECKPOINT_VERSION or ckpt.instId != inst_id:
        raise ConfigError(
            f"{inst_id}: the checkpoint on {ckpt_subject(inst_id)} is of version {ckpt.v} for "
            f"{ckpt.instId}; this worker reads version {CHECKPOINT_VERSION}"
        )
    return ckpt


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def bar_start_ms(bar: Bar) -> int:
    """The bar's period start in epoch milliseconds (from ``timestamp_utc``)."""
    # fromisoformat, not strptime: every bar published goes through here, and strptime's
    # 5 us a bar was a few per cent of a catching-up worker.
    return (datetime.fromisoformat(bar.timestamp_utc) - _EPOCH) // _MS


def bar_message(bar: Bar) -> Message:
    """A bar as published: the exact JSON line the local replay writes (without newline)."""
    tf = bar.timeframe if isinstance(bar.timeframe, str) else "1m"
    return Message(
        bars_subject(bar.instId, tf),
        _encoder.encode(bar),
        {H_MSG_ID: f"{bar.instId}:{tf}:{bar_start_ms(bar)}"},
    )


def checkpoint_message(ckpt: Checkpoint) -> Message:
    # The roll-up keeps one checkpoint per instrument in the stream.
    return Message(ckpt_subject(ckpt.instId), _encoder.encode(ckpt), {H_ROLLUP: "sub"})


@dataclass(slots=True)
class Step:
    """One atomic batch to publish: bars, then the checkpoint that covers them."""

    bars: list[Bar]
    checkpoint: Checkpoint

    def messages(self) -> list[Message]:
        return [*map(bar_message, self.bars), checkpoint_message(self.checkpoint)]


class InstrumentCore:
    """One instrument's assembler, fed trade messages in trades-stream order.

    :meth:`feed` returns the :class:`Step` s to publish, in order; the last one always covers
    the whole message (``seq``), earlier ones the parts of a message that finished more bars
    than a batch holds. A step without bars need not be published (the shell publishes one
    now and then so a takeover rereads little).
    """

    def __init__(
        self,
        instrument: Instrument,
        settings: Settings,
        checkpoint: Checkpoint | None = None,
        *,
        owner: str = "",
    ) -> None:
        self.instrument = instrument
        self.inst_id = instrument.inst_id
        self.owner = owner
        self.fingerprint = settings.fingerprint(instrument.ct_val, instrument.inst_id)
        self._tfs = max(1, len(settings.timeframes))
        if checkpoint is not None and checkpoint.fingerprint != self.fingerprint:
            raise ConfigError(
                f"{self.inst_id}: the cluster's checkpoint was made with other settings "
                f"(fingerprint {checkpoint.fingerprint}, this worker {self.fingerprint}); every "
                f"worker must run with the same settings"
            )
        self.seq = checkpoint.seq if checkpoint is not None else 0
        self.part = checkpoint.part if checkpoint is not None else 0
        self.trade_ts = checkpoint.trade_ts if checkpoint is not None else 0
        self.assembler = BarAssembler(
            instrument, settings, checkpoint.state if checkpoint is not None else None
        )

    def checkpoint(self, now_ms: int = 0) -> Checkpoint:
        """The checkpoint of where this core stands now."""
        return Checkpoint(
            instId=self.inst_id,
            fingerprint=self.fingerprint,
            seq=self.seq,
            part=self.part,
            state=self.assembler.snapshot(),
            owner=self.owner,
            trade_ts=self.trade_ts,
            written_ms=now_ms,
        )

    def _cuts(self, trades: list[Trade], start: int, low: int, high: int) -> list[int]:
        """Cut points (indexes into ``trades``) of ``trades[start:]``, whose stamps lie in
        ``low..high``, so no slice can finish more bars than one batch holds."""
        limit = MAX_BARS_PER_BATCH // self._tfs - 1
        # A finished 1m bar needs a trade of a later minute, so a message finishes at most one
        # bar per distinct minute it holds: bounded by its span of minutes. Only a message
        # spanning more minutes than that (a sparse backfill) is walked trade by trade.
        if high < low or high // MINUTE_MS - low // MINUTE_MS + 1 <= limit:
            return [len(trades)]
        return minute_cuts(trades, start, limit)

    def feed(
        self,
        seq: int,
        trades: list[Trade],
        *,
        now_ms: int | None = None,
        gap: bool = False,
        end: bool = False,
        wall_ms: int = 0,
    ) -> list[Step]:
        """Take trade message ``seq`` (its trades in order, its clock tick / gap / end flags)."""
        if seq <= self.seq:
            return []  # already in (a redelivery)
        skip = self.part if seq == self.seq + 1 else 0
        assembler = self.assembler
        bars: list[Bar] = []
        if skip == 0:
            if now_ms is not None:
                bars += assembler.close_due(now_ms)
            if gap:
                assembler.mark_gap()
        steps: list[Step] = []
        start = skip
        low, high = stamp_bounds(trades, skip)
        if high > self.trade_ts:
            self.trade_ts = high
        for stop in self._cuts(trades, skip, low, high):
            if stop > start:
                bars += assembler.feed(trades[start:stop] if start or stop < len(trades) else trades)
            start = stop
            if start < len(trades) and bars:
                self.part = start
                steps.append(Step(bars, self.checkpoint(wall_ms)))
                bars = []
        if end:
            bars += assembler.close()
        self.seq = seq
        self.part = 0
        steps.append(Step(bars, self.checkpoint(wall_ms)))
        return steps


@dataclass(slots=True)
class Held:
    """A lease this worker holds: the key's revision and when it was last written."""

    revision: int
    renewed_at: float


@dataclass(slots=True)
class LeasePlan:
    """What to do with the leases now."""

    acquire: list[str] = field(default_factory=list)
    renew: list[str] = field(default_factory=list)
    release: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)


class LeaseBook:
    """The leases of one worker (``owner``): a state machine driven by :meth:`plan` and events.

    A lease key lives ``ttl`` seconds after its last write (the server deletes it). The worker
    renews each lease every ``ttl / 3``; a lease whose last successful write was sent ``ttl``
    or more ago counts as lost locally (the server may have dropped it), before any other
    worker can have acquired it. Workers share instruments evenly: each takes at most
    ``ceil(instruments / live workers)`` and gives back what it holds beyond that.
    """

    def __init__(self, owner: str, ttl: float) -> None:
        if not ttl > 0:
            raise ConfigError("the lease TTL must be > 0 seconds")
        self.owner = owner
        self.ttl = ttl
        self.held: dict[str, Held] = {}

    def _rank(self, inst_id: str) -> str:
        # Each worker prefers a different order, so two starting together spread out.
        return hashlib.sha1(f"{self.owner}/{inst_id}".encode()).hexdigest()

    def plan(
        self, now: float, instruments: list[str], taken: set[str], workers: int
    ) -> LeasePlan:
        """``taken``: instruments whose lease key exists (held by anyone, this worker too)."""
        plan = LeasePlan()
        for inst_id, held in sorted(self.held.items()):
            if now - held.renewed_at >= self.ttl:
                plan.expired.append(inst_id)
            elif now - held.renewed_at >= self.ttl / 3:
                plan.renew.append(inst_id)
        alive = len(self.held) - len(plan.expired)
        wanted = set(instruments)
        target = math.ceil(len(wanted) / max(1, workers)) if wanted else 0
        if alive > target:
            extra = sorted(
                (i for i in self.held if i not in plan.expired), key=self._rank, reverse=True
            )
            plan.release = sorted(extra[: alive - target])
        elif alive < target:
            free = [i for i in wanted if i not in taken and i not in self.held]
            free.sort(key=self._rank)
            plan.acquire = free[: target - alive]
        # An instrument no longer listed is released too.
        for inst_id in self.held:
            if inst_id not in wanted and inst_id not in plan.expired and inst_id not in plan.release:
                plan.release.append(inst_id)
        plan.renew = [i for i in plan.renew if i not in plan.release]
        return plan

    def expired(self, now: float) -> list[str]:
        """Held leases whose last write is ``ttl`` or more ago (no I/O needed to know)."""
        return sorted(i for i, h in self.held.items() if now - h.renewed_at >= self.ttl)

    def acquired(self, inst_id: str, revision: int, sent_at: float) -> None:
        self.held[inst_id] = Held(revision, sent_at)

    def renewed(self, inst_id: str, revision: int, sent_at: float) -> None:
        if inst_id in self.held:
            self.held[inst_id] = Held(revision, sent_at)

    def drop(self, inst_id: str) -> Held | None:
        """Forget a lease (lost, expired or released); what was held, if anything."""
        return self.held.pop(inst_id, None)

    def valid(self, inst_id: str, now: float) -> bool:
        held = self.held.get(inst_id)
        return held is not None and now - held.renewed_at < self.ttl


__all__ = [
    "CHECKPOINT_VERSION",
    "MAX_BARS_PER_BATCH",
    "Checkpoint",
    "Held",
    "InstrumentCore",
    "LeaseBook",
    "LeasePlan",
    "Step",
    "bar_message",
    "checkpoint_message",
    "decode_checkpoint",
]
