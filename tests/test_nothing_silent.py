"""Nothing silent (SPEC §7): a run that rejects every line it read (at least one) exits 1 with
one line — how many lines, the first error, where the rejects file is; a run that rejects most
of them (more than half) says so in one line on stderr and exits 0; ``status`` shows either as
a problem (exit 1), until a run reads lines it can use.

The bad lines are bad by any reading: ``sz`` of ``"0"`` and text that is not JSON.
"""

from __future__ import annotations

import json
from typing import Any

from support import trade_line, write_lines

from vstream.instruments import VaultPaths
from vstream.state import read_state

BTC, ETH = "BTC-USDT-SWAP", "ETH-USDT-SWAP"
M0 = 1_765_747_980_000
DAY = "2025-12-14.jsonl"


def good(tid: int, inst: str = BTC) -> str:
    return trade_line(tid, "100", "2", "buy", M0 + tid * 1000, inst)


def zero_size(tid: int, inst: str = BTC) -> str:
    return trade_line(tid, "100", "0", "buy", M0 + tid * 1000, inst)


def envelope(*trades: str) -> str:
    return json.dumps({"arg": {"channel": "trades", "instId": BTC}, "data": [json.loads(t) for t in trades]})


def replay(run_cli: Any, vault: Any, *extra: str) -> tuple[int, str, str]:
    return run_cli("replay", "--instId", BTC, "--vault", str(vault), *extra)


def test_a_run_that_rejects_every_line_exits_1_with_one_line(vault, raw_dir, run_cli):
    write_lines(raw_dir(BTC) / DAY, [zero_size(1), "{not json", "", zero_size(2)])
    status, out, err = replay(run_cli, vault)
    assert status == 1
    assert out == "" and err.count("\n") == 1
    rejects = VaultPaths.of(vault, BTC).rejects
    assert "all 3 lines read were rejected" in err  # the blank line is not one of them
    assert f"{DAY} line 1: sz must be > 0" in err and str(rejects) in err
    assert len(rejects.read_text().splitlines()) == 3  # and they are there, durable


def test_the_count_is_of_this_run_and_needs_a_line(vault, raw_dir, run_cli):
    day = raw_dir(BTC) / DAY
    write_lines(day, [good(1), good(2)])
    assert replay(run_cli, vault)[0] == 0
    status, _, err = replay(run_cli, vault)  # nothing new: nothing read, nothing to say
    assert status == 0 and err == ""
    with day.open("a") as handle:
        handle.write(zero_size(3) + "\n" + "garbage\n")
    status, _, err = replay(run_cli, vault)
    assert status == 1 and "all 2 lines read were rejected" in err and f"{DAY} line 3:" in err


def test_one_line_of_an_envelope_with_several_bad_trades_counts_once(vault, raw_dir, run_cli):
    write_lines(raw_dir(BTC) / DAY, [envelope(zero_size(1), zero_size(2), zero_size(3))])
    status, _, err = replay(run_cli, vault)
    assert status == 1 and "the 1 line read was rejected" in err
    assert read_state(VaultPaths.of(vault, BTC).state).assembler.counters.rejects == 3


def test_a_line_keeping_one_good_trade_is_not_all_rejected(vault, raw_dir, run_cli):
    # Inside an envelope each trade is judged on its own: the line still gave a trade.
    write_lines(raw_dir(BTC) / DAY, [envelope(good(1), zero_size(2))])
    status, out, err = replay(run_cli, vault)
    assert status == 0 and out.startswith(f"{BTC} trades=1 ") and "rejects=1 " in out
    assert "1 of the 1 lines read were rejected" in err  # it holds a reject: counted as one


def test_a_run_that_rejects_most_lines_says_so_and_succeeds(vault, raw_dir, run_cli):
    write_lines(raw_dir(BTC) / DAY, [good(1), zero_size(2), "garbage", good(4), zero_size(5)])
    status, out, err = replay(run_cli, vault)
    assert status == 0
    assert out.startswith(f"{BTC} trades=2 ") and "rejects=3 " in out
    assert err.count("\n") == 1 and "3 of the 5 lines read were rejected" in err
    assert f"{DAY} line 2: sz must be > 0" in err and str(VaultPaths.of(vault, BTC).rejects) in err


def test_half_is_not_most(vault, raw_dir, run_cli):
    write_lines(raw_dir(BTC) / DAY, [good(1), zero_size(2), "garbage", good(4)])
    status, out, err = replay(run_cli, vault)
    assert status == 0 and err == "" and "rejects=2 " in out


def test_quiet_leaves_out_the_warning_never_the_failure(vault, raw_dir, run_cli):
    day = raw_dir(BTC) / DAY
    write_lines(day, [good(1), zero_size(2), zero_size(3)])
    status, _, err = run_cli("-q", "replay", "--instId", BTC, "--vault", str(vault))
    assert status == 0 and err == ""
    with day.open("a") as handle:
        handle.write("garbage\n")
    status, _, err = run_cli("-q", "replay", "--instId", BTC, "--vault", str(vault))
    assert status == 1 and "the 1 line read was rejected" in err


def test_with_all_one_instrument_failing_does_not_hide_the_other(vault, raw_dir, run_cli):
    write_lines(raw_dir(BTC) / DAY, [zero_size(1), zero_size(2)])
    write_lines(raw_dir(ETH) / DAY, [good(1, ETH), good(2, ETH)])
    status, out, err = run_cli("replay", "--all", "--vault", str(vault))
    assert status == 1
    assert out.startswith(f"{ETH} trades=2 ") and out.count("\n") == 1
    assert err.count("\n") == 1 and f"{BTC}: all 2 lines read were rejected" in err


def test_status_shows_such_an_instrument_as_a_problem_until_a_good_run(vault, raw_dir, run_cli):
    day = raw_dir(BTC) / DAY
    write_lines(day, [zero_size(1), "garbage"])
    assert replay(run_cli, vault)[0] == 1
    status, out, _ = run_cli("status", "--vault", str(vault), "--no-remember")
    assert status == 1
    assert f"{BTC}: PROBLEM: the last run rejected all 2 lines it read (first: {DAY} line 1: sz must be > 0" in out
    with day.open("a") as handle:  # most, not all, of the next run's lines
        handle.write("\n".join([good(3), zero_size(4), zero_size(5)]) + "\n")
    assert replay(run_cli, vault)[0] == 0
    status, out, _ = run_cli("status", "--vault", str(vault), "--no-remember", "--json")
    report = json.loads(out)
    assert status == 1 and report["ok"] is False
    assert any("rejected 2 of the 3 lines it read" in p for p in report["problems"])
    with day.open("a") as handle:
        handle.write(good(6) + "\n")
    assert replay(run_cli, vault)[0] == 0
    status, out, _ = run_cli("status", "--vault", str(vault), "--no-remember")
    assert status == 0 and "PROBLEM" not in out
    last = read_state(VaultPaths.of(vault, BTC).state).last_run
    assert last is not None and (last.lines, last.rejected, last.kept) == (1, 0, 1)


def test_a_run_reading_nothing_keeps_the_last_verdict(vault, raw_dir, run_cli):
    write_lines(raw_dir(BTC) / DAY, [zero_size(1)])
    assert replay(run_cli, vault)[0] == 1
    assert replay(run_cli, vault)[0] == 0  # read nothing: no new verdict, the old one stands
    status, out, _ = run_cli("status", "--vault", str(vault), "--no-remember")
    assert status == 1 and "rejected the 1 line it read" in out
