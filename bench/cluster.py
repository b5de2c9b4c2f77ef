"""``python -m bench.cluster``: the distributed mode's throughput and bar latency, beside replay.

Needs ``nats-py`` and a ``nats-server`` (the ``test`` extra brings both). On one loopback
server it measures, for 1 worker (one instrument) and 2 workers (two instruments):

* **local replay** — ``vstream replay --final`` of the same files (the reference, in-process);
* **publish** — ``publish --final`` of the files into ``VSTREAM_TRADES`` (1 MiB chunks);
* **workers** — ``vstream worker`` processes started on the full trades stream, timed from
  their start until the last bar is in ``VSTREAM_BARS`` (bars checked byte for byte against
  the local replay), so process start-up and lease acquisition are included;
* **bar latency** — with a worker caught up, a message carrying one trade of the next minute
  is published; the time until that minute's previous bar arrives at a subscriber of the bars
  stream. In live mode a bar is closed by the ingester's clock tick ``grace`` after its minute,
  so a bar's latency is ``grace`` plus this.

A report, not a test: nothing is asserted beyond the bars being right.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from vstream.cli import main as cli_main
from vstream.generate import write_benchmark_file
from vstream.instruments import VaultPaths
from vstream.nats.batch import Message, publish_one
from vstream.nats.connect import BARS_STREAM, connect, ensure_streams, trades_subject
from vstream.nats.ingest import H_END, encode_trades, publish_vault
from vstream.testing import make_trade
from vstream.testing.nats_server import NatsServer

INSTS = ("BTC-USDT-SWAP", "ETH-USDT-SWAP")


def _vault(root: Path, insts: tuple[str, ...], n: int) -> Path:
    vault = root / "Vault"
    for inst in insts:
        raw = VaultPaths.of(vault, inst).raw_dir
        raw.mkdir(parents=True, exist_ok=True)
        write_benchmark_file(raw / "2025-01-01.jsonl", inst, n)
    return vault


def _replay(vault: Path, insts: tuple[str, ...]) -> float:
    args = ["-q", "replay", "--vault", str(vault), "--final", "--rebuild"]
    for inst in insts:
        args += ["--instId", inst]
    started = time.perf_counter()
    assert cli_main(args) == 0
    return time.perf_counter() - started


async def _bar_count(nc: Any) -> int:
    info = await nc.jetstream().stream_info(BARS_STREAM, subjects_filter="vstream.bars.>")
    return sum((info.state.subjects or {}).values())


async def _read_bars(nc: Any, inst: str) -> bytes:
    from nats.js.api import ConsumerConfig, DeliverPolicy

    js = nc.jetstream()
    sub = await js.subscribe(
        f"vstream.bars.{inst}.1m", ordered_consumer=True, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    )
    out = []
    try:
        while True:
            msg = await sub.next_msg(timeout=5)
            out.append(msg.data + b"\n")
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return b"".join(out)


def _worker(url: str, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "vstream", "worker", "--nats", url, "--worker-id", name, "--lease-ttl", "5"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    )


async def _run(workers: int, n: int, root: Path) -> dict[str, Any]:
    insts = INSTS[:workers]
    vault = _vault(root, insts, n)
    local = root / "Local"
    shutil.copytree(vault, local)
    replay_s = await asyncio.to_thread(_replay, local, insts)
    expected = {i: VaultPaths.of(local, i).output("1m").read_bytes() for i in insts}
    want = sum(b.count(b"\n") for b in expected.values())
    server = NatsServer.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        nc = await connect(server.url)
        await ensure_streams(nc.jetstream())
        started = time.perf_counter()
        for inst in insts:
            await publish_vault(nc, vault, inst, final=False)
        publish_s = time.perf_counter() - started
        started = time.perf_counter()
        procs = [_worker(server.url, f"w{i}") for i in range(workers)]
        first_bar = None
        while (count := await _bar_count(nc)) < want - len(insts):  # last minutes stay open
            if count and first_bar is None:
                first_bar = time.perf_counter()
            await asyncio.sleep(0.01)
        done = time.perf_counter()
        work_s = done - started
        steady_s = done - (first_bar or started)
        # Latency: one trade of a new minute finishes the open one.
        latencies = await _latency(nc, insts[0], vault)
        for inst in insts:  # the end of input (what publish --final sends last)
            await publish_one(nc, Message(trades_subject(inst), b"", {H_END: "1"}))
        while True:
            if await _bar_count(nc) >= want + 20:
                break
            await asyncio.sleep(0.01)
        same = True
        for inst in insts:
            same = same and (await _read_bars(nc, inst)).startswith(expected[inst])
        await nc.close()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        server.stop()
    return {
        "workers": workers, "trades": n * len(insts), "replay_s": replay_s, "publish_s": publish_s,
        "work_s": work_s, "steady_s": steady_s, "latency_ms": latencies, "bars_prefix_identical": same,
    }


async def _latency(nc: Any, inst: str, vault: Path) -> list[float]:
    """Publish one trade per new minute; time until the previous minute's bar arrives."""
    raw = sorted(VaultPaths.of(vault, inst).raw_dir.iterdir())[-1].read_bytes()
    last = msgspec.json.decode(raw.rstrip(b"\n").rsplit(b"\n", 1)[-1])
    ts = int(last["ts"])
    tid = int(last["tradeId"])
    sub = await nc.subscribe(f"vstream.bars.{inst}.1m")
    out = []
    try:
        for k in range(1, 21):
            tid += 1
            ts = (ts // 60_000 + 1) * 60_000 + 5
            trade = make_trade(tid, last["px"], 1, ts=ts, inst_id=inst)
            body = encode_trades([trade])
            started = time.perf_counter()
            await publish_one(nc, Message(trades_subject(inst), body, {"Nats-Msg-Id": f"bench:{k}"}))
            await sub.next_msg(timeout=10)
            out.append((time.perf_counter() - started) * 1000)
    finally:
        await sub.unsubscribe()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster")
    parser.add_argument("--trades", type=int, default=1_000_000, help="trades per instrument (1000000)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="vstream-bench-nats-"))
    try:
        for workers in (1, 2):
            case = root / f"w{workers}"
            case.mkdir()
            r = asyncio.run(_run(workers, args.trades, case))
            lat = r["latency_ms"]
            print(
                f"{workers} worker(s), {r['trades']} trades: local replay --final {r['trades'] / r['replay_s']:,.0f} trades/s; "
                f"publish {r['trades'] / r['publish_s']:,.0f} trades/s; "
                f"workers {r['trades'] / r['work_s']:,.0f} trades/s from process start "
                f"({r['trades'] / r['steady_s']:,.0f} from first bar); "
                f"bar latency median {statistics.median(lat):.1f} ms, max {max(lat):.1f} ms; "
                f"bars identical: {r['bars_prefix_identical']}",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"(cpus: {os.cpu_count()}, python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
