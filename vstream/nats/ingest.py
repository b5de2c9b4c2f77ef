"""Trades into ``VSTREAM_TRADES``: live (``vstream ingest``) and from a vault (``vstream publish``).

One message per batch of accepted trades of one instrument, on ``vstream.trades.<instId>``.
Its body is the trades as JSON lines (flat OKX trade objects, in the order the source
delivered them, so a worker feeding them in stream order meets them as a local replay would).

**No duplicate trade in the stream, with any number of publishers.** Each subject's messages
carry a key that strictly grows: the vault position after the message (``Vstream-Pos``) for
``publish``, the highest trade id (``Vstream-Last-Id``, carried by every message) for
``ingest``. A publisher knows the subject's last sequence and key; it publishes a message only
if its key is past the last one, fenced with ``Nats-Expected-Last-Subject-Sequence``. When the
fence fails another publisher got there first: the publisher reads the subject's last message
and goes on after it — ``ingest`` drops the trades whose ids are already in, ``publish``
skips what is in or rereads the vault from the stream's position. ``Nats-Msg-Id`` (the
instrument and first/last trade id) additionally lets the server drop an identical resend.

Other headers: ``Vstream-Now`` (the ingester's wall clock: the worker closes the minutes due
at that time before feeding the message's trades, the in-band close of live mode),
``Vstream-Gap`` (a trade-id gap could not be filled) and ``Vstream-End`` (``publish --final``:
the input is complete, the worker closes the open minute as ``replay --final`` does).
"""

from __future__ import annotations

import asyncio
import logging
import os
import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import ConfigError, SourceError
from ..formats import wire_lines
from ..instruments import VaultPaths
from ..sources import Batch
from ..sources.replay import ReplaySource, day_files
from ..state import FilePos
from ..trades import Trade
from .batch import H_MSG_ID, FencedError, Message, last_message, publish_one
from .connect import TRADES_STREAM, check_inst_id, trades_subject

if TYPE_CHECKING:
    from nats.aio.client import Client

log = logging.getLogger("vstream")

H_LAST_ID = "Vstream-Last-Id"
H_POS = "Vstream-Pos"
H_NOW = "Vstream-Now"
H_GAP = "Vstream-Gap"
H_END = "Vstream-End"

_encoder = msgspec.json.Encoder()


def encode_trades(trades: Iterable[Trade]) -> bytes:
    """One JSON line per trade, as the workers' decoder reads them back (any line format)."""
    return wire_lines(list(trades))


def trade_number(trade: Trade) -> int | None:
    """The trade id as an integer (OKX ids are), or None for an id that is not a number."""
    text = trade.tradeId
    return int(text) if text.isdigit() and len(text) < 40 else None


class VaultKey(msgspec.Struct, array_like=True, order=True, frozen=True):
    """A ``publish`` message's place in the vault: after ``offset`` bytes of file ``name``.

    ``end`` is 1 on the end-of-input marker, which comes after everything of its position.
    """

    name: str
    offset: int
    end: int = 0


class VaultPos(msgspec.Struct):
    """The ``Vstream-Pos`` header: where a restarted publisher continues."""

    day: str
    file: FilePos
    end: int = 0

    @property
    def key(self) -> VaultKey:
        return VaultKey(self.file.name, self.file.offset, self.end)


@dataclass(slots=True)
class SubjectState:
    """What a publisher knows of one instrument's subject: last sequence and keys."""

    seq: int = 0
    last_id: int | None = None
    pos: VaultPos | None = None
    foreign: bool = False  # the last message came from a live ingester

    @classmethod
    def of(cls, last: tuple[int, dict[str, str], bytes] | None) -> SubjectState:
        """From the subject's last message (None: the subject is empty)."""
        if last is None:
            return cls()
        seq, headers, _ = last
        last_id_text = headers.get(H_LAST_ID, "")
        pos = None
        pos_text = headers.get(H_POS)
        if pos_text:
            try:
                pos = msgspec.json.decode(pos_text, type=VaultPos)
            except msgspec.DecodeError:
                pos = None
        return cls(
            seq=seq,
            last_id=int(last_id_text) if last_id_text.isdigit() else None,
            pos=pos,
            foreign=pos is None,
        )


