"""``python -m bench``: replay throughput against the decoding floor, memory, several
instruments, an optional pandas baseline, and the live path's cost and bar latency.

Everything runs on data the benchmark generates itself (in a temporary folder, removed at the
end unless ``--keep``). Figures are printed as a table; see README "Performance".

What is measured, exactly:

* **decode floor** — the same trade lines, read in the same 1 MiB chunks as ``replay``,
  decoded by one reused decoder into the plain ``vstream.Trade`` Struct (``gc=False``, same
  fields and types), no validation, no bars: newline-delimited
  (``Decoder(Trade).decode_lines``) and framed as one JSON array
  (``Decoder(list[Trade]).decode``), the faster of the two. Only the decode calls are
  timed (reading and framing are not), so the floor is as low as it can honestly be. With
  ``--format exporter`` the lines are the vault exporter's (CRLF), and the floor Struct holds
  their twelve fields: all strings, or with the stamp a datetime and the numbers floats,
  whichever decodes faster.
* **replay** — ``vstream replay --instId ... --final --rebuild`` in a fresh process on the
  same file: read files, validate every line (SPEC §3), build bars, write bars and state
  (fsync). Timed inside the process around ``vstream.cli.main`` (best of ``--repeat``) and
  from outside (interpreter start included). Peak RSS is ``ru_maxrss`` of that process.
  The floor and the replay alternate, one of each per round (``--repeat`` rounds): the
  ratio is given best against best and for each round, two runs seconds apart.
* **several instruments** — ``replay --all`` over two instruments (one worker process each)
  against the same instruments replayed one after the other; outputs compared byte for byte.
* **pandas** (optional, ``pip install .[bench]``) — what a user might write instead:
  ``pandas.read_json(lines=True)`` of the whole file and a one-minute ``resample``.
* **order flow** (``--footprint TICK``) — the same replay with ``--footprint TICK``, with
  ``--cvd`` and with both, taking turns with the plain replay in each round; each is given
  with its time over the plain one's, round by round.
* **live** — a loopback :class:`~vstream.testing.fake_okx.FakeOkxServer` in a child process
  pushes trade frames to an :class:`~vstream.engine.Engine` with the OKX source: the CPU time
  of the receiving process per trade (websocket frame to bar assembler, everything included),
  the per-frame cost of the decode + assemble path, and when the bar of a minute reaches a
  sink compared with the end of that minute.
"""

from __future__ import annotations

import argparse
import asyncio
import filecmp
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from vstream.generate import write_benchmark_file
from vstream.trades import Trade

from ._server import INST, serve_trades

CHUNK = 1 << 20  # ReplaySource's default chunk_bytes
SEP = b"\n,"  # how the decoder frames lines (vstream.trades._SEP)


def _raw_file(vault: Path, inst_id: str) -> Path:
    kind = "trades_spot" if not inst_id.endswith("-SWAP") else "trades_perps"
    folder = vault / "raw" / "okx" / kind / inst_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "2025-01-01.jsonl"


def _chunks(path: Path) -> Any:
    """Complete lines of ``path`` in ~1 MiB pieces, as replay reads them."""
    pending = b""
    with open(path, "rb") as f:
        while True:
            data = f.read(CHUNK)
            if not data:
                if pending:
                    yield pending
                return
            cut = data.rfind(b"\n")
            if cut < 0:
                pending += data
                continue
            yield pending + data[: cut + 1]
            pending = data[cut + 1 :]


class ExporterFields(msgspec.Struct, gc=False):
    """The exporter's twelve fields as it writes them: strings."""

    timestamp_utc: str
    exchange: str
    market: str
    instId: str
    symbol_canon: str
    trade_id: str
    side: str
    price: str
    qty_contracts: str
    ctVal: str
    ctMult: str
    ctType: str


