"""Taking over from ``volume_analyzer.py`` (SPEC §7): a plain replay finds that script's state
and bars at vstream's paths, moves them aside unchanged, rebuilds from the first raw byte, says
so in one line and exits 0; a run stopped at any point of that ends as one clean run would.

The old files here are made the way that script writes them: its state with ``json.dump(...,
indent=2)`` and exactly its four keys, its bars with ``json.dumps`` in its key order and its
number formats (``str`` of a ``Decimal``: fractional dollars, no ``+`` on a positive delta).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import filelock
import pytest
from support import trade_line, write_lines

from vstream import takeover
from vstream.generate import generate_vault
from vstream.instruments import VaultPaths
from vstream.state import InstrumentStore, read_state

BTC, ETH = "BTC-USDT-SWAP", "ETH-USDT-SWAP"
M0 = 1_765_747_980_000  # 2025-12-14T21:33:00Z
DAY = "2025-12-14.jsonl"
REPO = Path(__file__).resolve().parents[1]


def lines(n: int, inst: str = BTC, start_tid: int = 1) -> list[str]:
    return [trade_line(start_tid + i, str(100 + i % 7), "3", "buy" if i % 2 else "sell", M0 + i * 20_000, inst)
            for i in range(n)]  # fmt: skip


def old_state(**changes: Any) -> bytes:
    state: dict[str, Any] = {
        "last_processed_timestamp_utc": "2025-12-14T21:42:40.000000Z",
        "last_trade_id": None,  # it never finds the trade id it means to keep
        "last_minute_processed": "2025-12-14T21:42:00Z",
        "volume_history": ["2727.00", "3030.000", "909.0"],
    }
    state.update(changes)
    return json.dumps({k: v for k, v in state.items() if v is not ...}, indent=2).encode()


def old_bar(minute: str, inst: str = BTC, **extra: Any) -> str:
    bar = {
        "timestamp_utc": f"2025-12-14T21:{minute}:00Z", "open": "100", "high": "106", "low": "100",
        "close": "103", "price_change_pct": "3", "total_volume": "2727.00", "buy_volume": "909.00",
        "sell_volume": "1818.00", "delta": "-909.00", "whale_volume": "0", "whale_count": 0,
        "trade_count": 3, "instId": inst, "exchange": "okx", "market": "perp", "volume_tier": "T2",
        "absorption": False, "divergence": True, **extra,
    }  # fmt: skip
    return json.dumps(bar)


def old_output(inst: str = BTC, newline: str = "\n") -> bytes:
    bars = [old_bar("33", inst), old_bar("34", inst, volume_anomaly=False, modified_z_score=None)]
    return "".join(b + newline for b in bars).encode()


def make_vault(root: Path, insts: tuple[str, ...] = (BTC,), *, state: bool = True, output: bool = True,
               n: int = 30) -> Path:  # fmt: skip
    """A vault with ``n`` trades per instrument and, where asked, the old analyzer's files."""
    for inst in insts:
        paths = VaultPaths.of(root, inst)
        paths.raw_dir.mkdir(parents=True, exist_ok=True)
        write_lines(paths.raw_dir / DAY, lines(n, inst))
        if state:
            paths.state_dir.mkdir(parents=True, exist_ok=True)
            paths.state.write_bytes(old_state())
        if output:
            paths.derived_dir.mkdir(parents=True, exist_ok=True)
            paths.output().write_bytes(old_output(inst))
    return root


def clean_run(root: Path, run_cli: Any, insts: tuple[str, ...] = (BTC,), n: int = 30) -> dict[str, bytes]:
    """Outputs and rejects of one ``--final`` run over the same input, without old files."""
    make_vault(root, insts, state=False, output=False, n=n)
    status, _, err = run_cli("replay", "--all", "--vault", str(root), "--final")
    assert status == 0, err
    return files(root, insts)


def files(root: Path, insts: tuple[str, ...] = (BTC,)) -> dict[str, bytes]:
    out = {}
    for inst in insts:
        paths = VaultPaths.of(root, inst)
        out[f"{inst} output"] = paths.output().read_bytes()
        out[f"{inst} rejects"] = paths.rejects.read_bytes() if paths.rejects.exists() else b""
    return out


