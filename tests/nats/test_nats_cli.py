"""The command-line words of the distributed mode: summary lines, exit codes, one-line errors."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from nats_support import read_subjects

from vstream.cli import main
from vstream.generate import generate_vault
from vstream.testing.nats_server import NatsServer

BTC = "BTC-USDT-SWAP"


async def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = await asyncio.to_thread(main, list(args))
    out = capsys.readouterr()
    return status, out.out, out.err


async def test_publish_prints_a_summary_and_a_second_run_adds_nothing(
    nats_server: NatsServer, nc: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vault = tmp_path / "Vault"
    generate_vault(vault, instruments=(BTC,), hours=1, seed=8)
    status, out, err = await run(capsys, "publish", "--nats", nats_server.url, "--vault", str(vault), "--all", "--final")
    assert status == 0, err
    assert out.startswith(f"{BTC} messages=") and " trades=" in out and "rejects=10" in out
    status, out, err = await run(capsys, "publish", "--nats", nats_server.url, "--vault", str(vault), "--instId", BTC, "--final")
    assert status == 0, err
    assert f"{BTC} messages=0 trades=0" in out
    messages = await read_subjects(nc, "VSTREAM_TRADES", "vstream.trades.>")
    assert messages[-1][2].get("Vstream-End") == "1"
    assert sum(1 for m in messages if m[2].get("Vstream-End")) == 1


async def test_usage_and_connection_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = await run(capsys, "worker", "--nats", "nats://127.0.0.1:1", "--lease-ttl", "0")
    assert status == 2 and err.count("\n") == 1 and "--lease-ttl" in err
    status, _, err = await run(capsys, "worker", "--nats", "nats://127.0.0.1:1", "--instId", "BTC.X")
    assert status == 2 and "BTC.X" in err and err.count("\n") == 1
    status, _, err = await run(
        capsys, "publish", "--nats", "nats://127.0.0.1:1", "--vault", str(tmp_path), "--instId", BTC
    )
    assert status == 1 and err.count("\n") == 1 and "cannot connect to NATS" in err


@pytest.mark.parametrize(
    "command",
    [
        ["publish", "--instId", BTC, "--vault", "V"],
        ["ingest", "--instId", BTC],
        ["worker"],
        ["sink-jsonl", "--all", "--vault", "V"],
        ["cluster-status"],
    ],
)
@pytest.mark.parametrize("url", ["http://127.0.0.1:4222", "nats://127.0.0.1:4222,https://127.0.0.1:4222"])
async def test_a_url_that_is_not_nats_is_a_usage_error_of_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], url: str
) -> None:
    """Before any work (ingest would ask OKX first) and without a DNS lookup of "http"."""
    bad = url.split(",")[-1]
    args = [str(tmp_path / a) if a == "V" else a for a in command[1:]]
    status, out, err = await run(capsys, command[0], "--nats", url, *args)
    assert status == 2, err
    assert err == f"vstream: --nats: {bad!r} is not a nats:// URL (use nats://HOST:PORT)\n"
    assert out == ""
