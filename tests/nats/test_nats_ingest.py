"""``ingest``: live OKX trades into the trades stream; two ingesters leave each trade once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats_support import PATIENCE, read_subjects, wait_for

from vstream.nats.connect import TRADES_STREAM, ensure_streams
from vstream.nats.ingest import H_GAP, TradeIngester
from vstream.okx_rest import OkxRest
from vstream.sources import Batch
from vstream.sources.okx import OkxSource
from vstream.testing import make_trade
from vstream.testing.fake_okx import FakeOkxServer

BTC, ETH = "BTC-USDT-SWAP", "ETH-USDT-SWAP"


def fills(inst: str, first: int, n: int) -> list[dict[str, Any]]:
    base = int(time.time() * 1000)
    return [
        {
            "instId": inst, "tradeId": str(first + i), "px": f"{100 + (first + i) % 7}.5",
            "sz": str(1 + i % 5), "side": "buy" if i % 3 else "sell", "ts": str(base + i),
        }
        for i in range(n)
    ]


async def stream_ids(nc: Any) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for subject, body, _ in await read_subjects(nc, TRADES_STREAM, "vstream.trades.>"):
        inst = subject.rsplit(".", 1)[1]
        out.setdefault(inst, []).extend(int(msgspec.json.decode(line)["tradeId"]) for line in body.splitlines())
    return out


async def test_two_ingesters_publish_each_trade_once(nc: Any) -> None:
    await ensure_streams(nc.jetstream())
    async with FakeOkxServer() as okx:
        rests = [OkxRest(okx.rest_url) for _ in range(2)]
        sources = [
            OkxSource([BTC, ETH], ws_url=okx.ws_url, rest=rest, gap_timeout=PATIENCE, grace=0.2)
            for rest in rests
        ]
        ingesters = [TradeIngester(nc) for _ in sources]
        tasks = [asyncio.create_task(i.run(s)) for i, s in zip(ingesters, sources, strict=True)]
        try:
            # Both connections subscribed to both instruments.
            await okx.wait_until(
                lambda: sum(1 for s in okx.subscriptions if s[1] in (BTC, ETH)) >= 4, timeout=PATIENCE
            )
            pushed = {BTC: 0, ETH: 0}
            next_id = {BTC: 1000, ETH: 5000}
            for round_no in range(12):
                for inst in (BTC, ETH):
                    batch = fills(inst, next_id[inst], 25)
                    # Some ids reach the websocket of no one: both ingesters fill them from REST.
                    skip = [next_id[inst] + 3] if round_no % 4 == 1 else []
                    await okx.push(batch, skip_ids=skip, per_message=7)
                    next_id[inst] += 25
                    pushed[inst] += 25
                await asyncio.sleep(0.05)  # trades spread over time, as OKX sends them; not a wait

            async def complete() -> bool:
                ids = await stream_ids(nc)
                return all(len(set(ids.get(i, []))) == pushed[i] for i in (BTC, ETH))

            await wait_for(complete, what="every trade in the stream")
            total = sum(pushed.values())
            # Each ingester has met every trade (published it, or found it in): nothing of
            # theirs is on its way any more, so a duplicate would be in the stream now.
            await wait_for(
                lambda: all(i.trades + i.dropped >= total for i in ingesters), what="both ingesters done",
                seen=lambda: [(i.trades, i.dropped) for i in ingesters],
            )
        finally:
            for source in sources:
                source.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            for source in sources:
                await source.aclose()
            for rest in rests:
                await rest.aclose()
    ids = await stream_ids(nc)
    for inst, first in ((BTC, 1000), (ETH, 5000)):
        assert ids[inst] == list(range(first, first + pushed[inst]))  # once each, in id order
    # Each ingester met every trade: it published it or found it already in (hot standby).
    total = sum(pushed.values())
    assert sum(i.trades for i in ingesters) == total
    assert all(i.trades + i.dropped == total for i in ingesters), [(i.trades, i.dropped) for i in ingesters]


async def test_ingest_shares_contract_values_and_workers_use_them(nc: Any) -> None:
    """An instrument no built-in table knows: the worker takes ctVal from what ingest shared."""
    from vstream.instruments import CachedInstrument
    from vstream.nats.batch import Message, publish_one
    from vstream.nats.connect import BARS_STREAM, instruments_bucket, trades_subject
    from vstream.nats.ingest import H_END, encode_trades
    from vstream.nats.worker import NatsWorker
    from vstream.settings import Settings
    from vstream.testing import make_trade

    inst = "ABC-USDT-SWAP"
    await ensure_streams(nc.jetstream())
    bucket = await instruments_bucket(nc.jetstream())
    row = CachedInstrument(instId=inst, ctVal="7", ctType="linear", instType="SWAP", settleCcy="USDT")
    await bucket.put(inst, msgspec.json.encode(row))
    body = encode_trades([make_trade(1, "2", 3, ts=1_765_748_040_000, inst_id=inst)])
    await publish_one(nc, Message(trades_subject(inst), body, {}))
    await publish_one(nc, Message(trades_subject(inst), b"", {H_END: "1"}))
    stop = asyncio.Event()
    worker = NatsWorker(nc, Settings(), worker_id="w", lease_ttl=2.0)
    task = asyncio.create_task(worker.run(stop))
    try:
        await wait_for(lambda: worker.bars >= 1, what="the bar")
    finally:
        stop.set()
        await task
    bars = await read_subjects(nc, BARS_STREAM, "vstream.bars.>")
    assert msgspec.json.decode(bars[0][1])["total_volume"] == "42"  # 3 contracts x 7 x $2


async def test_ingest_command_puts_okx_rows_in_the_bucket(nats_server: Any, nc: Any) -> None:
    from vstream.cli.nats import _share_instruments
    from vstream.nats.connect import instruments_bucket

    async with FakeOkxServer() as okx, OkxRest(okx.rest_url) as rest:
        await _share_instruments(nc, rest, [BTC, ETH], 1)
    bucket = await instruments_bucket(nc.jetstream())
    entry = await bucket.get(BTC)
    assert entry.value is not None and msgspec.json.decode(entry.value)["ctVal"] == str(okx.instruments[BTC]["ctVal"])


def start_ingest(url: str, okx: FakeOkxServer, log: Path) -> subprocess.Popen[bytes]:
    """``vstream ingest`` in a child process, its stderr in ``log``."""
    with open(log, "wb") as err:
        return subprocess.Popen(
            [
                sys.executable, "-m", "vstream", "ingest", "--nats", url,
                "--instId", BTC, "--ws-url", okx.ws_url, "--rest-url", okx.rest_url,
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
        )


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_ingest_command_publishes_until_sigterm(nats_server: Any, nc: Any, tmp_path: Path) -> None:
    from vstream.nats.connect import instruments_bucket

    log = tmp_path / "ingest.log"
    async with FakeOkxServer() as okx:
        proc = start_ingest(nats_server.url, okx, log)
        try:
            await okx.wait_subscribed(BTC, timeout=PATIENCE)
            await okx.push(fills(BTC, 1, 40), per_message=10)

            async def arrived() -> bool:
                return len((await stream_ids(nc)).get(BTC, [])) == 40

            await wait_for(arrived, what="the trades in the stream")
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, PATIENCE)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert code == 0, text
    assert "ingest messages=" in text and "trades=40" in text
    assert (await stream_ids(nc))[BTC] == list(range(1, 41))
    # It shared OKX's contract values for the workers.
    entry = await (await instruments_bucket(nc.jetstream())).get(BTC)
    assert entry.value is not None


def batch_of(inst: str, ids: range) -> Batch:
    return Batch(inst, [make_trade(i, "100", 1, ts=1_765_748_040_000 + i, inst_id=inst) for i in ids])


async def test_a_joining_ingester_waits_for_the_ids_before_its_first_record(nc: Any) -> None:
    await ensure_streams(nc.jetstream())
    a, b = TradeIngester(nc), TradeIngester(nc, join_wait=PATIENCE)
    await a.put(batch_of(BTC, range(1, 11)))

    async def late_a() -> None:
        # A is behind B: B has read the subject (ids up to 10) and waits for 11..15.
        await wait_for(lambda: BTC in b._states and BTC not in b._joined, what="B to wait for the ids")
        await a.put(batch_of(BTC, range(11, 16)))
        await a.put(batch_of(BTC, range(16, 19)))

    await asyncio.gather(b.put(batch_of(BTC, range(16, 21))), late_a())
    assert (await stream_ids(nc))[BTC] == list(range(1, 21))
    assert b.gaps == 0
    messages = await read_subjects(nc, TRADES_STREAM, "vstream.trades.>")
    assert not any(H_GAP in headers for _, _, headers in messages)


async def test_ids_that_never_arrive_are_published_over_as_a_gap(nc: Any) -> None:
    await ensure_streams(nc.jetstream())
    a, b = TradeIngester(nc), TradeIngester(nc, join_wait=0.3)
    await a.put(batch_of(BTC, range(1, 11)))
    await b.put(batch_of(BTC, range(16, 21)))
    assert (await stream_ids(nc))[BTC] == [*range(1, 11), *range(16, 21)]
    assert b.gaps == 1
    messages = await read_subjects(nc, TRADES_STREAM, "vstream.trades.>")
    assert messages[-1][2].get(H_GAP) == "1"
