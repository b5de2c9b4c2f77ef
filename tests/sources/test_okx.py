"""OkxSource against the fake OKX server: every fault ends with the bars of the full trade list."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from vstream import Bar, BarAssembler, ConfigError, Engine, Settings
from vstream.instruments import load_cache, resolve
from vstream.okx_rest import OkxRest, RateLimiter, refresh_instrument_cache
from vstream.sources.okx import MAX_SUBSCRIBE_BYTES, Backoff, OkxSource, _split_groups
from vstream.testing import CollectingSink, trades_of
from vstream.testing.fake_okx import FakeOkxServer, _aggregate

BTC = "BTC-USDT-SWAP"
T0 = 1_700_000_040_000  # a minute start
FAST = Backoff(initial=0.01, maximum=0.05)


class Clock:
    """A wall clock the test moves."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def fill(tid: int, ts: int, *, inst: str = BTC) -> dict[str, Any]:
    rnd = random.Random(tid)
    return {
        "instId": inst,
        "tradeId": str(tid),
        "px": f"{42000 + rnd.randint(-500, 500) / 10:.1f}",
        "sz": str(rnd.choice([1, 2, 5, 30, 400])),
        "side": rnd.choice(["buy", "sell"]),
        "ts": str(ts),
        "source": "0",
    }


def fills(first: int, n: int, *, ts0: int = T0, step: int = 700) -> list[dict[str, Any]]:
    return [fill(first + i, ts0 + i * step) for i in range(n)]


def expected(records: Iterable[dict[str, Any]]) -> list[bytes]:
    """Bars of the records fed in id order, every minute closed."""
    ordered = sorted(records, key=lambda r: int(r["tradeId"]))
    asm = BarAssembler(resolve(BTC), Settings())
    bars = asm.feed(trades_of(ordered)) + asm.close()
    return [msgspec.json.encode(b) for b in bars]


def encoded(bars: Iterable[Bar]) -> list[bytes]:
    return [msgspec.json.encode(b) for b in bars]


async def until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    """Poll ``predicate`` (engine counters signal no event) for at most ``limit`` seconds."""
    async with asyncio.timeout(limit):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@dataclass
class Live:
    source: OkxSource
    sink: CollectingSink
    engine: Engine
    clock: Clock
    task: asyncio.Task[Any]

    def accepted(self) -> int:
        return self.engine.assembler(self.source.inst_ids[0]).counters.trades

    async def finish(self, records: int) -> list[Bar]:
        """Wait for ``records`` accepted trades, move the clock past every minute, stop."""
        await until(lambda: self.accepted() >= records)
        await until(lambda: all(i.gap is None and not i.down for i in self.source._insts.values()))
        self.clock.t += 3600
        self.source.stop()
        async with asyncio.timeout(10):
            await self.task
        return self.sink.bars


@contextlib.asynccontextmanager
async def live(
    srv: FakeOkxServer, *, channel: str = "trades", sink: CollectingSink | None = None, **kw: Any
) -> AsyncIterator[Live]:
    clock = Clock(T0 / 1000)
    options: dict[str, Any] = {
        "ping_interval": 5.0,
        "pong_timeout": 1.0,
        "backoff": FAST,
        "gap_timeout": 5.0,
        "seed": 1,
        **kw,
    }
    source = OkxSource(
        [BTC],
        channel=channel,
        ws_url=srv.ws_url if channel == "trades" else srv.ws_business_url,
        rest_url=srv.rest_url,
        clock=clock,
        **options,
    )
    sink = sink or CollectingSink()
    engine = Engine([source], sinks=[sink], settings=Settings())
    task = asyncio.create_task(engine.run())
    run = Live(source, sink, engine, clock, task)
    try:
        await srv.wait_subscribed(BTC, channel)
        yield run
    finally:
        if not task.done():
            source.stop()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await task
        await source.aclose()


async def test_trades_become_the_bars_of_the_full_list() -> None:
    trades = fills(1, 300)
    async with FakeOkxServer() as srv, live(srv) as run:
        for start in range(0, 300, 50):
            await srv.push(trades[start : start + 50], per_message=7)
        bars = await run.finish(300)
    assert encoded(bars) == expected(trades)
    assert len(bars) == 4


