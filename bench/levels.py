"""``python -m bench.levels``: how long ``vstream levels`` takes over a year of 1m footprint bars.

The bench writes its own bar file (in a temporary vault, removed unless ``--keep``): 525,600
one-minute BTC-USDT-SWAP bars (a year), each encoded from :class:`vstream.assembler.Bar` with
a footprint of tick 10 computed by :func:`vstream.assembler.footprint_of` from random levels
(a random walk around 60,000 moving about $25 a minute: typically 3-12 levels a bar, about
900 bytes a line, as replay writes them). No state file: the whole file is durable. Nothing is
asserted; figures are printed (docs/levels.md).

What is measured, exactly (best of ``--repeat``):

* **decode floor** — the same file read in the same 8 MiB pieces and decoded by the same
  ``Decoder(_Row).decode_lines`` into the Struct of the five keys the scan reads of every line; nothing else.
* **scan** — :func:`vstream.levels.scan_levels`: the whole file, every poor high and low with
  its first touch, in process.
* **untouched** — :func:`vstream.levels.find_levels` with ``untouched=True``, the whole file,
  in process (what ``levels --untouched`` does before printing).
* **command** — ``vstream levels --instId ... --untouched --json`` and ``... --untouched --age
  0m..24h`` in a fresh process: wall clock, interpreter start and imports included.
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import msgspec

from vstream.assembler import MICRO, Bar, footprint_of
from vstream.instruments import VaultPaths
from vstream.levels import _chunks, find_levels, scan_levels

INST = "BTC-USDT-SWAP"
YEAR = 525_600
START_MINUTE = 1_735_689_600 // 60  # 2025-01-01T00:00:00Z
T = TypeVar("T")


def write_bars(path: Path, count: int, seed: int = 1) -> int:
    """Write ``count`` 1m footprint bars to ``path``; return its size in bytes."""
    rng = random.Random(seed)
    encoder = msgspec.json.Encoder()
    price = 60_000.0
    day_prefix = ""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        lines: list[bytes] = []
        for i in range(count):
            minute = START_MINUTE + i
            if minute % 1440 == 0 or not day_prefix:
                day_prefix = time.strftime("%Y-%m-%dT", time.gmtime(minute * 60))
            o = price
            c = max(1000.0, o + rng.gauss(0, 25))
            hi = max(o, c) + abs(rng.gauss(0, 12))
            lo = min(o, c) - abs(rng.gauss(0, 12))
            price = c
            book: dict[int, list[int]] = {}
            for level in range(int(lo // 10), int(hi // 10) + 1):
                buy = rng.choice((0, rng.randrange(1, 300_000))) * MICRO
                sell = rng.choice((0, rng.randrange(1, 300_000))) * MICRO
                book[level] = [buy or (MICRO if not sell else 0), sell, rng.randrange(1, 30)]
            fp = footprint_of(book, (10, 1))
            buy_total = sum(cell[0] for cell in book.values()) // MICRO
            sell_total = sum(cell[1] for cell in book.values()) // MICRO
            bar = Bar(
                timestamp_utc="%s%02d:%02d:00Z" % (day_prefix, minute % 1440 // 60, minute % 60),
                instId=INST, exchange="okx", market="perp",
                open=f"{o:.1f}", high=f"{hi:.1f}", low=f"{lo:.1f}", close=f"{c:.1f}",
                price_change_pct="%+.2f" % ((c - o) / o * 100), total_volume=str(buy_total + sell_total),
                buy_volume=str(buy_total), sell_volume=str(sell_total), delta="%+d" % (buy_total - sell_total),
                whale_volume="0", whale_count=0, trade_count=sum(cell[2] for cell in book.values()),
                volume_tier="T2", absorption=False, divergence=False, divergence_type=None,
                volume_ratio="0.93", fill_count=150,
                footprint=fp.levels, poc=fp.poc, vah=fp.vah, val=fp.val, imbalances=fp.imbalances,
                stacked=fp.stacked, poor_high=fp.poor_high, poor_low=fp.poor_low,
            )  # fmt: skip
            lines.append(encoder.encode(bar))
            if len(lines) >= 10_000:
                out.write(b"\n".join(lines) + b"\n")
                lines.clear()
        if lines:
            out.write(b"\n".join(lines) + b"\n")
    return path.stat().st_size


def _best(repeat: int, fn: Callable[[], T]) -> tuple[float, float, T]:
    """Best wall clock and best CPU time (this process and its children) of ``repeat`` calls,
    and the last result. On a shared machine the CPU time is the steadier of the two."""
    wall = cpu = float("inf")
    result: T | None = None
    for _ in range(repeat):
        before = _cpu()
        started = time.perf_counter()
        result = fn()
        wall = min(wall, time.perf_counter() - started)
        cpu = min(cpu, _cpu() - before)
    assert result is not None
    return wall, cpu, result


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.levels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bars", type=int, default=YEAR, help=f"1m bars to write ({YEAR}: a year)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best is given (3)")
    parser.add_argument("--keep", metavar="DIR", help="write the vault here and keep it")
    args = parser.parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="vstream-bench-levels-"))
    vault = root / "Vault"
    paths = VaultPaths.of(vault, INST)
    try:
        target = paths.output("1m")
        if target.exists() and target.stat().st_size > 0 and args.keep:
            size = target.stat().st_size
            print(f"reusing {target} ({size / 1e6:.0f} MB)")
        else:
            started = time.perf_counter()
            size = write_bars(target, args.bars)
            print(f"wrote {args.bars} bars, {size / 1e6:.0f} MB ({size / args.bars:.0f} bytes a bar) "
                  f"in {time.perf_counter() - started:.0f} s")  # fmt: skip
        n = args.bars

        def floor() -> int:
            return sum(len(rows) for rows in _chunks(target, 0, size))

        figures: list[tuple[str, float, float, str]] = []
        wall, cpu, rows = _best(args.repeat, floor)
        figures.append(("decode floor (the five keys every row needs, decode_lines)", wall, cpu, f"{rows} rows"))
        wall, cpu, scan = _best(args.repeat, lambda: scan_levels(paths))
        levels = scan.levels
        figures.append(("scan_levels: every poor high/low and its first touch", wall, cpu,
                        f"{len(levels)} levels, {sum(not lv.touched for lv in levels)} untouched"))  # fmt: skip
        wall, cpu, found = _best(args.repeat, lambda: find_levels(paths, untouched=True, tick=10))
        figures.append(("find_levels(untouched=True)", wall, cpu, f"{len(found)} levels"))
        for extra in (["--untouched", "--json"], ["--untouched", "--age", "0m..24h", "--json"]):
            command = [sys.executable, "-m", "vstream", "levels", "--instId", INST, "--vault", str(vault), *extra]

            def run(command: list[str] = command) -> int:
                done = subprocess.run(command, capture_output=True, check=True)
                return done.stdout.count(b"\n")

            wall, cpu, lines = _best(args.repeat, run)
            figures.append((f"vstream levels {' '.join(extra)} (process start included)", wall, cpu,
                            f"{lines} lines"))  # fmt: skip
        print(f"{n} bars, {size / 1e6:.0f} MB; best of {args.repeat}: wall clock, CPU time")
        width = max(len(name) for name, _, _, _ in figures)
        for name, wall, cpu, note in figures:
            print(f"  {name:<{width}}  {wall:6.3f} s  {cpu:6.3f} s cpu  {n / wall / 1e6:5.2f} M bars/s  {note}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
