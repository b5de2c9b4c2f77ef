"""The examples run as a user would run them, so they cannot rot."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from vstream.generate import generate_vault

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_replay_signals_bot_reports_t4_absorption(tmp_path):
    generate_vault(tmp_path / "v", instruments=["BTC-USDT-SWAP"], hours=4, seed=11)
    out = run_example("replay_signals_bot.py", "--vault", str(tmp_path / "v"), cwd=tmp_path)
    alerts = [line for line in out.splitlines() if "absorbed by" in line]
    assert alerts and out.splitlines()[-1] == f"{len(alerts)} absorption alerts"
    assert not (tmp_path / "v" / "derived").exists()  # the bot only reads the vault


def _run(name: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_replay_signals_bot_takes_a_ct_val_and_says_when_one_is_missing(tmp_path):
    # MATIC-USDT-SWAP is in no built-in table: its contract value must be given.
    raw = tmp_path / "v/raw/okx/trades_perps/MATIC-USDT-SWAP"
    raw.mkdir(parents=True)
    start = 1_692_547_260_000
    lines = [
        json.dumps({"instId": "MATIC-USDT-SWAP", "tradeId": str(100 + i), "px": f"0.{5500 + i}",
                    "sz": "10", "side": "buy" if i % 2 else "sell", "ts": str(start + i * 7_000)})
        for i in range(40)
    ]  # fmt: skip
    (raw / "2023-08-20.jsonl").write_text("\n".join(lines) + "\n")
    missing = _run("replay_signals_bot.py", "--vault", str(tmp_path / "v"), "--instId", "MATIC-USDT-SWAP", cwd=tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert len(missing.stderr.splitlines()) == 1 and "--ct-val MATIC-USDT-SWAP=VALUE" in missing.stderr
    given = _run("replay_signals_bot.py", "--vault", str(tmp_path / "v"), "--instId", "MATIC-USDT-SWAP",
                 "--ct-val", "MATIC-USDT-SWAP=10", cwd=tmp_path)  # fmt: skip
    assert given.returncode == 0, given.stderr
    assert given.stdout.splitlines()[-1] == "0 absorption alerts"  # 5 bars: still warming up
    config = tmp_path / "vstream.toml"
    config.write_text('[ct_val]\n"MATIC-USDT-SWAP" = 10\n')
    configured = _run("replay_signals_bot.py", "--vault", str(tmp_path / "v"), "--instId", "MATIC-USDT-SWAP",
                      "--config", str(config), cwd=tmp_path)  # fmt: skip
    assert configured.returncode == 0 and configured.stdout == given.stdout, configured.stderr
    assert not (tmp_path / "v" / "derived").exists()  # the bot only reads the vault


def test_replay_signals_bot_without_a_vault_cleans_up_its_sample(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = _run("replay_signals_bot.py", cwd=tmp_path, env={"TMPDIR": str(scratch)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].endswith("absorption alerts")
    assert list(scratch.iterdir()) == []
    # an instrument the generator cannot make is a clear error, and leaves nothing either
    odd = _run("replay_signals_bot.py", "--instId", "MATIC-USDT-SWAP", cwd=tmp_path, env={"TMPDIR": str(scratch)})
    assert odd.returncode == 2 and "Traceback" not in odd.stderr and len(odd.stderr.splitlines()) == 1
    assert list(scratch.iterdir()) == []


def test_sqlite_sink_without_a_vault_cleans_up_and_takes_a_ct_val(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"TMPDIR": str(scratch)}
    done = _run("sqlite_sink.py", "--db", str(tmp_path / "a.sqlite"), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("of them T4)") and list(scratch.iterdir()) == []
    odd = _run("sqlite_sink.py", "--instId", "MATIC-USDT-SWAP", cwd=tmp_path, env=env)
    assert odd.returncode == 2 and "Traceback" not in odd.stderr and len(odd.stderr.splitlines()) == 1
    assert list(scratch.iterdir()) == []
    raw = tmp_path / "v/raw/okx/trades_perps/MATIC-USDT-SWAP"
    raw.mkdir(parents=True)
    lines = [
        json.dumps({"instId": "MATIC-USDT-SWAP", "tradeId": str(100 + i), "px": f"0.{5500 + i}",
                    "sz": "10", "side": "sell", "ts": str(1_692_547_260_000 + i * 7_000)})
        for i in range(40)
    ]  # fmt: skip
    (raw / "2023-08-20.jsonl").write_text("\n".join(lines) + "\n")
    args = ("--vault", str(tmp_path / "v"), "--instId", "MATIC-USDT-SWAP", "--db", str(tmp_path / "m.sqlite"))
    missing = _run("sqlite_sink.py", *args, cwd=tmp_path)
    assert missing.returncode == 2 and "--ct-val MATIC-USDT-SWAP=VALUE" in missing.stderr
    given = _run("sqlite_sink.py", *args, "--ct-val", "MATIC-USDT-SWAP=10", cwd=tmp_path)
    assert given.returncode == 0 and given.stdout.startswith("5 bars"), given.stderr


def test_sqlite_sink_stores_every_bar_idempotently(tmp_path):
    from vstream.cli import main

    generate_vault(tmp_path / "v", instruments=["BTC-USDT-SWAP"], hours=2, seed=5)
    db = tmp_path / "bars.sqlite"
    for _ in range(2):
        out = run_example("sqlite_sink.py", "--vault", str(tmp_path / "v"), "--db", str(db), cwd=tmp_path)
    assert main(["replay", "--instId", "BTC-USDT-SWAP", "--vault", str(tmp_path / "v"), "--final"]) == 0
    lines = (tmp_path / "v/derived/volume/okx/perps/BTC-USDT-SWAP/volume_1m.jsonl").read_text().splitlines()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT timestamp_utc, total_volume, volume_tier FROM bars ORDER BY timestamp_utc").fetchall()
    assert len(rows) == len(lines) and out.startswith(f"{len(lines)} bars")


    assert [(b["timestamp_utc"], b["total_volume"], b["volume_tier"]) for b in map(json.loads, lines)] == rows


async def test_live_strategy_prints_bars_from_the_fake_okx_server(tmp_path):
    import asyncio
    import time

    from vstream.testing import FakeOkxServer

    start = (int(time.time()) // 60 - 4) * 60_000  # four minutes ago, a minute start
    trades = [
        {"instId": "BTC-USDT-SWAP", "tradeId": str(100 + i), "px": f"{60000 + i}.5", "sz": str(1 + i % 4),
         "side": "buy" if i % 3 else "sell", "ts": str(start + i * 9_000)}
        for i in range(24)
    ]  # fmt: skip
    async with FakeOkxServer() as srv:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "examples" / "live_strategy.py"), "--instId", "BTC-USDT-SWAP",
            "--ws-url", srv.ws_url, "--rest-url", srv.rest_url, "--max-bars", "3",
            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=str(tmp_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await srv.wait_subscribed("BTC-USDT-SWAP", timeout=30)
        await srv.push(trades)
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    # stop() after the third bar; the minute that was due on the clock by then closes too
    assert lines[-1] in ("3 bars", "4 bars")
    assert [line.split()[0] for line in lines[:3]] == [
        time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime(start // 1000 + 60 * k)) for k in range(3)
    ]
    assert all("cum_delta=" in line for line in lines[:3])


def test_sqlite_sink_refuses_a_database_it_cannot_open_before_replaying(tmp_path):
    generate_vault(tmp_path / "v", instruments=["BTC-USDT-SWAP"], hours=0.5, seed=5)
    (tmp_path / "not-a-db").write_text("plain text, not SQLite\n" * 100)
    for db in (tmp_path / "nonexist" / "s.db", tmp_path, tmp_path / "not-a-db"):
        done = _run("sqlite_sink.py", "--vault", str(tmp_path / "v"), "--db", str(db), cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
        assert done.stderr.startswith("sqlite_sink: ") and str(db) in done.stderr, done.stderr
        assert done.stdout == ""
    assert not (tmp_path / "nonexist").exists()