async def test_minute_closes_on_the_wall_clock_after_grace() -> None:
    trades = fills(1, 10, step=1000)  # all in the first minute
    async with FakeOkxServer() as srv, live(srv) as run:
        await srv.push(trades)
        await until(lambda: run.accepted() == 10)
        run.clock.t = T0 / 1000 + 61.0  # minute over, grace (2 s) not yet
        await asyncio.sleep(0.4)
        assert run.sink.bars == []
        run.clock.t = T0 / 1000 + 62.0
        await until(lambda: len(run.sink.bars) == 1)
        # A trade for the closed minute is late: dropped and counted.
        await srv.push([fill(11, T0 + 30_000)])
        await until(lambda: run.engine.assembler(BTC).counters.late == 1)
    assert encoded(run.sink.bars) == expected(trades)


@pytest.mark.parametrize("code", [None, 4004, 1001])
async def test_connection_dropped_mid_minute_loses_nothing(code: int | None) -> None:
    trades = fills(1, 240)
    async with FakeOkxServer() as srv, live(srv) as run:
        await srv.push(trades[:100])
        await until(lambda: run.accepted() == 100)
        await srv.drop(code)
        # Executed while the client is away: only REST has them.
        srv.add_trades(trades[100:170])
        await srv.wait_until(lambda: srv.connections >= 2)
        await srv.wait_subscribed(BTC)
        await srv.push(trades[170:])
        bars = await run.finish(240)
    assert encoded(bars) == expected(trades)
    assert run.source.stats.reconnects >= 1
    assert run.engine.assembler(BTC).counters.duplicates == 0


async def test_silence_without_pong_reconnects() -> None:
    trades = fills(1, 120)
    async with FakeOkxServer() as srv, live(srv, ping_interval=0.2, pong_timeout=0.2) as run:
        await srv.push(trades[:40])
        srv.answer_pings = False
        await srv.wait_until(lambda: srv.pings_received >= 1)
        srv.add_trades(trades[40:80])  # missed while the link is judged dead
        await srv.wait_until(lambda: srv.connections >= 2)
        srv.answer_pings = True
        await srv.wait_subscribed(BTC)
        await srv.push(trades[80:])
        bars = await run.finish(120)
    assert encoded(bars) == expected(trades)
    assert run.source.stats.pings >= 1


async def test_malformed_frames_are_skipped_or_rejected() -> None:
    trades = fills(1, 60)
    async with FakeOkxServer() as srv, live(srv) as run:
        await srv.push(trades[:30])
        await srv.send_raw("this is not json")
        await srv.send_raw("[1, 2, 3]")
        await srv.send_raw('{"arg":{"channel":"trades","instId":"BTC-USDT-SWAP"},"data":'
                           '[{"instId":"BTC-USDT-SWAP","tradeId":"31x","px":"1","sz":"1"}]}')
        await srv.send_raw('{"event":"error","code":"60012","msg":"Invalid request"}')
        await srv.push(trades[30:])
        bars = await run.finish(60)
    assert encoded(bars) == expected(trades)
    assert run.engine.assembler(BTC).counters.rejects == 1
    assert run.source.stats.malformed >= 2


async def test_skipped_trade_ids_are_filled_from_rest() -> None:
    trades = fills(1, 400, step=300)
    skipped = [*range(50, 60), *range(150, 390)]  # the second gap needs 3 pages
    async with FakeOkxServer() as srv, live(srv) as run:
        await srv.push(trades, skip_ids=skipped, per_message=20)
        bars = await run.finish(400)
    assert encoded(bars) == expected(trades)
    assert run.source.stats.gaps_filled >= 2
    assert run.source.stats.gaps_failed == 0
    assert not any(b.gap is True for b in bars)


async def test_trades_channel_records_cover_count_ids() -> None:
    # Runs of 3 fills with the same side, price and time become one record (count 3).
    raw: list[dict[str, Any]] = []
    for run_no in range(60):
        base = fill(1 + 3 * run_no, T0 + run_no * 2000)
        raw += [{**base, "tradeId": str(1 + 3 * run_no + k)} for k in range(3)]
    records = _aggregate(raw)
    assert all(r["count"] == "3" for r in records)
    missing = [str(i) for i in range(31, 61)]  # ten whole runs
    async with FakeOkxServer() as srv, live(srv) as run:
        await srv.push(raw, aggregate=True, skip_ids=missing)
        bars = await run.finish(len(records))
    assert encoded(bars) == expected(records)
    assert sum(b.fill_count for b in bars) == 180


async def test_trades_all_channel() -> None:
    trades = fills(1, 200)
    async with FakeOkxServer() as srv, live(srv, channel="trades-all") as run:
        await srv.push(trades, channel="trades-all", skip_ids=range(90, 110), per_message=10)
        bars = await run.finish(200)
    assert encoded(bars) == expected(trades)


