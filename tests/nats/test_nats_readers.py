"""``vstream.NatsBarSource``: bars from the bars stream for bots, against a real nats-server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from nats_support import PATIENCE, wait_for

import vstream
from vstream.assembler import Bar
from vstream.errors import ConfigError
from vstream.nats.connect import BARS_STREAM, bars_subject, ensure_streams

BTC, ETH = "BTC-USDT-SWAP", "ETH-USDT-SWAP"
T0 = datetime(2025, 1, 1, 21, 0, tzinfo=UTC)


def make_bar(inst: str, minute: int, tf: str = "1m") -> Bar:
    """A bar of minute ``minute`` after 21:00 (its close encodes the minute, to tell bars apart)."""
    stamp = datetime.fromtimestamp(T0.timestamp() + 60 * minute, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    bar = Bar(
        timestamp_utc=stamp, instId=inst, exchange="okx", market="perp", open="100", high="101",
        low="99", close=f"{100 + minute}", price_change_pct="+0.00", total_volume="1000",
        buy_volume="600", sell_volume="400", delta="+200", whale_volume="0", whale_count=0,
        trade_count=3, volume_tier=None, absorption=False, divergence=False,
        divergence_type=None, volume_ratio=None, fill_count=3,
    )
    if tf != "1m":
        bar.timeframe = tf
    return bar


async def publish(nc: Any, *bars: Bar) -> None:
    js = nc.jetstream()
    for bar in bars:
        tf = bar.timeframe if isinstance(bar.timeframe, str) else "1m"
        await js.publish(bars_subject(bar.instId, tf), msgspec.json.encode(bar))


async def take(source: Any, n: int, seconds: float = PATIENCE) -> list[Bar]:
    out: list[Bar] = []

    async def run() -> None:
        async for bar in source:
            out.append(bar)
            if len(out) == n:
                return

    await asyncio.wait_for(run(), seconds)
    return out


async def nothing_more(source: Any, seconds: float = 1.5) -> None:
    # A bounded look for what must not come: slowness can only make it pass, never fail.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(source.__anext__(), seconds)


def keys(bars: list[Bar]) -> list[tuple[str, str, str]]:
    return [(b.instId, b.timestamp_utc, b.timeframe if isinstance(b.timeframe, str) else "1m") for b in bars]


async def test_from_a_start_time_several_instruments_and_timeframes(nc: Any) -> None:
    await ensure_streams(nc.jetstream())
    bars = [make_bar(inst, m) for m in range(10) for inst in (BTC, ETH)]
    bars += [make_bar(BTC, m, "5m") for m in (0, 5)]
    await publish(nc, *bars)
    # Every bar was published now, long after its minute: the start time selects by bar time.
    start = "2025-01-01T21:05:00Z"
    async with vstream.NatsBarSource(nc, [BTC], timeframes=("1m", "5m"), start=start) as source:
        got = await take(source, 6)
        await nothing_more(source)
    want = [make_bar(BTC, m) for m in range(5, 10)] + [make_bar(BTC, 5, "5m")]
    assert got == want
    # A start between minutes begins with the next period; None reads every instrument.
    async with vstream.NatsBarSource(nc, None, start=datetime(2025, 1, 1, 21, 8, 30, tzinfo=UTC)) as source:
        got = await take(source, 2)
        await nothing_more(source)
    assert keys(got) == [(BTC, "2025-01-01T21:09:00Z", "1m"), (ETH, "2025-01-01T21:09:00Z", "1m")]


async def test_new_only_skips_what_is_in_the_stream(nc: Any) -> None:
    await ensure_streams(nc.jetstream())
    await publish(nc, *(make_bar(BTC, m) for m in range(3)))
    async with vstream.NatsBarSource(nc, [BTC]) as source:  # start="new" is the default
        await publish(nc, make_bar(BTC, 3), make_bar(ETH, 3), make_bar(BTC, 4))
        got = await take(source, 2)
        await nothing_more(source)
    assert got == [make_bar(BTC, 3), make_bar(BTC, 4)]


async def test_durable_resumes_after_the_last_acknowledged_bar(nats_server: Any) -> None:
    from vstream.nats.connect import connect

    url = nats_server.url
    nc = await connect(url)
    try:
        await ensure_streams(nc.jetstream())
        await publish(nc, *(make_bar(BTC, m) for m in range(8)))
    finally:
        await nc.close()

    class Crash(Exception):
        pass

    # Session 1 (its own connection, from the URL): handles bars 0..2, dies while holding bar 2.
    with pytest.raises(Crash):
        async with vstream.NatsBarSource(url, [BTC], start="all", durable="bot") as source:
            got = await take(source, 3)
            assert got == [make_bar(BTC, m) for m in range(3)]
            raise Crash()
    # Session 2: bar 2 was never acknowledged, so it comes again first, in order; it stops
    # cleanly after bar 4, which acknowledges bar 4.
    async with vstream.NatsBarSource(url, [BTC], start="all", durable="bot") as source:
        got = await take(source, 3)
    assert got == [make_bar(BTC, m) for m in (2, 3, 4)]
    # Session 3: continues after bar 4 (start is not used for an existing durable), and new
    # bars published meanwhile follow.
    source = vstream.NatsBarSource(url, [BTC], start="new", durable="bot")
    try:
        got = await take(source, 3)
        assert got == [make_bar(BTC, m) for m in (5, 6, 7)]
        await source.ack()
        nc = await connect(url)
        try:
            await publish(nc, make_bar(BTC, 8))
        finally:
            await nc.close()
        assert await take(source, 1) == [make_bar(BTC, 8)]
    finally:
        await source.aclose()
    # Another instrument list under the same name is refused, naming the way out.
    with pytest.raises(ConfigError, match="durable consumer 'bot'"):
        async with vstream.NatsBarSource(url, [ETH], durable="bot"):
            pass


async def test_ephemeral_reader_survives_losing_its_consumer(nc: Any) -> None:
    await ensure_streams(nc.jetstream())
    await publish(nc, *(make_bar(BTC, m) for m in range(4)))
    async with vstream.NatsBarSource(nc, [BTC], start="all", batch=2) as source:
        assert await take(source, 3) == [make_bar(BTC, m) for m in range(3)]
        reader = source._reader
        assert reader is not None and reader._name is not None
        # The server forgets the consumer (restart, fail-over, idleness): nothing lost or doubled.
        await nc.jetstream().delete_consumer(BARS_STREAM, reader._name)
        await publish(nc, *(make_bar(BTC, m) for m in range(4, 7)))
        assert await take(source, 4) == [make_bar(BTC, m) for m in range(3, 7)]
        await nothing_more(source)
        assert reader.recreated >= 1
    # The ephemeral consumer is gone afterwards.
    names = [c.name async for c in _consumers(nc)]
    assert names == []


async def _consumers(nc: Any) -> Any:
    for info in await nc.jetstream().consumers_info(BARS_STREAM):
        yield info


async def test_a_message_that_is_not_a_bar_is_skipped_and_counted(nc: Any) -> None:
    await ensure_streams(nc.jetstream())
    await publish(nc, make_bar(BTC, 0))
    await nc.jetstream().publish(bars_subject(BTC, "1m"), b"{not a bar")
    await publish(nc, make_bar(BTC, 1))
    async with vstream.NatsBarSource(nc, [BTC], start="all") as source:
        assert await take(source, 2) == [make_bar(BTC, 0), make_bar(BTC, 1)]
        assert source.skipped == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timeframes": ("2m",)}, "unknown timeframe"),
        ({"start": "yesterday"}, "not 'new', 'all' or an ISO time"),
        ({"durable": "my bot"}, "durable name"),
        ({"inst_ids": "BTC-USDT-SWAP"}, "list of instrument ids"),
        ({"inst_ids": ["BTC.USDT"]}, "cannot be used in a NATS subject"),
        ({"inst_ids": []}, "inst_ids is empty"),
    ],
)
def test_the_constructor_checks_its_arguments_without_io(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        vstream.NatsBarSource("nats://127.0.0.1:1", **kwargs)
    # Nothing is contacted by a valid construction either (port 1 has no server).
    vstream.NatsBarSource("nats://127.0.0.1:1", [BTC], start="2025-01-01T00:00Z", durable="ok")


async def test_an_unreachable_server_is_a_source_error() -> None:
    source = vstream.NatsBarSource("nats://127.0.0.1:1", [BTC])
    with pytest.raises(vstream.SourceError, match="cannot connect"):
        await source.__anext__()
    await source.aclose()


def test_import_vstream_does_not_import_nats_py() -> None:
    code = "import sys, vstream; vstream.NatsBarSource; print('nats' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_closing_from_another_task_ends_the_iteration_and_leaves_no_consumer(nc: Any) -> None:
    await ensure_streams(nc.jetstream())
    source = vstream.NatsBarSource(nc, [BTC])
    got: list[Bar] = []

    async def loop() -> None:
        async for bar in source:
            got.append(bar)

    task = asyncio.create_task(loop())

    async def fetching() -> bool:
        # The source's consumer exists and holds a pull request: the loop waits in a fetch.
        infos = await nc.jetstream().consumers_info(BARS_STREAM)
        return len(infos) == 1 and (infos[0].num_waiting or 0) >= 1

    await wait_for(fetching, what="the loop to wait in a fetch")
    await source.aclose()
    await asyncio.wait_for(task, PATIENCE)
    # The loop has ended: a fetch that failed on the closed subscription could only have
    # reopened a consumer before that.
    assert got == [] and [c.name async for c in _consumers(nc)] == []
    with pytest.raises(StopAsyncIteration):
        await source.__anext__()
