"""Progress display: drawn on a terminal (a fake one here), silent otherwise."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support import REAL_DATA

from vstream.archive import import_archives
from vstream.cli import main
from vstream.cli.replay import replay_one
from vstream.generate import generate_vault
from vstream.progress import Progress
from vstream.settings import Settings


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_draws_rate_and_eta_on_a_terminal() -> None:
    term, clock = FakeTerminal(), Clock()
    progress = Progress("replay", stream=term, clock=clock, interval=0.5)
    assert progress.enabled
    progress.add_total(4 << 20)
    clock.now += 2.0
    progress.advance(1 << 20, items=50_000)
    first = term.getvalue()
    assert first.startswith("\r") and "replay" in first
    assert " 25.0%" in first and "1.0 MB/4.0 MB" in first
    assert "50k trades" in first and "25k trades/s" in first
    assert "ETA 0:00:06" in first  # 3 MB left at 0.5 MB/s
    clock.now += 0.1
    progress.advance(1 << 20, items=10)
    assert term.getvalue() == first  # within the interval: not redrawn
    clock.now += 1.0
    progress.advance(0)
    assert " 50.0%" in term.getvalue()
    progress.close()
    assert term.getvalue().endswith("\n")


def test_silent_when_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress("replay", stream=stream, clock=Clock())
    assert not progress.enabled
    progress.add_total(100)
    progress.advance(50, items=5)
    progress.close()
    assert stream.getvalue() == ""
    assert "50.0%" in progress.line()  # the numbers are still kept


def test_a_broken_terminal_does_not_fail_the_run() -> None:
    term = FakeTerminal()
    progress = Progress("x", stream=term, clock=Clock(), interval=0)
    term.close()
    progress.advance(10)
    progress.close()
    assert not progress.enabled


async def test_replay_reports_its_whole_input(tmp_path: Path) -> None:
    vault = tmp_path / "Vault"
    report = generate_vault(vault, instruments=("BTC-USDT-SWAP",), hours=3, seed=5)
    term = FakeTerminal()
    progress = Progress("replay", stream=term, interval=0)
    line = await replay_one(
        vault, "BTC-USDT-SWAP", Settings(), final=True, rebuild=False, strict=False, progress=progress
    )
    progress.close()
    total = sum(p.stat().st_size for p in report.instruments["BTC-USDT-SWAP"].files)
    assert progress.total == total and progress.done == total
    trades = int(line.split("trades=")[1].split()[0])
    assert progress.items >= trades  # every trade delivered, duplicates/late ones included
    assert "100.0%" in term.getvalue().splitlines()[-1]
    # A second run has nothing left to read: its progress total is 0.
    again = Progress("replay", stream=FakeTerminal(), interval=0)
    await replay_one(vault, "BTC-USDT-SWAP", Settings(), final=True, rebuild=False, strict=False, progress=again)
    assert again.total == 0


def test_cli_replay_shows_progress_only_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    vault = tmp_path / "Vault"
    generate_vault(vault, instruments=("BTC-USDT-SWAP", "ETH-USDT-SWAP"), hours=1, seed=2)
    assert main(["replay", "--all", "--vault", str(vault), "--final"]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "%" not in captured.err  # not a terminal: quiet
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert main(["replay", "--all", "--vault", str(vault), "--final", "--rebuild"]) == 0
    text = term.getvalue()
    assert "\rreplay 2 instrument(s)" in text and "100.0%" in text and text.endswith("\n")
    out = capsys.readouterr().out
    assert out.count("trades=") == 2  # summary lines still on stdout
    quiet = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert main(["-q", "replay", "--all", "--vault", str(vault), "--final", "--rebuild"]) == 0
    assert quiet.getvalue() == ""


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/data/real is not beside the checkout")
def test_import_shows_progress_on_a_terminal(tmp_path: Path, run_cli: Callable[..., tuple[int, str, str]]) -> None:
    term = FakeTerminal()
    progress = Progress("import-okx", items="rows", stream=term, interval=0)
    import_archives(tmp_path / "Vault", [REAL_DATA / "stonkylab_MATIC-USDT-SWAP_2023-08-21_one_minute.csv"],
                    progress=progress)  # fmt: skip
    progress.close()
    assert progress.items == 14 and "100.0%" in term.getvalue() and "14 rows" in term.getvalue()
