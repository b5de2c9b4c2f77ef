"""SPEC §7: durability order, cut-back, the errors that point at --rebuild, and the lock."""

from __future__ import annotations

import json
from pathlib import Path

import filelock
import msgspec
import pytest
from support import trade_line, write_lines

from vstream import Settings, State, VaultPaths
from vstream.state import InstrumentStore, read_state

INST = "BTC-USDT-SWAP"
M0 = 1_765_747_980_000


def lines(n: int, start_tid: int = 1) -> list[str]:
    return [trade_line(start_tid + i, str(100 + i % 7), "3", "buy" if i % 2 else "sell", M0 + i * 20_000)
            for i in range(n)]  # fmt: skip


@pytest.fixture
def seeded(vault, raw_dir, run_cli):
    """A vault replayed once (non-final) over 30 trades: 9 bars out, one minute open."""
    write_lines(raw_dir(INST) / "2025-12-14.jsonl", lines(30))
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault))
    assert status == 0, err
    return VaultPaths.of(vault, INST)


def expect_rebuild_error(run_cli, vault: Path, needle: str) -> None:
    status, out, err = run_cli("replay", "--instId", INST, "--vault", str(vault))
    assert status == 2, (out, err)
    assert needle in err and "--rebuild" in err
    assert len(err.strip().splitlines()) == 1


def test_state_records_position_window_lengths_and_counters(seeded):
    state = read_state(seeded.state)
    assert state.version == 1 and state.instId == INST
    assert state.output_length == seeded.output().stat().st_size > 0
    pos = state.files["2025-12-14"]
    assert pos.offset == (seeded.raw_dir / "2025-12-14.jsonl").stat().st_size and pos.lines == 30
    assert state.assembler.counters.trades == 30 and state.assembler.counters.bars == 9
    assert state.assembler.series["1m"].open is not None  # the last minute waits for more trades
    assert len(state.assembler.series["1m"].window) == 9
    assert not list(seeded.state_dir.glob("*.tmp")), "no temporary file left behind"


def test_output_ahead_of_state_is_cut_back_and_recomputed(seeded, vault, run_cli):
    expected_before = seeded.output().read_bytes()
    with seeded.output().open("ab") as handle:  # a run killed after its bars, before its state
        handle.write(b'{"timestamp_utc":"bogus"}\n{"half a ba')
    write_lines(seeded.raw_dir / "2025-12-14.jsonl", lines(40))
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--final")
    assert status == 0, err
    out = seeded.output().read_bytes()
    assert out.startswith(expected_before) and b"bogus" not in out and b"half a ba" not in out
    whole = vault.parent / "whole"
    VaultPaths.of(whole, INST).raw_dir.mkdir(parents=True)
    write_lines(VaultPaths.of(whole, INST).raw_dir / "2025-12-14.jsonl", lines(40))
    assert run_cli("replay", "--instId", INST, "--vault", str(whole), "--final")[0] == 0
    assert out == VaultPaths.of(whole, INST).output().read_bytes()


def test_output_shorter_than_recorded_is_an_error(seeded, vault, run_cli):
    data = seeded.output().read_bytes()
    seeded.output().write_bytes(data[:-10])
    expect_rebuild_error(run_cli, vault, "shorter")


def test_state_without_output_is_an_error(seeded, vault, run_cli):
    seeded.output().unlink()
    expect_rebuild_error(run_cli, vault, "missing")


def test_output_without_state_is_an_error(seeded, vault, run_cli):
    seeded.state.unlink()
    expect_rebuild_error(run_cli, vault, "state")


def test_input_shorter_than_its_offset_is_an_error(seeded, vault, run_cli):
    path = seeded.raw_dir / "2025-12-14.jsonl"
    path.write_bytes(path.read_bytes()[:100])
    expect_rebuild_error(run_cli, vault, "shorter")


def test_changed_settings_fingerprint_is_an_error(seeded, vault, run_cli):
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--whale-usd", "5000")
    assert status == 2 and "settings" in err and "--rebuild" in err
    config = vault.parent / "vstream.toml"
    config.write_text("min_history = 5\n")
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--config", str(config))
    assert status == 2 and "--rebuild" in err


def test_unreadable_state_is_an_error(seeded, vault, run_cli):
    seeded.state.write_text("{not json")
    expect_rebuild_error(run_cli, vault, "unreadable")


def test_rebuild_starts_over_from_the_first_byte(seeded, vault, run_cli):
    first = seeded.output().read_bytes()
    seeded.state.write_text("{not json")
    status, out, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--rebuild")
    assert status == 0, err
    assert "trades=30 " in out
    assert seeded.output().read_bytes() == first
    # and with other settings, rebuild accepts the new fingerprint
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--rebuild", "--whale-usd", "1")
    assert status == 0, err
    assert all(json.loads(row)["whale_count"] > 0 for row in seeded.output().read_text().splitlines())


def test_second_process_on_the_same_instrument_exits_at_once(seeded, vault, run_cli):
    other = filelock.FileLock(seeded.lock, timeout=0)  # another holder of the lock
    with other:
        status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault))
    assert status == 2 and "another vstream process" in err
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault))
    assert status == 0, err  # released: the next run proceeds


def test_store_commit_is_atomic_replacement(tmp_path):
    paths = VaultPaths.of(tmp_path, INST)
    store = InstrumentStore(paths, Settings().shape(0.01))
    state = store.open()
    try:
        state.output_length = 0
        paths.output().touch()
        store.commit(state)
        saved = msgspec.json.decode(paths.state.read_bytes(), type=State)
        assert saved.fingerprint == state.fingerprint and saved.updated_at
        assert [p.name for p in paths.state_dir.iterdir() if p.name.endswith(".tmp")] == []
    finally:
        store.close()


def test_strict_turns_first_reject_into_error_exit(vault, raw_dir, run_cli):
    write_lines(raw_dir(INST) / "2025-12-14.jsonl", [*lines(5), "garbage", *lines(5, 100)])
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--strict")
    assert status == 1
    assert "2025-12-14.jsonl line 6" in err and "--strict" in err
    status, out, _ = run_cli("replay", "--instId", INST, "--vault", str(vault))
    assert status == 0 and "rejects=1 " in out
