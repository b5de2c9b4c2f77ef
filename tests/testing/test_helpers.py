"""The small public test helpers behave as documented (bots rely on them too)."""

from __future__ import annotations

import asyncio

from vstream.testing import LiveListSource, ManualClock, make_trade


def test_manual_clock_moves_only_when_set():
    clock = ManualClock(100.0)
    assert clock() == clock() == 100.0
    clock.t = 160.5
    assert clock() == 160.5


async def test_live_list_source_delivers_then_waits_until_closed():
    source = LiveListSource("BTC-USDT-SWAP", [make_trade(1, "100", 1), make_trade(2, "101", 1)], batch_size=1, final=False)
    assert source.live is True
    it = source.__aiter__()
    got = [await anext(it), await anext(it)]
    assert [t.tradeId for b in got for t in b.trades] == ["1", "2"]
    waiting = asyncio.ensure_future(anext(it))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # no end-of-input batch: a live source waits for more
    await source.aclose()
    try:
        batch = await asyncio.wait_for(waiting, 1)
    except StopAsyncIteration:
        batch = None
    assert batch is None or batch.end  # ends once closed
