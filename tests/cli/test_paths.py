"""Paths given on the command line that cannot be what they name are usage errors (SPEC §8).

A vault that is a regular file, an archive that is a folder, a chart whose folder does not
exist: each is refused with exit 2 and one ``vstream: ...`` line, before anything is written,
rather than surfacing later as an OS error (exit 1) or, for the chart, creating the folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from vstream.chart import render, write_chart
from vstream.errors import ConfigError
from vstream.generate import generate_vault
from vstream.instruments import VaultPaths
from vstream.query import read_bars

BTC = "BTC-USDT-SWAP"
RunCli = Callable[..., tuple[int, str, str]]


def assert_usage_error(status: int, err: str, *needles: str) -> None:
    assert status == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vstream: "), err
    assert "unexpected" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


VAULT_COMMANDS = [
    ["replay", "--instId", BTC],
    ["replay", "--all"],
    ["replay", "--instId", BTC, "--rebuild"],
    ["status"],
    ["signals", "--all"],
    ["signals", "--instId", BTC],
    ["chart", "--instId", BTC, "-o", "{tmp}/c.svg"],
    ["levels", "--instId", BTC],
    ["import-okx", "{tmp}/a.csv"],
    # loopback URLs with closed ports: refused or not, it must never reach OKX
    ["live", "--instId", BTC, "--rest-url", "http://127.0.0.1:9", "--ws-url", "ws://127.0.0.1:9"],
]


@pytest.mark.parametrize("argv", VAULT_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_a_vault_that_is_a_file_is_a_usage_error(run_cli: RunCli, tmp_path: Path, argv: list[str]) -> None:
    vault = tmp_path / "f"
    vault.write_text("x\n")
    (tmp_path / "a.csv").write_text("instrument_name,trade_id,side,price,size,created_time\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    status, _, err = run_cli(*args, "--vault", str(vault))
    assert_usage_error(status, err, f"vault {vault} is not a folder")
    assert vault.read_text() == "x\n"
    assert not (tmp_path / "c.svg").exists()


def test_a_vault_from_the_environment_that_is_a_file_is_a_usage_error(
    run_cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault = tmp_path / "f"
    vault.write_text("x\n")
    monkeypatch.setenv("VSTREAM_VAULT", str(vault))
    status, _, err = run_cli("status")
    assert_usage_error(status, err, f"vault {vault} is not a folder")


def test_a_vault_below_a_file_is_a_usage_error(run_cli: RunCli, tmp_path: Path) -> None:
    # Not "does not exist": it cannot exist, and replay must not try to create it.
    (tmp_path / "f").write_text("x\n")
    vault = tmp_path / "f" / "Vault"
    status, _, err = run_cli("replay", "--instId", BTC, "--vault", str(vault))
    assert_usage_error(status, err, f"{tmp_path / 'f'} is not a folder")


@pytest.mark.parametrize("kind", ["folder", "missing"])
def test_an_archive_that_is_not_a_file_is_a_usage_error(run_cli: RunCli, tmp_path: Path, kind: str) -> None:
    good = tmp_path / "2025-01-01.csv"
    good.write_text(
        "instrument_name,trade_id,side,price,size,created_time\n"
        f"{BTC},1,buy,42000.1,2,1735689600000\n"
    )
    bad = tmp_path / "dir"
    if kind == "folder":
        bad.mkdir()
    vault = tmp_path / "Vault"
    status, _, err = run_cli("import-okx", str(good), str(bad), "--vault", str(vault))
    assert_usage_error(status, err, str(bad), "is a folder" if kind == "folder" else "does not exist")
    assert not vault.exists()  # refused before the good archive was imported


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vstream.cli import main

    vault = tmp_path_factory.mktemp("paths") / "Vault"
    generate_vault(vault, instruments=(BTC,), hours=0.5, seed=5)
    assert main(["-q", "replay", "--all", "--vault", str(vault), "--final"]) == 0
    return vault


@pytest.mark.parametrize("below", ["missing", "file"])
def test_a_chart_into_a_folder_that_is_not_there_is_refused_not_created(
    replayed: Path, run_cli: RunCli, tmp_path: Path, below: str
) -> None:
    parent = tmp_path / "nonexist"
    if below == "file":
        parent.write_text("x\n")
    target = parent / "x.svg"
    status, out, err = run_cli("chart", "--vault", str(replayed), "--instId", BTC, "-o", str(target))
    assert_usage_error(status, err, str(parent))
    assert out == ""
    assert not parent.is_dir()


def test_write_chart_never_creates_folders(replayed: Path, tmp_path: Path) -> None:
    bars = [bar for bar, _ in read_bars(VaultPaths.of(replayed, BTC), "1m", None, None)]
    with pytest.raises(ConfigError, match="does not exist"):
        write_chart(render(bars), tmp_path / "a" / "b.svg")
    assert not (tmp_path / "a").exists()
