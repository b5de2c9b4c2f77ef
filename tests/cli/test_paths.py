"""Paths given on the command line that cannot be what they name are usage errors (SPEC §8).

A vault that is a regular file, an archive that is a folder, a chart whose folder does not
exist: each is refused with exit 2 and one ``vstream: ...`` line, before anything is written,
rather than surfacing later as an OS error (exit 1) or, for the chart, creating the folder.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

import pytest
from support import windows_argv

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


@pytest.mark.parametrize("below", [False, True], ids=["file", "below-a-file"])
def test_demo_into_a_file_says_it_is_a_file(run_cli: RunCli, tmp_path: Path, below: bool) -> None:
    # Not "is not empty (it may hold a vault)": there is no folder at all.
    (tmp_path / "f").write_text("x\n")
    target = tmp_path / "f" / "Vault" if below else tmp_path / "f"
    status, out, err = run_cli("demo", "--vault", str(target), "--hours", "0.1")
    expected = f"cannot be made: {tmp_path / 'f'} is a file" if below else f"--vault {target} is a file"
    assert_usage_error(status, err, expected)
    assert "not empty" not in err and out == ""
    assert (tmp_path / "f").read_text() == "x\n"


@pytest.mark.parametrize(
    "argv", [["signals", "--instId", BTC], ["signals", "--all"], ["chart", "--instId", BTC, "-o", "{tmp}/c.svg"]],
    ids=lambda a: " ".join(a[:2]),
)
def test_reading_a_vault_that_is_not_there_says_so(run_cli: RunCli, tmp_path: Path, argv: list[str]) -> None:
    vault = tmp_path / "no vault"
    status, out, err = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in argv], "--vault", str(vault))
    assert_usage_error(status, err, f"vault {vault} does not exist")
    assert "bars" not in err and out == ""
    assert not vault.exists() and not (tmp_path / "c.svg").exists()


@pytest.mark.parametrize(
    "path",
    [
        r"C:\Users\M.R Bear\Documents\RaveQuant\Rave_Quant_Vault",
        r"C:\Vault",
        "C:\\My Vault\\",
        r"D:\R&D (old)\Vault",
        r"E:\100%\x;y=z",
        "/tmp/a b/Vault",
    ],
)
def test_paths_are_quoted_for_the_shell_they_are_pasted_into(path: str) -> None:
    from vstream.cli.common import shell_quote

    win = shell_quote(path, windows=True)
    assert windows_argv(f"vstream replay --all --vault {win}") == ["vstream", "replay", "--all", "--vault", path]
    if any(c in path for c in " &()%;="):
        assert win.startswith('"') and win.endswith('"')  # cmd.exe sees no & ( ) ; = outside quotes
    else:
        assert win == path  # nothing to quote: left as typed
    posix = shell_quote(path, windows=False)
    assert shlex.split(f"vstream replay --all --vault {posix}") == ["vstream", "replay", "--all", "--vault", path]


@pytest.mark.parametrize("windows", [False, True], ids=["posix", "windows"])
def test_the_demo_prints_paths_that_paste_back_whole(
    run_cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, windows: bool
) -> None:
    import vstream.cli.common as common

    monkeypatch.setattr(common, "ON_WINDOWS", windows)
    split = windows_argv if windows else shlex.split
    vault = tmp_path / "M.R Bear" / "demo vault"
    status, out, err = run_cli("demo", "--vault", str(vault), "--hours", "0.2")
    assert status == 0, err
    lines = out.splitlines()
    nxt = next(line for line in lines if line.startswith("next: "))
    assert split(nxt[len("next: "):]) == ["vstream", "replay", "--all", "--vault", str(vault)]
    shown = {label: split(line.split(": ", 1)[1]) for line in lines
             for label in ("sample vault", "bars", "rejects") if line.strip().startswith(label + ": ")}  # fmt: skip
    assert shown["sample vault"] == [str(vault)]
    printed = [split(line.split(": ", 1)[1])[0] for line in lines if line.strip().startswith(("bars: ", "rejects: "))]
    assert len(printed) == 4
    for path in printed:
        assert Path(path).is_file(), path