class ExporterTyped(msgspec.Struct, gc=False):
    """The same fields with the stamp and the numbers typed as a reader uses them."""

    timestamp_utc: datetime
    exchange: str
    market: str
    instId: str
    symbol_canon: str
    trade_id: str
    side: str
    price: str
    qty_contracts: float
    ctVal: float
    ctMult: str
    ctType: str


#: The floor Structs of each line format; the fastest of a format's counts.
FLOOR_STRUCTS: dict[str, tuple[type, ...]] = {
    "okx": (Trade,),
    "exporter": (ExporterFields, ExporterTyped),
}


def decode_floor(path: Path, repeat: int, line_format: str = "okx") -> tuple[float, float, int]:
    """(best decode-only seconds, best read+decode seconds, lines).

    Two ways of decoding the same chunks with one reused decoder are timed, and the faster
    counts: newline-delimited (``Decoder(Trade).decode_lines``, as replay does) and framed as
    one JSON array (``Decoder(list[Trade]).decode``, framing not timed). Exporter lines are
    decoded into a Struct of their fields, every value a string or with the stamp and
    numbers typed, whichever is faster.
    """
    results = [_floor(path, repeat, struct) for struct in FLOOR_STRUCTS[line_format]]
    return min(results)


def _floor(path: Path, repeat: int, struct: type) -> tuple[float, float, int]:
    by_line = msgspec.json.Decoder(struct, strict=False)
    by_array = msgspec.json.Decoder(list[struct], strict=False)  # type: ignore[valid-type]
    best_lines = best_array = best_all = float("inf")
    lines = 0
    for _ in range(repeat):
        spent_lines = spent_array = 0.0
        lines = 0
        started = time.perf_counter()
        for body in _chunks(path):
            t0 = time.perf_counter()
            lines += len(by_line.decode_lines(body))
            spent_lines += time.perf_counter() - t0
        best_all = min(best_all, time.perf_counter() - started)
        for body in _chunks(path):
            blob = b"[" + body[:-1].replace(b"\n", SEP) + b"]"
            t0 = time.perf_counter()
            by_array.decode(blob)
            spent_array += time.perf_counter() - t0
        best_lines = min(best_lines, spent_lines)
        best_array = min(best_array, spent_array)
    return min(best_lines, best_array), best_all, lines


_CHILD = """
import json, resource, sys, time
from vstream.cli import main
t = time.perf_counter()
code = main(sys.argv[1:])
seconds = time.perf_counter() - t
print(json.dumps({"code": code, "seconds": seconds,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}), file=sys.stderr)
"""


def run_cli(args: list[str]) -> dict[str, Any]:
    """Run ``vstream <args>`` in a fresh process; its own timing, peak RSS and wall time."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, "-q", *args], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    if report["code"] != 0:
        raise SystemExit(f"vstream {' '.join(args)} failed:\n{proc.stderr}")
    report["wall"] = wall
    report["stdout"] = proc.stdout
    return report


def replay(vault: Path, inst_ids: list[str] | None, repeat: int, *extra: str) -> list[dict[str, Any]]:
    which = ["--all"] if inst_ids is None else [a for i in inst_ids for a in ("--instId", i)]
    return [
        run_cli(["replay", *which, "--vault", str(vault), "--final", "--rebuild", *extra])
        for _ in range(repeat)
    ]


def order_flow(vault: Path, repeat: int, variants: dict[str, list[str]]) -> dict[str, list[float]]:
    """Replay seconds of each variant (name -> extra replay flags), the variants taking turns
    in each round so that every round compares runs made seconds apart."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, flags in variants.items():
            seconds[name] += [r["seconds"] for r in replay(vault, [INST], 1, *flags)]
    return seconds


def _outputs(vault: Path) -> list[Path]:
    return sorted(p for p in (vault / "derived").rglob("*.jsonl"))


