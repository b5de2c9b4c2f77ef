"""The live benchmark's trade pusher, run in its own process (a module, so ``spawn`` finds it)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

INST = "BTC-USDT-SWAP"


def serve_trades(conn: Any, frames: int, per_frame: int, start_id: int) -> None:
    """Child process: a FakeOkxServer that pushes on request (its CPU is not ours)."""
    from vstream.testing.fake_okx import FakeOkxServer

    async def serve() -> None:
        async with FakeOkxServer(error_for_unknown=False, rest_rate_limit=None) as srv:
            conn.send((srv.ws_url, srv.rest_url))
            loop = asyncio.get_running_loop()
            tid = start_id
            while True:
                command = await loop.run_in_executor(None, conn.recv)
                if command == "stop":
                    return
                await srv.wait_subscribed(INST, timeout=10)
                now_ms = int(time.time() * 1000)
                if command == "burst":
                    # frames * per_frame trades, all inside the current minute
                    batch = []
                    for _ in range(frames * per_frame):
                        tid += 1
                        batch.append(
                            {"instId": INST, "tradeId": str(tid), "px": "60000.1", "sz": "3",
                             "side": "buy" if tid % 2 else "sell", "ts": str(now_ms),
                             "count": "1", "source": "0", "seqId": tid}
                        )  # fmt: skip
                    for i in range(0, len(batch), per_frame):
                        await srv.push(batch[i : i + per_frame])
                    conn.send(len(batch))
                elif command == "one":
                    tid += 1
                    await srv.push(
                        [{"instId": INST, "tradeId": str(tid), "px": "60000.1", "sz": "1",
                          "side": "buy", "ts": str(now_ms), "count": "1"}]
                    )  # fmt: skip
                    conn.send(now_ms)

    asyncio.run(serve())
