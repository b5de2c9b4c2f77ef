"""``vstream live`` stopped while it is still starting (README: Ctrl-C or SIGTERM -> exit 0).

Start-up fetches the instrument list from REST, which may hang or retry for seconds. A
SIGINT or SIGTERM then must end the command cleanly — exit 0, no "interrupted", no kill by
the signal's default action, nothing written to the vault — just as once it is running.
Every server here is on 127.0.0.1: a port nobody listens on, or one that never answers.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BTC = "BTC-USDT-SWAP"
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def closed_port() -> int:
    """A loopback port with nobody listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_live(vault: Path, rest_port: int) -> subprocess.Popen[bytes]:
    ws = closed_port()
    return subprocess.Popen(
        [sys.executable, "-m", "vstream", "live", "--instId", BTC, "--vault", str(vault),
         "--rest-url", f"http://127.0.0.1:{rest_port}", "--ws-url", f"ws://127.0.0.1:{ws}"],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out.decode(), err.decode()


def assert_clean_stop(status: int, out: str, err: str, vault: Path) -> None:
    assert status == 0, (status, err)
    assert out == ""
    assert "interrupted" not in err and "unexpected" not in err and "Traceback" not in err, err
    assert "stopped during start-up" in err, err
    # No instrument was opened: no state, lock, bars or rejects.
    assert not (vault / "state" / "volume").exists() and not (vault / "derived").exists()


@pytest.fixture
def silent_rest() -> Iterator[tuple[int, threading.Event]]:
    """A loopback REST server that accepts connections and never answers: the instrument
    fetch hangs in it. The event is set once the first request connected."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.05)
    connected, done = threading.Event(), threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)
            connected.set()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1]), connected
    finally:
        done.set()
        thread.join(5)
        server.close()
        for conn in held:
            conn.close()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stop_while_the_instrument_fetch_hangs_exits_0(
    tmp_path: Path, silent_rest: tuple[int, threading.Event], sig: signal.Signals
) -> None:
    port, connected = silent_rest
    vault = tmp_path / "Vault"
    proc = start_live(vault, port)
    try:
        assert connected.wait(30), "live never asked for the instruments"
    finally:
        proc.send_signal(sig)  # in the middle of the instrument fetch
    assert_clean_stop(*finish(proc), vault)


def _catches_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_handlers_are_in_place_before_the_unreachable_rest_is_tried(tmp_path: Path, sig: signal.Signals) -> None:
    # A closed REST port: the fetch fails and retries (with back-off) for over a second. The
    # signal is sent the moment live handles SIGTERM, which must be before those retries end.
    vault = tmp_path / "Vault"
    proc = start_live(vault, closed_port())
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while not _catches_sigterm(proc.pid):
        assert proc.poll() is None and time.monotonic() < deadline, "live never handled SIGTERM"
        time.sleep(0.005)
    ready, _, _ = select.select([proc.stderr], [], [], 0)
    early = os.read(proc.stderr.fileno(), 65536).decode() if ready else ""
    proc.send_signal(sig)
    assert "could not refresh the instrument cache" not in early, "handlers came after start-up"
    status, out, err = finish(proc)
    assert_clean_stop(status, out, early + err, vault)
