"""Higher timeframes (5m, 15m, 1h): right bars, own signal windows, resumable, fingerprinted.

The main oracle needs no second implementation: squeeze time by N around an N-minute
boundary (``ts' = B + (ts - B) // N``) and every N-minute period becomes one minute, with the
trades in the same order. The 1m bars of the squeezed trades must then equal the N-minute
bars of the original ones in every field (OHLC, volumes, whales, counts, tier, ratio,
absorption, divergence), because each series' median window is over its own previous bars.
"""

from __future__ import annotations

import json
import random
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from vstream.assembler import BarAssembler
from vstream.cli import main
from vstream.generate import generate_vault
from vstream.instruments import VaultPaths, resolve
from vstream.settings import Settings
from vstream.trades import Trade

BTC = "BTC-USDT-SWAP"
ALL = "1m,5m,15m,1h"


def replay(vault: Path, *extra: str) -> int:
    return main(["-q", "replay", "--instId", BTC, "--vault", str(vault), *extra])


def bars(vault: Path, tf: str = "1m") -> list[dict[str, Any]]:
    path = VaultPaths.of(vault, BTC).output(tf)
    return [json.loads(line) for line in path.read_text().splitlines()]


def trades_of(vault: Path) -> list[dict[str, Any]]:
    """Every trade object in the raw files (clean vaults only: no bad lines)."""
    out = []
    for path in sorted(VaultPaths.of(vault, BTC).raw_dir.iterdir()):
        for line in path.read_text().splitlines():
            obj = json.loads(line) if line.startswith("{") else None
            if not isinstance(obj, dict):
                continue
            if obj.get("arg", {}).get("channel") in ("trades", "trades-all") and "data" in obj:
                out.extend(obj["data"])
            elif "tradeId" in obj:
                out.append(obj)
    return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    vault = tmp_path_factory.mktemp("tf") / "Vault"
    # 30 hours: 1h bars get past their 20-bar warm-up; 15m/5m bars fill their 100-bar windows.
    generate_vault(vault, instruments=(BTC,), hours=30, seed=11, bad_lines=False, trades_per_minute=12)
    assert replay(vault, "--final", "--timeframes", ALL) == 0
    return vault


