"""Test helpers for vstream and for bots built on it.

* :class:`ListSource` — a source that delivers given trades (in batches) with no I/O;
* :class:`LiveListSource` — the same as a live source: it then waits until closed;
* :class:`ManualClock` — a clock for ``Engine(clock=...)`` that moves only when told;
* :class:`CollectingSink` — a sink that keeps every bar it is given;
* :func:`make_trade` — a valid :class:`~vstream.Trade` from a few words;
* :class:`FakeOkxServer` — a loopback stand-in for OKX's websocket and REST endpoints;
* :class:`FakeWebhookServer` — a loopback Discord webhook / Telegram bot API / JSON webhook
  server with faults (5xx, 429 with Retry-After, held requests), for alert delivery;
* :class:`NatsServer`, :class:`NatsCluster` — real ``nats-server`` processes (JetStream) on
  loopback for the distributed mode, with a free port and a temporary store each.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from ..assembler import Bar
from ..sources import Batch
from ..trades import Trade
from .fake_okx import FakeOkxServer
from .fake_webhook import FakeWebhookServer
from .nats_server import NatsCluster, NatsServer


def make_trade(
    trade_id: int | str,
    px: str | float,
    sz: float,
    side: str = "buy",
    ts: int = 1_765_748_040_000,
    *,
    inst_id: str = "BTC-USDT-SWAP",
    count: int = 1,
) -> Trade:
    """A :class:`~vstream.Trade` (``px`` kept as text, as the input would give it)."""
    return Trade(
        instId=inst_id, tradeId=str(trade_id), px=str(px), sz=float(sz), side=side, ts=ts, count=count
    )


class ListSource:
    """A source that yields the given trades of one instrument, ``batch_size`` at a time.

    Its position is the number of trades delivered, so an engine resumed from a checkpoint
    continues after the last trade it consumed. ``final`` closes the open bars at the end, as
    ``replay --final`` does. ``delay`` sleeps between batches (to interleave with other tasks).
    """

    live = False

    def __init__(
        self,
        inst_id: str,
        trades: Sequence[Trade],
        *,
        batch_size: int = 1000,
        final: bool = True,
        delay: float = 0.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.inst_id = inst_id
        self.trades = list(trades)
        self.batch_size = batch_size
        self.final = final
        self.delay = delay
        self._next = 0
        self._closed = False

    @property
    def inst_ids(self) -> tuple[str, ...]:
        return (self.inst_id,)

    def resume(self, positions: Mapping[str, Any]) -> None:
        saved = positions.get(self.inst_id)
        self._next = int(saved["next"]) if isinstance(saved, dict) and "next" in saved else 0

    def snapshot(self) -> dict[str, Any]:
        return {self.inst_id: {"next": self._next}}

    def __aiter__(self) -> AsyncIterator[Batch]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Batch]:
        while self._next < len(self.trades) and not self._closed:
            chunk = self.trades[self._next : self._next + self.batch_size]
            self._next += len(chunk)
            if self.delay:
                await asyncio.sleep(self.delay)
            yield Batch(self.inst_id, list(chunk), position={"next": self._next})
        if self.final and not self._closed:
            yield Batch(self.inst_id, [], position={"next": self._next}, end=True)

    async def aclose(self) -> None:
        self._closed = True


class LiveListSource(ListSource):
    """A :class:`ListSource` that behaves as a live one: once its trades are delivered it
    waits for more (none come) until :meth:`aclose`, so the engine's clock closes the bars.
    Give ``final=False`` (a live stream has no end of input)."""

    live = True
    realtime = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.done = asyncio.Event()

    async def _iterate(self) -> AsyncIterator[Batch]:
        async for batch in super()._iterate():
            yield batch
        await self.done.wait()

    async def aclose(self) -> None:
        self.done.set()
        await super().aclose()


class ManualClock:
    """Seconds since the epoch that change only when a test sets :attr:`t`."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class CollectingSink:
    """Keeps every bar written to it in :attr:`bars`; ``delay`` makes it a slow sink."""

    def __init__(self, *, delay: float = 0.0, fail_every: int = 0) -> None:
        self.bars: list[Bar] = []
        self.delay = delay
        self.fail_every = fail_every
        self.closed = False
        self._calls = 0

    async def write(self, bar: Bar) -> None:
        self._calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_every and self._calls % self.fail_every == 0:
            raise RuntimeError(f"CollectingSink failing on call {self._calls} as asked")
        self.bars.append(bar)

    async def aclose(self) -> None:
        self.closed = True


def trades_of(lines: Iterable[dict[str, Any]]) -> list[Trade]:
    """Flat OKX trade dicts (as the generator or OKX gives them) to :class:`~vstream.Trade`."""
    return [
        Trade(
            instId=t["instId"],
            tradeId=str(t["tradeId"]),
            px=str(t["px"]),
            sz=float(t["sz"]),
            side=t["side"],
            ts=int(t["ts"]),
            count=int(t.get("count", 1) or 1),
        )
        for t in lines
    ]


__all__ = [
    "CollectingSink",
    "FakeOkxServer",
    "FakeWebhookServer",
    "ListSource",
    "LiveListSource",
    "ManualClock",
    "NatsCluster",
    "NatsServer",
    "make_trade",
    "trades_of",
]
