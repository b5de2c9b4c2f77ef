"""SPEC §7: any sequence of runs over a growing input equals one ``--final`` run, byte for byte.

Hypothesis builds an input (two UTC days, out-of-order trades inside minutes, duplicates, late
trades, bad lines, blank lines, envelopes, CRLF) and cuts its growth into runs at arbitrary byte
positions — mid-line included — as an exporter appending while a scheduler starts replays would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import exporter_line, trade_line

from vstream.cli import main
from vstream.instruments import VaultPaths
from vstream.state import read_state

INST = "BTC-USDT-SWAP"
MIDNIGHT = 1_765_843_200_000  # 2025-12-16T00:00:00Z
FLAGS = ["--min-history", "2", "--median-window", "3", "--timeframes", "1m,5m"]


#: Bad exporter lines: an impossible date, a zero ctVal, another exchange, a missing key.
BAD_EXPORTER = [
    exporter_line(7, "100", "1", "buy", MIDNIGHT).replace("2025-12-16T00", "2025-02-30T00"),
    exporter_line(7, "100", "1", "buy", MIDNIGHT, ct_val="0"),
    exporter_line(7, "100", "1", "buy", MIDNIGHT, exchange="binance"),
    exporter_line(7, "100", "1", "buy", MIDNIGHT).replace('"qty_contracts": "1", ', ""),
]


@st.composite
def inputs(draw: st.DrawFn, formats: tuple[str, ...] = ("okx",)) -> tuple[bytes, bytes, bool]:
    """(day-1 bytes, day-2 bytes, final line without newline?). Each trade is written in one
    of ``formats``: OKX objects, the vault exporter's lines (which have no ``count``), or both."""
    ts = MIDNIGHT - draw(st.integers(60_000, 400_000))
    tid = 1000
    days: list[list[str]] = [[], []]
    seen: list[tuple[int, str]] = []
    for _ in range(draw(st.integers(1, 45))):
        kind = draw(st.sampled_from(["trade"] * 8 + ["dup", "late", "bad", "blank", "envelope", "event"]))
        ts += draw(st.sampled_from([0, 0, 7, 500, 20_000, 61_000, 150_000]))
        day = 0 if ts < MIDNIGHT else 1
        eol = draw(st.sampled_from(["", "", "", "\r"]))
        if kind == "trade" or (kind in ("dup", "late") and not seen):
            tid += draw(st.integers(1, 3))
            # Trades inside a minute may arrive out of order: jitter ts backwards a little.
            t_ts = ts - draw(st.sampled_from([0, 0, 3, 40]))
            px = draw(st.sampled_from(["100", "100.5", "99.9", "101.25", "100.0"]))
            sz = draw(st.sampled_from(["1", "3", "12", "0.5", "2500"]))
            side = draw(st.sampled_from(["buy", "sell"]))
            if draw(st.sampled_from(formats)) == "exporter":
                line = exporter_line(tid, px, sz, side, t_ts, INST)
            else:
                line = trade_line(tid, px, sz, side, t_ts, INST, count=str(draw(st.integers(1, 3))))
            seen.append((t_ts, line))
        elif kind == "dup":
            line = seen[-1][1]
        elif kind == "late":
            line = seen[0][1].replace('"tradeId":"', '"tradeId":"9').replace('"trade_id": "', '"trade_id": "9')
        elif kind == "bad":
            bad = ['{"instId":"BTC-USDT-SWAP","px":"1"', "not json", '{"instId":"ETH-USDT-SWAP"}',
                   trade_line(5, "0", "1", "buy", ts, INST)]  # fmt: skip
            line = draw(st.sampled_from(bad + (BAD_EXPORTER if "exporter" in formats else [])))
        elif kind == "blank":
            line = ""
        elif kind == "envelope":
            tid += 2
            data = [json.loads(trade_line(tid - 1, "100.1", "2", "sell", ts, INST)),
                    json.loads(trade_line(tid, "-1", "2", "sell", ts, INST))]  # fmt: skip
            line = json.dumps({"arg": {"channel": "trades", "instId": INST}, "data": data})
        else:
            line = '{"event":"subscribe","arg":{"channel":"trades"}}'
        days[day].append(line + eol)
    first = "".join(line + "\n" for line in days[0]).encode()
    second = "".join(line + "\n" for line in days[1]).encode()
    no_final_newline = draw(st.booleans())
    if no_final_newline:
        if second:
            second = second[:-1]
        elif first:
            first = first[:-1]
    return first, second, no_final_newline


