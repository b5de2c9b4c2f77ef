"""Kill -9 with alerts: replay --all killed at random instants, restarted each time, ends with
alerts files byte-identical to one clean run (each alert once), bars too; and the history
mark ends at a line where the first run that caught up ended, however often it was killed."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vstream.generate import generate_vault
from vstream.instruments import VaultPaths
from vstream.state import read_state

INSTS = ("BTC-USDT-SWAP", "ETH-USDT-SWAP")
REPO = Path(__file__).resolve().parents[2]
KILLS = 12
CONFIG = """
[alerts]
whale_trade_usd = 150000
burst_count = 3
burst_seconds = 20
burst_usd = 50000

[alerts.bars]
t34 = "tier=T3,T4"
moves = "divergence or absorption"
"""


def _replay(vault: Path, config: Path, *extra: str, interval: str = "0.02") -> subprocess.Popen[bytes]:
    env = {**os.environ, "VSTREAM_CHECKPOINT_INTERVAL": interval, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "vstream", "-q", "replay", "--all", "--vault", str(vault), "--config", str(config), *extra],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _progress(vault: Path) -> int:
    total = 0
    for inst in INSTS:
        paths = VaultPaths.of(vault, inst)
        for path in (paths.alerts, paths.state):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_mtime_ns + path.stat().st_size
    return total


def _files(vault: Path) -> dict[str, bytes]:
    out = {}
    for inst in INSTS:
        paths = VaultPaths.of(vault, inst)
        out[f"{inst} alerts"] = paths.alerts.read_bytes()
        out[f"{inst} bars"] = paths.output().read_bytes()
    return out


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_kill_9_anywhere_leaves_the_alerts_of_one_clean_run(tmp_path: Path) -> None:
    source = tmp_path / "source"
    generate_vault(source, instruments=INSTS, hours=12, seed=11)
    config = tmp_path / "v.toml"
    config.write_text(CONFIG)

    clean = tmp_path / "clean"
    shutil.copytree(source, clean)
    proc = _replay(clean, config, "--final", interval="5")
    assert proc.wait(timeout=180) == 0, proc.stderr.read() if proc.stderr else ""
    expected = _files(clean)
    assert all(len(expected[f"{i} alerts"].splitlines()) > 100 for i in INSTS)

    vault = tmp_path / "killed"
    shutil.copytree(source, vault)
    rng = random.Random(20251214)
    kills = attempts = 0
    while kills < KILLS:
        attempts += 1
        assert attempts <= 4 * KILLS, f"only {kills} kills landed in {attempts} runs"
        before = _progress(vault)
        proc = _replay(vault, config)
        if rng.random() < 0.25:
            time.sleep(rng.uniform(0.0, 0.5))  # anywhere, start-up included
        else:
            deadline = time.monotonic() + 30
            while proc.poll() is None and _progress(vault) == before and time.monotonic() < deadline:
                time.sleep(0.003)
            time.sleep(rng.uniform(0.0, 0.1))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        status = proc.wait(timeout=60)
        err = proc.stderr.read().decode() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        if status == -signal.SIGKILL:
            kills += 1
        else:
            assert status == 0, err
    proc = _replay(vault, config, "--final")
    assert proc.wait(timeout=180) == 0, proc.stderr.read() if proc.stderr else ""
    got = _files(vault)
    for name, data in expected.items():
        assert got[name] == data, f"{name} differs after {kills} kills"
    for inst in INSTS:
        state = read_state(VaultPaths.of(vault, inst).state)
        assert state.alerts is not None and not state.alerts.catching_up
        # the history ends where the first run that caught up ended, at the end of a line:
        # all of it when every run before the last was killed
        data = expected[f"{inst} alerts"]
        assert state.alerts_length == len(data)
        assert 0 < state.alerts.history <= len(data) and data[: state.alerts.history].endswith(b"\n")
