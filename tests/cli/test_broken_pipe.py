"""A reader that closes stdout early (``vstream signals ... | head -1``) is not a failure.

Each command, run as a real process whose stdout is a pipe closed by its reader, exits quietly:
exit 0 (``status`` keeps its health verdict), nothing on stderr — neither a ``vstream:`` line
nor Python's "Exception ignored ... BrokenPipeError" at interpreter exit.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from vstream.cli import main
from vstream.generate import generate_vault
from vstream.instruments import VaultPaths
from vstream.testing.fake_okx import FakeOkxServer

BTC = "BTC-USDT-SWAP"
ETH = "ETH-USDT-SWAP"
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Five hours of two instruments: the --json bars (~300 KB) overflow a pipe's buffer.
    vault = tmp_path_factory.mktemp("pipe") / "Vault"
    generate_vault(vault, instruments=(BTC, ETH), hours=5, seed=3)
    assert main(["-q", "replay", "--all", "--vault", str(vault)]) == 0
    return vault


def run_with_stdout_closed(*argv: str) -> tuple[int, str]:
    """Run ``vstream ARGV`` with stdout a pipe whose reader is gone before anything is written."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vstream", *argv], cwd=REPO, env=ENV,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # interpreter start-up takes far longer than this
    err = proc.stderr.read().decode()
    return proc.wait(timeout=120), err


COMMANDS = [
    ["signals", "--all"],
    ["signals", "--all", "--json"],
    ["signals", "--instId", BTC, "--absorption"],
    ["status", "--no-remember"],
    ["replay", "--all"],
    ["replay", "--instId", BTC],
    ["chart", "--instId", BTC, "-o", "{tmp}/c.svg"],
    ["--version"],
    ["--help"],
    ["replay", "--help"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_stdout_closed_before_anything_is_written_exits_quietly(
    replayed: Path, tmp_path: Path, argv: list[str]
) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if not args[0].startswith("-") and "--help" not in args:
        args += ["--vault", str(replayed)]
    status, err = run_with_stdout_closed(*args)
    assert err == "", err
    assert status == 0


def test_stdout_closed_keeps_the_status_verdict(replayed: Path, tmp_path: Path) -> None:
    # A problem found by status still exits 1 when nobody reads the table.
    vault = tmp_path / "v"
    shutil.copytree(replayed, vault)
    VaultPaths.of(vault, BTC).state.write_text("{not json")
    status, err = run_with_stdout_closed("status", "--no-remember", "--vault", str(vault))
    assert err == "", err
    assert status == 1


def test_stdout_closed_keeps_a_failed_instrument_of_replay(replayed: Path, tmp_path: Path) -> None:
    # The summary lines go nowhere; the failure of the other instrument is still reported.
    vault = tmp_path / "v"
    shutil.copytree(replayed, vault)
    VaultPaths.of(vault, ETH).state.write_text("{not json")
    status, err = run_with_stdout_closed("replay", "--instId", BTC, "--instId", ETH, "--vault", str(vault))
    assert status == 2
    assert len(err.splitlines()) == 1 and err.startswith(f"vstream: {ETH}: state") and "--rebuild" in err


def test_import_okx_with_stdout_closed_imports_and_exits_quietly(tmp_path: Path) -> None:
    archive = tmp_path / "2025-01-01.csv"
    archive.write_text(
        "instrument_name,trade_id,side,price,size,created_time\n"
        f"{BTC},1,buy,42000.1,2,1735689600000\n"
    )
    status, err = run_with_stdout_closed("import-okx", str(archive), "--vault", str(tmp_path / "V"))
    assert (status, err) == (0, "")
    assert (VaultPaths.of(tmp_path / "V", BTC).raw_dir / "2025-01-01.jsonl").exists()


def test_head_reading_one_line_of_many(replayed: Path) -> None:
    # vstream signals --all --json | head -1, with a real head.
    producer = subprocess.Popen(
        [sys.executable, "-m", "vstream", "signals", "--all", "--json", "--vault", str(replayed)],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert producer.stdout is not None and producer.stderr is not None
    head = subprocess.run(["head", "-1"], stdin=producer.stdout, capture_output=True, timeout=120)
    producer.stdout.close()  # head holds the only reader: when it exits, the pipe is closed
    err = producer.stderr.read().decode()
    assert producer.wait(timeout=120) == 0
    assert err == "", err
    assert head.stdout.startswith(b'{"timestamp_utc":') and head.stdout.count(b"\n") == 1


@pytest.mark.slow
async def test_live_with_stdout_closed_stops_cleanly_and_checkpoints(tmp_path: Path) -> None:
    # live | head -1: once nobody reads the bars, the session ends as on SIGTERM, exit 0.
    vault = tmp_path / "Vault"
    minute = (int(time.time()) // 60 - 3) * 60_000
    trades: list[dict[str, Any]] = [
        {"instId": BTC, "tradeId": str(i + 1), "px": "42000.1", "sz": "2", "side": "buy",
         "ts": str(minute + i * 30_000)}
        for i in range(5)
    ]  # fmt: skip
    async with FakeOkxServer() as okx:
        read_end, write_end = os.pipe()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vstream", "-q", "live", "--instId", BTC, "--vault", str(vault),
            "--ws-url", okx.ws_url, "--rest-url", okx.rest_url,
            env={**ENV, "VSTREAM_CHECKPOINT_INTERVAL": "0.05"}, cwd=str(REPO),
            stdout=write_end, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        os.close(write_end)
        os.close(read_end)  # the reader is gone before the first bar
        try:
            await okx.wait_subscribed(BTC, timeout=30)
            await okx.push(trades)
            async with asyncio.timeout(30):
                _, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
    assert err.decode() == ""
    assert proc.returncode == 0
    assert VaultPaths.of(vault, BTC).output().read_bytes().count(b"\n") >= 1  # checkpointed