async def test_server_restart_loses_nothing() -> None:
    trades = fills(1, 200)
    async with FakeOkxServer() as srv, live(srv) as run:
        await srv.push(trades[:80])
        await until(lambda: run.accepted() == 80)
        await srv.stop()
        srv.add_trades(trades[80:150])
        await srv.start()
        await srv.wait_until(lambda: srv.connections >= 2)
        await srv.wait_subscribed(BTC)
        await srv.push(trades[150:])
        bars = await run.finish(200)
    assert encoded(bars) == expected(trades)


async def test_notice_64008_opens_the_replacement_first() -> None:
    trades = fills(1, 150)
    async with FakeOkxServer() as srv, live(srv) as run:
        await srv.push(trades[:50])
        await until(lambda: run.accepted() == 50)
        assert await srv.send_notice_64008() == 1
        await srv.wait_until(lambda: srv.connections == 2 and srv.open_connections == 1)
        await srv.wait_subscribed(BTC)
        await srv.push(trades[50:])
        bars = await run.finish(150)
    assert encoded(bars) == expected(trades)
    assert run.source.stats.notices == 1
    assert srv.subscriptions.count(("trades", BTC)) == 2
    assert run.source.stats.gaps == 0  # the handover left no hole to fill


async def test_unfillable_gap_is_flagged_not_hidden() -> None:
    before = fills(1, 50, step=1000)  # minute 0
    after = fills(61, 40, ts0=T0 + 60_000, step=1000)  # minute 1; ids 51..60 never existed
    later = fills(101, 20, ts0=T0 + 120_000, step=1000)  # minute 2
    async with FakeOkxServer() as srv, live(srv, gap_timeout=0.3) as run:
        await srv.push(before)
        await srv.push(after)
        await until(lambda: run.source.stats.gaps_failed == 1)
        await srv.push(later)
        bars = await run.finish(110)
    want = [msgspec.json.decode(b) for b in expected(before + after + later)]
    want[0]["gap"] = True
    want[1]["gap"] = True
    assert [msgspec.json.decode(b) for b in encoded(bars)] == want


async def test_a_minute_touched_by_an_open_gap_waits() -> None:
    trades = fills(1, 30, step=1000)
    async with FakeOkxServer(rest_rate_limit=(1, 3600.0)) as srv:
        srv.add_trades([fill(999, T0)])
        async with OkxRest(srv.rest_url) as rest:
            await rest.history_trades(BTC)  # uses up the fake's only REST call for an hour
        async with live(srv, gap_timeout=30.0) as run:
            await srv.push(trades[:10])
            await srv.push(trades[10:], skip_ids=[11])
            await until(lambda: run.source.stats.gaps == 1)
            run.clock.t = T0 / 1000 + 70  # the minute is over, but trade 11 is missing
            await asyncio.sleep(0.5)
            assert run.sink.bars == []
            assert run.accepted() == 10


async def test_burst_of_ten_thousand_trades_with_a_slow_sink() -> None:
    trades = fills(1, 10_000, step=6)  # one minute of OKX at its busiest
    slow = CollectingSink(delay=0.01)
    async with FakeOkxServer() as srv, live(srv, sink=slow) as run:
        await srv.push(trades, per_message=100)
        bars = await run.finish(10_000)
    assert encoded(bars) == expected(trades)
    assert run.engine.stats.queue_high_water <= 8 + 1  # the queue, plus the batch in hand
    assert run.source._events is not None and run.source._events.maxsize > 0


async def test_unknown_instrument_is_a_clear_error() -> None:
    async with FakeOkxServer() as srv:
        source = OkxSource(
            ["NOPE-USDT-SWAP"], ws_url=srv.ws_url, rest_url=srv.rest_url, backoff=FAST
        )
        try:
            with pytest.raises(ConfigError, match="NOPE-USDT-SWAP"):
                async with asyncio.timeout(10):
                    async for _ in source:
                        pass
        finally:
            await source.aclose()