def _stamp(minute: int) -> str:
    return datetime.fromtimestamp(minute * 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(("tf", "n"), [("5m", 5), ("15m", 15), ("1h", 60)])
def test_higher_bars_equal_1m_bars_of_time_squeezed_trades(clean: Path, tmp_path: Path, tf: str, n: int) -> None:
    trades = trades_of(clean)
    trades.sort(key=lambda t: (int(t["ts"]), int(t["tradeId"])))
    ids = [int(t["tradeId"]) for t in trades]
    assert ids == sorted(ids)  # ids follow time, so squeezing time keeps the (ts, id) order
    period_ms = n * 60_000
    base = int(trades[0]["ts"]) // period_ms * period_ms
    squeezed = tmp_path / "Vault"
    raw = VaultPaths.of(squeezed, BTC).raw_dir
    raw.mkdir(parents=True)
    with (raw / "2025-01-01.jsonl").open("w") as handle:
        for t in trades:
            t2 = dict(t, ts=str(base + (int(t["ts"]) - base) // n))
            handle.write(json.dumps(t2) + "\n")
    assert replay(squeezed, "--final") == 0
    higher = bars(clean, tf)
    oracle = bars(squeezed)
    assert len(higher) == len(oracle) > 20
    assert sum(b["volume_tier"] is not None for b in higher) > 5
    for got, want in zip(higher, oracle, strict=True):
        minute = _minute_of(want["timestamp_utc"])
        base_min = base // 60_000
        assert got["timestamp_utc"] == _stamp(base_min + (minute - base_min) * n)
        assert got.pop("timeframe") == tf
        got["timestamp_utc"] = want["timestamp_utc"]
        assert got == want
        assert list(got) == list(want)  # same fields in the same order


def _minute_of(stamp: str) -> int:
    return int(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()) // 60


def test_higher_bars_aggregate_their_1m_bars(clean: Path) -> None:
    ones = bars(clean)
    for tf, n in (("5m", 5), ("15m", 15), ("1h", 60)):
        groups: dict[int, list[dict[str, Any]]] = {}
        for b in ones:
            minute = _minute_of(b["timestamp_utc"])
            groups.setdefault(minute - minute % n, []).append(b)
        higher = bars(clean, tf)
        assert [_minute_of(b["timestamp_utc"]) for b in higher] == sorted(groups)
        for bar in higher:
            inside = groups[_minute_of(bar["timestamp_utc"])]
            assert bar["open"] == inside[0]["open"] and bar["close"] == inside[-1]["close"]
            assert float(bar["high"]) == max(float(b["high"]) for b in inside)
            assert float(bar["low"]) == min(float(b["low"]) for b in inside)
            for key in ("trade_count", "fill_count", "whale_count"):
                assert bar[key] == sum(b[key] for b in inside), (tf, bar["timestamp_utc"], key)
            for key in ("total_volume", "buy_volume", "sell_volume", "whale_volume"):
                # Rounded once from exact sums, so within half a dollar per 1m bar of the sum.
                assert abs(int(bar[key]) - sum(int(b[key]) for b in inside)) <= len(inside)


def test_each_timeframe_has_its_own_median_window() -> None:
    settings = Settings(timeframes=("1m", "5m"), min_history=1, median_window=2)
    asm = BarAssembler(resolve(BTC), settings)
    t0 = 1735689600000  # 2025-01-01T00:00Z, a 5m boundary

    def trade(i: int, minute: int, sz: str) -> Trade:
        return Trade(instId=BTC, tradeId=str(i), px="100000", sz=float(sz), side="buy", ts=t0 + minute * 60_000 + i)

    # 5m period 0: one minute of 1 contract ($1000); period 1: five minutes of 1 contract.
    out = asm.feed([trade(1, 0, "1")] + [trade(10 + m, 5 + m, "1") for m in range(5)] + [trade(99, 10, "1")])
    out += asm.close()
    five = [b for b in out if b.timeframe == "5m"]
    one = [b for b in out if b.timeframe != "5m"]
    assert [b.total_volume for b in five] == ["1000", "5000", "1000"]
    # 5m: 5000 against its own previous bar (1000) is r=5 -> T4; then 1000 vs median(1000, 5000).
    assert [b.volume_tier for b in five] == [None, "T4", "T1"]
    assert [b.volume_ratio for b in five] == [None, "5.00", "0.33"]
    # The 1m bars of equal size are all T3 against their own (1m) window.
    assert {b.volume_tier for b in one[1:]} == {"T3"}


def _grow_and_replay(source: Path, target: Path, cuts: list[float]) -> None:
    """Copy ``source``'s raw files into ``target`` byte by byte in steps, replaying after each."""
    src = sorted(VaultPaths.of(source, BTC).raw_dir.iterdir())
    data = [(p.name, p.read_bytes()) for p in src]
    total = sum(len(d) for _, d in data)
    raw = VaultPaths.of(target, BTC).raw_dir
    raw.mkdir(parents=True, exist_ok=True)
    for cut in [*sorted(cuts), 1.0]:
        left = int(total * cut)
        for name, blob in data:
            part = blob[: max(0, min(len(blob), left))]
            left -= len(blob)
            if part:
                (raw / name).write_bytes(part)
        assert replay(target, "--timeframes", ALL) == 0
    assert replay(target, "--final", "--timeframes", ALL) == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_runs_cut_anywhere_are_byte_identical_to_one_final_run(tmp_path: Path, seed: int) -> None:
    source = tmp_path / "source"
    generate_vault(source, instruments=(BTC,), hours=7, seed=seed, trades_per_minute=15)  # bad lines included
    assert replay(source, "--final", "--timeframes", ALL) == 0
    rng = random.Random(seed)
    target = tmp_path / "target"
    _grow_and_replay(source, target, [rng.random() for _ in range(8)])
    for tf in ("1m", "5m", "15m", "1h"):
        want = VaultPaths.of(source, BTC).output(tf).read_bytes()
        assert VaultPaths.of(target, BTC).output(tf).read_bytes() == want, tf
        assert want.count(b"\n") > 5


def test_a_higher_timeframe_tail_past_the_checkpoint_is_recomputed(clean: Path, tmp_path: Path) -> None:
    vault = tmp_path / "Vault"
    shutil.copytree(clean, vault)
    paths = VaultPaths.of(vault, BTC)
    want = {tf: paths.output(tf).read_bytes() for tf in ("5m", "1h")}
    # A run that died after appending bars but before saving its state.
    for tf in ("5m", "1h"):
        with paths.output(tf).open("ab") as handle:
            handle.write(b'{"timestamp_utc":"2099-01-01T00:00:00Z"}\n')
    assert replay(vault, "--final", "--timeframes", ALL) == 0
    assert {tf: paths.output(tf).read_bytes() for tf in ("5m", "1h")} == want


def test_changing_timeframes_needs_rebuild(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vault = tmp_path / "Vault"
    generate_vault(vault, instruments=(BTC,), hours=2, seed=5)
    assert replay(vault) == 0
    paths = VaultPaths.of(vault, BTC)
    assert not paths.output("5m").exists()
    capsys.readouterr()
    assert replay(vault, "--timeframes", "1m,5m") == 2
    err = capsys.readouterr().err
    assert "timeframes" in err and "--rebuild" in err and err.count("\n") == 1
    assert not paths.output("5m").exists()
    assert replay(vault, "--timeframes", "1m,5m", "--rebuild", "--final") == 0
    assert paths.output("5m").stat().st_size > 0
    fresh = tmp_path / "fresh"
    generate_vault(fresh, instruments=(BTC,), hours=2, seed=5)
    assert replay(fresh, "--timeframes", "5m,1m", "--final") == 0  # order given does not matter
    assert paths.output("5m").read_bytes() == VaultPaths.of(fresh, BTC).output("5m").read_bytes()
    # Without --timeframes the stored list is kept; going back to 1m only is a change too,
    # and --rebuild then removes the 5m file.
    assert replay(vault, "--final") == 0
    assert replay(vault, "--final", "--timeframes", "1m") == 2
    assert replay(vault, "--final", "--rebuild", "--timeframes", "1m") == 0
    assert not paths.output("5m").exists()


def test_live_close_does_not_hold_back_a_finished_higher_bar() -> None:
    asm = BarAssembler(resolve(BTC), Settings(timeframes=("1m", "5m"), grace=2.0))
    t0 = 1735689600000  # 00:00, a 5m boundary
    trade = lambda i, ms: Trade(instId=BTC, tradeId=str(i), px="100000", sz=1.0, side="buy", ts=t0 + ms)  # noqa: E731
    assert asm.feed([trade(1, 60_000)]) == []  # 00:01, in period 00:00
    # 00:06 (period 00:05) opens before the wall clock closed 00:01: its trade closes 00:01.
    out = asm.feed([trade(2, 6 * 60_000 + 5)])
    assert [(b.timestamp_utc, b.timeframe) for b in out] == [("2025-01-01T00:01:00Z", msgspec_unset())]
    # The 00:00 5m period is over and 00:06 is open: the 5m bar is due now, not after 00:06 closes.
    out = asm.close_due(t0 + 6 * 60_000 + 30_000)
    assert [(b.timestamp_utc, b.timeframe) for b in out] == [("2025-01-01T00:00:00Z", "5m")]
    assert asm.open_minute is not None  # 00:06 still open
    out = asm.close_due(t0 + 7 * 60_000 + 2_000)
    assert [b.timestamp_utc for b in out] == ["2025-01-01T00:06:00Z"]


def msgspec_unset() -> Any:
    import msgspec

    return msgspec.UNSET
