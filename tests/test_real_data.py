"""Real OKX captures from ../shared/data/real (SPEC acceptance data)."""

from __future__ import annotations

import csv
import json
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import msgspec
import pytest
from support import REAL_DATA, write_lines

from vstream import Bar, VaultPaths

pytestmark = pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/data/real is not beside the checkout")


def bars_of(vault: Path, inst: str) -> list[Bar]:
    data = VaultPaths.of(vault, inst).output().read_bytes()
    return [msgspec.json.decode(line, type=Bar) for line in data.splitlines()]


def test_matic_archive_minute_matches_okx_candle(vault, raw_dir, run_cli):
    rows = list(csv.DictReader((REAL_DATA / "stonkylab_MATIC-USDT-SWAP_2023-08-21_one_minute.csv").open()))
    assert len(rows) == 14
    lines = [
        json.dumps({"instId": r["instrument_name"], "tradeId": r["trade_id"], "px": r["price"],
                    "sz": r["size"], "side": r["side"], "ts": r["created_time"]})
        for r in rows
    ]  # fmt: skip
    write_lines(raw_dir("MATIC-USDT-SWAP") / "2023-08-20.jsonl", lines)
    status, out, err = run_cli(
        "replay", "--instId", "MATIC-USDT-SWAP", "--vault", str(vault), "--final",
        "--ct-val", "MATIC-USDT-SWAP=10",
    )  # fmt: skip
    assert status == 0, err
    assert "trades=14 bars=1 rejects=0" in out
    (bar,) = bars_of(vault, "MATIC-USDT-SWAP")
    assert bar.timestamp_utc == "2023-08-20T16:01:00Z"
    assert (bar.open, bar.high, bar.low, bar.close) == ("0.5747", "0.5748", "0.5744", "0.5744")
    assert bar.total_volume == "6889"  # 1199 contracts × 10 × price = 6889.352 USDT
    assert bar.trade_count == 14 and bar.market == "perp"


def test_matic_without_ct_val_is_a_clear_configuration_error(vault, raw_dir, run_cli):
    write_lines(raw_dir("MATIC-USDT-SWAP") / "2023-08-20.jsonl", [])
    status, _, err = run_cli("replay", "--instId", "MATIC-USDT-SWAP", "--vault", str(vault))
    assert status == 2
    assert "no contract value (ctVal) known for MATIC-USDT-SWAP" in err and "--ct-val" in err


def capture_lines(inst: str) -> list[str]:
    text = (REAL_DATA / "cryptofeed_OKX_2022-05-13_trades_push.jsonl").read_text()
    return [line for line in text.splitlines() if json.loads(line)["arg"]["instId"] == inst]


