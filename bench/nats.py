"""``python -m bench.nats``: the distributed mode's throughput and bar latency on this machine.

Needs the ``nats`` extra and a ``nats-server`` binary (the ``test`` extra installs both). Every
server is a fresh loopback ``nats-server -js`` (``vstream.testing.nats_server``); every worker
is a ``vstream worker`` process. Nothing is asserted except that the cluster's bars are the
local replay's bytes; figures are printed (see README "Scale out").

What is measured, exactly:

* **local replay** — ``vstream replay --all --final --rebuild`` over the same vault (one
  process per instrument), wall clock including interpreter start, for comparison.
* **publish** — ``vstream publish --all --final`` (1 MiB of trade lines per message, one
  fenced request per message), wall clock.
* **workers** — for 1 then 2 ``vstream worker`` processes on a server holding the published
  trades: from the moment the first worker has taken an instrument over (its takeover
  checkpoint appears) until every instrument's checkpoint covers the last trade message
  (the end marker, so the last minute is closed): trades / that time. Also the wall clock
  from spawning the workers (interpreter start, imports, connection, leases). The bars are
  then written out with ``vstream sink-jsonl`` and compared byte for byte with the local
  replay.
* **live bar latency** — one worker, ``grace`` 2 s; a paced publisher in this process sends
  trades stamped with the wall clock through :class:`~vstream.nats.ingest.TradeIngester`
  (the ``vstream ingest`` path, ``Vstream-Now`` on every message, one message every 10 ms);
  a :class:`~vstream.NatsBarSource` (``start="new"``) receives the bars. Minutes alternate
  between *active* (the next minute's first trade closes the bar) and *quiet* (no trade
  from second 58 to second 5 of the next minute: the bar closes on the clock, ``grace``
  after the minute's end). Per bar: receive time − end of its minute, and receive time −
  publish time of the minute's last trade.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import contextlib
import filecmp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vstream.generate import write_benchmark_file
from vstream.instruments import VaultPaths
from vstream.testing import make_trade
from vstream.testing.nats_server import NatsServer

INSTS = ("BTC-USDT-SWAP", "ETH-USDT-SWAP")


def vstream_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vstream", "-q", *args]


def run(*args: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run(vstream_cmd(*args), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"vstream {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return time.perf_counter() - started


def make_vault(root: Path, trades: int) -> Path:
    vault = root / "Vault"
    for index, inst in enumerate(INSTS):
        folder = VaultPaths.of(vault, inst).raw_dir
        folder.mkdir(parents=True, exist_ok=True)
        write_benchmark_file(folder / "2025-01-01.jsonl", inst, trades // len(INSTS), seed=index + 1)
    return vault


async def checkpoints(nc: Any) -> dict[str, tuple[int, int]]:
    """``inst -> (checkpoint's trades seq, trades subject's last seq)``."""
    from vstream.nats.batch import last_message
    from vstream.nats.connect import BARS_STREAM, TRADES_STREAM, ckpt_subject, trades_subject
    from vstream.nats.core import decode_checkpoint

    out = {}
    for inst in INSTS:
        last = await last_message(nc, TRADES_STREAM, trades_subject(inst))
        ckpt = await last_message(nc, BARS_STREAM, ckpt_subject(inst))
        done = decode_checkpoint(ckpt[2], inst).seq if ckpt is not None else -1
        out[inst] = (done, last[0] if last is not None else 0)
    return out


async def workers_run(vault: Path, local: Path, n_workers: int, trades: int) -> dict[str, float]:
    from vstream.nats.connect import connect

    with NatsServer.start() as server:
        publish_s = await asyncio.to_thread(run, "publish", "--all", "--final", "--nats", server.url, "--vault", str(vault))
        nc = await connect(server.url)
        procs: list[asyncio.subprocess.Process] = []
        try:
            spawned = time.perf_counter()
            procs = [
                await asyncio.create_subprocess_exec(
                    *vstream_cmd("worker", "--nats", server.url, "--worker-id", f"w{i}", "--lease-ttl", "5"),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
                for i in range(n_workers)
            ]
            first = None
            while True:
                state = await checkpoints(nc)
                if first is None and any(done >= 0 for done, _ in state.values()):
                    first = time.perf_counter()
                if all(done == last > 0 for done, last in state.values()):
                    finished = time.perf_counter()
                    break
                await asyncio.sleep(0.01)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                await proc.wait()
            await nc.close()
        sunk = vault.parent / f"Sunk{n_workers}"
        shutil.rmtree(sunk, ignore_errors=True)
        await asyncio.to_thread(run, "sink-jsonl", "--all", "--nats", server.url, "--vault", str(sunk))
    for inst in INSTS:
        a, b = VaultPaths.of(local, inst).output(), VaultPaths.of(sunk, inst).output()
        if not filecmp.cmp(a, b, shallow=False):
            raise SystemExit(f"{inst}: the cluster's bars differ from the local replay's")
    assert first is not None
    return {
        "publish_s": publish_s,
        "work_s": finished - first,
        "wall_s": finished - spawned,
        "rate": trades / (finished - first),
    }


async def latency_run(seconds: float, rate: int) -> list[tuple[str, float, float]]:
    """Per bar ``(kind, received - minute end, received - last trade's publish)``, in ms.

    Minutes alternate: in an *active* one trades go on into the next minute, whose first trade
    closes the bar (SPEC §6); a *quiet* one has no trade from its 58th second to the 5th second
    of the next minute, only the ingester's clock ticks, so the bar closes on the wall clock,
    ``grace`` after the minute's end.
    """
    import vstream
    from vstream.nats.connect import connect, ensure_streams
    from vstream.nats.ingest import TradeIngester
    from vstream.sources import Batch

    inst = INSTS[0]
    out: list[tuple[str, float, float]] = []
    with NatsServer.start() as server:
        nc = await connect(server.url)
        await ensure_streams(nc.jetstream())
        worker = await asyncio.create_subprocess_exec(
            *vstream_cmd("worker", "--nats", server.url, "--instId", inst, "--lease-ttl", "5"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        last_publish: dict[int, float] = {}  # minute -> wall time its last trade was published
        stop = asyncio.Event()

        def quiet(minute: int) -> bool:
            return minute % 2 == 1

        async def publish() -> None:
            ingester = TradeIngester(nc)
            trade_id = 1
            per_message = max(1, rate // 100)
            next_at = time.time()
            while not stop.is_set():
                now = time.time()
                now_ms = int(now * 1000)
                minute, second = divmod(now, 60)
                silent = (quiet(int(minute)) and second >= 58) or (quiet(int(minute) - 1) and second < 5)
                trades = [] if silent else [
                    make_trade(trade_id + i, f"{60000 + (trade_id + i) % 50}.5", 0.01 * (1 + i % 7),
                               "buy" if i % 2 else "sell", now_ms)
                    for i in range(per_message)
                ]
                trade_id += len(trades)
                await ingester.put(Batch(inst, trades, now_ms=now_ms))
                if trades:
                    last_publish[now_ms // 60000] = time.time()
                next_at += 0.01
                await asyncio.sleep(max(0.0, next_at - time.time()))

        async def receive(source: Any) -> None:
            async for bar in source:
                received = time.time()
                start = calendar.timegm(time.strptime(bar.timestamp_utc, "%Y-%m-%dT%H:%M:%SZ"))
                minute = start // 60
                kind = "quiet" if quiet(minute) else "active"
                out.append((kind, (received - (start + 60)) * 1000, (received - last_publish.get(minute, received)) * 1000))
                print(f"  {kind} bar {bar.timestamp_utc}: {out[-1][1]:.0f} ms after its minute ended, "
                      f"{out[-1][2]:.0f} ms after its last trade was published", flush=True)

        try:
            async with vstream.NatsBarSource(nc, [inst], start="new") as source:
                publisher = asyncio.create_task(publish())
                receiver = asyncio.create_task(receive(source))
                await asyncio.sleep(seconds)
                stop.set()
                await publisher
                receiver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await receiver
        finally:
            worker.send_signal(signal.SIGTERM)
            await worker.wait()
            await nc.close()
    # The first bar's minute started before the publisher did: keep whole minutes only.
    return out[1:]


def machine() -> str:
    import platform

    return f"{platform.processor() or platform.machine()}, nproc={os.cpu_count()}, Python {platform.python_version()}"


async def amain(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="vstream-bench-nats-"))
    try:
        print(f"machine: {machine()}")
        vault = make_vault(root, args.trades)
        local = root / "Local"
        shutil.copytree(vault, local)
        replay_s = await asyncio.to_thread(run, "replay", "--all", "--final", "--rebuild", "--vault", str(local))
        print(f"local replay --all --final ({len(INSTS)} instruments, {args.trades} trades): "
              f"{replay_s:.2f} s wall = {args.trades / replay_s / 1e6:.2f} M trades/s")
        for n in (1, 2):
            if n > args.max_workers:
                break
            shutil.rmtree(vault.parent / f"Sunk{n}", ignore_errors=True)
            figures = await workers_run(vault, local, n, args.trades)
            print(
                f"{n} worker(s): publish {figures['publish_s']:.2f} s ({args.trades / figures['publish_s'] / 1e6:.2f} M trades/s); "
                f"publish->bars {figures['work_s']:.2f} s = {figures['rate'] / 1e6:.2f} M trades/s "
                f"(from spawning the workers: {figures['wall_s']:.2f} s); bars identical to local replay"
            )
        if args.latency > 0:
            print(f"live latency: {args.latency:.0f} s at {args.rate} trades/s, grace 2000 ms")
            results = await latency_run(args.latency, args.rate)
            for kind in ("active", "quiet"):
                mine = [r for r in results if r[0] == kind]
                if not mine:
                    print(f"live, {kind} minutes: none in the time given (use --latency 150 or more)")
                    continue
                after_end = [r[1] for r in mine]
                after_trade = [r[2] for r in mine]
                print(
                    f"live, {kind} minutes: bar received {statistics.median(after_end):.0f} ms (max "
                    f"{max(after_end):.0f}) after its minute ended, {statistics.median(after_trade):.0f} ms "
                    f"(max {max(after_trade):.0f}) after the minute's last trade was published; {len(mine)} bars"
                )
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.nats", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trades", type=int, default=2_000_000, help="trades over two instruments (2000000)")
    parser.add_argument("--max-workers", type=int, default=2, help="run with 1..N workers (2)")
    parser.add_argument("--latency", type=float, default=250.0, help="seconds of the live latency run; 0 skips it (250)")
    parser.add_argument("--rate", type=int, default=2000, help="trades/s of the live run (2000)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
