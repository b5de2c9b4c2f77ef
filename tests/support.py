"""Helpers shared by the tests (importable as ``support`` thanks to tests/conftest.py)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: ../shared/data/real beside the checkout (never copied into the repository).
REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


def trade_line(tid: int, px: str, sz: str, side: str, ts: int, inst: str = "BTC-USDT-SWAP", **extra: Any) -> str:
    """One flat OKX trade object as a JSON line (no newline)."""
    return json.dumps(
        {"instId": inst, "tradeId": str(tid), "px": px, "sz": sz, "side": side, "ts": str(ts), **extra},
        separators=(",", ":"),
    )


def exporter_line(
    tid: int, px: str, sz: str, side: str, ts: int, inst: str = "BTC-USDT-SWAP", ct_val: str = "0.01", **extra: Any
) -> str:
    """One trade line as the vault's trades exporter writes it (no newline): json.dumps with
    its default separators, its twelve keys in its order, every value a string."""
    from datetime import UTC, datetime, timedelta

    stamp = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ts)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    base, quote = inst.split("-")[:2]
    inverse = quote not in ("USDT", "USDC") and inst.count("-") == 2
    return json.dumps(
        {"timestamp_utc": stamp, "exchange": "okx", "market": "spot" if inst.count("-") == 1 else "perp",
         "instId": inst, "symbol_canon": f"{base}/{quote}", "trade_id": str(tid), "side": side,
         "price": px, "qty_contracts": sz, "ctVal": ct_val, "ctMult": "1",
         "ctType": "inverse" if inverse else "linear", **extra}
    )  # fmt: skip


def write_lines(path: Path, lines: Iterable[str], newline: str = "\n") -> None:
    """Write ``lines``, each followed by ``newline``."""
    path.write_bytes("".join(line + newline for line in lines).encode())


def windows_argv(line: str) -> list[str]:
    """Split a command line as the Microsoft C runtime (CommandLineToArgvW) does: the rules
    a Windows program such as ``vstream.exe`` gets its arguments by."""
    args: list[str] = []
    word: list[str] = []
    quoted = started = False
    i = 0
    while i < len(line):
        c = line[i]
        if c == "\\":
            n = len(line[i:]) - len(line[i:].lstrip("\\"))
            i += n
            if i < len(line) and line[i] == '"':
                word.append("\\" * (n // 2))
                if n % 2:
                    word.append('"')
                    i += 1
            else:
                word.append("\\" * n)
            started = True
            continue
        if c == '"':
            quoted = not quoted
            started = True
        elif c in " \t" and not quoted:
            if started:
                args.append("".join(word))
            word, started = [], False
        else:
            word.append(c)
            started = True
        i += 1
    if started:
        args.append("".join(word))
    return args
