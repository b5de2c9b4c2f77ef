"""Shared fixtures. Plain helpers live in support.py (this folder is on sys.path)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from vstream.cli import main
from vstream.instruments import VaultPaths


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    return tmp_path / "Vault"


@pytest.fixture
def raw_dir(vault: Path) -> Callable[[str], Path]:
    def make(inst: str = "BTC-USDT-SWAP") -> Path:
        path = VaultPaths.of(vault, inst).raw_dir
        path.mkdir(parents=True, exist_ok=True)
        return path

    return make


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run ``vstream ARGS`` in-process; return (exit status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        status = main(list(args))
        out = capsys.readouterr()
        return status, out.out, out.err

    return run

