"""Bars from the cluster (publish → workers → bars stream) equal a local ``replay --final``."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from nats_support import (
    bar_lines,
    consumed,
    local_output,
    progress,
    read_subjects,
    replay_final,
    wait_for,
    worker_records,
)

from vstream.generate import generate_vault
from vstream.nats.connect import BARS_STREAM, ensure_streams
from vstream.nats.ingest import encode_trades, publish_vault
from vstream.nats.worker import NatsWorker
from vstream.settings import Settings
from vstream.sources.replay import ReplaySource

BTC, ETH = "BTC-USDT-SWAP", "ETH-USDT-SWAP"


async def test_two_workers_write_the_bars_of_a_local_final_replay(nc: Any, tmp_path: Path) -> None:
    vault = tmp_path / "Vault"
    generate_vault(vault, instruments=(BTC, ETH), hours=3, seed=11)
    local = tmp_path / "Local"
    shutil.copytree(vault, local)
    await replay_final(local, BTC, ETH, extra=("--timeframes", "1m,5m"))

    await ensure_streams(nc.jetstream())
    settings = Settings(timeframes=("1m", "5m"))
    stop = asyncio.Event()
    # A long TTL: nothing here is about expiry, and a loaded machine must not make a record
    # lapse (the other worker would take everything for a while).
    workers = [
        NatsWorker(nc, settings, worker_id=f"w{i}", lease_ttl=30.0, checkpoint_interval=0.2)
        for i in range(2)
    ]
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    try:
        # Both announced before there is anything to take: each takes its share (one) at once.
        await wait_for(
            lambda: _both(nc), what="both workers announced",
            seen=lambda: worker_records(nc),
        )
        for inst in (BTC, ETH):
            # Small chunks: many messages, and minutes split across them.
            summary = await publish_vault(nc, vault, inst, final=True, chunk_bytes=64 << 10)
            assert summary.messages > 5 and summary.skipped == 0
        expected = {(inst, tf): local_output(local, inst, tf) for inst in (BTC, ETH) for tf in ("1m", "5m")}
        await wait_for(lambda: consumed(nc, (BTC, ETH)), what="every trade consumed", seen=lambda: progress(nc, (BTC, ETH)))
        messages = await read_subjects(nc, BARS_STREAM, "vstream.bars.>")
        for (inst, tf), body in expected.items():
            assert bar_lines(messages, inst, tf) == body, (inst, tf)
        # Both workers took a share.
        assert all(w.bars > 0 for w in workers), [w.bars for w in workers]
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def _both(nc: Any) -> bool:
    return set(await worker_records(nc)) == {"w0", "w1"}


async def test_publishing_again_or_twice_at_once_adds_no_trade(nc: Any, tmp_path: Path) -> None:
    vault = tmp_path / "Vault"
    generate_vault(vault, instruments=(BTC,), hours=1, seed=3)
    await ensure_streams(nc.jetstream())
    first, second = await asyncio.gather(
        publish_vault(nc, vault, BTC, chunk_bytes=16 << 10),
        publish_vault(nc, vault, BTC, chunk_bytes=16 << 10),
    )
    again = await publish_vault(nc, vault, BTC, chunk_bytes=16 << 10)
    assert again.messages == 0
    messages = await read_subjects(nc, "VSTREAM_TRADES", "vstream.trades.>")
    lines = [line for _, body, _ in messages for line in body.splitlines()]
    # Exactly the vault's accepted trades, once each, in file order.
    want: list[bytes] = []
    async for batch in ReplaySource(vault, BTC):
        want += encode_trades(batch.trades).splitlines()
    assert lines == want
    assert len(lines) == first.trades + second.trades
    assert first.messages + second.messages == len(messages)
    assert first.skipped + second.skipped > 0  # they did run into each other