def multi(tmp: Path, trades: int, repeat: int, line_format: str = "okx") -> dict[str, Any]:
    """Two instruments: ``replay --all`` (a process each) against one after the other."""
    insts = ["BTC-USDT-SWAP", "ETH-USDT-SWAP"]
    together, apart = tmp / "multi_all", tmp / "multi_one"
    for vault in (together, apart):
        for index, inst in enumerate(insts):
            path = _raw_file(vault, inst)
            if vault is together:
                write_benchmark_file(path, inst, trades, seed=index + 1, line_format=line_format)
            else:
                shutil.copy(_raw_file(together, inst), path)
    par = min(r["wall"] for r in replay(together, None, repeat))
    seq_runs = [sum(replay(apart, [i], 1)[0]["wall"] for i in insts) for _ in range(repeat)]
    seq = min(seq_runs)
    same = all(
        filecmp.cmp(a, b, shallow=False)
        for a, b in zip(_outputs(together), _outputs(apart), strict=True)
    ) and len(_outputs(together)) == len(insts)
    return {"trades": trades * len(insts), "parallel": par, "sequential": seq, "identical": same}


def pandas_baseline(path: Path, line_format: str = "okx") -> tuple[float, int] | str:
    """Seconds and bars of a naive pandas version, or why it was skipped."""
    try:
        import pandas as pd
    except ImportError:
        return "skipped: pandas not installed (pip install '.[bench]')"
    started = time.perf_counter()
    if line_format == "exporter":
        df = pd.read_json(path, lines=True, dtype={"price": float, "qty_contracts": float, "trade_id": str})
        df = df.rename(columns={"price": "px", "qty_contracts": "sz"})
        df["ts"] = pd.to_datetime(df["timestamp_utc"], utc=True)
    else:
        df = pd.read_json(path, lines=True, dtype={"px": float, "sz": float, "tradeId": str})
        df["ts"] = pd.to_datetime(df["ts"], unit="ms", utc=True)
    df["usd"] = df["px"] * df["sz"] * 0.01
    df["buy_usd"] = df["usd"].where(df["side"] == "buy", 0.0)
    bars = df.set_index("ts").resample("1min").agg(
        {"px": ["first", "max", "min", "last"], "usd": "sum", "buy_usd": "sum"}
    )
    bars = bars.dropna()
    return time.perf_counter() - started, len(bars)


# -- live --------------------------------------------------------------------------------


async def _live(frames: int, per_frame: int, wait_bar: bool) -> dict[str, Any]:
    from vstream.engine import Engine
    from vstream.settings import Settings
    from vstream.sources.okx import OkxSource

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=serve_trades, args=(child, frames, per_frame, 100_000_000))
    proc.start()
    loop = asyncio.get_running_loop()
    ws_url, rest_url = await loop.run_in_executor(None, parent.recv)
    bars: list[tuple[float, Any]] = []

    def on_bar(bar: Any) -> None:
        bars.append((time.time(), bar))

    settings = Settings()
    source = OkxSource([INST], ws_url=ws_url, rest_url=rest_url, grace=settings.grace)
    result: dict[str, Any] = {}
    async with Engine([source], sinks=[on_bar], settings=settings) as engine:
        runner = asyncio.create_task(engine.run())
        await asyncio.sleep(1.0)  # subscribed
        # Warm-up burst, then the measured one: CPU of this process per trade received.
        parent.send("burst")
        await loop.run_in_executor(None, parent.recv)
        await asyncio.sleep(0.5)
        counters = engine.assembler(INST).counters

        def seen() -> int:
            return counters.trades + counters.late + counters.duplicates

        # The baseline is taken before the burst is sent: trades may be counted before the
        # pusher reports how many it sent.
        base = seen()
        cpu0 = time.process_time()
        parent.send("burst")
        sent = await loop.run_in_executor(None, parent.recv)
        deadline = time.monotonic() + 30
        target = base + sent
        # polls a counter another task owns (there is no event to wait on)
        while seen() < target and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        cpu = time.process_time() - cpu0
        got = seen() - (target - sent)
        result["late_or_dup"] = counters.late + counters.duplicates
        result["cpu_us_per_trade"] = cpu / max(1, got) * 1e6
        result["trades"] = got
        if wait_bar:
            # A trade early in a fresh minute; its bar must come grace + a little after it ends.
            now = time.time()
            await asyncio.sleep(60 - now % 60 + 0.05)
            parent.send("one")
            ts_ms = await loop.run_in_executor(None, parent.recv)
            minute_end = (ts_ms // 60_000 + 1) * 60.0
            # The bar of that trade's minute (an earlier minute's bar may still be on its way).
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(minute_end - 60))
            while time.time() < minute_end + settings.grace + 5:
                await asyncio.sleep(0.01)
                fresh = [t for t, b in bars if b.timestamp_utc == stamp]
                if fresh:
                    result["bar_after_minute_end_s"] = fresh[0] - minute_end
                    break
        engine.stop()
        await runner
    parent.send("stop")
    proc.join(10)
    return result


