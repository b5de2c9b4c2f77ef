"""``vstream levels`` and ``signals --poor-high/--poor-low [--untouched]`` (docs/levels.md).

Bar files are written here line by line (a poor flag is whatever the line says), so each case
is a small table that can be checked by hand: which poor highs and lows there are, which later
bar first traded through each (a high at or above a poor high, a low at or below a poor low),
their age and their distance from the last close. A property test then holds the scan to a
brute-force one over random bar sequences, and a replayed vault holds it to real files.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vstream.assembler import Bar
from vstream.cli import main
from vstream.instruments import VaultPaths
from vstream.levels import POOR_HIGH, POOR_LOW, find_levels, scan_levels

BTC = "BTC-USDT-SWAP"
RunCli = Callable[..., tuple[int, str, str]]
REPO = Path(__file__).resolve().parents[1]


def bar_line(i: int, high: str, low: str, close: str, poor_high: bool | None, poor_low: bool | None,
             *, footprint: bool = True, tf: str = "1m") -> bytes:  # fmt: skip
    """Bar ``i`` (minutes after 2025-01-01T00:00, or periods of ``tf``) as replay writes it:
    a footprint bar with the poor flags given (None: a bar without them)."""
    minutes = {"1m": 1, "5m": 5, "15m": 15, "1h": 60}[tf] * i
    fields: dict[str, Any] = dict(
        timestamp_utc=f"2025-01-01T{minutes // 60:02d}:{minutes % 60:02d}:00Z", instId=BTC, exchange="okx",
        market="perp", open=close, high=high, low=low, close=close, price_change_pct="+0.00",
        total_volume="1000", buy_volume="500", sell_volume="500", delta="+0", whale_volume="0", whale_count=0,
        trade_count=2, volume_tier=None, absorption=False, divergence=False, divergence_type=None,
        volume_ratio=None, fill_count=2,
    )  # fmt: skip
    if tf != "1m":
        fields["timeframe"] = tf
    if footprint:
        fields.update(footprint=[], poc=low, vah=high, val=low, imbalances=[], stacked=[])
        if poor_high is not None:
            fields.update(poor_high=poor_high, poor_low=poor_low)
    return msgspec.json.encode(Bar(**fields)) + b"\n"


#: (high, low, close, poor_high, poor_low), one bar a minute from 00:00.
HAND = [
    ("105", "100", "102", True, False),  # 00:00 poor high 105: touched at 00:04 (106)
    ("104", "101", "103", False, True),  # 00:01 poor low 101: touched at 00:04 (100.5)
    ("103", "102", "102.5", True, False),  # 00:02 poor high 103: touched at 00:03 (104.5)
    ("104.5", "101.5", "104", False, False),  # 00:03 trades through 103 only
    ("106", "100.5", "105", True, True),  # 00:04 poor high 106 (untouched), poor low 100.5
    ("105.0", "100.50", "101", False, False),  # 00:05 a low equal to 100.5 touches it
]


def write_bars(vault: Path, rows: list[tuple[str, str, str, bool | None, bool | None]], tf: str = "1m", **kw: Any) -> Path:
    path = VaultPaths.of(vault, BTC).output(tf)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(bar_line(i, *row, tf=tf, **kw) for i, row in enumerate(rows)))
    return path


@pytest.fixture
def hand(tmp_path: Path) -> Path:
    write_bars(tmp_path, HAND)
    return tmp_path


def levels_json(run_cli: RunCli, vault: Path, *flags: str) -> list[dict[str, Any]]:
    status, out, err = run_cli("levels", "--instId", BTC, "--vault", str(vault), "--json", *flags)
    assert status == 0, err
    return [json.loads(line) for line in out.splitlines()]


def brief(found: list[dict[str, Any]]) -> list[tuple[str, str, str, str | None]]:
    return [(f["timestamp_utc"][11:16], f["kind"], f["price"], f["touched_at"] and f["touched_at"][11:16]) for f in found]


def test_the_hand_table(hand: Path, run_cli: RunCli) -> None:
    found = levels_json(run_cli, hand)
    assert brief(found) == [
        ("00:00", POOR_HIGH, "105", "00:04"),
        ("00:01", POOR_LOW, "101", "00:04"),
        ("00:02", POOR_HIGH, "103", "00:03"),
        ("00:04", POOR_HIGH, "106", None),
        ("00:04", POOR_LOW, "100.5", "00:05"),
    ]
    # ages from the last bar's end (00:06) to each bar's end; distances from the last close (101)
    assert [f["age_seconds"] for f in found] == [300, 240, 180, 60, 60]
    top = found[3]
    assert top == {
        "timestamp_utc": "2025-01-01T00:04:00Z", "instId": BTC, "timeframe": "1m", "kind": "poor-high",
        "price": "106", "age_seconds": 60, "touched": False, "touched_at": None, "distance": "+5",
        "distance_ticks": None, "distance_pct": 4.9505,
    }  # fmt: skip
    assert [f["distance"] for f in found] == ["+4", "+0", "+2", "+5", "-0.5"]
    # no state, so no stored footprint tick: --tick gives one
    assert [f["distance_ticks"] for f in levels_json(run_cli, hand, "--tick", "0.5")] == [8.0, 0.0, 4.0, 10.0, -1.0]


def test_filters(hand: Path, run_cli: RunCli) -> None:
    assert brief(levels_json(run_cli, hand, "--untouched")) == [("00:04", POOR_HIGH, "106", None)]
    assert brief(levels_json(run_cli, hand, "--kind", "poor-low")) == [
        ("00:01", POOR_LOW, "101", "00:04"), ("00:04", POOR_LOW, "100.5", "00:05"),
    ]  # fmt: skip
    assert levels_json(run_cli, hand, "--kind", "poor-low", "--untouched") == []
    # ages are inclusive at both ends; either end may be left out
    assert [f["age_seconds"] for f in levels_json(run_cli, hand, "--age", "4m..5m")] == [300, 240]
    assert [f["age_seconds"] for f in levels_json(run_cli, hand, "--age", "0m..1m")] == [60, 60]
    assert [f["age_seconds"] for f in levels_json(run_cli, hand, "--age", "..90s")] == [60, 60]
    assert [f["age_seconds"] for f in levels_json(run_cli, hand, "--age", "200s..")] == [300, 240]
    assert levels_json(run_cli, hand, "--age", "6m..1h") == []


def test_now_is_the_moment_the_levels_stand_at(hand: Path, run_cli: RunCli) -> None:
    # As of 00:05 the 00:05 bar has not ended: the poor low at 100.5 is still untouched, the
    # last close is 105, ages count from 00:05.
    found = levels_json(run_cli, hand, "--now", "2025-01-01T00:05Z", "--untouched")
    assert brief(found) == [("00:04", POOR_HIGH, "106", None), ("00:04", POOR_LOW, "100.5", None)]
    assert [(f["age_seconds"], f["distance"]) for f in found] == [(0, "+1"), (0, "-4.5")]
    # later than the last bar: the same levels, older
    later = levels_json(run_cli, hand, "--now", "2025-01-01T01:06Z")
    assert brief(later) == brief(levels_json(run_cli, hand))
    assert [f["age_seconds"] for f in later] == [3900, 3840, 3780, 3660, 3660]
    # before any bar ended: nothing
    assert levels_json(run_cli, hand, "--now", "2025-01-01T00:00Z") == []
    # with an age range, as of an earlier moment (00:04: 00:00 ended 3m before, 00:01 2m)
    found = levels_json(run_cli, hand, "--now", "2025-01-01T00:04Z", "--age", "..2m")
    assert brief(found) == [("00:01", POOR_LOW, "101", None), ("00:02", POOR_HIGH, "103", "00:03")]
    found = levels_json(run_cli, hand, "--now", "2025-01-01T00:04Z", "--age", "..3m")
    assert brief(found)[0] == ("00:00", POOR_HIGH, "105", None)


def test_the_table(hand: Path, run_cli: RunCli) -> None:
    status, out, err = run_cli("levels", "--instId", BTC, "--vault", str(hand), "--tick", "0.5")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["timestamp_utc", "kind", "price", "age", "touched", "ticks", "dist%"]
    assert lines[4].split() == ["2025-01-01T00:04:00Z", "poor-high", "106", "1m00s", "-", "+10.0", "+4.95"]
    assert lines[2].split() == ["2025-01-01T00:01:00Z", "poor-low", "101", "4m00s", "2025-01-01T00:04:00Z", "+0.0", "+0.00"]
    status, out, err = run_cli("levels", "--instId", BTC, "--vault", str(hand), "--kind", "poor-low", "--untouched")
    assert (status, out, err) == (0, "", "no matching poor highs or lows\n")


def test_the_stored_footprint_tick_and_the_durable_length_of_a_replayed_vault(tmp_path: Path, run_cli: RunCli) -> None:
    from support import trade_line

    m0 = 1_735_689_600_000  # 2025-01-01T00:00Z
    rows = [  # (px, sz, side, minute): tick 1, ctVal 0.01
        ("100", "100", "buy", 0), ("102", "100", "buy", 0), ("102", "50", "sell", 0),  # poor high 102
        ("101", "10", "sell", 1), ("101.4", "10", "buy", 1),  # one level, both sides: poor both
        ("100.5", "10", "buy", 2),
    ]
    raw = VaultPaths.of(tmp_path, BTC).raw_dir
    raw.mkdir(parents=True)
    (raw / "2025-01-01.jsonl").write_text("".join(
        trade_line(i + 1, px, sz, side, m0 + 60_000 * minute + i) + "\n" for i, (px, sz, side, minute) in enumerate(rows)
    ))  # fmt: skip
    # without --final the last minute stays open: its bar is not in the file
    assert run_cli("-q", "replay", "--instId", BTC, "--vault", str(tmp_path), "--footprint", "0.5")[0] == 0
    found = levels_json(run_cli, tmp_path)
    assert brief(found) == [("00:00", POOR_HIGH, "102", None), ("00:01", POOR_HIGH, "101.4", None),
                            ("00:01", POOR_LOW, "101", None)]  # fmt: skip
    # ticks of the stored footprint tick (0.5), from the last close 101.4
    assert [f["distance_ticks"] for f in found] == [1.2, 0.0, -0.8]
    # bars appended after the last checkpoint (a run going on) are not read
    output = VaultPaths.of(tmp_path, BTC).output()
    with output.open("ab") as handle:
        handle.write(bar_line(5, "90", "80", "85", True, True))
    assert brief(levels_json(run_cli, tmp_path)) == brief(found)


# -- usage errors -----------------------------------------------------------------------------


def assert_usage_error(status: int, err: str, *needles: str) -> None:
    assert status == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("vstream: "), err
    assert "Traceback" not in err and "unexpected" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize(
    "flags, needles",
    [
        (["--age", "40m..20m"], ["--age", "40m..20m", "not be more than"]),
        (["--age", "20m"], ["--age", "AGE..AGE"]),
        (["--age", "10..20m"], ["--age", "cannot read duration '10'"]),
        (["--age", "1h..x"], ["--age", "'x'"]),
        (["--kind", "poor-middle"], ["--kind", "poor-high", "poor-low"]),
        (["--tick", "0"], ["--tick", "> 0"]),
        (["--tick", "nan"], ["--tick"]),
        (["--now", "2025-02-30"], ["--now", "2025-02-30"]),
        (["--timeframe", "2m"], ["--timeframe"]),
    ],
)
def test_bad_options_are_usage_errors(hand: Path, run_cli: RunCli, flags: list[str], needles: list[str]) -> None:
    status, out, err = run_cli("levels", "--instId", BTC, "--vault", str(hand), *flags)
    assert_usage_error(status, err, *needles)
    assert out == ""


_values = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"\A[-+]?(\d{1,25}(\.\d{0,6})?|nan|inf|1e\d{1,4})\s?[smhdw]?\Z"),
    st.builds(lambda a, b: f"{a}..{b}", st.from_regex(r"\A\d{0,20}[smhdw]?\Z"), st.from_regex(r"\A\d{0,20}[smhdw]?\Z")),
    st.builds(lambda y, d: f"{y:04d}-01-{d:02d}T00:00Z", st.integers(0, 10_000), st.integers(0, 32)),
)


@pytest.mark.parametrize("option", ["--age", "--now", "--tick"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_values)
def test_any_option_value_runs_or_is_a_usage_error(hand: Path, run_cli: RunCli, option: str, value: str) -> None:
    status, out, err = run_cli("levels", "--instId", BTC, "--vault", str(hand), f"{option}={value}", "--json")
    assert "Traceback" not in err and "unexpected" not in err, err
    if status == 2:
        assert_usage_error(status, err)
    else:
        assert status == 0 and err == "", (status, err)
        assert all(json.loads(line)["kind"] in (POOR_HIGH, POOR_LOW) for line in out.splitlines())


def test_bars_without_footprints_or_flags_say_what_is_needed(tmp_path: Path, run_cli: RunCli) -> None:
    plain = [(h, low, c, None, None) for h, low, c, _, _ in HAND]
    write_bars(tmp_path, plain, footprint=False)
    status, _, err = run_cli("levels", "--instId", BTC, "--vault", str(tmp_path))
    assert_usage_error(status, err, "no footprint", "--footprint")
    # footprint bars written before the flags existed: a rebuild adds them
    write_bars(tmp_path, plain)
    status, _, err = run_cli("levels", "--instId", BTC, "--vault", str(tmp_path))
    assert_usage_error(status, err, "before vstream marked poor highs and lows", "--rebuild")
    # a timeframe that was never written
    status, _, err = run_cli("levels", "--instId", BTC, "--vault", str(tmp_path), "--timeframe", "5m")
    assert_usage_error(status, err, "no 5m bars")
    # older bars without the flags, newer ones with: the newer are listed, the older still touch
    rows = [*plain[:3], *HAND[3:]]
    write_bars(tmp_path, rows)
    assert brief(levels_json(run_cli, tmp_path)) == [("00:04", POOR_HIGH, "106", None), ("00:04", POOR_LOW, "100.5", "00:05")]
    scan = scan_levels(VaultPaths.of(tmp_path, BTC))
    assert (scan.bars, scan.marked, scan.unmarked) == (6, 3, 3)


def test_an_empty_file_has_no_levels(tmp_path: Path, run_cli: RunCli) -> None:
    path = VaultPaths.of(tmp_path, BTC).output()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert run_cli("levels", "--instId", BTC, "--vault", str(tmp_path)) == (0, "", "no matching poor highs or lows\n")


def test_higher_timeframes_age_by_their_own_period(tmp_path: Path, run_cli: RunCli) -> None:
    write_bars(tmp_path, HAND[:3], tf="1h")
    found = levels_json(run_cli, tmp_path, "--timeframe", "1h")
    assert [(f["timestamp_utc"][11:16], f["timeframe"], f["age_seconds"]) for f in found] == [
        ("00:00", "1h", 7200), ("01:00", "1h", 3600), ("02:00", "1h", 0),
    ]  # fmt: skip


def test_stdout_closed_early_exits_quietly(hand: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vstream", "levels", "--instId", BTC, "--vault", str(hand), "--json"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert (proc.wait(timeout=120), err) == (0, "")


# -- against a brute-force scan ------------------------------------------------------------------

PRICES = ["99", "99.5", "100", "100.0", "100.25", "100.5", "101", "101.50", "102"]


@st.composite
def bar_rows(draw: st.DrawFn) -> list[tuple[str, str, str, bool, bool]]:
    rows = []
    for _ in range(draw(st.integers(0, 40))):
        a, b = draw(st.sampled_from(PRICES)), draw(st.sampled_from(PRICES))
        high, low = (a, b) if Decimal(a) >= Decimal(b) else (b, a)
        rows.append((high, low, draw(st.sampled_from([high, low])), draw(st.booleans()), draw(st.booleans())))
    return rows


def brute_force(rows: list[tuple[str, str, str, bool, bool]]) -> list[tuple[int, str, str, int | None]]:
    """Every poor level with the index of the first later bar trading through it, by looking."""
    out = []
    for i, (high, low, _, poor_high, poor_low) in enumerate(rows):
        if poor_high:
            later = [j for j in range(i + 1, len(rows)) if Decimal(rows[j][0]) >= Decimal(high)]
            out.append((i, POOR_HIGH, high, later[0] if later else None))
        if poor_low:
            later = [j for j in range(i + 1, len(rows)) if Decimal(rows[j][1]) <= Decimal(low)]
            out.append((i, POOR_LOW, low, later[0] if later else None))
    return out


def run_json(*argv: str) -> list[dict[str, Any]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["levels", "--instId", BTC, "--json", *argv]) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=bar_rows(), ages=st.tuples(st.integers(0, 45), st.integers(0, 45)).map(sorted),
       now=st.one_of(st.none(), st.integers(0, 50)))  # fmt: skip
def test_untouched_levels_are_those_of_a_brute_force_scan(tmp_path_factory: pytest.TempPathFactory, rows, ages, now) -> None:
    vault = tmp_path_factory.mktemp("levels")
    write_bars(vault, rows)
    # as of minute ``now``: the bars that ended by then
    seen = rows if now is None else rows[:now]
    end = len(seen) if now is None else now
    expected = [lv for lv in brute_force(seen) if lv[3] is None]
    at = [] if now is None else ["--now", f"2025-01-01T{now // 60:02d}:{now % 60:02d}Z"]
    got = run_json("--vault", str(vault), "--untouched", *at)
    assert [(int(f["timestamp_utc"][14:16]), f["kind"], f["price"], None) for f in got] == expected
    # every level, with its first touch, inside an age range (minutes from each bar's end)
    low, high = ages
    everything = [lv for lv in brute_force(seen) if low <= end - (lv[0] + 1) <= high]
    got = run_json("--vault", str(vault), "--age", f"{low}m..{high}m", *at)
    assert [
        (int(f["timestamp_utc"][14:16]), f["kind"], f["price"],
         int(f["touched_at"][14:16]) if f["touched_at"] else None) for f in got
    ] == everything  # fmt: skip
    assert all(f["touched"] is (f["touched_at"] is not None) for f in got)
    # the library gives the same
    assert len(find_levels(VaultPaths.of(vault, BTC), untouched=True, now=None if now is None else 1_735_689_600 + 60 * now)) == len(expected)


# -- signals ------------------------------------------------------------------------------------


def signal_stamps(run_cli: RunCli, vault: Path, *flags: str) -> list[str]:
    status, out, err = run_cli("signals", "--instId", BTC, "--vault", str(vault), "--json", *flags)
    assert status == 0, err
    return [json.loads(line)["timestamp_utc"][11:16] for line in out.splitlines()]


def test_signals_find_poor_highs_and_lows_touched_or_not(hand: Path, run_cli: RunCli) -> None:
    assert signal_stamps(run_cli, hand, "--poor-high") == ["00:00", "00:02", "00:04"]
    assert signal_stamps(run_cli, hand, "--poor-low") == ["00:01", "00:04"]
    assert signal_stamps(run_cli, hand, "--poor-high", "--poor-low") == ["00:00", "00:01", "00:02", "00:04"]
    assert signal_stamps(run_cli, hand, "--poor-high", "--untouched") == ["00:04"]
    assert signal_stamps(run_cli, hand, "--poor-low", "--untouched") == []
    # untouched in the whole file: bars past --until still trade through
    assert signal_stamps(run_cli, hand, "--poor-high", "--untouched", "--until", "2025-01-01T00:03Z") == []
    assert signal_stamps(run_cli, hand, "--poor-high", "--untouched", "--since", "2025-01-01T00:02Z") == ["00:04"]
    # alternatives with the other signals; a tier filter still applies
    assert signal_stamps(run_cli, hand, "--poor-low", "--untouched", "--whale") == []
    assert signal_stamps(run_cli, hand, "--poor-high", "--tier", "T4") == []
    status, out, err = run_cli("signals", "--instId", BTC, "--vault", str(hand), "--poor-high", "--poor-low")
    assert status == 0, err
    rows = out.splitlines()
    assert rows[1].endswith("poor-high") and rows[2].endswith("poor-low") and rows[4].endswith("poor-high poor-low")
    status, _, err = run_cli("signals", "--instId", BTC, "--vault", str(hand), "--untouched")
    assert_usage_error(status, err, "--untouched needs --poor-high or --poor-low")


def test_signals_untouched_is_the_levels_command_untouched(tmp_path: Path, run_cli: RunCli) -> None:
    from vstream.generate import generate_vault

    generate_vault(tmp_path, instruments=(BTC,), hours=2, seed=8)
    assert run_cli("-q", "replay", "--all", "--vault", str(tmp_path), "--final", "--footprint", "10")[0] == 0
    levels = levels_json(run_cli, tmp_path, "--untouched")
    assert len(levels) >= 3
    for kind, flag in ((POOR_HIGH, "--poor-high"), (POOR_LOW, "--poor-low")):
        wanted = [f["timestamp_utc"][11:16] for f in levels if f["kind"] == kind]
        assert signal_stamps(run_cli, tmp_path, flag, "--untouched") == wanted
    # and the replayed file's flags, scanned by hand, give the same levels
    path = VaultPaths.of(tmp_path, BTC).output()
    rows = [(b["high"], b["low"], b["close"], b["poor_high"], b["poor_low"]) for b in map(json.loads, path.read_text().splitlines())]
    stamps = [json.loads(line)["timestamp_utc"] for line in path.read_text().splitlines()]
    assert [(f["timestamp_utc"], f["kind"], f["price"]) for f in levels] == [
        (stamps[i], kind, price) for i, kind, price, touch in brute_force(rows) if touch is None
    ]