async def test_many_instruments_are_split_over_connections() -> None:
    inst_ids = [f"COIN{i:05d}LONGNAMEPADDING-USDT-SWAP" for i in range(3000)]
    groups = _split_groups(inst_ids, "trades")
    assert len(groups) >= 2
    assert [i for g in groups for i in g] == inst_ids
    async with FakeOkxServer(error_for_unknown=False) as srv:
        source = OkxSource(inst_ids, ws_url=srv.ws_url, rest_url=srv.rest_url, backoff=FAST)
        it = source.__aiter__()
        task = asyncio.create_task(it.__anext__())
        try:
            await srv.wait_until(lambda: len(srv.active_subscriptions) == 3000, timeout=20)
            assert srv.connections == len(groups)
            assert all(len(m.encode()) <= MAX_SUBSCRIBE_BYTES for m in srv.received)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await task
            await source.aclose()


def test_backoff_is_capped_and_jittered() -> None:
    policy = Backoff(initial=0.5, maximum=30.0, factor=2.0, jitter=0.5)
    rng = random.Random(3)
    delays = [policy.delay(n, rng) for n in range(1, 40)]
    assert delays[0] <= 0.5
    assert all(0.0 < d <= 30.0 for d in delays)
    assert all(d >= 15.0 for d in delays[10:])
    assert len(set(delays[10:])) > 1
    assert policy.delay(0, rng) == 0.0
    with pytest.raises(ConfigError):
        Backoff(initial=5, maximum=1)


def test_constructor_validates_without_io() -> None:
    with pytest.raises(ConfigError):
        OkxSource([])
    with pytest.raises(ConfigError):
        OkxSource([BTC], channel="books")
    with pytest.raises(ConfigError):
        OkxSource([BTC], ws_url="http://example")
    with pytest.raises(ConfigError):
        OkxSource(["not an id"])
    with pytest.raises(ConfigError):
        OkxSource([BTC], ping_interval=0)


async def test_rest_paging_respects_the_rate_limit() -> None:
    async with FakeOkxServer(rest_rate_limit=(3, 0.5)) as srv:
        srv.add_trades(fills(1, 1000))
        async with OkxRest(srv.rest_url, rate=(3, 0.5)) as rest:
            rows = await rest.history_range(BTC, 100, 900)
    assert sorted(rows) == list(range(101, 901))
    assert all(c.status == 200 for c in srv.rest_calls)
    assert len(srv.rest_calls) == 8


async def test_rest_retries_when_rate_limited() -> None:
    async with FakeOkxServer(rest_rate_limit=(2, 0.3)) as srv:
        srv.add_trades(fills(1, 500))
        async with OkxRest(srv.rest_url, retries=20) as rest:  # its own limit is OKX's 20/2s
            rows = await rest.history_range(BTC, 0, None)
    assert sorted(rows) == list(range(1, 501))
    assert any(c.status == 429 for c in srv.rest_calls)


async def test_rate_limiter_window() -> None:
    now = [0.0]
    limiter = RateLimiter(2, 1.0, clock=lambda: now[0])
    for _ in range(2):
        await limiter.acquire()
        limiter.release()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    now[0] = 1.5
    async with asyncio.timeout(5):
        await waiter


async def test_rate_limiter_counts_the_window_from_the_answer() -> None:
    # The server sees a request somewhere between send and answer: a window counted from the
    # answer never admits a call the server would count inside the previous window.
    now = [0.0]
    limiter = RateLimiter(1, 1.0, clock=lambda: now[0])
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    now[0] = 5.0  # the first call is still under way: its place stays taken
    await asyncio.sleep(0.05)
    assert not waiter.done()
    limiter.release()  # answered at t=5: the next call may go at t=6, not t=1
    await asyncio.sleep(0.05)
    assert not waiter.done()
    now[0] = 6.0
    async with asyncio.timeout(5):
        await waiter
    with pytest.raises(RuntimeError):
        RateLimiter(1, 1.0).release()


async def test_instrument_cache_is_fetched_and_used_offline(tmp_path: Path) -> None:
    row = {
        "instType": "SWAP", "instId": "PEPE-USDT-SWAP", "ctVal": "10000000", "ctType": "linear",
        "settleCcy": "USDT",
    }
    async with FakeOkxServer(instruments={"PEPE-USDT-SWAP": row}) as srv, OkxRest(srv.rest_url) as rest:
        await refresh_instrument_cache(tmp_path, ["PEPE-USDT-SWAP"], rest)
        with pytest.raises(ConfigError, match="DOGE-USDT-SWAP"):
            await refresh_instrument_cache(tmp_path, ["DOGE-USDT-SWAP"], rest)
    instrument = resolve("PEPE-USDT-SWAP", None, load_cache(tmp_path))
    assert instrument.ct_val == 10_000_000
    assert (tmp_path / "state" / "instruments" / "okx.json").is_file()
