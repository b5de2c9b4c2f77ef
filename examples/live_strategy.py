"""A live strategy callback: react to each OKX bar as its minute closes.

    python examples/live_strategy.py --instId BTC-USDT-SWAP --instId ETH-USDT-SWAP

Ctrl-C stops it cleanly. ``--ws-url``/``--rest-url`` point it at another server (the test suite
uses vstream's loopback fake OKX server); ``--max-bars N`` stops after N bars.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections import defaultdict
from collections.abc import Callable

import vstream
from vstream.sources.okx import OkxSource


class FlowStrategy:
    """Keeps a running taker delta per instrument and says when flow and price disagree."""

    def __init__(self, max_bars: int | None) -> None:
        self.max_bars = max_bars
        self.on_enough: Callable[[], None] = lambda: None
        self.bars = 0
        self.cumulative_delta: dict[str, int] = defaultdict(int)

    def on_bar(self, bar: vstream.Bar) -> None:
        self.bars += 1
        self.cumulative_delta[bar.instId] += int(bar.delta)
        signals = []
        if bar.divergence:
            signals.append(f"{bar.divergence_type} divergence")
        if bar.absorption:
            signals.append("absorption")
        if bar.whale_count:
            signals.append(f"{bar.whale_count} whale trade(s) ${bar.whale_volume}")
        print(
            f"{bar.timestamp_utc} {bar.instId} close={bar.close} ({bar.price_change_pct}%) "
            f"vol=${bar.total_volume} tier={bar.volume_tier or '-'} delta={bar.delta} "
            f"cum_delta={self.cumulative_delta[bar.instId]:+d}"
            + (f"  <- {', '.join(signals)}" if signals else ""),
            flush=True,
        )
        if self.max_bars is not None and self.bars >= self.max_bars:
            self.on_enough()


async def run(args: argparse.Namespace) -> int:
    source = OkxSource(args.inst_ids, ws_url=args.ws_url, rest_url=args.rest_url)
    strategy = FlowStrategy(args.max_bars)
    engine = vstream.Engine([source], sinks=[strategy.on_bar])
    strategy.on_enough = engine.stop
    loop = asyncio.get_running_loop()
    # Signal handling belongs to the program, not to the library.
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(sig, engine.stop)
    async with engine:
        await engine.run()
    print(f"{strategy.bars} bars", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instId", dest="inst_ids", action="append", required=True)
    parser.add_argument("--ws-url")
    parser.add_argument("--rest-url")
    parser.add_argument("--max-bars", type=int)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
