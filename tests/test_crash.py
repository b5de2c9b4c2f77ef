"""Kill -9 (SPEC §7): a replay killed with SIGKILL at random instants, restarted each time,
ends byte-identical to one clean ``--final`` run — outputs and rejects files alike.

The checkpoint interval is made tiny (``VSTREAM_CHECKPOINT_INTERVAL``) so that kills land
between checkpoints, inside bar appends, state replacements and start-up cut-backs. Most kills
wait for the run to show progress (an output grew) and then strike after a seeded random delay;
some strike at a random instant from the start (imports, lock, state load, cut-back).
"""

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

INSTS = ("BTC-USDT-SWAP", "ETH-USDT-SWAP")
REPO = Path(__file__).resolve().parents[1]
KILLS = 22


def _replay(vault: Path, *extra: str, interval: str = "0.02") -> subprocess.Popen[bytes]:
    env = {**os.environ, "VSTREAM_CHECKPOINT_INTERVAL": interval, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "vstream", "-q", "replay", "--all", "--vault", str(vault), *extra],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _sizes(vault: Path) -> int:
    total = 0
    for inst in INSTS:
        paths = VaultPaths.of(vault, inst)
        for path in (paths.output("1m"), paths.rejects, paths.state):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_mtime_ns + path.stat().st_size
    return total


def _files(vault: Path) -> dict[str, bytes]:
    out = {}
    for inst in INSTS:
        paths = VaultPaths.of(vault, inst)
        out[f"{inst} output"] = paths.output("1m").read_bytes()
        out[f"{inst} rejects"] = paths.rejects.read_bytes()
    return out


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_kill_9_at_random_instants_then_resume_equals_one_clean_run(tmp_path: Path) -> None:
    source = tmp_path / "source"
    report = generate_vault(source, instruments=INSTS, hours=30, seed=5)
    assert report.trades > 250_000

    clean = tmp_path / "clean"
    shutil.copytree(source / "raw", clean / "raw")
    proc = _replay(clean, "--final", interval="5")
    assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    expected = _files(clean)
    assert all(expected.values())

    vault = tmp_path / "killed"
    shutil.copytree(source / "raw", vault / "raw")
    rng = random.Random(20240607)
    kills = mid_work = attempts = 0
    while kills < KILLS:
        attempts += 1
        assert attempts <= 4 * KILLS, f"only {kills} kills landed in {attempts} runs"
        final = rng.random() < 0.2
        before = _sizes(vault)
        proc = _replay(vault, *(("--final",) if final else ()))
        if rng.random() < 0.3:
            time.sleep(rng.uniform(0.0, 0.6))  # anywhere, start-up included
        else:
            deadline = time.monotonic() + 30
            while proc.poll() is None and _sizes(vault) == before and time.monotonic() < deadline:
                time.sleep(0.003)
            time.sleep(rng.uniform(0.0, 0.12))
            mid_work += 1
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        status = proc.wait(timeout=60)
        err = proc.stderr.read().decode() if proc.stderr else ""
        proc.stderr and proc.stderr.close()
        if status == -signal.SIGKILL:
            kills += 1
        else:
            assert status == 0, err  # a run that finished first must have succeeded
    assert mid_work >= 10

    proc = _replay(vault, "--final")
    assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    got = _files(vault)
    for name in expected:
        assert got[name] == expected[name], f"{name} differs after {kills} kills"
    for inst in INSTS:
        state_dir = VaultPaths.of(vault, inst).state_dir
        assert not list(state_dir.glob("*.tmp")), "a temporary state file was left behind"


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_lock_of_a_killed_holder_is_released(tmp_path: Path) -> None:
    generate_vault(tmp_path, instruments=INSTS[:1], hours=30, seed=6)
    proc = _replay(tmp_path)
    lock = VaultPaths.of(tmp_path, INSTS[0]).lock
    deadline = time.monotonic() + 30
    while not VaultPaths.of(tmp_path, INSTS[0]).state.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert lock.exists()  # the file stays; the OS lock on it died with the process
    proc = _replay(tmp_path, "--final")
    assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
