"""The trader's exporter vault through JetStream: publish, workers, bars equal a local replay."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from nats_support import bar_lines, local_output, read_subjects, replay_final, wait_for
from support import REAL_DATA

from vstream.generate import generate_vault
from vstream.nats.connect import BARS_STREAM, ensure_streams
from vstream.nats.ingest import publish_vault
from vstream.nats.worker import NatsWorker
from vstream.settings import Settings

BTC = "BTC-USDT-SWAP"
MATIC = "MATIC-USDT-SWAP"


async def _bars_through_nats(nc: Any, vault: Path, inst: str, want: int) -> bytes:
    await ensure_streams(nc.jetstream())
    await publish_vault(nc, vault, inst, final=True, chunk_bytes=64 << 10)
    stop = asyncio.Event()
    worker = NatsWorker(nc, Settings(), worker_id="w0", lease_ttl=2.0, checkpoint_interval=0.2)
    task = asyncio.create_task(worker.run(stop))
    try:
        await wait_for(lambda: worker.bars >= want, 60, f"{want} bars of {inst}")
    finally:
        stop.set()
        await task
    return bar_lines(await read_subjects(nc, BARS_STREAM, "vstream.bars.>"), inst)


async def test_an_exporter_vault_published_gives_the_bars_of_a_local_replay(nc: Any, tmp_path: Path) -> None:
    vault = tmp_path / "Vault"
    generate_vault(vault, instruments=(BTC,), hours=2, seed=3, line_format="exporter")
    local = tmp_path / "Local"
    shutil.copytree(vault, local)
    await replay_final(local, BTC)
    expected = local_output(local, BTC)
    got = await _bars_through_nats(nc, vault, BTC, expected.count(b"\n"))
    assert got == expected


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/data/real is not beside the checkout")
async def test_lines_own_ct_val_reaches_the_worker(nc: Any, tmp_path: Path) -> None:
    # MATIC-USDT-SWAP: in no built-in table, no instrument file; its lines say ctVal 10
    vault = tmp_path / "Vault"
    raw = vault / "raw" / "okx" / "trades_perps" / MATIC
    raw.mkdir(parents=True)
    shutil.copy(REAL_DATA / "exporter_MATIC-USDT-SWAP_2023-08-20.jsonl", raw / "2023-08-20.jsonl")
    local = tmp_path / "Local"
    shutil.copytree(vault, local)
    await replay_final(local, MATIC)
    expected = local_output(local, MATIC)
    assert b'"total_volume":"6889"' in expected
    assert await _bars_through_nats(nc, vault, MATIC, 1) == expected
