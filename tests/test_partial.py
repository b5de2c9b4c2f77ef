"""Bars in progress: ``Engine.bars(partial=True)``, partial sinks and ``live --partial``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import msgspec
import pytest

from vstream import Bar, ConfigError, Engine, Settings
from vstream.instruments import VaultPaths
from vstream.testing import ListSource, LiveListSource, ManualClock, make_trade
from vstream.testing.fake_okx import FakeOkxServer

INST = "BTC-USDT-SWAP"
M0 = 1_765_748_040_000
REPO = Path(__file__).resolve().parents[1]


async def test_bars_in_progress_follow_the_engine_clock_and_end_final(tmp_path: Path) -> None:
    trades = [make_trade(i, "42210.5", 2, "buy" if i % 3 else "sell", M0 + 1000 * i) for i in range(1, 6)]
    clock = ManualClock(M0 / 1000 + 10)
    settings = Settings(grace=2.0, footprint_tick=10, cvd=True)
    source = LiveListSource(INST, trades, final=False)
    plain: list[Bar] = []
    engine = Engine(
        [source], [plain.append], settings=settings, clock=clock, partial_every=5.0, vault=tmp_path / "V"
    )
    seen: list[Bar] = []
    async with engine:

        async def consume() -> None:
            async for bar in engine.bars(partial=True):
                seen.append(bar)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.6)
        assert seen == []  # 5 s have not passed on the engine's clock
        clock.t += 5
        async with asyncio.timeout(5):
            while not seen:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert [b.final for b in seen] == [False]
        assert seen[0].trade_count == 5 and seen[0].footprint is not msgspec.UNSET
        clock.t = M0 / 1000 + 62.0  # the minute closes on the clock
        async with asyncio.timeout(5):
            while not any(b.final is True for b in seen):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        engine.stop()
        await task
    finals = [b for b in seen if b.final is True]
    assert len(finals) == 1
    # the last look at the minute is its final bar; the plain sink never saw a bar in progress
    assert msgspec.structs.replace(seen[0], final=True) == finals[0]
    assert plain == [msgspec.structs.replace(finals[0], final=msgspec.UNSET)]
    written = VaultPaths.of(tmp_path / "V", INST).output().read_bytes()
    assert written == msgspec.json.encode(plain[0]) + b"\n"
    assert b'"final"' not in written


async def test_a_replay_with_a_partial_stream_writes_what_it_writes_without(tmp_path: Path) -> None:
    trades = [make_trade(i, "100", 1, "buy", M0 + 7_000 * i) for i in range(1, 40)]

    async def run(vault: Path, partial: bool) -> list[Bar]:
        got: list[Bar] = []
        source = ListSource(INST, trades, batch_size=3, delay=0.01)
        async with Engine([source], vault=vault, partial_every=0.01) as engine:
            async for bar in engine.bars(partial=partial):
                got.append(bar)
        return got

    with_partial = await run(tmp_path / "a", True)
    without = await run(tmp_path / "b", False)
    output = VaultPaths.of(tmp_path / "a", INST).output().read_bytes()
    assert output == VaultPaths.of(tmp_path / "b", INST).output().read_bytes()
    assert [msgspec.structs.replace(b, final=msgspec.UNSET) for b in with_partial if b.final] == without
    assert any(b.final is False for b in with_partial)
    assert all(b.final is msgspec.UNSET for b in without)


async def test_live_partial_prints_bars_in_progress_and_writes_only_final_ones(tmp_path: Path) -> None:
    vault = tmp_path / "Vault"
    base = int(time.time() * 1000)
    trades = [
        {"instId": INST, "tradeId": str(i), "px": "42000.5", "sz": "3", "side": "buy", "ts": str(base + i)}
        for i in range(1, 11)
    ]
    async with FakeOkxServer() as srv:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vstream", "live", "--instId", INST, "--vault", str(vault),
            "--ws-url", srv.ws_url, "--rest-url", srv.rest_url, "--partial", "0.1", "--footprint", "10",
            env=env, cwd=str(REPO), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        await srv.wait_subscribed(INST, timeout=30)
        await srv.push(trades)
        async with asyncio.timeout(30):
            line = json.loads(await proc.stdout.readline())
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            rest, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert line["final"] is False and line["trade_count"] >= 1 and line["poc"] == "42000"
    printed = [line] + [json.loads(x) for x in rest.splitlines()]
    assert all(isinstance(p["final"], bool) for p in printed)
    written = VaultPaths.of(vault, INST).output()
    if written.exists():  # the minute may still be open when the session stops
        assert b'"final"' not in written.read_bytes()


async def test_a_clock_jump_gives_one_bar_in_progress_not_a_burst() -> None:
    clock = ManualClock(M0 / 1000 + 10)
    source = LiveListSource(INST, [make_trade(1, "100", 1, "buy", M0 + 1000)], final=False)
    engine = Engine([source], settings=Settings(grace=3600.0), clock=clock, partial_every=5.0)
    seen: list[Bar] = []
    async with engine:

        async def consume() -> None:
            async for bar in engine.bars(partial=True):
                seen.append(bar)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        clock.t += 100  # twenty intervals at once
        await asyncio.sleep(0.8)
        assert [b.final for b in seen] == [False]
        clock.t += 5
        await asyncio.sleep(0.8)
        assert [b.final for b in seen] == [False, False]
        engine.stop()
        await task


def test_a_partial_interval_must_be_positive(capsys) -> None:
    from vstream.cli import main

    with pytest.raises(ConfigError, match="partial_every"):
        Engine([ListSource(INST, [])], partial_every=0)
    for bad in ("0", "-1", "soon", "inf"):
        assert main(["live", "--instId", INST, "--partial", bad]) == 2
        assert "--partial" in capsys.readouterr().err
