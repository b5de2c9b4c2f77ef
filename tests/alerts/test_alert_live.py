"""``vstream live`` with alerts: whale trades off the (fake) OKX socket become alerts that the
session's own delivery task posts while it runs; killed and restarted, every alert is in the
file once and reaches the webhook once (at most the one in flight twice); a replay afterwards
adds none."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from vstream.cli import main
from vstream.instruments import VaultPaths
from vstream.state import read_state
from vstream.testing import FakeWebhookServer
from vstream.testing.fake_okx import FakeOkxServer

BTC = "BTC-USDT-SWAP"
REPO = Path(__file__).resolve().parents[2]


def fills(first: int, n: int) -> list[dict[str, Any]]:
    """Trades from now on; every 5th is $1.26M (3000 contracts × 0.01 × 42000), a whale."""
    base = int(time.time() * 1000)
    return [
        {"instId": BTC, "tradeId": str(t), "px": "42000", "sz": "3000" if t % 5 == 0 else str(1 + t % 9),
         "side": "buy" if t % 2 else "sell", "ts": str(base + i)}
        for i, t in enumerate(range(first, first + n))
    ]  # fmt: skip


def whales(trades: list[dict[str, Any]]) -> set[str]:
    return {f"{BTC}:whale:{t['tradeId']}" for t in trades if t["sz"] == "3000"}


def file_ids(vault: Path) -> list[str]:
    path = VaultPaths.of(vault, BTC).alerts
    return [json.loads(x)["alert_id"] for x in path.read_bytes().splitlines()] if path.exists() else []


async def start(vault: Path, okx: FakeOkxServer, config: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(REPO), "VSTREAM_CHECKPOINT_INTERVAL": "0.05"}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vstream", "live", "--instId", BTC, "--vault", str(vault),
        "--ws-url", okx.ws_url, "--rest-url", okx.rest_url, "--record", "--config", str(config),
        env=env, cwd=str(REPO), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
async def test_live_delivers_its_alerts_as_they_come_and_each_once_across_a_kill(tmp_path: Path) -> None:
    vault = tmp_path / "Vault"
    async with FakeOkxServer() as okx, FakeWebhookServer() as hooks:
        config = tmp_path / "v.toml"
        config.write_text(
            "[alerts]\nwhale_trade_usd = 1000000\nburst_count = 0\n\n"
            f'[[alerts.destinations]]\nname = "bot"\ntype = "webhook"\nurl = "{hooks.webhook_url()}"\nrate = "1000/1s"\n'
        )
        sent: list[dict[str, Any]] = []
        proc = await start(vault, okx, config)
        await okx.wait_subscribed(BTC, timeout=30)
        batch = fills(1, 50)
        sent += batch
        await okx.push(batch)
        # delivered by the session itself, while it runs
        await hooks.wait_until(lambda: set(hooks.alert_ids()) >= whales(sent))
        batch = fills(51, 50)
        sent += batch
        await okx.push(batch)
        await hooks.wait_for(12)
        proc.kill()  # mid-way: some alerts of the second batch delivered, some not yet
        assert await proc.wait() == -signal.SIGKILL
        await okx.wait_until(lambda: okx.open_connections == 0)
        proc = await start(vault, okx, config)
        await okx.wait_subscribed(BTC, timeout=30)
        batch = fills(101, 50)
        sent += batch
        await okx.push(batch)
        await hooks.wait_until(lambda: set(hooks.alert_ids()) >= whales(sent))
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
    # every whale once in the file, and a live session makes no history
    assert sorted(file_ids(vault)) == sorted(whales(sent))
    state = read_state(VaultPaths.of(vault, BTC).state)
    assert state.alerts is not None and (state.alerts.history, state.alerts.catching_up) == (0, False)
    counts = Counter(hooks.alert_ids())
    assert set(counts) == whales(sent)
    assert max(counts.values()) <= 2 and sum(1 for c in counts.values() if c == 2) <= 1
    # a replay of what live recorded adds no alert
    before = VaultPaths.of(vault, BTC).alerts.read_bytes()
    assert await asyncio.to_thread(main, ["-q", "replay", "--instId", BTC, "--vault", str(vault), "--final"]) == 0
    assert VaultPaths.of(vault, BTC).alerts.read_bytes() == before
