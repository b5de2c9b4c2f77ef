"""The command line: entry points, config file, usage errors, the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support import trade_line, write_lines

from vstream import VaultPaths

ROOT = Path(__file__).resolve().parents[1]
INST = "BTC-USDT-SWAP"
M0 = 1_765_747_980_000


def test_python_dash_m_vstream_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "vstream", "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0 and "replay" in done.stdout
    done = subprocess.run([sys.executable, "-m", "vstream", "replay"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("vstream: ") and len(done.stderr.splitlines()) == 1


def test_config_file_and_flags_layer_over_defaults(vault, raw_dir, run_cli, tmp_path):
    lines = [trade_line(i, "100", "100", "buy", M0 + i * 60_000, INST) for i in range(1, 4)]  # $100 each
    write_lines(raw_dir(INST) / "2025-12-14.jsonl", lines)
    config = tmp_path / "vstream.toml"
    config.write_text('whale_usd = 50\ntimeframes = ["1m", "5m"]\n[ct_val]\n"BTC-USDT-SWAP" = 0.01\n')
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--final", "--config", str(config))
    assert status == 0, err
    bars = [json.loads(x) for x in VaultPaths.of(vault, INST).output().read_text().splitlines()]
    assert [b["whale_count"] for b in bars] == [1, 1, 1]
    assert VaultPaths.of(vault, INST).output("5m").exists()
    # the command line wins over the file
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--final", "--rebuild",
                             "--config", str(config), "--whale-usd", "500")  # fmt: skip
    assert status == 0, err
    bars = [json.loads(x) for x in VaultPaths.of(vault, INST).output().read_text().splitlines()]
    assert [b["whale_count"] for b in bars] == [0, 0, 0]


def test_bad_configuration_exits_2_with_one_line(vault, run_cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("whale_usdd = 5\n")
    for args, needle in [
        (["--config", str(bad)], "unknown key(s) whale_usdd"),
        (["--config", str(tmp_path / "missing.toml")], "cannot read config file"),
        (["--ct-val", "BTC-USDT-SWAP"], "expected INST=VALUE"),
        (["--ct-val", "BTC-USDT-SWAP=-1"], "ct_val for BTC-USDT-SWAP must be"),
        (["--min-history", "500"], "min_history must be between"),
        (["--timeframes", "2m"], "unknown timeframe"),
    ]:
        status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault), *args)
        assert status == 2, (args, err)
        assert needle in err and len(err.strip().splitlines()) == 1, err


def test_all_with_an_empty_vault_is_a_clear_error(vault, run_cli):
    vault.mkdir()
    status, _, err = run_cli("replay", "--all", "--vault", str(vault))
    assert status == 2 and "no instruments" in err


def test_demo_never_writes_into_a_folder_that_holds_data(run_cli, vault, raw_dir):
    precious = raw_dir(INST) / "2025-01-01.jsonl"
    write_lines(precious, [trade_line(1, "100", "1", "buy", M0, INST)])
    before = sorted(p for p in vault.rglob("*"))
    status, out, err = run_cli("demo", "--vault", str(vault), "--hours", "0.5")
    assert status == 2 and out == ""
    assert err.startswith("vstream: ") and str(vault) in err and len(err.splitlines()) == 1, err
    assert precious.read_text() == trade_line(1, "100", "1", "buy", M0, INST) + "\n"
    assert sorted(p for p in vault.rglob("*")) == before


def test_demo_generates_replays_and_summarises(run_cli, tmp_path):
    status, out, err = run_cli("demo", "--vault", str(tmp_path / "demo"), "--hours", "1.5")
    assert status == 0, err
    assert "sample vault:" in out and "replay --final:" in out
    for inst in ("BTC-USDT-SWAP", "ETH-USDT-SWAP"):
        summary = next(line for line in out.splitlines() if line.strip().startswith(f"{inst} trades="))
        assert " rejects=10 " in summary and " duplicates=1 " in summary and " late=1 " in summary
        assert VaultPaths.of(tmp_path / "demo", inst).output().stat().st_size > 0
    assert "tiers: T1=" in out


def test_demo_makes_an_exporter_format_vault(run_cli, tmp_path):
    vault = tmp_path / "demo vault"  # a space, as in the trader's own path
    status, out, err = run_cli("demo", "--vault", str(vault), "--hours", "1", "--format", "exporter")
    assert status == 0, err
    for inst in ("BTC-USDT-SWAP", "ETH-USDT-SWAP"):
        paths = VaultPaths.of(vault, inst)
        (day,) = sorted(paths.raw_dir.iterdir())
        first = day.read_bytes().split(b"\r\n")[0]
        assert list(json.loads(first)) == ["timestamp_utc", "exchange", "market", "instId", "symbol_canon", "trade_id",
                                           "side", "price", "qty_contracts", "ctVal", "ctMult", "ctType"]  # fmt: skip
        assert (vault / "meta" / "okx" / "instruments" / f"{inst}.json").is_file()
        summary = next(line for line in out.splitlines() if line.strip().startswith(f"{inst} trades="))
        assert " rejects=10 " in summary and paths.output().stat().st_size > 0


def test_commands_other_than_live_start_without_the_network_stack():
    # websockets and httpx are for live mode only; replay, status and signals start without
    # them (a faster start for commands run every few minutes). The public name still works.
    code = (
        "import sys, vstream.cli\n"
        "assert 'websockets' not in sys.modules and 'httpx' not in sys.modules, sorted(sys.modules)\n"
        "import vstream\n"
        "assert vstream.OkxSource.__name__ == 'OkxSource' and 'websockets' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