def live_path_cost(per_frame: int, frames: int) -> float:
    """Median microseconds per trade of the live decode + assemble path, timed per frame."""
    from vstream.assembler import BarAssembler
    from vstream.instruments import resolve
    from vstream.settings import Settings
    from vstream.trades import LineDecoder

    decoder = LineDecoder(INST)
    assembler = BarAssembler(resolve(INST, {}, None), Settings())
    now_ms = int(time.time() * 1000)
    encode = msgspec.json.encode
    tid = 1_000_000
    per_trade: list[float] = []
    for _ in range(frames):
        raws = []
        for _ in range(per_frame):
            tid += 1
            raws.append(
                encode({"instId": INST, "tradeId": str(tid), "px": "60000.1", "sz": "3",
                        "side": "buy", "ts": str(now_ms), "count": "1", "source": "0"})
            )  # fmt: skip
        started = time.perf_counter()
        # as the OKX source does: each record of a frame decoded, then fed as one batch
        trades = []
        for raw in raws:
            trades += decoder.decode([raw], file="ws", first_line=1, now_ms=now_ms).trades
        assembler.feed(trades)
        per_trade.append((time.perf_counter() - started) / per_frame * 1e6)
    return statistics.median(per_trade)


# -- report --------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()} "
        f"({platform.python_implementation()}), msgspec {msgspec.__version__}, {platform.system()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trades", type=int, default=2_000_000, help="trade lines (2000000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (rounds of floor + replay), best kept (3)")
    parser.add_argument("--no-multi", action="store_true", help="skip the two-instrument run")
    parser.add_argument("--no-pandas", action="store_true", help="skip the pandas baseline")
    parser.add_argument("--no-live", action="store_true", help="skip the live figures")
    parser.add_argument("--no-bar-wait", action="store_true", help="live: skip the bar latency (waits up to a minute)")
    parser.add_argument("--keep", metavar="DIR", help="generate into DIR and keep it")
    parser.add_argument("--format", choices=("okx", "exporter"), default="okx", dest="line_format",
                        help="trade lines as OKX objects (okx) or as the vault exporter writes them (exporter)")
    parser.add_argument("--footprint", metavar="TICK",
                        help="also replay with --footprint TICK (and --cvd), beside the plain replay")
    args = parser.parse_args()

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="vstream-bench-"))
    rows: list[tuple[str, str]] = []

    def show(name: str, value: str) -> None:
        rows.append((name, value))
        print(f"{name:<44} {value}", flush=True)

    try:
        print(f"machine: {machine()}")
        vault = tmp / "vault"
        path = _raw_file(vault, INST)
        t0 = time.perf_counter()
        write_benchmark_file(path, INST, args.trades, line_format=args.line_format)
        size = path.stat().st_size
        print(f"data: {args.trades} {args.line_format} trade lines, {size / 1e6:.0f} MB, {size / args.trades:.0f} bytes/line "
              f"(generated in {time.perf_counter() - t0:.1f} s)\n")

        # The floor and the replay alternate, one of each per round, so that the ratio of a
        # round compares two runs made within seconds of each other: this machine's speed
        # drifts from minute to minute, and a floor timed before every replay run would
        # carry that drift into the ratio.
        floors: list[tuple[float, float]] = []
        runs: list[dict[str, Any]] = []
        lines = 0
        for _ in range(args.repeat):
            floor_one, floor_all_one, lines = decode_floor(path, 1, args.line_format)
            floors.append((floor_one, floor_all_one))
            runs += replay(vault, [INST], 1)
        floor = min(f for f, _ in floors)
        floor_all = min(a for _, a in floors)
        show("decode floor (decode calls only)", f"{lines / floor:>12,.0f} trades/s  {floor:6.2f} s")
        show("decode floor incl. reading the chunks", f"{lines / floor_all:>12,.0f} trades/s  {floor_all:6.2f} s")

        best = min(runs, key=lambda r: r["seconds"])
        show("replay --final (in process)", f"{lines / best['seconds']:>12,.0f} trades/s  {best['seconds']:6.2f} s")
        show("replay --final (wall, incl. interpreter)", f"{lines / best['wall']:>12,.0f} trades/s  {best['wall']:6.2f} s")
        show("replay / decode floor (best / best)", f"{best['seconds'] / floor:>12.2f} x")
        ratios = sorted(r["seconds"] / f for r, (f, _) in zip(runs, floors, strict=True))
        show("replay / decode floor, each round", "  ".join(f"{x:.2f}" for x in ratios) + " x")
        show("replay peak RSS", f"{max(r['maxrss_kb'] for r in runs) / 1024:>12.0f} MB")

        if args.footprint:
            variants = {
                "plain": [],
                f"--footprint {args.footprint}": ["--footprint", args.footprint],
                "--cvd": ["--cvd"],
                f"--footprint {args.footprint} --cvd": ["--footprint", args.footprint, "--cvd"],
            }
            timed = order_flow(vault, args.repeat, variants)
            plain = timed["plain"]
            for name, secs in timed.items():
                fastest = min(secs)
                cost = "  ".join(f"{s / p:.2f}" for s, p in zip(secs, plain, strict=True))
                show(f"replay {name}"[:44], f"{lines / fastest:>12,.0f} trades/s  {fastest:6.2f} s  (/ plain, each round: {cost} x)")

        if not args.no_multi:
            m = multi(tmp, args.trades // 2, args.repeat, args.line_format)
            show("2 instruments, replay --all (wall)", f"{m['trades'] / m['parallel']:>12,.0f} trades/s  {m['parallel']:6.2f} s")
            show("2 instruments, one after the other (wall)", f"{m['trades'] / m['sequential']:>12,.0f} trades/s  {m['sequential']:6.2f} s")
            show("2 instruments: speed-up, outputs identical", f"{m['sequential'] / m['parallel']:>12.2f} x  {m['identical']}")

        if not args.no_pandas:
            got = pandas_baseline(path, args.line_format)
            if isinstance(got, str):
                show("pandas read_json + resample", got)
            else:
                show("pandas read_json + resample", f"{lines / got[0]:>12,.0f} trades/s  {got[0]:6.2f} s")
                show("replay speed-up over pandas", f"{got[0] / best['seconds']:>12.1f} x")

        if not args.no_live:
            show("live: decode+assemble, median per trade", f"{live_path_cost(10, 2000):>12.1f} us (frames of 10)")
            got_live = asyncio.run(_live(200, 10, not args.no_bar_wait))
            show("live: receiving process CPU per trade", f"{got_live['cpu_us_per_trade']:>12.1f} us (mean; {got_live['trades']} of 2000 trades reached the assembler in 30 s)")
            if "bar_after_minute_end_s" in got_live:
                show("live: bar at sink after its minute ends", f"{got_live['bar_after_minute_end_s'] * 1000:>12.0f} ms (grace 2000 ms)")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
