"""Options every command shares, and what ``--help``, ``--version`` and README promise."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest

from vstream.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
RunCli = Callable[..., tuple[int, str, str]]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return dict(sub.choices)  # type: ignore[arg-type]


def test_version_prints_the_package_version(run_cli: RunCli) -> None:
    status, out, err = run_cli("--version")
    assert status == 0, err
    assert out == f"vstream {version('vstream')}\n" == "vstream 0.1.0\n"


@pytest.mark.parametrize("name", sorted(_subparsers()))
def test_quiet_works_before_and_after_the_subcommand(name: str) -> None:
    required = {
        "replay": ["--all"], "live": ["--instId", "BTC-USDT-SWAP"], "signals": ["--all"],
        "chart": ["--instId", "BTC-USDT-SWAP", "-o", "x.svg"], "import-okx": ["a.zip"],
        "levels": ["--instId", "BTC-USDT-SWAP"],
        "ingest": ["--nats", "nats://127.0.0.1:4222", "--instId", "BTC-USDT-SWAP"],
        "publish": ["--nats", "nats://127.0.0.1:4222", "--all"], "worker": ["--nats", "nats://127.0.0.1:4222"],
        "sink-jsonl": ["--nats", "nats://127.0.0.1:4222", "--all"], "cluster-status": ["--nats", "nats://127.0.0.1:4222"],
        "alerts": ["list", "--all"],
    }.get(name, [])  # fmt: skip
    parse = build_parser().parse_args
    assert parse([name, *required]).quiet is False
    assert parse(["-q", name, *required]).quiet is True
    assert parse([name, "-q", *required]).quiet is True
    assert parse([name, *required, "--quiet"]).quiet is True


def test_quiet_after_the_subcommand_silences_the_run(tmp_path: Path) -> None:
    # A replay of a vault with no trade files logs nothing worth a warning; what matters is
    # that -q after the subcommand is accepted and the summary still goes to stdout.
    raw = tmp_path / "V" / "raw" / "okx" / "trades_perps" / "BTC-USDT-SWAP"
    raw.mkdir(parents=True)
    (raw / "2025-12-14.jsonl").write_text(
        '{"instId":"BTC-USDT-SWAP","tradeId":"1","px":"100","sz":"1","side":"buy","ts":"1765747980000"}\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "vstream", "replay", "-q", "--all", "--vault", str(tmp_path / "V"), "--final"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("BTC-USDT-SWAP trades=1 bars=1 ") and done.stderr == ""


@pytest.mark.parametrize("name", sorted(_subparsers()))
def test_every_subcommand_has_a_description(name: str) -> None:
    parser = _subparsers()[name]
    assert parser.description and len(parser.description) > 40, name
    assert " ".join(parser.description.split()[:4]) in " ".join(parser.format_help().split())


def test_readme_puts_the_venv_on_path_before_the_first_bare_vstream() -> None:
    lines = README.splitlines()
    activate = next(i for i, line in enumerate(lines) if line.strip().startswith(". .venv/bin/activate"))
    bare = next(i for i, line in enumerate(lines) if re.match(r"\s+(\$ )?vstream ", line))
    assert activate < bare


def test_readme_import_example_closes_its_last_minute() -> None:
    section = README.split("### Importing OKX trade archives", 1)[1].split("\n- ", 1)[0]
    replays = [line for line in section.splitlines() if "vstream replay" in line]
    assert replays and all("--final" in line for line in replays), replays


def test_readme_says_which_tests_need_the_data_folder() -> None:
    for name in ("tests/test_real_data.py", "tests/test_archive.py"):
        assert name in README
    assert "skipped" in README.split("tests/test_real_data.py", 1)[1][:600]