def live_message(
    state: SubjectState,
    inst_id: str,
    trades: list[Trade],
    *,
    now_ms: int | None = None,
    gap: bool = False,
) -> tuple[Message, int | None] | None:
    """The message for a live batch given the subject's state, and its last trade id.

    Trades whose ids are already on the subject are left out; None when nothing is left to
    say (no new trade, no clock tick, no gap).
    """
    floor = state.last_id
    fresh: list[Trade] = []
    top = floor
    for trade in trades:
        number = trade_number(trade)
        if number is not None:
            if floor is not None and number <= floor:
                continue
            top = number if top is None else max(top, number)
        fresh.append(trade)
    if not fresh and now_ms is None and not gap:
        return None
    headers: dict[str, str] = {}
    if fresh:
        headers[H_MSG_ID] = f"{inst_id}:{fresh[0].tradeId}-{fresh[-1].tradeId}"
    elif now_ms is not None:
        headers[H_MSG_ID] = f"{inst_id}:tick:{now_ms}"
    if top is not None:
        headers[H_LAST_ID] = str(top)
    if now_ms is not None:
        headers[H_NOW] = str(now_ms)
    if gap:
        headers[H_GAP] = "1"
    return Message(trades_subject(inst_id), encode_trades(fresh), headers), top


def vault_message(
    state: SubjectState, inst_id: str, trades: list[Trade], pos: VaultPos
) -> tuple[Message, int | None] | None:
    """The message for a vault batch ending at ``pos``, or None if the stream already has it."""
    if state.pos is not None and pos.key <= state.pos.key:
        return None
    if not trades and not pos.end:
        return None  # a position-only batch (an archive read to its end): nothing to send
    top = state.last_id
    for trade in trades:
        number = trade_number(trade)
        if number is not None and (top is None or number > top):
            top = number
    key = pos.key
    headers = {
        H_MSG_ID: f"{inst_id}:{trades[0].tradeId}-{trades[-1].tradeId}" if trades else f"{inst_id}:end:{key.name}:{key.offset}",
        H_POS: msgspec.json.encode(pos).decode(),
    }
    if top is not None:
        headers[H_LAST_ID] = str(top)
    if pos.end:
        headers[H_END] = "1"
    return Message(trades_subject(inst_id), encode_trades(trades), headers), top


def current_pos(position: dict[str, FilePos]) -> tuple[str, FilePos] | None:
    """The newest day's entry of a replay position (the file being read)."""
    if not position:
        return None
    day = max(position)
    return day, position[day]


def resume_positions(raw_dir: Path, pos: VaultPos) -> dict[str, FilePos]:
    """A replay position equivalent to ``pos``: older day files read to their end."""
    out: dict[str, FilePos] = {}
    for day, path in day_files(raw_dir):
        if day >= pos.day:
            break
        st = path.stat()
        if path.name.endswith(".gz"):
            out[day] = FilePos(name=path.name, size=st.st_size, mtime_ns=st.st_mtime_ns, complete=True)
        else:
            with open(path, "rb") as handle:
                handle.seek(max(0, st.st_size - 64))
                tail = handle.read()
            out[day] = FilePos(name=path.name, offset=st.st_size, tail_crc=zlib.crc32(tail))
    out[pos.day] = pos.file
    return out


@dataclass(slots=True)
class PublishSummary:
    """What one publisher did for one instrument."""

    inst_id: str
    messages: int = 0
    trades: int = 0
    skipped: int = 0  # messages another publisher had already published
    rejects: int = 0

    def line(self) -> str:
        return (
            f"{self.inst_id} messages={self.messages} trades={self.trades} "
            f"already_published={self.skipped} rejects={self.rejects}"
        )


class _Restart(Exception):
    """The stream moved past a point this publisher had not reached: reread from there."""


