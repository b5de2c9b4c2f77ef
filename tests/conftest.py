"""Shared fixtures. Plain helpers live in support.py (this folder is on sys.path)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings

from vstream.cli import main
from vstream.instruments import VaultPaths

# CI explores the same examples every run, so a red CI always means a reproducible failure;
# locally hypothesis keeps searching for new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


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

