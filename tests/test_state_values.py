"""SPEC §7: a state whose numbers cannot be true (edited by hand, damaged) is unreadable.

Byte offsets and lengths are later used to seek, read and truncate files, and counters are
added to: a negative or absurdly large one must be refused when the state is read — exit 2,
one line naming ``--rebuild``, nothing changed — never reach the OS as "Invalid argument".
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import trade_line, write_lines

from vstream import VaultPaths
from vstream.cli import main

INST = "BTC-USDT-SWAP"
DAY = "2025-12-14"
M0 = 1_765_747_980_000
INT64 = 2**63


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A vault replayed once (non-final, 1m and 5m bars) with a rejected line: every number
    of the state file is in use."""
    vault = tmp_path_factory.mktemp("values") / "Vault"
    paths = VaultPaths.of(vault, INST)
    paths.raw_dir.mkdir(parents=True)
    good = [trade_line(1 + i, str(100 + i % 7), "3", "buy" if i % 2 else "sell", M0 + i * 20_000) for i in range(60)]
    write_lines(paths.raw_dir / f"{DAY}.jsonl", [*good[:30], "not json", *good[30:]])
    assert main(["-q", "replay", "--instId", INST, "--vault", str(vault), "--timeframes", "1m,5m"]) == 0
    state = json.loads(paths.state.read_text())
    assert state["output_length"] > 0 and state["rejects_length"] > 0 and state["timeframe_lengths"]["5m"] > 0
    return vault


def _count() -> st.SearchStrategy[int]:
    """Negative, or past what a 64-bit file offset or counter can reach."""
    return st.one_of(st.integers(max_value=-1), st.integers(min_value=INT64, max_value=2**200))


#: (path in the state JSON, values it can never hold)
FIELDS: list[tuple[tuple[str, ...], st.SearchStrategy[int]]] = [
    (("output_length",), _count()),
    (("rejects_length",), _count()),
    (("timeframe_lengths", "5m"), _count()),
    (("files", DAY, "offset"), _count()),
    (("files", DAY, "lines"), _count()),
    (("files", DAY, "tail_crc"), st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32, max_value=2**200))),
    (("files", DAY, "size"), st.one_of(st.integers(max_value=-2), st.integers(min_value=INT64, max_value=2**200))),
    (("files", DAY, "mtime_ns"), st.one_of(st.integers(max_value=-INT64 - 1), st.integers(min_value=INT64))),
    *((("assembler", "counters", name), _count())
      for name in ("trades", "bars", "rejects", "duplicates", "late", "skipped")),
]  # fmt: skip


def _snapshot(vault: Path) -> dict[str, bytes]:
    return {str(p.relative_to(vault)): p.read_bytes() for p in sorted(vault.rglob("*")) if p.is_file()}


def _set(obj: Any, path: tuple[str, ...], value: int) -> None:
    for key in path[:-1]:
        obj = obj[key]
    assert isinstance(obj[path[-1]], int)
    obj[path[-1]] = value


@pytest.mark.parametrize("path, bad", FIELDS, ids=[".".join(p) for p, _ in FIELDS])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_an_impossible_number_in_the_state_is_refused_and_changes_nothing(
    template: Path, capsys: pytest.CaptureFixture[str], path: tuple[str, ...], bad: st.SearchStrategy[int],
    data: st.DataObject,
) -> None:
    value = data.draw(bad, label="value")
    with tempfile.TemporaryDirectory() as folder:
        vault = Path(folder) / "Vault"
        shutil.copytree(template, vault)
        state_path = VaultPaths.of(vault, INST).state
        state = json.loads(state_path.read_text())
        _set(state, path, value)
        state_path.write_text(json.dumps(state))
        before = _snapshot(vault)
        capsys.readouterr()
        status = main(["replay", "--instId", INST, "--vault", str(vault)])
        err = capsys.readouterr().err
        assert status == 2, err
        lines = err.splitlines()
        assert len(lines) == 1 and "--rebuild" in err and "unreadable" in err, err
        assert "unexpected" not in err and "Errno" not in err, err
        assert _snapshot(vault) == before
        # status reports it as a problem of that instrument, not a crash
        status = main(["status", "--no-remember", "--vault", str(vault)])
        out, err = capsys.readouterr()
        assert status == 1 and err == "" and f"{INST}: PROBLEM: " in out, (out, err)


def test_the_numbers_a_real_run_writes_are_accepted(template: Path, run_cli: Callable[..., tuple[int, str, str]]) -> None:
    # The bounds refuse nothing a run writes: -1 for "not known yet" included (size, mtime_ns).
    state = json.loads(VaultPaths.of(template, INST).state.read_text())
    assert state["files"][DAY]["size"] == -1 and state["files"][DAY]["mtime_ns"] == -1
    status, _, err = run_cli("status", "--no-remember", "--vault", str(template))
    assert status == 0, err


def test_rebuild_of_such_a_state_keeps_its_stored_settings(
    template: Path, tmp_path: Path, run_cli: Callable[..., tuple[int, str, str]]
) -> None:
    # --timeframes 1m,5m is stored in the state; --rebuild without it keeps it.
    vault = tmp_path / "Vault"
    shutil.copytree(template, vault)
    paths = VaultPaths.of(vault, INST)
    state = json.loads(paths.state.read_text())
    state["assembler"]["counters"]["trades"] = -1
    paths.state.write_text(json.dumps(state))
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--rebuild")
    assert status == 0, err
    assert json.loads(paths.state.read_text())["settings"]["timeframes"] == ["1m", "5m"]
    for tf in ("1m", "5m"):
        assert paths.output(tf).read_bytes() == VaultPaths.of(template, INST).output(tf).read_bytes()