async def publish_vault(
    nc: Client,
    vault: str | os.PathLike[str],
    inst_id: str,
    *,
    final: bool = False,
    chunk_bytes: int = 1 << 20,
    ack_wait: float = 10.0,
) -> PublishSummary:
    """Publish the trades of ``inst_id``'s raw files that the stream does not have yet.

    Continues from the position recorded in the subject's last message, so running it again
    (or two at once) publishes each trade once. ``final`` ends with an end-of-input marker.
    """
    check_inst_id(inst_id)
    paths = VaultPaths.of(Path(vault), inst_id)
    summary = PublishSummary(inst_id)
    subject = trades_subject(inst_id)
    while True:
        state = SubjectState.of(await last_message(nc, TRADES_STREAM, subject))
        if state.seq and state.foreign:
            raise ConfigError(
                f"{inst_id}: {subject} already holds live-ingested trades; publish backfills an "
                f"instrument before its live ingestion starts"
            )
        source = ReplaySource(vault, inst_id, final=final, chunk_bytes=chunk_bytes)
        if state.pos is not None:
            source.resume({inst_id: await asyncio.to_thread(resume_positions, paths.raw_dir, state.pos)})
        try:
            await _publish_batches(nc, inst_id, source, state, summary, ack_wait)
            return summary
        except _Restart:
            continue
        finally:
            await source.aclose()


async def _publish_batches(
    nc: Client,
    inst_id: str,
    source: ReplaySource,
    state: SubjectState,
    summary: PublishSummary,
    ack_wait: float,
) -> None:
    subject = trades_subject(inst_id)
    last: tuple[str, FilePos] | None = None
    if state.pos is not None:
        last = (state.pos.day, state.pos.file)
    async for batch in source:
        summary.rejects += len(batch.rejects)
        where = current_pos(batch.position or {})
        if where is None:
            where = last if last is not None else ("", FilePos(name=""))
        last = where
        pos = VaultPos(day=where[0], file=where[1], end=1 if batch.end else 0)
        planned = vault_message(state, inst_id, batch.trades, pos)
        if planned is None:
            continue
        message, top = planned
        try:
            ack = await publish_one(
                nc, message, expect_subject_seq=state.seq, ack_wait=ack_wait, what=f"{inst_id} trades"
            )
        except FencedError:
            fresh = SubjectState.of(await last_message(nc, TRADES_STREAM, subject))
            if fresh.pos is not None and fresh.pos.key >= pos.key:
                # Another publisher sent this very stretch (stream keys only grow).
                state.seq, state.pos, state.last_id = fresh.seq, fresh.pos, fresh.last_id
                summary.skipped += 1
                if fresh.pos.key == pos.key:
                    continue
            raise _Restart() from None
        if ack.duplicate:
            summary.skipped += 1
        else:
            summary.messages += 1
            summary.trades += len(batch.trades)
        state.seq, state.pos, state.last_id = ack.seq, pos, top


