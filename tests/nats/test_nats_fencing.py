"""A worker that lost its instrument cannot write after the new owner started."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from nats_support import bar_lines, leases_of, local_output, read_subjects, replay_final, wait_for

from vstream.errors import ConfigError, LeaseLostError
from vstream.generate import generate_vault
from vstream.instruments import resolve
from vstream.nats.batch import FencedError, Message, last_message, publish_batch, publish_one
from vstream.nats.connect import (
    BARS_STREAM,
    ckpt_subject,
    ensure_streams,
    lease_buckets,
    trades_subject,
)
from vstream.nats.core import InstrumentCore, Step, decode_checkpoint
from vstream.nats.ingest import encode_trades, publish_vault
from vstream.nats.worker import NatsWorker
from vstream.settings import Settings
from vstream.testing import make_trade

BTC = "BTC-USDT-SWAP"
MINUTE = 60_000
T0 = 1_765_748_040_000


async def test_the_takeover_checkpoint_fences_off_the_previous_owner(nc: Any) -> None:
    await ensure_streams(nc.jetstream())
    settings = Settings()
    instrument = resolve(BTC)
    subject = ckpt_subject(BTC)
    # A takes the instrument over (no checkpoint yet: fence 0) and writes a bar.
    a = InstrumentCore(instrument, settings, owner="A")
    ack = await publish_batch(nc, Step([], a.checkpoint()).messages(), fence=(subject, 0))
    a_fence = ack.seq
    steps = a.feed(1, [make_trade(1, "100", 1, ts=T0), make_trade(2, "101", 1, ts=T0 + MINUTE)])
    assert steps[-1].bars
    ack = await publish_batch(nc, steps[-1].messages(), fence=(subject, a_fence))
    a_fence = ack.seq
    # A stalls; B loads the last checkpoint and takes over.
    last = await last_message(nc, BARS_STREAM, subject)
    assert last is not None
    b = InstrumentCore(instrument, settings, decode_checkpoint(last[2], BTC), owner="B")
    assert b.seq == 1
    await publish_batch(nc, Step([], b.checkpoint()).messages(), fence=(subject, last[0]))
    # A wakes up and writes its next bar: refused, and nothing of its batch is stored.
    steps = a.feed(2, [make_trade(3, "102", 1, ts=T0 + 2 * MINUTE)])
    with pytest.raises(FencedError):
        await publish_batch(nc, steps[-1].messages(), fence=(subject, a_fence))
    bars = await read_subjects(nc, BARS_STREAM, "vstream.bars.>")
    assert len(bars) == 1


async def test_a_worker_whose_lease_expired_gives_the_instrument_up(nc: Any, tmp_path: Path) -> None:
    """A's clock stops (as if the process were paused): it neither renews nor notices the
    expiry; the key expires on the server, B takes over, and A's next write is refused."""
    vault = tmp_path / "Vault"
    generate_vault(vault, instruments=(BTC,), hours=1, seed=4)
    await ensure_streams(nc.jetstream())
    await publish_vault(nc, vault, BTC, chunk_bytes=16 << 10)
    settings = Settings()
    ttl = 3.0  # B must keep its lease on a loaded machine: renewals every second
    stopped_at: list[float] = []

    def clock_a() -> float:
        return stopped_at[0] if stopped_at else time.time()

    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    a = NatsWorker(nc, settings, worker_id="A", lease_ttl=ttl, checkpoint_interval=0.05, clock=clock_a)
    task_a = asyncio.create_task(a.run(stop_a))
    await wait_for(lambda: a.bars > 0, what="A's first bars")
    stopped_at.append(time.time())
    leases, _ = await lease_buckets(nc.jetstream(), ttl=ttl)
    b = NatsWorker(nc, settings, worker_id="B", lease_ttl=ttl, checkpoint_interval=0.05)
    task_b = asyncio.create_task(b.run(stop_b))
    try:
        async def owned_by_b() -> bool:
            try:
                entry = await leases.get(BTC)
            except Exception:
                return False
            return entry.value is not None and b'"owner":"B"' in entry.value

        await wait_for(owned_by_b, what="B to own the instrument")
        # More trades arrive: A's task (still running) tries to write and is refused.
        await publish_vault(nc, vault, BTC, final=True, chunk_bytes=16 << 10)
        await wait_for(lambda: BTC in a.lost, what="A to notice")
        assert BTC not in a.running
        assert BTC not in a.book.held
    finally:
        stop_a.set()
        stop_b.set()
        await asyncio.gather(task_a, task_b)
    last = await last_message(nc, BARS_STREAM, ckpt_subject(BTC))
    assert last is not None and decode_checkpoint(last[2], BTC).owner == "B"
    # Whatever A tried after B started left no trace: the bars are those of one local run.
    local = tmp_path / "Local"
    shutil.copytree(vault, local)
    await replay_final(local, BTC)
    messages = await read_subjects(nc, BARS_STREAM, "vstream.bars.>")
    assert bar_lines(messages, BTC) == local_output(local, BTC)


