"""Files changing under vstream between runs (SPEC §7).

An input truncated or replaced, a state hand-edited into nonsense, an output deleted, cut or
grown, changed settings, a second process on the same instrument: each is a clear exit-2 error
naming ``--rebuild`` (or the other process), never silent damage; and ``--rebuild`` (or simply
waiting for the other process) then ends byte-identical to one clean ``--final`` run. The one
benign case, an output longer than recorded, is cut back and recomputed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vstream.generate import generate_vault
from vstream.instruments import VaultPaths

INST = "BTC-USDT-SWAP"
REPO = Path(__file__).resolve().parents[1]
Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def day_bytes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[bytes]:
    root = tmp_path_factory.mktemp("gen")
    report = generate_vault(root, instruments=[INST], hours=2, seed=21)
    yield report.instruments[INST].files[0].read_bytes()
    shutil.rmtree(root)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, day_bytes: bytes) -> bytes:
    from vstream.cli import main

    vault = tmp_path_factory.mktemp("ref") / "Vault"
    paths = VaultPaths.of(vault, INST)
    paths.raw_dir.mkdir(parents=True)
    (paths.raw_dir / "2025-01-01.jsonl").write_bytes(day_bytes)
    assert main(["-q", "replay", "--instId", INST, "--vault", str(vault), "--final"]) == 0
    return paths.output("1m").read_bytes()


@pytest.fixture
def seeded(vault: Path, day_bytes: bytes, run_cli: Run) -> VaultPaths:
    """A vault after one run over the first two thirds of the day."""
    paths = VaultPaths.of(vault, INST)
    paths.raw_dir.mkdir(parents=True)
    cut = day_bytes.index(b"\n", 2 * len(day_bytes) // 3) + 1
    (paths.raw_dir / "2025-01-01.jsonl").write_bytes(day_bytes[:cut])
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault))
    assert status == 0, err
    assert paths.output("1m").stat().st_size > 0
    return paths


def _day(paths: VaultPaths) -> Path:
    return paths.raw_dir / "2025-01-01.jsonl"


def _refused(run_cli: Run, vault: Path, *words: str) -> str:
    """Run, expect exit 2 with one line naming ``words``; return that line."""
    before = {p: p.read_bytes() for p in (VaultPaths.of(vault, INST).state,) if p.exists()}
    status, out, err = run_cli("replay", "--instId", INST, "--vault", str(vault))
    assert status == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vstream: {INST}: "), err
    for word in words:
        assert word in lines[0], lines[0]
    for path, data in before.items():
        assert path.read_bytes() == data, "a refused run changed the state"
    return lines[0]


def _rebuild_is_correct(run_cli: Run, vault: Path, paths: VaultPaths, day: bytes, ref: bytes) -> None:
    _day(paths).write_bytes(day)
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--final", "--rebuild")
    assert status == 0, err
    assert paths.output("1m").read_bytes() == ref


def test_input_truncated(seeded: VaultPaths, vault: Path, run_cli: Run, day_bytes: bytes, reference: bytes) -> None:
    data = _day(seeded).read_bytes()
    _day(seeded).write_bytes(data[: len(data) // 2])
    _refused(run_cli, vault, "--rebuild", "shorter")
    _rebuild_is_correct(run_cli, vault, seeded, day_bytes, reference)


def test_a_refused_run_rewrites_nothing_even_a_second_later(
    seeded: VaultPaths, vault: Path, run_cli: Run
) -> None:
    # The state records when it was written: a refused run that saved it anyway would show
    # as soon as the clock has moved on (it once did, whenever a run crossed a second).
    stamp = seeded.state.stat().st_mtime_ns
    time.sleep(1.01 - time.time() % 1)
    _day(seeded).write_bytes(b"")
    _refused(run_cli, vault, "--rebuild")
    assert seeded.state.stat().st_mtime_ns == stamp


def test_input_emptied(seeded: VaultPaths, vault: Path, run_cli: Run, day_bytes: bytes, reference: bytes) -> None:
    _day(seeded).write_bytes(b"")
    _refused(run_cli, vault, "--rebuild")
    _rebuild_is_correct(run_cli, vault, seeded, day_bytes, reference)


def test_input_deleted(seeded: VaultPaths, vault: Path, run_cli: Run, day_bytes: bytes, reference: bytes) -> None:
    _day(seeded).unlink()
    # No trade file left at all: the folder is named (a rebuild would have nothing to read).
    _refused(run_cli, vault, "no trade files in", str(seeded.raw_dir))
    other = seeded.raw_dir / "2025-01-02.jsonl"
    other.write_bytes(b"")
    _refused(run_cli, vault, "--rebuild", "gone")
    other.unlink()
    _rebuild_is_correct(run_cli, vault, seeded, day_bytes, reference)


def test_input_replaced_with_same_length(seeded: VaultPaths, vault: Path, run_cli: Run, day_bytes: bytes, reference: bytes) -> None:
    data = bytearray(_day(seeded).read_bytes())
    # Same length, other content near the consumed end: digits changed in the last trades.
    for i in range(len(data) - 40, len(data)):
        if 0x30 <= data[i] <= 0x38:
            data[i] += 1
    _day(seeded).write_bytes(bytes(data))
    _refused(run_cli, vault, "--rebuild", "replaced or rewritten")
    _rebuild_is_correct(run_cli, vault, seeded, day_bytes, reference)


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b"\x00\x00", b"[]", b'{"version":1}', b'{"version":99,"instId":"BTC-USDT-SWAP","fingerprint":"x"}'],
    ids=["broken", "empty", "nul", "array", "missing-keys", "future-version"],
)
def test_state_hand_edited_into_nonsense(
    content: bytes, seeded: VaultPaths, vault: Path, run_cli: Run, day_bytes: bytes, reference: bytes
) -> None:
    seeded.state.write_bytes(content)
    _refused(run_cli, vault, "--rebuild")
    _rebuild_is_correct(run_cli, vault, seeded, day_bytes, reference)


def test_state_with_wrong_types(seeded: VaultPaths, vault: Path, run_cli: Run, day_bytes: bytes, reference: bytes) -> None:
    text = seeded.state.read_text()
    seeded.state.write_text(text.replace('"output_length":', '"output_length":"many",' + '"x":', 1))
    _refused(run_cli, vault, "--rebuild")
    _rebuild_is_correct(run_cli, vault, seeded, day_bytes, reference)


def test_state_of_another_instrument(seeded: VaultPaths, vault: Path, run_cli: Run, day_bytes: bytes, reference: bytes) -> None:
    seeded.state.write_text(seeded.state.read_text().replace(INST, "ETH-USDT-SWAP"))
    _refused(run_cli, vault, "--rebuild")
    _rebuild_is_correct(run_cli, vault, seeded, day_bytes, reference)


def test_state_deleted(seeded: VaultPaths, vault: Path, run_cli: Run, day_bytes: bytes, reference: bytes) -> None:
    seeded.state.unlink()
    _refused(run_cli, vault, "--rebuild", "does not")
    _rebuild_is_correct(run_cli, vault, seeded, day_bytes, reference)


def test_output_deleted(seeded: VaultPaths, vault: Path, run_cli: Run, day_bytes: bytes, reference: bytes) -> None:
    seeded.output("1m").unlink()
    _refused(run_cli, vault, "--rebuild", "missing")
    _rebuild_is_correct(run_cli, vault, seeded, day_bytes, reference)


def test_output_cut_shorter(seeded: VaultPaths, vault: Path, run_cli: Run, day_bytes: bytes, reference: bytes) -> None:
    out = seeded.output("1m")
    out.write_bytes(out.read_bytes()[:-10])
    _refused(run_cli, vault, "--rebuild", "shorter")
    _rebuild_is_correct(run_cli, vault, seeded, day_bytes, reference)


def test_output_longer_is_cut_back_and_recomputed(seeded: VaultPaths, vault: Path, run_cli: Run, day_bytes: bytes, reference: bytes) -> None:
    out = seeded.output("1m")
    with open(out, "ab") as f:
        f.write(b'{"timestamp_utc":"2099-01-01T00:00:00Z","half a bar')
    _day(seeded).write_bytes(day_bytes)
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--final")
    assert status == 0, err
    assert out.read_bytes() == reference


def test_settings_changed(seeded: VaultPaths, vault: Path, run_cli: Run, day_bytes: bytes, reference: bytes) -> None:
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--whale-usd", "50000")
    assert status == 2 and "--rebuild" in err and "settings" in err
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--ct-val", f"{INST}=0.02")
    assert status == 2 and "--rebuild" in err
    _rebuild_is_correct(run_cli, vault, seeded, day_bytes, reference)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP")
def test_second_concurrent_run_exits_at_once_and_the_first_finishes(tmp_path: Path, run_cli: Run) -> None:
    """A real vstream holds the lock (frozen mid-run with SIGSTOP); a second one refuses."""
    generate_vault(tmp_path / "v", instruments=[INST], hours=24, seed=4)
    clean = tmp_path / "clean"
    shutil.copytree(tmp_path / "v" / "raw", clean / "raw")
    assert run_cli("-q", "replay", "--instId", INST, "--vault", str(clean), "--final")[0] == 0
    vault = tmp_path / "v"
    paths = VaultPaths.of(vault, INST)
    env = {**os.environ, "PYTHONPATH": str(REPO), "VSTREAM_CHECKPOINT_INTERVAL": "0"}
    first = subprocess.Popen(
        [sys.executable, "-m", "vstream", "-q", "replay", "--instId", INST, "--vault", str(vault), "--final"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not paths.state.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        first.send_signal(signal.SIGSTOP)  # holds the lock, does nothing
        assert first.poll() is None, "the first run ended before it could be frozen"
        status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--final")
        assert status == 2
        assert "another vstream process" in err and len(err.strip().splitlines()) == 1
        status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--rebuild")
        assert status == 2 and "another vstream process" in err  # not even --rebuild gets in
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=120) == 0, first.stderr.read() if first.stderr else ""
    assert paths.output("1m").read_bytes() == VaultPaths.of(clean, INST).output("1m").read_bytes()
