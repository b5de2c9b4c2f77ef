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

from vstream.errors import StateError
from vstream.generate import generate_vault
from vstream.instruments import VaultPaths
from vstream.state import read_state

INSTS = ("BTC-USDT-SWAP", "ETH-USDT-SWAP")
REPO = Path(__file__).resolve().parents[1]
KILLS = 22


def _replay(vault: Path, *extra: str, interval: str = "0.02", session: bool = False) -> subprocess.Popen[bytes]:
    env = {**os.environ, "VSTREAM_CHECKPOINT_INTERVAL": interval, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "vstream", "-q", "replay", "--all", "--vault", str(vault), *extra],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=session,
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
@pytest.mark.parametrize("line_format", ["okx", "exporter"])
def test_kill_9_at_random_instants_then_resume_equals_one_clean_run(tmp_path: Path, line_format: str) -> None:
    # exporter: the trader's own vault format (CRLF exporter lines and instrument files)
    source = tmp_path / "source"
    report = generate_vault(source, instruments=INSTS, hours=30, seed=5, line_format=line_format)
    assert report.trades > 250_000

    clean = tmp_path / "clean"
    shutil.copytree(source, clean)
    proc = _replay(clean, "--final", interval="5")
    assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    expected = _files(clean)
    assert all(expected.values())

    vault = tmp_path / "killed"
    shutil.copytree(source, vault)
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


def _children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid`` (from /proc; zombies excluded)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _workers(pid: int) -> set[int]:
    out = set()
    for child in _children(pid):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.add(child)
    return out


def _consumed(vault: Path, inst: str) -> int:
    """Input bytes the instrument's state records as consumed (0 before its first checkpoint)."""
    try:
        state = read_state(VaultPaths.of(vault, inst).state)
    except (OSError, StateError):
        return 0
    return sum(pos.offset for pos in state.files.values())


@pytest.fixture(scope="module")
def sixty_hours(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """Raw trades that take each replay worker seconds, and what one clean run makes of them."""
    source = tmp_path_factory.mktemp("sixty_hours")
    generate_vault(source, instruments=INSTS, hours=60, seed=9)
    clean = tmp_path_factory.mktemp("clean")
    shutil.copytree(source / "raw", clean / "raw")
    proc = _replay(clean, "--final", interval="5")
    assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    return source, _files(clean)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("target", ["parent", "group"])
def test_sigint_stops_the_workers_and_the_next_run_resumes(
    tmp_path: Path, sixty_hours: tuple[Path, dict[str, bytes]], target: str
) -> None:
    # A scheduler or `kill -INT PID` signals the parent alone; a terminal's Ctrl-C the whole
    # process group (then the workers must not be told twice).
    source, expected = sixty_hours
    vault = tmp_path / "interrupted"
    shutil.copytree(source / "raw", vault / "raw")
    proc = _replay(vault, interval="0.05", session=True)
    deadline = time.monotonic() + 60
    workers: set[int] = set()
    while proc.poll() is None and time.monotonic() < deadline:
        workers |= _workers(proc.pid)
        if len(workers) == 2 and all(_consumed(vault, inst) for inst in INSTS):
            break  # both workers are replaying: each has checkpointed some progress
        time.sleep(0.005)
    assert proc.poll() is None and len(workers) == 2, "the workers did not get going"
    if target == "parent":
        os.kill(proc.pid, signal.SIGINT)
    else:
        os.killpg(proc.pid, signal.SIGINT)  # its own session: the group is the run's alone
    status = proc.wait(timeout=15)
    err = proc.stderr.read().decode() if proc.stderr else ""
    gone_by = time.monotonic() + 5
    while any(_alive(w) for w in workers) and time.monotonic() < gone_by:
        time.sleep(0.01)
    assert not any(_alive(w) for w in workers), "a replay worker outlived its interrupted parent"
    assert status == 1 and err.strip().endswith("interrupted"), err
    # They stopped: neither caught up with its input (a full replay takes seconds here) ...
    for inst in INSTS:
        total = sum(f.stat().st_size for f in VaultPaths.of(vault, inst).raw_dir.iterdir())
        assert 0 < _consumed(vault, inst) < total, inst
    # ... and left states the next run resumes from, to the bytes of one clean run.
    proc = _replay(vault, "--final")
    assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    assert _files(vault) == expected