async def test_many_instruments_commit_at_once(nc: Any) -> None:
    """A minute closing on hundreds of instruments: every batch is stored (none refused as busy)."""
    await ensure_streams(nc.jetstream())
    instrument = resolve(BTC)

    async def one(k: int) -> int:
        core = InstrumentCore(instrument, Settings(), owner="A")
        step = core.feed(1, [make_trade(1, "100", 1, ts=T0)], end=True)[-1]
        messages = step.messages()
        for message in messages:
            message.subject = message.subject.replace(BTC, f"X{k}-USDT-SWAP")
            if "Nats-Msg-Id" in message.headers:
                message.headers["Nats-Msg-Id"] += f":{k}"
        ack = await publish_batch(nc, messages, fence=(f"vstream.ckpt.X{k}-USDT-SWAP", 0))
        return ack.count

    counts = await asyncio.gather(*(one(k) for k in range(300)))
    assert counts == [2] * 300


async def test_a_worker_writes_nothing_once_its_lease_ran_out_locally(nc: Any) -> None:
    """A worker woken from a pause (its clock past the lease) before its lease loop ran: the
    next batch is not sent at all — not merely left to the fence, which would store it if
    the new owner had not written its takeover checkpoint yet."""
    await ensure_streams(nc.jetstream())
    now = [time.time()]
    worker = NatsWorker(nc, Settings(), worker_id="A", lease_ttl=2.0, clock=lambda: now[0])
    core = InstrumentCore(resolve(BTC), Settings(), owner="A")
    worker.book.acquired(BTC, 1, now[0])
    fence = await worker._publish(core, [Step([], core.checkpoint())], 0)
    assert fence > 0  # a valid lease: written
    now[0] += 2.0  # the last renewal was sent a TTL ago: the server may have dropped the key
    steps = core.feed(1, [make_trade(1, "100", 1, ts=T0), make_trade(2, "101", 1, ts=T0 + MINUTE)])
    assert steps[-1].bars
    with pytest.raises(LeaseLostError, match="expired"):
        await worker._publish(core, steps, fence)
    last = await last_message(nc, BARS_STREAM, ckpt_subject(BTC))
    assert last is not None and last[0] == fence  # nothing was stored after the first write
    assert await read_subjects(nc, BARS_STREAM, "vstream.bars.>") == []


async def test_a_worker_stopping_on_an_instrument_error_releases_its_lease(nc: Any) -> None:
    """A checkpoint made with other settings stops the worker (exit 2); the instrument's lease
    is deleted on the way out, so a correctly set worker need not wait for it to expire."""
    await ensure_streams(nc.jetstream())
    other = InstrumentCore(resolve(BTC), Settings(whale_usd=5.0), owner="old")
    await publish_batch(nc, Step([], other.checkpoint()).messages(), fence=(ckpt_subject(BTC), 0))
    body = encode_trades([make_trade(1, "100", 1, ts=T0)])
    await publish_one(nc, Message(trades_subject(BTC), body, {}))
    leases, _ = await lease_buckets(nc.jetstream(), ttl=60.0)
    worker = NatsWorker(nc, Settings(), worker_id="w", lease_ttl=60.0)
    with pytest.raises(ConfigError, match="other settings"):
        await worker.run(asyncio.Event())
    assert await leases_of(leases) == {}  # released, not left to expire in 60 s
