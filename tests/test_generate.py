"""Tests for vstream.generate: the synthetic data must be valid, exact about its own bad
lines, and actually exercise every signal the analyzer computes.

The reader and bar maths here are an independent minimal reading of SPEC §3 and §5, so the
generator is checked against the contract rather than against the analyzer it feeds.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import re
import statistics
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pytest

from vstream.generate import (
    BUILTIN_PRICES,
    DEFAULT_START,
    INSTRUMENTS,
    Instrument,
    exporter_line,
    format_units,
    generate_vault,
    instrument,
    iter_trades,
    to_ms,
    trades_dir,
    write_benchmark_file,
    write_lines,
)

START = to_ms(DEFAULT_START)
TS_MIN = to_ms(datetime(2017, 1, 1, tzinfo=UTC))
KEYS = ["instId", "tradeId", "px", "sz", "side", "ts", "count", "source", "seqId"]
DECIMAL_RE = re.compile(r"^(0|[1-9]\d*)(\.\d*[1-9])?$")  # no exponent, sign or trailing zero


def _positive(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return False
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        return False
    return d.is_finite() and d > 0


def judge(t: Any, inst_id: str) -> str | None:
    """SPEC §3 trade rules; returns the reason for a reject or None."""
    if not isinstance(t, dict):
        return "not an object"
    if t.get("instId") != inst_id:
        return "instId"
    if not isinstance(t.get("tradeId"), str) or not t["tradeId"]:
        return "tradeId"
    if not _positive(t.get("px")) or not _positive(t.get("sz")):
        return "px/sz"
    if t.get("side") not in ("buy", "sell"):
        return "side"
    ts = t.get("ts")
    if isinstance(ts, str) and ts.isdigit():
        ts = int(ts)
    if not isinstance(ts, int) or isinstance(ts, bool):
        return "ts type"
    if not TS_MIN <= ts <= time.time() * 1000 + 86_400_000:
        return "ts range"
    return None


def assert_generated_shape(t: dict[str, Any], ins: Instrument) -> None:
    """Stricter than the SPEC: how this generator promises to print trades."""
    assert list(t) == KEYS
    assert all(isinstance(t[k], str) for k in KEYS[:-1]) and type(t["seqId"]) is int
    for key, decimals in (("px", ins.px_decimals), ("sz", ins.sz_decimals)):
        assert DECIMAL_RE.match(t[key]), t
        assert len(t[key].partition(".")[2]) <= decimals, t
    assert t["tradeId"].isdigit() and t["count"].isdigit() and int(t["count"]) >= 1
    assert t["source"] in ("0", "1")


def read_vault_files(paths: list[Path], inst_id: str) -> tuple[Counter[str], list[dict[str, Any]]]:
    """Replay files in name order with SPEC §3/§6 counting; return counters and accepted trades."""
    counts: Counter[str] = Counter()
    accepted: list[dict[str, Any]] = []
    open_minute, open_ids = -1, set[str]()

    def take(t: Any) -> None:
        nonlocal open_minute, open_ids
        if judge(t, inst_id) is not None:
            counts["rejects"] += 1
            return
        minute = int(t["ts"]) // 60_000
        if minute < open_minute:
            counts["late"] += 1
        elif minute == open_minute and t["tradeId"] in open_ids:
            counts["duplicates"] += 1
        else:
            if minute > open_minute:
                open_minute, open_ids = minute, set()
            open_ids.add(t["tradeId"])
            accepted.append(t)

    for path in sorted(paths, key=lambda p: p.name):
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        assert raw.endswith(b"\n")
        for line in raw.decode("utf-8").split("\n")[:-1]:
            if line.strip() == "":
                continue
            if line == "pong":
                counts["skipped"] += 1
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                counts["rejects"] += 1
                continue
            arg = obj.get("arg", {}) if isinstance(obj, dict) else {}
            if (
                isinstance(obj, dict)
                and "data" in obj
                and arg.get("channel") in ("trades", "trades-all")
            ):
                counts["envelopes"] += 1
                for t in obj["data"]:
                    take(t)
            elif isinstance(obj, dict) and ("event" in obj or "arg" in obj):
                counts["skipped"] += 1
            else:
                take(obj)
    return counts, accepted


def bars(trades: list[dict[str, Any]], ins: Instrument) -> list[dict[str, Any]]:
    """SPEC §5 bars with default settings, just the fields the signals need."""
    by_minute: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for t in trades:
        by_minute[int(t["ts"]) // 60_000].append(t)
    out: list[dict[str, Any]] = []
    for minute in sorted(by_minute):
        ts = sorted(by_minute[minute], key=lambda t: (int(t["ts"]), int(t["tradeId"])))
        notional = [ins.notional_usd(float(t["px"]), float(t["sz"])) for t in ts]
        buy = sum(n for n, t in zip(notional, ts, strict=True) if t["side"] == "buy")
        total = sum(notional)
        o, c = float(ts[0]["px"]), float(ts[-1]["px"])
        pct = (c - o) / o * 100
        delta = 2 * buy - total
        prev = [b["total"] for b in out[-100:]]
        bar: dict[str, Any] = {"minute": minute, "total": total, "pct": pct, "delta": delta,
                               "n": len(ts), "whales": sum(n >= 100_000 for n in notional),
                               "tier": None, "absorption": False, "divergence": None,
                               "px_counts": Counter(t["px"] for t in ts)}  # fmt: skip
        if len(prev) >= 20:
            r = total / statistics.median(prev)
            bar["tier"] = "T1" if r < 0.5 else "T2" if r < 1 else "T3" if r <= 2 else "T4"
            bar["absorption"] = r > 2.0 and abs(pct) < 0.1
        if abs(pct) >= 0.1 and abs(delta) >= 0.1 * total and pct * delta < 0:
            bar["divergence"] = "bearish" if pct > 0 else "bullish"
        out.append(bar)
    return out


def test_iter_trades_is_deterministic_and_seeded() -> None:
    a = list(iter_trades("BTC-USDT-SWAP", start_ms=START, minutes=30, seed=7))
    b = list(iter_trades("BTC-USDT-SWAP", start_ms=START, minutes=30, seed=7))
    c = list(iter_trades("BTC-USDT-SWAP", start_ms=START, minutes=30, seed=8))
    assert a == b and a != c and len(a) > 500


def test_ids_increase_ts_never_decreases_and_sweeps_share_ts() -> None:
    trades = list(iter_trades("ETH-USDT-SWAP", start_ms=START + 123, minutes=120, seed=3))
    ids = [int(t["tradeId"]) for t in trades]
    seqs = [int(t["seqId"]) for t in trades]
    stamps = [int(t["ts"]) for t in trades]
    assert all(x < y for x, y in itertools.pairwise(ids))
    assert all(x < y for x, y in itertools.pairwise(seqs))
    assert stamps == sorted(stamps)
    assert stamps[0] >= START + 123 and stamps[0] // 60_000 == (START + 60_000) // 60_000
    shared = Counter(stamps)
    assert sum(1 for n in shared.values() if n >= 3) > 100  # takers sweeping several levels
    ins = instrument("ETH-USDT-SWAP")
    for t in trades:
        assert judge(t, "ETH-USDT-SWAP") is None
        assert_generated_shape(t, ins)


@pytest.mark.parametrize("inst_id", sorted(INSTRUMENTS))
def test_every_preset_prints_like_okx(inst_id: str) -> None:
    ins = instrument(inst_id)
    trades = list(iter_trades(inst_id, start_ms=START, minutes=20, seed=1))
    assert trades
    for t in trades:
        assert judge(t, inst_id) is None
        assert_generated_shape(t, ins)
    assert abs(float(trades[0]["px"]) / BUILTIN_PRICES[inst_id] - 1) < 0.02
    sizes = [str(t["sz"]) for t in trades]
    if ins.market == "spot":
        assert ins.sz_decimals > 0 and any("." in s for s in sizes)  # coin, e.g. "0.00215"
    else:
        assert all(s.isdigit() for s in sizes)  # whole contracts


def test_format_units_and_lookup() -> None:
    assert format_units(601234, 1) == "60123.4"
    assert format_units(600000, 1) == "60000"
    assert format_units(215000, 8) == "0.00215"
    assert format_units(35001, 5) == "0.35001"
    assert format_units(12, 0) == "12"
    with pytest.raises(KeyError, match="known"):
        instrument("NOPE-USDT-SWAP")


def test_vault_paths_per_market(tmp_path: Path) -> None:
    assert trades_dir(tmp_path, "BTC-USDT-SWAP") == tmp_path / "raw/okx/trades_perps/BTC-USDT-SWAP"
    assert trades_dir(tmp_path, "BTC-USDT") == tmp_path / "raw/okx/trades_spot/BTC-USDT"
    assert (
        trades_dir(tmp_path, "BTC-USD-250627") == tmp_path / "raw/okx/trades_futures/BTC-USD-250627"
    )
    rep = generate_vault(tmp_path, instruments=("BTC-USDT", "BTC-USD-250627"), hours=0.5)
    for inst_id, r in rep.instruments.items():
        assert r.files and all(p.parent == trades_dir(tmp_path, inst_id) for p in r.files)


def test_counts_match_report_and_nothing_good_is_lost(tmp_path: Path) -> None:
    rep = generate_vault(tmp_path, hours=6, seed=1, gzip_old_days=True)
    assert set(rep.instruments) == {"BTC-USDT-SWAP", "ETH-USDT-SWAP"}
    for inst_id, r in rep.instruments.items():
        counts, accepted = read_vault_files(r.files, inst_id)
        assert counts["rejects"] == r.bad_lines >= 10
        assert counts["skipped"] == r.control_lines >= 1
        assert counts["envelopes"] == r.envelope_lines > 0
        assert counts["duplicates"] == r.duplicate_lines == 1
        assert counts["late"] == r.late_lines == 1
        expected = list(iter_trades(inst_id, start_ms=START, minutes=360, seed=1))
        assert accepted == expected and r.trades == len(expected) == rep.instruments[inst_id].trades
        assert r.first_ts == int(expected[0]["ts"]) and r.last_ts == int(expected[-1]["ts"])
    assert rep.trades == sum(r.trades for r in rep.instruments.values())


def test_split_at_utc_midnight_and_gzip_old_days(tmp_path: Path) -> None:
    rep = generate_vault(tmp_path, instruments=("BTC-USDT-SWAP",), start=datetime(2025, 3, 9, 23, 30),
                         hours=1, gzip_old_days=True)  # fmt: skip
    r = rep.instruments["BTC-USDT-SWAP"]
    assert [p.name for p in r.files] == ["2025-03-09.jsonl.gz", "2025-03-10.jsonl"]
    for path in r.files:
        day = datetime.strptime(path.name[:10], "%Y-%m-%d").replace(tzinfo=UTC)
        lo = to_ms(day)
        _, accepted = read_vault_files([path], "BTC-USDT-SWAP")
        assert accepted and all(lo <= int(t["ts"]) < lo + 86_400_000 for t in accepted)
    # regenerating without gzip replaces the archive instead of leaving both forms behind
    generate_vault(
        tmp_path, instruments=("BTC-USDT-SWAP",), start=datetime(2025, 3, 9, 23, 30), hours=1
    )
    names = sorted(p.name for p in trades_dir(tmp_path, "BTC-USDT-SWAP").iterdir())
    assert names == ["2025-03-09.jsonl", "2025-03-10.jsonl"]


def test_vault_is_byte_identical_for_a_seed(tmp_path: Path) -> None:
    def files(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
        }

    generate_vault(tmp_path / "a", hours=2, start=datetime(2025, 1, 1, 23, 0), gzip_old_days=True)
    generate_vault(tmp_path / "b", hours=2, start=datetime(2025, 1, 1, 23, 0), gzip_old_days=True)
    generate_vault(
        tmp_path / "c", hours=2, start=datetime(2025, 1, 1, 23, 0), gzip_old_days=True, seed=2
    )
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b and a.keys() == c.keys() and a != c


def test_layout_options_do_not_change_the_trades(tmp_path: Path) -> None:
    kw: dict[str, Any] = {"start_ms": START, "minutes": 90, "seed": 5}
    clean = write_lines(
        tmp_path / "clean", "SOL-USDT-SWAP", bad_lines=False, envelope_fraction=0.0, **kw
    )
    noisy = write_lines(tmp_path / "noisy", "SOL-USDT-SWAP", envelope_fraction=0.5, **kw)
    assert clean.bad_lines == clean.envelope_lines == clean.duplicate_lines == clean.late_lines == 0
    assert noisy.bad_lines > 0 and noisy.envelope_lines > 0
    c_counts, c_trades = read_vault_files(clean.files, "SOL-USDT-SWAP")
    n_counts, n_trades = read_vault_files(noisy.files, "SOL-USDT-SWAP")
    assert c_trades == n_trades == list(iter_trades("SOL-USDT-SWAP", **kw))
    assert c_counts["rejects"] == 0 and n_counts["rejects"] == noisy.bad_lines


def test_short_run_still_writes_every_bad_kind(tmp_path: Path) -> None:
    r = write_lines(tmp_path, "BTC-USDT-SWAP", start_ms=START, minutes=3, seed=1)
    counts, _ = read_vault_files(r.files, "BTC-USDT-SWAP")
    assert counts["rejects"] == r.bad_lines == 10
    assert counts["duplicates"] == r.duplicate_lines == 1 and counts["late"] == r.late_lines == 1


@pytest.mark.parametrize("inst_id", ["BTC-USDT-SWAP", "ETH-USDT-SWAP"])
def test_every_signal_kind_occurs_after_warmup(inst_id: str) -> None:
    ins = instrument(inst_id)
    trades = list(iter_trades(inst_id, start_ms=START, minutes=360, seed=1))
    bs = bars(trades, ins)
    assert len(bs) < 360  # some minutes have no trades at all
    warm = bs[20:]
    assert {b["tier"] for b in warm} == {"T1", "T2", "T3", "T4"}
    assert any(b["absorption"] for b in warm)
    assert {b["divergence"] for b in warm} >= {"bullish", "bearish"}
    assert sum(b["whales"] for b in warm) > 0
    assert max(b["n"] for b in bs) > 5 * statistics.median(b["n"] for b in bs)  # bursty
    # absorption as a trader sees it: heavy prints at one unchanged level
    assert any(b["absorption"] and b["n"] >= 100 and b["px_counts"].most_common(1)[0][1] >= 0.6 * b["n"]
               for b in warm)  # fmt: skip


def test_whale_trades_clear_the_threshold() -> None:
    ins = instrument("ETH-USDT-SWAP")
    notional = [ins.notional_usd(float(t["px"]), float(t["sz"]))
                for t in iter_trades(ins, start_ms=START, minutes=120, seed=2, whale_prob=0.5)]  # fmt: skip
    whales = [n for n in notional if n >= 100_000]
    assert len(whales) >= 30 and max(notional) < 6e6


def test_benchmark_file_is_valid_and_deterministic(tmp_path: Path) -> None:
    path = tmp_path / "bench.jsonl"
    assert write_benchmark_file(path, "BTC-USDT-SWAP", 200_000, 1) == 200_000
    lines = path.read_text("utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 200_001
    ins = instrument("BTC-USDT-SWAP")
    prev_id, prev_ts = -1, -1
    for line in lines[:-1]:
        t = json.loads(line)
        assert judge(t, "BTC-USDT-SWAP") is None
        assert_generated_shape(t, ins)
        assert int(t["tradeId"]) > prev_id and int(t["ts"]) >= prev_ts
        prev_id, prev_ts = int(t["tradeId"]), int(t["ts"])
    write_benchmark_file(tmp_path / "again.jsonl", "BTC-USDT-SWAP", 200_000, 1)
    assert (tmp_path / "again.jsonl").read_bytes() == path.read_bytes()
    write_benchmark_file(tmp_path / "spot.jsonl", "BTC-USDT", 1000, 1)
    for line in (tmp_path / "spot.jsonl").read_text("utf-8").splitlines():
        assert judge(json.loads(line), "BTC-USDT") is None
    assert math.isclose(float(json.loads(line)["px"]), 60000, rel_tol=0.01)


def test_exporter_benchmark_file_holds_the_same_trades_as_exporter_lines(tmp_path: Path) -> None:
    okx, ex = tmp_path / "okx.jsonl", tmp_path / "ex.jsonl"
    assert write_benchmark_file(okx, "BTC-USDT-SWAP", 5000, 3) == 5000
    assert write_benchmark_file(ex, "BTC-USDT-SWAP", 5000, 3, line_format="exporter") == 5000
    ins = instrument("BTC-USDT-SWAP")
    data = ex.read_bytes()
    assert data.endswith(b"\r\n") and data.count(b"\r\n") == 5000
    for a, b in zip(okx.read_bytes().splitlines(), data.split(b"\r\n"), strict=False):
        t = json.loads(a)
        # each line is exactly what the exporter writes of that trade
        assert b == exporter_line(ins, {k: v for k, v in t.items() if k != "count"})


def test_exporter_lines_are_json_dumps_of_the_twelve_keys() -> None:
    ins = instrument("ETH-USD-SWAP")
    t = {"instId": "ETH-USD-SWAP", "tradeId": "42", "px": "3000.25", "sz": "7", "side": "sell", "ts": "1735765200123"}
    line = exporter_line(ins, t)
    assert line == json.dumps(
        {"timestamp_utc": "2025-01-01T21:00:00.123000Z", "exchange": "okx", "market": "perp", "instId": "ETH-USD-SWAP",
         "symbol_canon": "ETH/USD", "trade_id": "42", "side": "sell", "price": "3000.25", "qty_contracts": "7.0",
         "ctVal": "10", "ctMult": "1", "ctType": "inverse"}
    ).encode()  # fmt: skip


def test_exporter_vault_has_the_exporters_meta_files_and_same_trades(tmp_path: Path) -> None:
    okx = generate_vault(tmp_path / "okx", instruments=("BTC-USDT-SWAP",), hours=1, seed=2)
    ex = generate_vault(tmp_path / "ex", instruments=("BTC-USDT-SWAP",), hours=1, seed=2, line_format="exporter")
    a, b = okx.instruments["BTC-USDT-SWAP"], ex.instruments["BTC-USDT-SWAP"]
    assert (a.trades, a.bad_lines, a.duplicate_lines, a.late_lines) == (b.trades, b.bad_lines, b.duplicate_lines, b.late_lines)
    assert b.control_lines == 0 and b.envelope_lines == 0
    meta = json.loads((tmp_path / "ex" / "meta" / "okx" / "instruments" / "BTC-USDT-SWAP.json").read_text())
    assert meta["instId"] == "BTC-USDT-SWAP" and meta["normalized"] == {
        "ctVal": "0.01", "ctMult": "1", "ctType": "linear", "tickSz": "0.1", "lotSz": "1"
    }  # fmt: skip
    with pytest.raises(ValueError, match="line_format"):
        generate_vault(tmp_path / "x", instruments=("BTC-USDT-SWAP",), hours=1, line_format="csv")
