"""Ctrl-C at any moment of a replay's start-up: one line, exit 1, and the summary so far.

A run interrupted early used to print KeyboardInterrupt tracebacks: from the parent while it
loaded (and it then died by the signal, status -2), and from ``replay --all`` workers that
were still starting, before their handling was in place. Now SIGINT is held back until the
command can take it (``vstream._interrupts``), workers start with SIGINT and SIGTERM blocked
until they handle them, and an interrupted run prints each instrument's summary line of what
it did so far, then ``vstream: interrupted`` once, and exits 1.

Each moment below is a state the test waits for (read from /proc, or a state file), never a
fixed sleep, and then SIGINT goes to the run's process group, as a terminal's Ctrl-C sends
it, or to the parent alone. Every moment is tried several times over.

The one window left is the interpreter's own start-up, before any vstream code runs (tens of
milliseconds): nothing of vstream exists yet to hold the signal back.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from vstream.errors import StateError
from vstream.generate import generate_vault
from vstream.instruments import VaultPaths
from vstream.state import read_state

INSTS = ("BTC-USDT-SWAP", "ETH-USDT-SWAP")
REPO = Path(__file__).resolve().parents[1]
TRIES = 6
SUMMARY = re.compile(
    r"^(?P<inst>[A-Z-]+) trades=(?P<trades>\d+) bars=\d+ rejects=\d+ duplicates=\d+ late=\d+ "
    r"skipped=\d+ seconds=\d+\.\d\d trades/s=\d+$"
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc"),
]


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trades that keep each replay worker busy for a second or so."""
    source = tmp_path_factory.mktemp("raw")
    generate_vault(source, instruments=INSTS, hours=40, seed=11)
    return source / "raw"


def _fresh_vault(raw: Path, where: Path) -> Path:
    """A vault over the same trade files, hard-linked (replay never writes them)."""
    vault = where / "Vault"
    shutil.copytree(raw, vault / "raw", copy_function=os.link)
    return vault


def _start(vault: Path, *argv: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "VSTREAM_CHECKPOINT_INTERVAL": "0.02", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "vstream", "replay", *argv, "--vault", str(vault)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip


def _run(vault: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """A replay run to its end."""
    return subprocess.run(
        [sys.executable, "-m", "vstream", "replay", *argv, "--vault", str(vault)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _status_mask(pid: int, field: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{field}:\s*([0-9a-f]+)$", text, re.M)
    return int(match.group(1), 16) if match else 0


def _mapped(pid: int, name: str) -> bool:
    """Whether process ``pid`` has a shared library with ``name`` in its path loaded."""
    try:
        return name in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _workers(pid: int) -> list[int]:
    """The replay worker processes of ``pid`` (spawned: ``spawn_main`` in their command)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def _consumed(vault: Path, inst: str) -> int:
    try:
        return sum(p.offset for p in read_state(VaultPaths.of(vault, inst).state).files.values())
    except (OSError, StateError):
        return 0


SIGINT_BIT = 1 << (signal.SIGINT - 1)

#: What the test waits for before it sends SIGINT: a predicate of (process, vault).
MOMENTS: dict[str, Callable[[subprocess.Popen[bytes], Path], bool]] = {
    # vstream's first code in the parent has run: it holds Ctrl-C back from here on ...
    "held": lambda p, v: bool(_status_mask(p.pid, "SigBlk") & SIGINT_BIT),
    # ... while it loads its modules (msgspec is among the first it maps)
    "loading": lambda p, v: _mapped(p.pid, "msgspec"),
    # a worker process exists: it is starting Python, loading, waiting for its task
    "first-worker": lambda p, v: len(_workers(p.pid)) >= 1,
    "both-workers": lambda p, v: len(_workers(p.pid)) >= 2,
    # a worker has its engine open (lock and state made) ...
    "engine-open": lambda p, v: any(VaultPaths.of(v, i).lock.exists() for i in INSTS),
    # ... and has checkpointed progress: mid-replay
    "mid-replay": lambda p, v: any(_consumed(v, i) for i in INSTS),
}


def _interrupt(proc: subprocess.Popen[bytes], vault: Path, moment: str, group: bool) -> tuple[int, str, str]:
    ready = MOMENTS[moment]
    deadline = time.monotonic() + 30
    while not ready(proc, vault):
        assert proc.poll() is None, f"the run ended before {moment}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"never reached {moment}"
        time.sleep(0.0005)
    if group:
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the parent and its workers
    else:
        os.kill(proc.pid, signal.SIGINT)  # kill -INT PID, a scheduler stopping it
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out.decode(), err.decode()


def _check_interrupted(status: int, out: str, err: str, vault: Path, insts: tuple[str, ...]) -> None:
    assert status == 1 and err == "vstream: interrupted\n", (status, err)
    lines = out.splitlines()
    found = [SUMMARY.match(line) for line in lines]
    assert all(found) and [m["inst"] for m in found if m] == list(insts), out
    # What each line says it did is what its state holds: the summary so far is true.
    for match in found:
        assert match is not None
        inst = match["inst"]
        paths = VaultPaths.of(vault, inst)
        recorded = read_state(paths.state).assembler.counters.trades if paths.state.exists() else 0
        assert int(match["trades"]) == recorded, (inst, out)


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_ctrl_c_during_replay_all_start_up_is_one_line_and_exit_1(
    raw: Path, tmp_path: Path, moment: str
) -> None:
    for attempt in range(TRIES):
        vault = _fresh_vault(raw, tmp_path / str(attempt))
        proc = _start(vault, "--all")
        status, out, err = _interrupt(proc, vault, moment, group=attempt % 2 == 0)
        _check_interrupted(status, out, err, vault, INSTS)
        assert not _workers(proc.pid)
    # the last one resumes to what one clean run makes
    clean = _fresh_vault(raw, tmp_path / "clean")
    assert _run(clean, "--all", "--final").returncode == 0
    resumed = _run(vault, "--all", "--final")
    assert resumed.returncode == 0, resumed.stderr
    for inst in INSTS:
        assert VaultPaths.of(vault, inst).output().read_bytes() == VaultPaths.of(clean, inst).output().read_bytes()


@pytest.mark.parametrize("moment", ["held", "loading", "engine-open", "mid-replay"])
def test_ctrl_c_of_a_one_instrument_replay_is_one_line_and_exit_1(raw: Path, tmp_path: Path, moment: str) -> None:
    # One instrument runs in the command's own process, no workers.
    for attempt in range(TRIES // 2):
        vault = _fresh_vault(raw, tmp_path / str(attempt))
        proc = _start(vault, "--instId", INSTS[0])
        status, out, err = _interrupt(proc, vault, moment, group=attempt % 2 == 0)
        _check_interrupted(status, out, err, vault, INSTS[:1])


def test_an_interrupted_run_summarises_what_it_did(raw: Path, tmp_path: Path) -> None:
    # Interrupted mid-replay: each line counts what the run did, not nothing, not everything.
    vault = _fresh_vault(raw, tmp_path)
    proc = _start(vault, "--all")
    status, out, err = _interrupt(proc, vault, "mid-replay", group=True)
    _check_interrupted(status, out, err, vault, INSTS)
    done = {m["inst"]: int(m["trades"]) for m in map(SUMMARY.match, out.splitlines()) if m}
    assert any(done.values()), out
    full = _run(_fresh_vault(raw, tmp_path / "full"), "--all")
    total = {m["inst"]: int(m["trades"]) for m in map(SUMMARY.match, full.stdout.splitlines()) if m}
    assert all(done[i] < total[i] for i in INSTS), (out, full.stdout)