def test_2022_websocket_capture_of_btc_usdt_spot_replays_without_reject(vault, raw_dir, run_cli):
    lines = capture_lines("BTC-USDT")
    assert len(lines) == 69
    trades = [t for line in lines for t in json.loads(line)["data"]]
    write_lines(raw_dir("BTC-USDT") / "2022-05-13.jsonl", lines)
    status, out, err = run_cli("replay", "--instId", "BTC-USDT", "--vault", str(vault), "--final")
    assert status == 0, err
    assert f"trades={len(trades)} " in out and "rejects=0 " in out and "skipped=0 " in out
    assert not VaultPaths.of(vault, "BTC-USDT").rejects.exists() or \
        VaultPaths.of(vault, "BTC-USDT").rejects.stat().st_size == 0  # fmt: skip
    bars = bars_of(vault, "BTC-USDT")
    assert {b.market for b in bars} == {"spot"}
    # Check every bar against an independent Decimal computation of SPEC §4/§5.
    for bar in bars:
        minute = [t for t in trades if int(t["ts"]) // 60000 * 60 == _epoch(bar.timestamp_utc)]
        minute.sort(key=lambda t: (int(t["ts"]), int(t["tradeId"])))
        total = sum(Decimal(t["sz"]) * Decimal(t["px"]) for t in minute)
        buy = sum(Decimal(t["sz"]) * Decimal(t["px"]) for t in minute if t["side"] == "buy")
        assert bar.total_volume == str(total.quantize(Decimal(1), ROUND_HALF_UP))
        assert bar.buy_volume == str(buy.quantize(Decimal(1), ROUND_HALF_UP))
        assert (bar.open, bar.close) == (minute[0]["px"], minute[-1]["px"])
        assert bar.high == max((t["px"] for t in minute), key=Decimal)
        assert bar.trade_count == len(minute)


def test_2022_capture_dated_future_uses_futures_paths(vault, raw_dir, run_cli):
    lines = capture_lines("BTC-USD-220527")
    assert raw_dir("BTC-USD-220527").parts[-2] == "trades_futures"
    write_lines(raw_dir("BTC-USD-220527") / "2022-05-13.jsonl", lines)
    status, _, err = run_cli(
        "replay", "--instId", "BTC-USD-220527", "--vault", str(vault), "--final",
        "--ct-val", "BTC-USD-220527=100",
    )  # fmt: skip
    assert status == 0, err
    bars = bars_of(vault, "BTC-USD-220527")
    assert {b.market for b in bars} == {"futures"}
    sizes = sum(int(t["sz"]) for line in lines for t in json.loads(line)["data"])
    assert sum(int(b.total_volume) for b in bars) == sizes * 100  # inverse: sz × $100
    assert "derived/volume/okx/futures/BTC-USD-220527" in VaultPaths.of(vault, "BTC-USD-220527").output().as_posix()


def test_other_instruments_in_a_capture_are_rejected_not_mixed_in(vault, raw_dir, run_cli):
    text = (REAL_DATA / "cryptofeed_OKX_2022-05-13_trades_push.jsonl").read_text().splitlines()
    write_lines(raw_dir("BTC-USDT") / "2022-05-13.jsonl", text)
    status, out, _ = run_cli("replay", "--instId", "BTC-USDT", "--vault", str(vault), "--final")
    assert status == 0
    assert "rejects=5 " in out  # 4 BTC-USD-220527 + 1 UNI-USD-SWAP trades
    rejects = VaultPaths.of(vault, "BTC-USDT").rejects.read_text().splitlines()
    assert all("is not BTC-USDT" in json.loads(r)["error"] for r in rejects)


def test_cold2511_spot_trades(vault, raw_dir, run_cli):
    rows = list(csv.DictReader((REAL_DATA / "cold2511_okx_trades_BTC-USDT_spot.csv").open()))
    lines = [
        json.dumps({"instId": "BTC-USDT", "tradeId": r["trade_id"], "px": r["price"], "sz": r["size"],
                    "side": r["side"], "ts": r["timestamp"]})
        for r in rows
    ]  # fmt: skip
    write_lines(raw_dir("BTC-USDT") / "2025-05-16.jsonl", lines)
    status, _, err = run_cli("replay", "--instId", "BTC-USDT", "--vault", str(vault), "--final")
    assert status == 0, err
    bars = bars_of(vault, "BTC-USDT")
    assert sum(b.trade_count for b in bars) == len(rows) == 135
    assert [b.timestamp_utc for b in bars] == ["2025-05-16T11:43:00Z", "2025-05-16T11:44:00Z"]


def test_instrument_rows_from_okx_give_ct_val_through_the_cache(vault, raw_dir, run_cli):
    from vstream.instruments import (
        CachedInstrument,
        InstrumentCache,
        cache_path,
        load_cache,
        resolve,
    )

    rows = json.loads((REAL_DATA / "cryptofeed_OKX_2022-05-13_swap_instruments_subset.json").read_text())["data"]
    cache = InstrumentCache(instruments={r["instId"]: msgspec.convert(r, CachedInstrument) for r in rows})
    path = cache_path(vault)
    path.parent.mkdir(parents=True)
    path.write_bytes(msgspec.json.encode(cache))
    loaded = load_cache(vault)
    for row in rows:
        instrument = resolve(row["instId"], None, loaded)
        assert instrument.ct_val == float(row["ctVal"])
        assert instrument.inverse is (row["ctType"] == "inverse")
    # an explicit override beats the cache
    assert resolve("BTC-USDT-SWAP", {"BTC-USDT-SWAP": 0.5}, loaded).ct_val == 0.5


def _epoch(iso: str) -> int:
    import calendar
    import time

    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))