def moved_aside(root: Path, inst: str = BTC) -> dict[str, bytes]:
    """The files named ``*.volume_analyzer-*`` beside the instrument's state and output."""
    paths = VaultPaths.of(root, inst)
    found = {}
    for folder, prefix in ((paths.state_dir, f"{inst}."), (paths.derived_dir, "")):
        if folder.is_dir():
            for path in folder.iterdir():
                if takeover.SUFFIX in path.name and path.name.startswith(prefix):
                    found[str(path.relative_to(root))] = path.read_bytes()
    return found


def replay(run_cli: Any, root: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli("replay", "--instId", BTC, "--vault", str(root), *extra)


def stamp_of(path: Path) -> str:
    """The stamp the moved-aside names carry: the old state's last write, in UTC."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(path.stat().st_mtime))


def stopped(run_cli: Any, root: Path) -> None:
    """A replay that a patched step stops (as a kill would): it must not succeed."""
    try:
        status, _, _ = replay(run_cli, root)
    except Killed:
        return
    assert status != 0


# -- the pair ---------------------------------------------------------------------------------


def test_plain_replay_moves_the_pair_aside_rebuilds_and_says_so_once(tmp_path, run_cli):
    expected = clean_run(tmp_path / "clean", run_cli)
    root = make_vault(tmp_path / "v")
    paths = VaultPaths.of(root, BTC)
    old_s, old_o = paths.state.read_bytes(), paths.output().read_bytes()
    stamp = stamp_of(paths.state)

    status, out, err = replay(run_cli, root)

    assert status == 0, err
    moved_state = paths.state_dir / f"{BTC}.state.json.volume_analyzer-{stamp}"
    moved_output = paths.derived_dir / f"volume_1m.jsonl.volume_analyzer-{stamp}"
    assert moved_state.read_bytes() == old_s and moved_output.read_bytes() == old_o  # unchanged
    assert err.count("\n") == 1 and "took over from volume_analyzer.py" in err
    assert str(moved_state) in err and str(moved_output) in err and "first raw byte" in err
    assert out.startswith(f"{BTC} trades=30 bars=9 ") and out.count("\n") == 1
    state = read_state(paths.state)  # vstream's own now
    assert state.took_over is not None and state.took_over.state == moved_state.name
    assert state.took_over.output == moved_output.name
    # Resumed, it says nothing more, and ends as one clean --final run over the input.
    status, _, err = replay(run_cli, root, "--final")
    assert status == 0 and err == ""
    assert files(root) == expected
    assert moved_aside(root) == {str(moved_state.relative_to(root)): old_s, str(moved_output.relative_to(root)): old_o}


def test_all_takes_every_instrument_over_in_its_worker(tmp_path, run_cli):
    insts = (BTC, ETH)
    expected = clean_run(tmp_path / "clean", run_cli, insts)
    root = make_vault(tmp_path / "v", insts)
    status, out, err = run_cli("replay", "--all", "--vault", str(root), "--final")
    assert status == 0, err
    assert [line.split()[0] for line in out.splitlines()] == [BTC, ETH]
    notices = err.splitlines()
    assert len(notices) == 2 and all("took over from volume_analyzer.py" in n for n in notices)
    assert files(root, insts) == expected
    for inst in insts:
        assert sorted(moved_aside(root, inst).values()) == sorted([old_state(), old_output(inst)])


def test_bars_written_on_windows_with_crlf_are_recognised(tmp_path, run_cli):
    root = make_vault(tmp_path / "v")
    paths = VaultPaths.of(root, BTC)
    paths.output().write_bytes(old_output(newline="\r\n"))
    paths.state.write_bytes(old_state().replace(b"\n", b"\r\n"))
    status, _, err = replay(run_cli, root)
    assert status == 0 and "took over" in err
    assert sorted(moved_aside(root).values()) == sorted([old_output(newline="\r\n"), old_state().replace(b"\n", b"\r\n")])


def test_rebuild_moves_the_old_files_aside_too_never_deletes_them(tmp_path, run_cli):
    root = make_vault(tmp_path / "v")
    status, _, err = replay(run_cli, root, "--rebuild")
    assert status == 0 and "took over" in err
    assert sorted(moved_aside(root).values()) == sorted([old_state(), old_output()])


def test_quiet_leaves_the_line_out_but_not_the_takeover(tmp_path, run_cli):
    root = make_vault(tmp_path / "v")
    status, _, err = run_cli("-q", "replay", "--instId", BTC, "--vault", str(root))
    assert status == 0 and err == ""
    assert len(moved_aside(root)) == 2 and read_state(VaultPaths.of(root, BTC).state).took_over is not None


# -- one of the two -----------------------------------------------------------------------------


@pytest.mark.parametrize("present", ["state", "output", "state and an empty output"])
def test_one_old_file_alone_is_taken_over(tmp_path, run_cli, present):
    expected = clean_run(tmp_path / "clean", run_cli)
    root = make_vault(tmp_path / "v", state="state" in present, output=present == "output")
    paths = VaultPaths.of(root, BTC)
    if "empty" in present:
        paths.derived_dir.mkdir(parents=True)
        paths.output().write_bytes(b"")
    before = {p.read_bytes() for p in (paths.state, paths.output()) if p.exists()}
    status, _, err = replay(run_cli, root, "--final")
    assert status == 0, err
    assert err.count("\n") == 1 and "took over from volume_analyzer.py" in err
    assert set(moved_aside(root).values()) == before
    assert files(root) == expected


# -- what is not the old analyzer's ----------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [
        old_state(extra="key"),
        old_state(volume_history=...),  # a key missing
        old_state(volume_history=["12", "lots"]),
        old_state(volume_history=[12.5]),
        old_state(last_minute_processed="2025-12-14T21:42:30Z"),
        old_state(last_trade_id=7),
        b"[]",
        b"{not json",
    ],
    ids=[
        "extra key", "missing key", "history not decimal", "history numbers", "not a minute",
        "id not text", "a list", "broken",
    ],
)
def test_any_other_unreadable_state_stays_an_error_pointing_at_rebuild(tmp_path, run_cli, state):
    root = make_vault(tmp_path / "v")
    paths = VaultPaths.of(root, BTC)
    paths.state.write_bytes(state)
    status, _, err = replay(run_cli, root)
    assert status == 2 and "--rebuild" in err and err.count("\n") == 1
    assert "took over" not in err
    assert paths.state.read_bytes() == state and paths.output().read_bytes() == old_output()
    assert moved_aside(root) == {}


@pytest.mark.parametrize(
    "bars",
    [
        # vstream's own line: instId second, fill_count and friends
        '{"timestamp_utc":"2025-12-14T21:33:00Z","instId":"BTC-USDT-SWAP","exchange":"okx","market":"perp",'
        '"open":"100","high":"106","low":"100","close":"103","price_change_pct":"+3.00","total_volume":"2727",'
        '"buy_volume":"909","sell_volume":"1818","delta":"-909","whale_volume":"0","whale_count":0,'
        '"trade_count":3,"volume_tier":null,"absorption":false,"divergence":false,"divergence_type":null,'
        '"volume_ratio":null,"fill_count":3}\n',
        old_bar("33", ETH) + "\n",  # another instrument's bars
        old_bar("33") + "\n" + old_bar("34", fill_count=3) + "\n",  # the last line is not its
        old_bar("33", volume_tier=None) + "\n",
        "garbage\n",
        old_bar("33")[:40],  # no complete line
    ],
    ids=["vstream's", "other instrument", "last line", "null tier", "garbage", "partial"],
)
def test_an_old_state_beside_bars_that_are_not_its_own_is_an_error(tmp_path, run_cli, bars):
    root = make_vault(tmp_path / "v")
    paths = VaultPaths.of(root, BTC)
    paths.output().write_text(bars)
    status, _, err = replay(run_cli, root)
    assert status == 2 and "volume_analyzer.py" in err and "--rebuild" in err and err.count("\n") == 1
    assert paths.state.read_bytes() == old_state() and paths.output().read_text() == bars
    # --rebuild moves that state aside (never deletes it) and removes the output, as it does.
    status, _, err = replay(run_cli, root, "--rebuild")
    assert status == 0, err
    assert list(moved_aside(root).values()) == [old_state()]


def test_vstream_bars_without_a_state_stay_the_usual_error(tmp_path, run_cli):
    root = make_vault(tmp_path / "v", state=False, output=False)
    assert replay(run_cli, root)[0] == 0
    paths = VaultPaths.of(root, BTC)
    paths.state.unlink()
    bars = paths.output().read_bytes()
    status, _, err = replay(run_cli, root)
    assert status == 2 and "exists but state" in err and "--rebuild" in err
    assert paths.output().read_bytes() == bars and moved_aside(root) == {}


def test_old_bars_beside_a_vstream_state_are_left_to_its_checks(tmp_path, run_cli):
    root = make_vault(tmp_path / "v", state=False, output=False)
    assert replay(run_cli, root)[0] == 0
    paths = VaultPaths.of(root, BTC)
    paths.output().write_bytes(old_output())  # shorter than the state records
    status, _, err = replay(run_cli, root)
    assert status == 2 and "shorter" in err and moved_aside(root) == {}


def test_spot_and_futures_are_never_taken_over(tmp_path, run_cli):
    inst = "BTC-USDT"  # the old analyzer only ever wrote perps
    paths = VaultPaths.of(tmp_path, inst)
    paths.raw_dir.mkdir(parents=True)
    write_lines(paths.raw_dir / DAY, lines(5, inst))
    paths.state_dir.mkdir(parents=True)
    paths.state.write_bytes(old_state())
    status, _, err = run_cli("replay", "--instId", inst, "--vault", str(tmp_path))
    assert status == 2 and "--rebuild" in err and paths.state.read_bytes() == old_state()


# -- names, the lock, failures ----------------------------------------------------------------------


def test_a_name_already_taken_is_never_overwritten(tmp_path, run_cli):
    root = make_vault(tmp_path / "v")
    paths = VaultPaths.of(root, BTC)
    stamp = stamp_of(paths.state)
    taken = paths.derived_dir / f"volume_1m.jsonl.volume_analyzer-{stamp}"
    taken.write_bytes(b"an earlier takeover's bars\n")
    status, _, err = replay(run_cli, root)
    assert status == 0, err
    assert taken.read_bytes() == b"an earlier takeover's bars\n"
    assert (paths.derived_dir / f"{taken.name}-2").read_bytes() == old_output()
    assert f"{taken.name}-2" in err


def test_while_another_process_holds_the_lock_nothing_is_moved(tmp_path, run_cli):
    root = make_vault(tmp_path / "v")
    paths = VaultPaths.of(root, BTC)
    with filelock.FileLock(paths.lock, timeout=0):
        status, _, err = replay(run_cli, root)
    assert status == 2 and "another vstream process" in err
    assert paths.state.read_bytes() == old_state() and paths.output().read_bytes() == old_output()


def test_a_file_that_cannot_be_moved_is_one_clear_error(tmp_path, run_cli, monkeypatch):
    # On Windows a file the old script still has open cannot be renamed.
    root = make_vault(tmp_path / "v")

    def refuse(src: object, dst: object) -> None:
        raise PermissionError(13, "The process cannot access the file", str(src))

    monkeypatch.setattr(takeover.os, "rename", refuse)
    status, _, err = replay(run_cli, root)
    assert status == 2 and err.count("\n") == 1 and "still running" in err
    paths = VaultPaths.of(root, BTC)
    assert paths.state.read_bytes() == old_state() and paths.output().read_bytes() == old_output()


# -- stopped half-way --------------------------------------------------------------------------------


class Killed(BaseException):
    """Stands for a kill -9: nothing after it runs (the lock is released as the OS would)."""


def test_stopped_between_the_two_renames_the_next_run_finishes_the_pair(tmp_path, run_cli, monkeypatch):
    expected = clean_run(tmp_path / "clean", run_cli)
    root = make_vault(tmp_path / "v")
    real = os.rename
    done: list[str] = []

    def rename_once(src: Any, dst: Any) -> None:
        if done:
            raise Killed
        real(src, dst)
        done.append(str(dst))

    monkeypatch.setattr(takeover.os, "rename", rename_once)
    stopped(run_cli, root)
    paths = VaultPaths.of(root, BTC)
    assert not paths.output().exists() and paths.state.read_bytes() == old_state()  # the output went first
    monkeypatch.setattr(takeover.os, "rename", real)

    status, _, err = replay(run_cli, root, "--final")
    assert status == 0, err
    assert "took over" in err and done[0] in err  # names the output moved by the stopped run
    assert files(root) == expected
    moved = moved_aside(root)
    assert sorted(moved.values()) == sorted([old_state(), old_output()])
    stamps = {name.rsplit(takeover.SUFFIX, 1)[1] for name in moved}
    assert len(stamps) == 1  # the pair keeps one name


def test_stopped_after_the_renames_before_a_state_the_next_run_starts_fresh(tmp_path, run_cli, monkeypatch):
    expected = clean_run(tmp_path / "clean", run_cli)
    root = make_vault(tmp_path / "v")

    def killed(self: InstrumentStore, state: object) -> None:
        raise Killed

    monkeypatch.setattr(InstrumentStore, "commit", killed)
    stopped(run_cli, root)
    monkeypatch.undo()
    paths = VaultPaths.of(root, BTC)
    assert not paths.state.exists() and not paths.output().exists()
    status, _, err = replay(run_cli, root, "--final")
    assert status == 0 and err == ""  # nothing left to move
    assert files(root) == expected
    assert sorted(moved_aside(root).values()) == sorted([old_state(), old_output()])


def test_stopped_after_the_first_bars_the_next_run_resumes_as_usual(tmp_path, run_cli, monkeypatch):
    expected = clean_run(tmp_path / "clean", run_cli)
    root = make_vault(tmp_path / "v")
    real = InstrumentStore.commit
    calls: list[int] = []

    def second_commit_killed(self: InstrumentStore, state: Any) -> None:
        calls.append(1)
        if len(calls) == 2:  # the first is the fresh state; the second follows the first bars
            raise Killed
        real(self, state)

    monkeypatch.setattr(InstrumentStore, "commit", second_commit_killed)
    stopped(run_cli, root)
    monkeypatch.undo()
    paths = VaultPaths.of(root, BTC)
    assert paths.output().stat().st_size > 0 and read_state(paths.state).output_length == 0
    status, _, err = replay(run_cli, root, "--final")
    assert status == 0 and err == ""
    assert files(root) == expected


# -- status ----------------------------------------------------------------------------------------


def test_status_tells_of_a_takeover_to_come_and_of_one_done(tmp_path, run_cli):
    root = make_vault(tmp_path / "v")
    status, out, _ = run_cli("status", "--vault", str(root), "--no-remember")
    assert status == 0 and f"{BTC}: note: written by volume_analyzer.py: the next replay takes it over" in out
    status, out, _ = run_cli("status", "--vault", str(root), "--instId", BTC, "--no-remember")
    assert status == 1 and f"{BTC}: PROBLEM: written by volume_analyzer.py" in out
    assert replay(run_cli, root)[0] == 0
    status, out, _ = run_cli("status", "--vault", str(root), "--instId", BTC, "--no-remember")
    assert status == 0 and "note: taken over from volume_analyzer.py at " in out
    assert all(name in out for name in moved_aside(root))


def test_status_of_old_bars_alone(tmp_path, run_cli):
    root = make_vault(tmp_path / "v", state=False)
    status, out, _ = run_cli("status", "--vault", str(root), "--instId", BTC, "--no-remember")
    assert status == 1 and "written by volume_analyzer.py" in out and "needs --rebuild" not in out


def test_a_later_rebuild_keeps_the_record(tmp_path, run_cli):
    root = make_vault(tmp_path / "v")
    assert replay(run_cli, root)[0] == 0
    record = read_state(VaultPaths.of(root, BTC).state).took_over
    assert record is not None
    status, _, err = replay(run_cli, root, "--rebuild")
    assert status == 0 and err == ""
    assert read_state(VaultPaths.of(root, BTC).state).took_over == record


# -- the guide's comparison script ----------------------------------------------------------------


def test_the_guides_comparison_script_runs_over_a_taken_over_vault(tmp_path, run_cli):
    guide = (REPO / "docs" / "coming-from-volume-analyzer.md").read_text()
    script = tmp_path / "compare.py"
    script.write_text(guide.split("```python\n", 1)[1].split("```", 1)[0])
    root = make_vault(tmp_path / "v")
    assert replay(run_cli, root, "--final")[0] == 0

    def compare(when: str) -> list[str]:
        done = subprocess.run([sys.executable, str(script), str(root), BTC, when], capture_output=True, text=True, check=True)
        return done.stdout.splitlines()

    minute = compare("2025-12-14T21:34")
    assert minute[0].split() == ["2025-12-14T21:34:00Z", "old", "old,", "as", "vstream", "writes", "it", "vstream"]
    rows = {line.split()[0]: line.split()[1:] for line in minute[1:]}
    new = json.loads(VaultPaths.of(root, BTC).output().read_text().splitlines()[1])
    assert rows["delta"] == ["-909.00", "-909", new["delta"]]  # old, old as vstream writes it, vstream
    assert rows["price_change_pct"] == ["3", "+3.00", new["price_change_pct"]]
    assert rows["fill_count"] == ["-", "-", str(new["fill_count"])]
    day = compare("2025-12-14")
    assert day[0] == "2 old bars, 10 vstream bars, 2 minutes in both"
    assert any(line.startswith("volume_tier ") and "differs in" in line for line in day)


# -- kill -9 ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_kill_9_during_and_after_the_takeover_then_resume_equals_one_clean_run(tmp_path: Path) -> None:
    """Each trial: a vault with the old pair; a replay killed just as (or just after) it moved
    the files aside, one more killed at a random instant, then a ``--final`` run."""
    insts = (BTC, ETH)
    source = tmp_path / "source"
    generate_vault(source, instruments=insts, hours=3, seed=11)
    clean = tmp_path / "clean"
    shutil.copytree(source / "raw", clean / "raw")
    assert _replay_process(clean, "--final", interval="5").wait(timeout=120) == 0
    expected = files(clean, insts)
    rng = random.Random(20251214)
    kills = 0
    for trial in range(6):
        vault = tmp_path / f"trial{trial}"
        shutil.copytree(source / "raw", vault / "raw")
        for inst in insts:
            paths = VaultPaths.of(vault, inst)
            paths.state_dir.mkdir(parents=True, exist_ok=True)
            paths.derived_dir.mkdir(parents=True, exist_ok=True)
            paths.state.write_bytes(old_state())
            paths.output().write_bytes(old_output(inst))
        proc = _replay_process(vault)
        deadline = time.monotonic() + 30
        while proc.poll() is None and not moved_aside(vault, BTC) and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, 0.15))  # inside the renames, the fresh state, the first bars
        kills += _kill(proc)
        proc = _replay_process(vault, *(("--final",) if trial % 2 else ()))
        time.sleep(rng.uniform(0.0, 0.8))  # anywhere, start-up included
        kills += _kill(proc)
        assert _replay_process(vault, "--final").wait(timeout=120) == 0
        assert files(vault, insts) == expected, f"trial {trial}"
        for inst in insts:  # each old file moved exactly once, unchanged
            assert sorted(moved_aside(vault, inst).values()) == sorted([old_state(), old_output(inst)])
    assert kills >= 6


def _kill(proc: subprocess.Popen[bytes]) -> int:
    """Kill ``proc`` if it still runs: 1 if the kill landed, 0 if it had finished (with 0)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    status = proc.wait(timeout=60)
    if status == -signal.SIGKILL:
        return 1
    assert status == 0
    return 0


def _replay_process(vault: Path, *extra: str, interval: str = "0.02") -> subprocess.Popen[bytes]:
    env = {**os.environ, "VSTREAM_CHECKPOINT_INTERVAL": interval, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "vstream", "-q", "replay", "--all", "--vault", str(vault), *extra],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def test_the_takeover_on_the_traders_own_vault_format(tmp_path: Path, run_cli: Any) -> None:
    # the vault as it really is: exporter lines (CRLF) and the exporter's instrument files,
    # with the old analyzer's state and bars at vstream's paths
    from vstream.generate import generate_vault

    vault = tmp_path / "Rave Quant Vault"
    generate_vault(vault, instruments=(BTC,), hours=2, seed=9, line_format="exporter")
    clean = tmp_path / "clean"
    shutil.copytree(vault, clean)
    paths = VaultPaths.of(vault, BTC)
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    paths.state.write_bytes(old_state())
    paths.derived_dir.mkdir(parents=True, exist_ok=True)
    paths.output().write_bytes(old_output(newline="\r\n"))
    status, _, err = run_cli("replay", "--instId", BTC, "--vault", str(vault))
    assert status == 0, err
    assert err.count("\n") == 1 and "volume_analyzer" in err, err
    assert run_cli("replay", "--instId", BTC, "--vault", str(vault), "--final")[0] == 0
    assert run_cli("replay", "--instId", BTC, "--vault", str(clean), "--final")[0] == 0
    assert paths.output().read_bytes() == VaultPaths.of(clean, BTC).output().read_bytes()
    moved = sorted(p.name for p in paths.derived_dir.iterdir() if "volume_analyzer" in p.name)
    assert len(moved) == 1 and (paths.derived_dir / moved[0]).read_bytes() == old_output(newline="\r\n")