class TradeIngester:
    """Publishes live batches (from :class:`~vstream.sources.okx.OkxSource`) without duplicates.

    Several ingesters may run for the same instruments (hot standby): each publishes every
    batch, and the stream keeps each trade once.

    The live source guarantees consecutive ids from its first record on, not before it. So an
    ingester joining a subject that already has trades checks its first record against the
    subject: if ids lie between them, it waits up to ``join_wait`` seconds for another
    ingester to publish them (else its own newer trades would pass them and they would be
    dropped as old); if they never come, the batch goes out flagged as a gap (the worker marks
    the minute ``"gap": true``) with a warning. ``channel`` says how to read ids (on
    ``trades`` a record covers ``tradeId - count + 1 .. tradeId``).
    """

    def __init__(
        self,
        nc: Client,
        *,
        ack_wait: float = 10.0,
        join_wait: float = 5.0,
        channel: str = "trades",
    ) -> None:
        self._nc = nc
        self._ack_wait = ack_wait
        self._join_wait = join_wait
        self._merged = channel == "trades"
        self._states: dict[str, SubjectState] = {}
        self._joined: set[str] = set()
        self.published = 0
        self.trades = 0
        self.dropped = 0  # trades another ingester had published already
        self.gaps = 0

    def _first_new_id(self, state: SubjectState, trades: list[Trade]) -> int | None:
        """The first id the batch covers beyond the subject's last one (None: none beyond)."""
        floor = state.last_id
        for trade in trades:
            number = trade_number(trade)
            if number is not None and (floor is None or number > floor):
                return number - trade.count + 1 if self._merged else number
        return None

    async def _join(self, batch: Batch, state: SubjectState) -> tuple[SubjectState, bool]:
        """Wait until the subject reaches this ingester's first record; (state, gap)."""
        inst_id = batch.inst_id
        subject = trades_subject(inst_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._join_wait
        while True:
            first = self._first_new_id(state, batch.trades)
            if first is None or state.last_id is None or first <= state.last_id + 1:
                return state, False
            if loop.time() >= deadline:
                log.warning(
                    "%s: trade ids %d..%d are not in %s and did not arrive within %g s; "
                    "publishing on, flagged as a gap", inst_id, state.last_id + 1, first - 1,
                    subject, self._join_wait,
                )
                self.gaps += 1
                return state, True
            await asyncio.sleep(0.05)
            state = SubjectState.of(await last_message(self._nc, TRADES_STREAM, subject))
            self._states[inst_id] = state

    async def _state(self, inst_id: str) -> SubjectState:
        state = self._states.get(inst_id)
        if state is None:
            state = SubjectState.of(await last_message(self._nc, TRADES_STREAM, trades_subject(inst_id)))
            self._states[inst_id] = state
        return state

    async def put(self, batch: Batch) -> None:
        """Publish what ``batch`` adds to the stream (retrying after another ingester's write)."""
        inst_id = batch.inst_id
        state = await self._state(inst_id)
        gap = batch.gap
        if inst_id not in self._joined and batch.trades:
            state, missing = await self._join(batch, state)
            gap = gap or missing
            self._joined.add(inst_id)
        for _attempt in range(20):
            planned = live_message(state, inst_id, batch.trades, now_ms=batch.now_ms, gap=gap)
            if planned is None:
                self.dropped += len(batch.trades)
                return
            message, top = planned
            try:
                ack = await publish_one(
                    self._nc, message, expect_subject_seq=state.seq, ack_wait=self._ack_wait,
                    what=f"{inst_id} trades",
                )
            except FencedError:
                fresh = SubjectState.of(
                    await last_message(self._nc, TRADES_STREAM, trades_subject(inst_id))
                )
                self._states[inst_id] = state = fresh
                continue
            sent = message.body.count(b"\n")
            if ack.duplicate:
                self.dropped += sent
            else:
                self.published += 1
                self.trades += sent
                self.dropped += len(batch.trades) - sent
            state.seq = max(state.seq, ack.seq) if ack.duplicate else ack.seq
            if top is not None:
                state.last_id = top
            return
        raise SourceError(f"{inst_id}: could not publish trades: the subject kept moving")

    async def run(self, source: Any, *, backlog: int = 1000) -> None:
        """Publish every batch ``source`` yields until it ends.

        Instruments publish concurrently (each in its own order): a publish waits for its
        acknowledgement, and hundreds of instruments one after the other would fall behind.
        ``backlog`` batches may wait per instrument before the source is held back.
        """
        source.resume({i: None for i in source.inst_ids})
        queues: dict[str, asyncio.Queue[Batch | None]] = {}
        tasks: dict[str, asyncio.Task[None]] = {}

        failures: list[Exception] = []

        async def drain(queue: asyncio.Queue[Batch | None]) -> None:
            while (batch := await queue.get()) is not None:
                if failures:
                    continue  # keep taking, so the source is never blocked on a full queue
                try:
                    await self.put(batch)
                except Exception as exc:
                    failures.append(exc)

        def check() -> None:
            if failures:
                raise failures[0]

        iterator: AsyncIterator[Batch] = source.__aiter__()
        try:
            async for batch in iterator:
                if not (batch.trades or batch.now_ms is not None or batch.gap):
                    continue
                check()
                queue = queues.get(batch.inst_id)
                if queue is None:
                    queue = queues[batch.inst_id] = asyncio.Queue(backlog)
                    tasks[batch.inst_id] = asyncio.create_task(
                        drain(queue), name=f"vstream-ingest-{batch.inst_id}"
                    )
                await queue.put(batch)
            for queue in queues.values():
                await queue.put(None)
            await asyncio.gather(*tasks.values())
            check()
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)


__all__ = [
    "H_END",
    "H_GAP",
    "H_LAST_ID",
    "H_NOW",
    "H_POS",
    "PublishSummary",
    "SubjectState",
    "TradeIngester",
    "VaultKey",
    "VaultPos",
    "encode_trades",
    "live_message",
    "publish_vault",
    "vault_message",
]
