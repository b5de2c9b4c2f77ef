"""Trade files replay does not read are named, never passed over in silence (SPEC §2).

Replay reads ``{DATE}.jsonl`` and ``{DATE}.jsonl.gz`` only. A day saved as
``BTC-USDT-SWAP-2025-12-15.jsonl`` or ``2025-12-15.json`` used to vanish from the bars without a
word; now each run says once per instrument which files it leaves alone, ``replay --all`` names
the instrument folders it passes over, and ``status`` lists the files as a problem.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from support import trade_line, write_lines

from vstream.cli import main
from vstream.instruments import VaultPaths

BTC, ETH, SOL = "BTC-USDT-SWAP", "ETH-USDT-SWAP", "SOL-USDT-SWAP"
DAY1 = 1_765_670_400_000  # 2025-12-14T00:00:00Z
ODD = ["2025-12-15.json", "2025-12-16.jsonl.bak", f"{BTC}-2025-12-17.jsonl"]


def _day(raw: Path, name: str, start: int, inst: str, tid: int = 1) -> None:
    write_lines(raw / name, [trade_line(tid + i, "100", "1", "buy", start + i * 30_000, inst) for i in range(6)])


@pytest.fixture
def odd_vault(vault: Path, raw_dir: Callable[[str], Path]) -> Path:
    for inst in (BTC, ETH):
        raw = raw_dir(inst)
        _day(raw, "2025-12-14.jsonl", DAY1, inst)
        # not trade files, or hidden: not a word about them
        (raw / "desktop.ini").write_text("[.ShellClassInfo]\r\n")
        (raw / "notes.txt").write_text("exporter restarted 14:05\n")
        (raw / ".2025-12-15.jsonl.tmp").write_text("")
    for n, name in enumerate(ODD, 1):
        _day(raw_dir(BTC), name, DAY1 + n * 86_400_000, BTC, tid=100 * n)
    return vault


def _warnings(err: str, caplog: pytest.LogCaptureFixture, what: str) -> list[str]:
    """The lines said on stderr (worker processes) or logged here (the test's logging
    capture takes this process's) that hold ``what``, without the ``vstream: `` prefix."""
    lines = [line.removeprefix("vstream: ") for line in err.splitlines()]
    lines += [record.getMessage() for record in caplog.records]
    caplog.clear()
    return [line for line in lines if what in line]


def test_replay_names_the_files_it_does_not_read_once(
    odd_vault: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["replay", "--instId", BTC, "--instId", ETH, "--vault", str(odd_vault), "--final"]) == 0
    out, err = capfd.readouterr()
    warned = _warnings(err, caplog, "not reading")
    assert len(warned) == 1, err  # BTC only; ETH holds nothing odd, litter is not worth a word
    line = warned[0]
    assert line.startswith(f"{BTC}: not reading 3 file(s) in {VaultPaths.of(odd_vault, BTC).raw_dir}")
    for name in ODD:
        assert name in line
    assert "desktop.ini" not in err and "notes.txt" not in err and ".tmp" not in err
    # ... and they are still not read: only the 2025-12-14 file made bars
    assert f"{BTC} trades=6 " in out
    days = {json.loads(x)["timestamp_utc"][:10] for x in VaultPaths.of(odd_vault, BTC).output().read_text().splitlines()}
    assert days == {"2025-12-14"}
    # every run says it again (once): the next scheduled run must not go quiet
    assert main(["replay", "--instId", BTC, "--vault", str(odd_vault)]) == 0
    assert len(_warnings(capfd.readouterr().err, caplog, "not reading 3 file(s)")) == 1


def test_replay_all_names_them_for_every_instrument_and_the_folders_it_passes_over(
    odd_vault: Path, raw_dir: Callable[[str], Path], capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _day(raw_dir(ETH), "eth.jsonl", DAY1 + 86_400_000, ETH, tid=100)
    _day(raw_dir(SOL), "SOL-USDT-SWAP 2025-12-14.jsonl", DAY1, SOL)  # nothing replay would read
    # --all runs the instruments in worker processes: their warnings reach the same stderr
    assert main(["replay", "--all", "--vault", str(odd_vault), "--final"]) == 0
    err = capfd.readouterr().err
    said = _warnings(err, caplog, "")
    assert len([w for w in said if w.startswith(f"{BTC}: not reading 3 file(s)")]) == 1, said
    assert len([w for w in said if w.startswith(f"{ETH}: not reading 1 file(s)")]) == 1, said
    sol = [w for w in said if w.startswith(f"not replaying {VaultPaths.of(odd_vault, SOL).raw_dir}")]
    assert len(sol) == 1 and "SOL-USDT-SWAP 2025-12-14.jsonl" in sol[0], said


def test_an_instrument_with_only_such_files_is_an_error_naming_them(
    vault: Path, raw_dir: Callable[[str], Path], run_cli: Callable[..., tuple[int, str, str]]
) -> None:
    _day(raw_dir(BTC), f"{BTC}-2025-12-14.jsonl", DAY1, BTC)
    status, _, err = run_cli("replay", "--instId", BTC, "--vault", str(vault))
    assert status == 2, err
    assert f"no trade files in {VaultPaths.of(vault, BTC).raw_dir}" in err
    assert f"it holds {BTC}-2025-12-14.jsonl" in err


def test_status_shows_the_files_replay_does_not_read(
    odd_vault: Path, raw_dir: Callable[[str], Path], run_cli: Callable[..., tuple[int, str, str]]
) -> None:
    _day(raw_dir(SOL), "trades.jsonl", DAY1, SOL)
    assert run_cli("replay", "--instId", BTC, "--instId", ETH, "--vault", str(odd_vault), "--final")[0] == 0
    status, out, err = run_cli("status", "--vault", str(odd_vault), "--no-remember")
    assert status == 1, err  # files with trades nobody reads: not healthy
    rows = {line.split()[0]: line.split()[-1] for line in out.splitlines()[1:4]}
    assert rows == {BTC: "PROBLEM", ETH: "ok", SOL: "PROBLEM"}, out
    btc = [line for line in out.splitlines() if line.startswith(f"{BTC}: PROBLEM: replay does not read 3 file(s)")]
    assert len(btc) == 1 and all(name in btc[0] for name in ODD), out
    assert f"{SOL}: PROBLEM: replay does not read 1 file(s)" in out and "trades.jsonl" in out
    assert "desktop.ini" not in out