def files_of(vault: Path) -> dict[str, bytes]:
    paths = VaultPaths.of(vault, INST)
    out = {}
    for path in (paths.output("1m"), paths.output("5m"), paths.rejects):
        out[path.name] = path.read_bytes() if path.exists() else b""
    return out


def place(vault: Path, first: bytes, second: bytes, upto: int, early: bool = False) -> None:
    """The input as it stands after ``upto`` bytes were written. With ``early`` the writer
    opens the next day's file before it has finished the last line of the first day (a
    recorder mid-write at midnight)."""
    raw = VaultPaths.of(vault, INST).raw_dir
    raw.mkdir(parents=True, exist_ok=True)
    if upto > 0 or first:
        (raw / "2025-12-15.jsonl").write_bytes(first[: max(0, upto)])
    if upto > len(first) or (early and upto > 0):
        (raw / "2025-12-16.jsonl").write_bytes(second[: max(0, upto - len(first))])


#: The order-flow options: footprint levels of 0.5 (prices above are 99.9 .. 101.25), the
#: running delta's extremes and the day's CVD across the two days (and poor highs/lows).
ORDER_FLOW = ["--footprint", "0.5", "--stacked-levels", "2", "--cvd"]
#: ... with poor highs/lows that need $20 a side (a 2500-contract trade, or several together).
ORDER_FLOW_POOR_MIN = [*ORDER_FLOW, "--poor-min-usd", "20"]


def replay(vault: Path, *extra: str) -> None:
    paths = VaultPaths.of(vault, INST)
    has_input = any(paths.raw_dir.iterdir())
    status = main(["replay", "--instId", INST, "--vault", str(vault), *FLAGS, *extra])
    if has_input and status == 1:
        # A run that rejected every line it read fails (SPEC §7, nothing silent), its state
        # saved all the same: the runs still add up to one --final run.
        last = read_state(paths.state).last_run
        assert last is not None and last.all_rejected
    else:
        # No trade file at all is an error (exit 2) that leaves nothing behind.
        assert status == (0 if has_input else 2)
    assert has_input or not paths.state.exists()


def check_runs_cut_anywhere(
    base: Path, data: tuple[bytes, bytes, bool], cuts: list[float], early: bool, *flags: str
) -> None:
    first, second, _ = data
    whole, pieces = base / "whole", base / "pieces"
    total = len(first) + len(second)
    place(whole, first, second, total)
    replay(whole, "--final", *flags)
    expected = files_of(whole)
    if flags and expected["volume_1m.jsonl"]:
        for name in ("volume_1m.jsonl", "volume_5m.jsonl"):
            assert all(
                b'"poc"' in line and b'"cvd"' in line and b'"poor_high":' in line and b'"poor_low":' in line
                for line in expected[name].splitlines()
            )
    for cut in sorted(int(c * total) for c in cuts):
        place(pieces, first, second, cut, early)
        replay(pieces, *flags)
    place(pieces, first, second, total, early)
    replay(pieces, "--final", *flags)
    assert files_of(pieces) == expected
    # A further --final run over the unchanged input changes nothing.
    replay(pieces, "--final", *flags)
    assert files_of(pieces) == expected
    shutil.rmtree(base)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=inputs(), cuts=st.lists(st.floats(0, 1), max_size=6), early=st.booleans())
def test_runs_cut_anywhere_equal_one_final_run(tmp_path_factory, data, cuts, early):
    check_runs_cut_anywhere(tmp_path_factory.mktemp("resume"), data, cuts, early)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=inputs(), cuts=st.lists(st.floats(0, 1), max_size=6), early=st.booleans())
def test_runs_cut_anywhere_equal_one_final_run_with_order_flow(tmp_path_factory, data, cuts, early):
    check_runs_cut_anywhere(tmp_path_factory.mktemp("resume"), data, cuts, early, *ORDER_FLOW)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=inputs(("exporter",)), cuts=st.lists(st.floats(0, 1), max_size=6), early=st.booleans())
def test_exporter_files_cut_anywhere_equal_one_final_run(tmp_path_factory, data, cuts, early):
    # The vault's own format: CRLF, torn lines, bad exporter lines, resumed at any byte.
    check_runs_cut_anywhere(tmp_path_factory.mktemp("resume"), data, cuts, early)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=inputs(("okx", "exporter")), cuts=st.lists(st.floats(0, 1), max_size=6), early=st.booleans())
def test_mixed_formats_cut_anywhere_equal_one_final_run(tmp_path_factory, data, cuts, early):
    check_runs_cut_anywhere(tmp_path_factory.mktemp("resume"), data, cuts, early, *ORDER_FLOW_POOR_MIN)
