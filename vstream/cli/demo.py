"""``vstream demo``: a sample vault from the project's own generator, replayed and summarised."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec

from ..assembler import Bar
from ..errors import ConfigError
from ..generate import LINE_FORMATS, generate_vault
from ..instruments import VaultPaths
from ..settings import Settings
from .common import positive_number, shell_quote
from .replay import replay_one

DEMO_INSTRUMENTS = ("BTC-USDT-SWAP", "ETH-USDT-SWAP")


def register_demo(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the ``demo`` subcommand."""
    demo = sub.add_parser(
        "demo",
        help="generate a sample vault, replay it and show what was found",
        description="Generate a sample vault (two instruments, some bad lines), replay it with "
        "--final and summarise what the bars show.",
    )
    demo.add_argument("--vault", metavar="P", help="where to write the sample vault (default: a new temporary folder)")
    demo.add_argument("--hours", type=positive_number, default=6.0, help="hours of trades to generate (6)")
    demo.add_argument("--seed", type=int, default=7, help="random seed (7)")
    demo.add_argument(
        "--format", choices=LINE_FORMATS, default="okx", dest="line_format",
        help="trade lines as OKX sends them (okx), or as the trades exporter writes a vault "
        "(exporter: its CRLF lines and meta/okx/instruments files)",
    )  # fmt: skip

    demo.set_defaults(handler=run_demo)



def read_bars(path: Path) -> list[Bar]:
    """Every bar of an output file."""
    decoder = msgspec.json.Decoder(Bar)
    with open(path, "rb") as handle:
        return [decoder.decode(line) for line in handle if line.strip()]


def describe(inst_id: str, bars: list[Bar]) -> list[str]:
    """A few lines saying what the bars of one instrument show."""
    tiers = Counter(b.volume_tier or "warm-up" for b in bars)
    lines = [
        f"  {inst_id}: {len(bars)} bars, {bars[0].timestamp_utc} .. {bars[-1].timestamp_utc}"
        if bars
        else f"  {inst_id}: no bars",
        "    tiers: " + ", ".join(f"{k}={tiers[k]}" for k in ("T1", "T2", "T3", "T4", "warm-up") if tiers[k]),
        f"    absorption={sum(b.absorption for b in bars)}"
        f" bearish divergence={sum(b.divergence_type == 'bearish' for b in bars)}"
        f" bullish divergence={sum(b.divergence_type == 'bullish' for b in bars)}"
        f" whale trades={sum(b.whale_count for b in bars)}",
    ]
    marked = [b for b in bars if b.absorption or b.divergence or b.volume_tier == "T4"][:3]
    for bar in marked:
        tags = [t for t, on in (("T4", bar.volume_tier == "T4"), ("absorption", bar.absorption),
                                (f"{bar.divergence_type} divergence", bar.divergence)) if on]
        lines.append(
            f"    {bar.timestamp_utc} close {bar.close} ({bar.price_change_pct}%) volume ${bar.total_volume}"
            f" delta {bar.delta} ratio {bar.volume_ratio}: {', '.join(tags)}"
        )
    return lines


def _require_empty(folder: Path) -> None:
    """The demo writes sample trades over day files: never into a folder holding anything."""
    for path in (folder, *folder.parents):
        if path.is_file():  # not "is not empty": a file is not a folder at all
            where = "is a file" if path == folder else f"cannot be made: {path} is a file"
            raise ConfigError(
                f"demo: --vault {folder} {where}; give a new or empty folder, "
                f"or leave out --vault for a temporary one"
            )
        if path.is_dir():
            break
    try:
        empty = not any(folder.iterdir())
    except FileNotFoundError:
        return
    except NotADirectoryError:
        empty = False
    except OSError as exc:
        raise ConfigError(f"demo: cannot use {folder}: {exc.strerror or exc}") from exc
    if not empty:
        raise ConfigError(
            f"demo: {folder} is not empty (it may hold a vault); give a new or empty folder, "
            f"or leave out --vault for a temporary one"
        )


async def run_demo(args: argparse.Namespace) -> int:
    """Generate, replay, summarise; print where the files are."""
    vault = Path(args.vault) if args.vault else Path(tempfile.mkdtemp(prefix="vstream-demo-"))
    if args.vault:
        await asyncio.to_thread(_require_empty, vault)
    report = await asyncio.to_thread(
        generate_vault, vault, instruments=DEMO_INSTRUMENTS, hours=args.hours, seed=args.seed,
        line_format=args.line_format,
    )
    print(f"sample vault: {shell_quote(str(vault))}")
    for inst_id, rep in report.instruments.items():
        print(
            f"  {inst_id}: {rep.trades} trades in {len(rep.files)} day files, "
            f"{rep.bad_lines} bad lines, {rep.control_lines} control messages"
            + (" (exporter lines)" if args.line_format == "exporter" else "")
        )
    print("replay --final:")
    settings = Settings()
    lines = await asyncio.gather(
        *(replay_one(vault, i, settings, final=True, rebuild=True, strict=False) for i in DEMO_INSTRUMENTS)
    )
    for line in lines:
        print("  " + line)
    print("what the bars show:")
    for inst_id in DEMO_INSTRUMENTS:
        paths = VaultPaths.of(vault, inst_id)
        for line in describe(inst_id, read_bars(paths.output())):
            print(line)
        print(f"    bars: {shell_quote(str(paths.output()))}")
        print(f"    rejects: {shell_quote(str(paths.rejects))}")
    # Quoted for the shell it is pasted into: a vault path may hold a space ("M.R Bear").
    print(f"next: vstream replay --all --vault {shell_quote(str(vault))}")
    return 0
