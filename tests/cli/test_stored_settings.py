"""The settings that shape bars are stored with each instrument's state (issue: a plain
``replay`` after ``replay --rebuild --timeframes 1m,5m,1h`` used to fail "settings changed").

A run that does not give a setting uses the stored one; a run that gives a different one fails
naming the setting, the stored and the new value; state files written before settings were
stored keep working when their fingerprint matches.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import trade_line, write_lines

from vstream import ConfigError, Engine, ReplaySource, Settings, StateError, VaultPaths
from vstream.state import InstrumentStore, read_state
from vstream.testing.fake_okx import FakeOkxServer

INST = "BTC-USDT-SWAP"
M0 = 1_765_747_980_000
RunCli = Callable[..., tuple[int, str, str]]
SHAPING = ["--timeframes", "1m,5m,1h", "--whale-usd", "5000", "--min-history", "3",
           "--ct-val", f"{INST}=0.02"]  # fmt: skip
OUTPUTS = ("1m", "5m", "1h")


def lines(n: int, start: int = 0) -> list[str]:
    """Trades every 20 s: about three a minute, prices wandering, sizes varying."""
    return [
        trade_line(i + 1, str(100 + (i * 7) % 13), str(1 + i % 40), "buy" if i % 3 else "sell", M0 + i * 20_000)
        for i in range(start, n)
    ]


def write(vault: Path, n: int) -> None:
    raw = VaultPaths.of(vault, INST).raw_dir
    raw.mkdir(parents=True, exist_ok=True)
    write_lines(raw / "2025-12-14.jsonl", lines(n))


def outputs(vault: Path) -> dict[str, bytes]:
    paths = VaultPaths.of(vault, INST)
    return {tf: paths.output(tf).read_bytes() for tf in OUTPUTS if paths.output(tf).exists()}


def replay(run_cli: RunCli, vault: Path, *args: str) -> tuple[int, str, str]:
    return run_cli("-q", "replay", "--instId", INST, "--vault", str(vault), *args)


@pytest.fixture
def shaped(vault: Path, run_cli: RunCli) -> Path:
    """A vault replayed once with non-default bar-shaping settings, its last minute open."""
    write(vault, 300)
    status, _, err = replay(run_cli, vault, "--rebuild", *SHAPING)
    assert status == 0, err
    return vault


@pytest.fixture
def one_shot(tmp_path: Path, run_cli: RunCli) -> dict[str, bytes]:
    """What one --final run with the shaping settings writes over 600 trades."""
    vault = tmp_path / "one-shot"
    write(vault, 600)
    status, _, err = replay(run_cli, vault, "--final", *SHAPING)
    assert status == 0, err
    return outputs(vault)


def test_a_run_without_the_flags_uses_the_stored_settings(shaped: Path, run_cli: RunCli, one_shot: dict[str, bytes]) -> None:
    write(shaped, 450)
    status, out, err = replay(run_cli, shaped)
    assert status == 0, err
    assert "trades=150 " in out
    write(shaped, 600)
    status, _, err = replay(run_cli, shaped, "--final")
    assert status == 0, err
    assert set(outputs(shaped)) == set(OUTPUTS)
    assert outputs(shaped) == one_shot  # ctVal 0.02, whale 5000, min_history 3, all three files
    stored = read_state(VaultPaths.of(shaped, INST).state).settings
    assert stored is not None
    assert (stored.whale_usd, stored.min_history, stored.ct_val, stored.timeframes) == (5000, 3, 0.02, OUTPUTS)


def test_giving_the_stored_values_again_is_fine(shaped: Path, run_cli: RunCli, one_shot: dict[str, bytes]) -> None:
    write(shaped, 600)
    status, _, err = replay(run_cli, shaped, "--final", "--timeframes", "1h,1m,5m", "--whale-usd", "5000.0",
                            "--ct-val", f"{INST}=2e-2")  # fmt: skip
    assert status == 0, err
    assert outputs(shaped) == one_shot


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--whale-usd", "7000"], ["whale_usd", "5000", "7000"]),
        (["--timeframes", "1m,5m"], ["timeframes", "1m,5m,1h", "1m,5m"]),
        (["--ct-val", f"{INST}=0.01"], ["ct_val", "0.02", "0.01"]),
        (["--median-window", "50", "--min-history", "4"], ["median_window", "100", "50", "min_history", "3", "4"]),
    ],
)
def test_a_different_value_names_the_setting_and_both_values(
    shaped: Path, run_cli: RunCli, args: list[str], needles: list[str]
) -> None:
    before = {p: p.read_bytes() for p in VaultPaths.of(shaped, INST).state_dir.iterdir() if p.is_file()}
    write(shaped, 450)
    status, _, err = replay(run_cli, shaped, *args)
    assert status == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("vstream: ") and "--rebuild" in err, err
    for needle in needles:
        assert needle in err, err
    after = {p: p.read_bytes() for p in before}
    assert after == before  # refused before anything was written


def test_a_config_file_value_counts_as_given(shaped: Path, run_cli: RunCli, tmp_path: Path) -> None:
    config = tmp_path / "vstream.toml"
    config.write_text("whale_usd = 7000\n")
    status, _, err = replay(run_cli, shaped, "--config", str(config))
    assert status == 2 and "whale_usd" in err and "7000" in err, err
    config.write_text("whale_usd = 5000\ngrace = 9\n")  # the stored value, and a run option
    status, _, err = replay(run_cli, shaped, "--config", str(config))
    assert status == 0, err


def test_rebuild_keeps_the_stored_settings_unless_others_are_given(shaped: Path, run_cli: RunCli, one_shot: dict[str, bytes]) -> None:
    write(shaped, 600)
    status, _, err = replay(run_cli, shaped, "--rebuild", "--final")
    assert status == 0, err
    assert outputs(shaped) == one_shot
    status, _, err = replay(run_cli, shaped, "--rebuild", "--final", "--timeframes", "1m")
    assert status == 0, err
    assert set(outputs(shaped)) == {"1m"}  # the 5m and 1h files went with the old settings


def _as_old_state(vault: Path) -> None:
    """Rewrite the state as vstream wrote it before settings were stored: fingerprint only."""
    path = VaultPaths.of(vault, INST).state
    data = json.loads(path.read_text())
    del data["settings"]
    path.write_text(json.dumps(data))


def test_an_old_state_with_the_default_fingerprint_keeps_working(vault: Path, run_cli: RunCli, tmp_path: Path) -> None:
    write(vault, 300)
    assert replay(run_cli, vault)[0] == 0
    _as_old_state(vault)
    write(vault, 600)
    status, _, err = replay(run_cli, vault, "--final")
    assert status == 0, err
    assert read_state(VaultPaths.of(vault, INST).state).settings is not None  # stored from now on
    whole = tmp_path / "whole"
    write(whole, 600)
    assert replay(run_cli, whole, "--final")[0] == 0
    assert outputs(vault) == outputs(whole)


def test_an_old_state_with_other_settings_needs_them_given(shaped: Path, run_cli: RunCli, one_shot: dict[str, bytes]) -> None:
    _as_old_state(shaped)
    write(shaped, 600)
    status, _, err = replay(run_cli, shaped, "--final")
    assert status == 2 and "changed since the state was written" in err and "--rebuild" in err, err
    status, _, err = replay(run_cli, shaped, "--final", *SHAPING)
    assert status == 0, err
    assert outputs(shaped) == one_shot


def test_stored_settings_that_do_not_match_the_fingerprint_are_an_error(shaped: Path, run_cli: RunCli) -> None:
    path = VaultPaths.of(shaped, INST).state
    data = json.loads(path.read_text())
    data["settings"]["whale_usd"] = 1.0  # edited by hand
    path.write_text(json.dumps(data))
    status, _, err = replay(run_cli, shaped)
    assert status == 2 and "--rebuild" in err and len(err.splitlines()) == 1, err


# -- the library --------------------------------------------------------------------------


async def test_library_without_settings_uses_the_stored_ones(shaped: Path, one_shot: dict[str, bytes]) -> None:
    write(shaped, 600)
    async with Engine([ReplaySource(shaped, INST, final=True)], vault=shaped) as engine:
        await engine.run()
    assert outputs(shaped) == one_shot


async def test_library_settings_must_match_the_stored_ones(shaped: Path) -> None:
    stored = read_state(VaultPaths.of(shaped, INST).state).settings
    assert stored is not None
    different = Settings(timeframes=("1m", "5m", "1h"), whale_usd=5000, min_history=3, ct_val={INST: 0.05})
    with pytest.raises(ConfigError, match=r"ct_val is 0\.02 in the state, 0\.05 given"):
        async with Engine([ReplaySource(shaped, INST)], settings=different, vault=shaped) as engine:
            await engine.run()
    # Settings() given explicitly means the defaults: they differ from what is stored.
    with pytest.raises(ConfigError, match="whale_usd is 5000"):
        async with Engine([ReplaySource(shaped, INST)], settings=Settings(), vault=shaped) as engine:
            await engine.run()
    same = Settings(timeframes=("1m", "5m", "1h"), whale_usd=5000, min_history=3, ct_val={INST: 0.02})
    async with Engine([ReplaySource(shaped, INST)], settings=same, vault=shaped) as engine:
        await engine.run()


async def test_library_given_names_the_settings_chosen(shaped: Path, one_shot: dict[str, bytes]) -> None:
    write(shaped, 600)
    # Only grace is chosen here (a run option): every bar-shaping value comes from the state.
    settings = Settings(grace=5)
    async with Engine([ReplaySource(shaped, INST, final=True)], settings=settings, vault=shaped,
                      given=["grace"]) as engine:  # fmt: skip
        await engine.run()
        assert engine.assembler(INST).settings.whale_usd == 5000
    assert outputs(shaped) == one_shot
    with pytest.raises(ConfigError, match="unknown setting"):
        Engine([ReplaySource(shaped, INST)], settings=settings, vault=shaped, given=["whale"])


def test_a_copy_of_an_old_vault_is_not_changed_by_a_refused_run(shaped: Path, run_cli: RunCli, tmp_path: Path) -> None:
    _as_old_state(shaped)
    copy = tmp_path / "copy"
    shutil.copytree(shaped, copy)
    status, _, _ = replay(run_cli, shaped)
    assert status == 2
    assert VaultPaths.of(shaped, INST).state.read_bytes() == VaultPaths.of(copy, INST).state.read_bytes()
    with pytest.raises(StateError):
        store = InstrumentStore(VaultPaths.of(shaped, INST), Settings().shape(0.01))
        try:
            store.open()
        finally:
            store.close()


# -- live ---------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


async def _live(vault: Path, srv: FakeOkxServer, *extra: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(REPO), "VSTREAM_CHECKPOINT_INTERVAL": "0.05"}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vstream", "-q", "live", "--instId", INST, "--vault", str(vault),
        "--ws-url", srv.ws_url, "--rest-url", srv.rest_url, *extra,
        env=env, cwd=str(REPO), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.slow
async def test_live_uses_the_stored_settings_and_refuses_other_ones(shaped: Path) -> None:
    paths = VaultPaths.of(shaped, INST)
    before = outputs(shaped)
    async with FakeOkxServer() as srv:
        proc = await _live(shaped, srv, "--whale-usd", "7000")
        async with asyncio.timeout(60):
            _, err = await proc.communicate()
        assert proc.returncode == 2, err
        assert "whale_usd is 5000 in the state, 7000 given" in err.decode()
        proc = await _live(shaped, srv)
        await srv.wait_subscribed(INST, timeout=30)
        now = int(time.time() * 1000)
        await srv.push([json.loads(trade_line(301 + i, "101", "7", "buy", now + i)) for i in range(5)])  # ids go on from 300
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            # One frame of trades of this minute: the open 2025 minute's bar is printed once
            # they were fed to the assembler.
            first = json.loads(await proc.stdout.readline())
        assert first["timestamp_utc"].startswith("2025-12-14T")
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
    assert proc.returncode == 0, err
    state = read_state(paths.state)
    assert state.assembler.counters.trades == 305
    assert state.settings is not None and state.settings.whale_usd == 5000
    assert state.settings.timeframes == OUTPUTS and state.settings.ct_val == 0.02
    # the stored timeframes were in force: the state keeps all three series and files
    assert set(state.assembler.series) == set(OUTPUTS) == {"1m", *state.timeframe_lengths}
    after = outputs(shaped)
    assert after["1m"].startswith(before["1m"]) and len(after["1m"]) > len(before["1m"])
    assert all(after[tf].startswith(before[tf]) for tf in OUTPUTS)


def test_a_ct_val_only_the_state_knows_need_not_be_repeated(vault: Path, run_cli: RunCli) -> None:
    inst = "ZZZ-USDT-SWAP"  # in no built-in table and no instrument cache
    raw = VaultPaths.of(vault, inst).raw_dir
    raw.mkdir(parents=True)
    trades = [trade_line(i + 1, "2.5", "4", "buy", M0 + i * 20_000, inst) for i in range(30)]
    write_lines(raw / "2025-12-14.jsonl", trades[:20])
    status, _, err = run_cli("replay", "--instId", inst, "--vault", str(vault))
    assert status == 2 and "no contract value (ctVal) known for ZZZ-USDT-SWAP" in err, err
    assert not VaultPaths.of(vault, inst).state.exists()  # nothing stored by the refused run
    status, _, err = run_cli("replay", "--instId", inst, "--vault", str(vault), "--ct-val", f"{inst}=10")
    assert status == 0, err
    write_lines(raw / "2025-12-14.jsonl", trades)
    status, _, err = run_cli("replay", "--instId", inst, "--vault", str(vault), "--final")
    assert status == 0, err
    bars = [json.loads(x) for x in VaultPaths.of(vault, inst).output().read_text().splitlines()]
    assert [b["total_volume"] for b in bars] == ["300"] * 10  # 3 trades x 4 x 10 x 2.5 a minute


@pytest.mark.parametrize("how", ["flag", "config"])
def test_a_timeframe_named_twice_is_refused_before_anything_is_stored(
    vault: Path, run_cli: RunCli, tmp_path: Path, how: str
) -> None:
    # Stored as given, "1m,1m,5m" would later clash with every run naming "1m,5m".
    write(vault, 30)
    if how == "flag":
        args: tuple[str, ...] = ("--timeframes", "1m,1m,5m")
    else:
        config = tmp_path / "twice.toml"
        config.write_text('timeframes = ["1m", "5m", "1m"]\n')
        args = ("--config", str(config))
    status, _, err = replay(run_cli, vault, "--rebuild", *args)
    assert status == 2 and len(err.splitlines()) == 1 and "1m" in err and "more than once" in err
    assert not VaultPaths.of(vault, INST).state.exists()
    status, _, err = replay(run_cli, vault, "--timeframes", "1m,5m")
    assert status == 0, err
