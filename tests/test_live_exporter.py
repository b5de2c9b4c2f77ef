"""`vstream live --record` into a vault the trader's exporter fills: its lines, its meta file.

The recording must keep the vault's format (the exporter's twelve string keys in its order, its
line ends), and a replay of it must still yield the very bars live yielded: a record counts as
one fill in live as in replay, and a trade late only by the wall clock is in no bar either way
(its late mark, beside the state, tells replay to drop it). Mirrors tests/test_live.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from support import REAL_DATA, exporter_line

from vstream import BarAssembler, Engine, Settings
from vstream.cli import main
from vstream.formats import exporter
from vstream.instruments import VaultPaths, meta_path, resolve
from vstream.sources.okx import Backoff, OkxSource
from vstream.testing import trades_of
from vstream.testing.fake_okx import FakeOkxServer

BTC = "BTC-USDT-SWAP"
ETH = "ETH-USDT-SWAP"
REPO = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def now_ms() -> int:
    return int(time.time() * 1000)


def fills(
    first: int, n: int, ts: int | None = None, run: int = 1, inst: str = BTC, step: int = 1
) -> list[dict[str, Any]]:
    """``n`` fills from id ``first``, ``step`` ms apart; each ``run`` consecutive ones share ts,
    px and side, so the ``trades`` channel merges them into one record (``count`` = run)."""
    base = now_ms() if ts is None else ts
    out = []
    for i in range(n):
        tid = first + i
        lead = first + i // run * run  # the run's first id
        out.append(
            {
                "instId": inst,
                "tradeId": str(tid),
                "px": f"{42000 + (lead * 37) % 900 / 10:.1f}",
                "sz": str(1 + (tid * 13) % 40),
                "side": "buy" if (lead // run) % 3 else "sell",
                "ts": str(base + i // run * step),
            }
        )
    return out


def seed(vault: Path, trades: list[dict[str, Any]], newline: str = "\r\n", inst: str = BTC) -> Path:
    """An instrument file of exporter lines, written as the trader's exporter writes them."""
    raw = VaultPaths.of(vault, inst).raw_dir
    raw.mkdir(parents=True, exist_ok=True)
    day = time.strftime("%Y-%m-%d", time.gmtime(int(trades[0]["ts"]) // 1000))
    path = raw / f"{day}.jsonl"
    text = "".join(
        exporter_line(int(t["tradeId"]), t["px"], str(float(t["sz"])), t["side"], int(t["ts"]), inst=inst)
        + newline
        for t in trades
    )
    with open(path, "a", encoding="utf-8", newline="") as handle:
        handle.write(text)
    return path


def raw_lines(vault: Path, inst: str = BTC) -> list[bytes]:
    """Every line of the instrument's day files, line ends included."""
    raw = VaultPaths.of(vault, inst).raw_dir
    out: list[bytes] = []
    for path in sorted(raw.glob("*.jsonl")) if raw.is_dir() else []:
        out += path.read_bytes().splitlines(keepends=True)
    return out


def bars_in(vault: Path) -> int:
    try:
        return VaultPaths.of(vault, BTC).output().read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def recorded_ids(vault: Path) -> Counter[int]:
    ids: Counter[int] = Counter()
    for line in raw_lines(vault):
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # a torn line being written
        for trade in obj.get("data", [obj]):
            ids[int(trade.get("tradeId") or trade["trade_id"])] += 1
    return ids


def assert_exporter_lines(lines: Iterable[bytes], newline: bytes) -> int:
    """Each line is exactly the exporter's: its twelve keys in order, every value a string,
    six fractional digits, ``newline`` at the end. Returns how many."""
    n = 0
    for line in lines:
        assert line.endswith(newline) and not line[: -len(newline)].endswith(b"\r"), line
        pairs = json.loads(line, object_pairs_hook=list)
        assert [k for k, _ in pairs] == list(exporter.KEYS), line
        assert all(isinstance(v, str) for _, v in pairs), line
        assert STAMP.match(dict(pairs)["timestamp_utc"]), line
        assert line[: -len(newline)] == exporter.line([v for _, v in pairs])  # json.dumps spacing
        n += 1
    return n


def expected(records: Iterable[dict[str, Any]]) -> bytes:
    """The bars of ``records`` as one fill each (what an exporter line says of a record)."""
    ordered = [{**r, "count": "1"} for r in sorted(records, key=lambda r: int(r["tradeId"]))]
    asm = BarAssembler(resolve(BTC), Settings())
    bars = asm.feed(trades_of(ordered)) + asm.close()
    return b"".join(msgspec.json.encode(b) + b"\n" for b in bars)


async def until(predicate: Callable[[], bool], limit: float = 30.0) -> None:
    """Poll ``predicate`` (files and counters signal no event) for at most ``limit`` seconds."""
    async with asyncio.timeout(limit):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def wait_for_ids(vault: Path, n: int) -> None:
    await until(lambda: len(recorded_ids(vault)) >= n)


async def start(vault: Path, srv: FakeOkxServer, *extra: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(REPO), "VSTREAM_CHECKPOINT_INTERVAL": "0.05"}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vstream", "live", "--instId", BTC, "--vault", str(vault),
        "--ws-url", srv.ws_url, "--rest-url", srv.rest_url, "--record", *extra,
        env=env, cwd=str(REPO),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )


async def stop(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def cli(*args: str) -> int:
    return await asyncio.to_thread(main, ["-q", *args])


async def assert_replays_identically(vault: Path, tmp_path: Path, live_bars: bytes) -> bytes:
    """replay --final after live, and a --rebuild over a copy of the vault (raw files, late
    marks, meta file: the recording), both write live's bars and then the same ones. Returns
    the bars."""
    copy = tmp_path / "copy"
    shutil.copytree(vault, copy)
    assert await cli("replay", "--instId", BTC, "--vault", str(vault), "--final") == 0
    assert await cli("replay", "--instId", BTC, "--vault", str(copy), "--final", "--rebuild") == 0
    after_live = VaultPaths.of(vault, BTC).output().read_bytes()
    rebuilt = VaultPaths.of(copy, BTC).output().read_bytes()
    assert after_live == rebuilt
    assert rebuilt.startswith(live_bars)
    return rebuilt


BTC_META = {"ctVal": "0.01", "ctMult": "1", "ctType": "linear", "tickSz": "0.1", "lotSz": "1"}


@pytest.mark.slow
async def test_record_into_an_exporter_vault_writes_its_lines(tmp_path: Path) -> None:
    """Records merged by the trades channel (count 3) are recorded as exporter lines (CRLF, as
    the file has), counted as one fill in live bars as in replay; the instrument file the
    vault lacked is written in the exporter's shape."""
    vault = tmp_path / "Vault"
    minute = (now_ms() // 60_000 - 5) * 60_000
    exported = fills(1, 30, ts=minute, run=3)
    seed(vault, exported)
    # Two minutes after the exported one, in one push: no wall-clock close comes in between.
    later = fills(31, 120, ts=minute + 60_000, run=3, step=3000)
    async with FakeOkxServer() as srv:
        srv.add_trades(exported)
        proc = await start(vault, srv)
        await srv.wait_subscribed(BTC, timeout=30)
        await srv.push(later, aggregate=True)
        await wait_for_ids(vault, 30 + 40)  # 40 records of 3 fills each
        code, err = await stop(proc)
    assert code == 0, err
    assert "BTC-USDT-SWAP trades=70 " in err
    assert bars_in(vault) == 3  # all three minutes are past: closed live
    lines = raw_lines(vault)
    assert assert_exporter_lines(lines, b"\r\n") == 70
    assert sorted(recorded_ids(vault)) == list(range(1, 31)) + list(range(33, 151, 3))
    live_bars = VaultPaths.of(vault, BTC).output().read_bytes()
    assert live_bars
    for bar in map(json.loads, live_bars.splitlines()):
        assert bar["fill_count"] == bar["trade_count"]  # no count in the lines: one fill each
    bars = await assert_replays_identically(vault, tmp_path, live_bars)
    # The bars of the records as recorded: merged sizes, one fill each.
    records = [json.loads(x) for x in lines]
    as_okx = [
        {"instId": BTC, "tradeId": r["trade_id"], "px": r["price"], "sz": r["qty_contracts"],
         "side": r["side"], "ts": str(exporter.stamp_ms(r["timestamp_utc"], now_ms()))}
        for r in records
    ]  # fmt: skip
    assert bars == expected(as_okx)
    meta = meta_path(vault, BTC)
    text = meta.read_text()
    written = json.loads(text)
    assert list(written) == ["instId", "raw", "normalized"]
    assert written["instId"] == BTC and written["normalized"] == BTC_META
    assert written["raw"] == srv.instruments[BTC]
    assert text == json.dumps(written, indent=2)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def test_exporter_trade_late_by_the_wall_clock_replays_the_same(tmp_path: Path) -> None:
    """A new instrument in a vault whose instruments hold exporter lines gets exporter lines
    (the platform's line ends). Minute 0 closes on the wall clock; a trade for it arriving
    later is late in live, recorded as a plain exporter line and marked beside the state, so
    that replay drops it too."""
    vault = tmp_path / "Vault"
    t0 = 1_700_000_040_000
    seed(vault, fills(1, 5, ts=t0 - 120_000, inst=ETH), inst=ETH)  # the vault is exporter-format
    first = fills(1, 20, ts=t0)
    straggler = fills(21, 1, ts=t0 + 50_000)
    second = fills(22, 20, ts=t0 + 60_000)
    clock = Clock(t0 / 1000)
    async with FakeOkxServer() as srv:
        source = OkxSource(
            [BTC], ws_url=srv.ws_url, rest_url=srv.rest_url, record_vault=vault, clock=clock,
            backoff=Backoff(0.01, 0.05),
        )
        async with Engine([source], settings=Settings(), vault=vault, checkpoint_interval=0.0) as engine:
            task = asyncio.create_task(engine.run())
            await srv.wait_subscribed(BTC)
            await srv.push(first)
            counters = engine.assembler(BTC).counters
            await until(lambda: counters.trades >= 20)
            clock.t = t0 / 1000 + 62.5
            await until(lambda: engine.assembler(BTC).counters.bars >= 1)
            await srv.push(straggler)
            await until(lambda: engine.assembler(BTC).counters.late >= 1)
            await srv.push(second)
            await until(lambda: engine.assembler(BTC).counters.trades >= 40)
            source.stop()
            async with asyncio.timeout(10):
                await task
    assert source.stats.late_recorded == 1
    lines = raw_lines(vault)
    assert assert_exporter_lines(lines, os.linesep.encode()) == 41
    assert json.loads(lines[20])["trade_id"] == "21"  # the straggler: a plain exporter line
    paths = VaultPaths.of(vault, BTC)
    marks = [json.loads(x) for x in paths.late_marks.read_bytes().splitlines()]
    day = time.strftime("%Y-%m-%d", time.gmtime(t0 // 1000))
    offset = sum(map(len, lines[:20]))
    assert marks == [{"file": f"{day}.jsonl", "tradeId": "21", "ts": t0 + 50_000, "offset": offset}]
    assert not list(paths.raw_dir.glob("*.late*"))  # nothing but day files in the raw folder
    live_output = paths.output().read_bytes()
    assert live_output == expected(first)  # minute 1 is still open
    # The late trade is in the raw file but in no bar, in live as in replay.
    bars = await assert_replays_identically(vault, tmp_path, live_output)
    assert bars == expected(first + second)
    # The instrument file the vault lacked came from OKX (nothing in the instrument cache).
    assert json.loads(meta_path(vault, BTC).read_text())["normalized"] == BTC_META


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/data/real is not beside the checkout")
@pytest.mark.slow
async def test_killed_and_restarted_exporter_recorder_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL and restart, again and again, while recording exporter lines: a replay of the
    recording then writes the bars a clean replay of it writes. The vault's instrument file is
    the exporter's (its ctVal text goes into every line) and is left as it is."""
    vault = tmp_path / "Vault"
    meta = meta_path(vault, BTC)
    meta.parent.mkdir(parents=True)
    shutil.copyfile(REAL_DATA / "exporter_meta_BTC-USDT-SWAP.json", meta)
    before = meta.read_bytes()
    trades = fills(1, 10)
    seed(vault, trades)
    next_id = 11
    async with FakeOkxServer() as srv:
        srv.add_trades(trades)
        for _ in range(3):
            proc = await start(vault, srv)
            await srv.wait_subscribed(BTC, timeout=30)
            # What was executed while no recorder ran is fetched from REST on start.
            await wait_for_ids(vault, len(trades))
            batch = fills(next_id, 120)
            next_id += 120
            trades += batch
            await srv.push(batch[:60])
            await srv.push(batch[60:])
            await asyncio.sleep(0.05 + 0.1 * len(trades) % 3)  # kill at some instant
            proc.kill()
            await proc.wait()
            missed = fills(next_id, 40)
            next_id += 40
            trades += missed
            srv.add_trades(missed)
            await srv.wait_until(lambda: srv.open_connections == 0)
        proc = await start(vault, srv)
        await srv.wait_subscribed(BTC, timeout=30)
        await wait_for_ids(vault, len(trades))
        code, err = await stop(proc)
    assert code == 0, err
    lines = raw_lines(vault)
    assert assert_exporter_lines(lines, b"\r\n") == len(trades)
    ids = recorded_ids(vault)
    assert sorted(ids) == sorted(int(t["tradeId"]) for t in trades)
    assert set(ids.values()) == {1}, "a trade was recorded twice"
    live_bars = VaultPaths.of(vault, BTC).output().read_bytes()
    assert await assert_replays_identically(vault, tmp_path, live_bars) == expected(trades)
    assert meta.read_bytes() == before


async def test_record_format_okx_writes_okx_objects_into_an_exporter_vault(tmp_path: Path) -> None:
    """--record-format chooses: okx writes the OKX objects as they arrived, with count."""
    vault = tmp_path / "Vault"
    t0 = now_ms()
    seed(vault, fills(1, 5, ts=t0 - 5000))
    async with FakeOkxServer() as srv:
        source = OkxSource(
            [BTC], ws_url=srv.ws_url, rest_url=srv.rest_url, record_vault=vault,
            record_format="okx", backoff=Backoff(0.01, 0.05),
        )
        async with Engine([source], settings=Settings(), vault=vault, checkpoint_interval=0.0) as engine:
            task = asyncio.create_task(engine.run())
            await srv.wait_subscribed(BTC)
            await srv.push(fills(6, 6, ts=t0, run=3), aggregate=True)
            await until(lambda: engine.assembler(BTC).counters.trades >= 7)
            source.stop()
            async with asyncio.timeout(10):
                await task
    added = [json.loads(x) for x in raw_lines(vault)[5:]]
    assert [(r["tradeId"], r["count"]) for r in added] == [("8", "3"), ("11", "3")]
    # The instrument file is written whatever the line format.
    assert json.loads(meta_path(vault, BTC).read_text())["normalized"] == BTC_META


async def test_without_an_instrument_row_the_recording_goes_on_without_the_file(tmp_path: Path) -> None:
    """Neither the instrument cache nor OKX has the row: no instrument file is made up; the
    exporter lines get the resolved contract value (the built-in table's)."""
    vault = tmp_path / "Vault"
    t0 = now_ms()
    seed(vault, fills(1, 5, ts=t0 - 5000))
    async with FakeOkxServer(instruments={}, error_for_unknown=False) as srv:
        source = OkxSource(
            [BTC], ws_url=srv.ws_url, rest_url=srv.rest_url, record_vault=vault,
            backoff=Backoff(0.01, 0.05),
        )
        async with Engine([source], settings=Settings(), vault=vault, checkpoint_interval=0.0) as engine:
            task = asyncio.create_task(engine.run())
            await srv.wait_subscribed(BTC)
            await srv.push(fills(6, 3, ts=t0))
            await until(lambda: engine.assembler(BTC).counters.trades >= 8)
            source.stop()
            async with asyncio.timeout(10):
                await task
    assert not meta_path(vault, BTC).exists()
    lines = raw_lines(vault)
    assert assert_exporter_lines(lines, b"\r\n") == 8
    assert {json.loads(x)["ctVal"] for x in lines[5:]} == {"0.01"}


def test_record_format_without_record_is_a_usage_error(
    tmp_path: Path, run_cli: Callable[..., tuple[int, str, str]]
) -> None:
    code, _, err = run_cli("live", "--instId", BTC, "--vault", str(tmp_path), "--record-format", "exporter")
    assert code == 2
    assert "--record-format" in err and "give --record too" in err
    assert len(err.strip().splitlines()) == 1
