"""The vault replay source: files in name order, partial lines, .gz days, BOM, CRLF (SPEC §2, §3)."""

from __future__ import annotations

import gzip
import json
import re

import pytest
from support import trade_line, write_lines

from vstream import ConfigError, ReplaySource, SourceError, VaultPaths
from vstream.state import read_state

INST = "BTC-USDT-SWAP"
DAY1 = 1_765_670_400_000  # 2025-12-14T00:00:00Z
DAY2 = DAY1 + 86_400_000


def day_lines(start: int, n: int, tid: int) -> list[str]:
    return [trade_line(tid + i, "100", "1", "buy", start + i * 30_000) for i in range(n)]


def bars(vault) -> list[dict]:
    return [json.loads(line) for line in VaultPaths.of(vault, INST).output().read_text().splitlines()]


def test_files_are_read_in_name_order_across_days_and_gz(vault, raw_dir, run_cli):
    raw = raw_dir(INST)
    with gzip.open(raw / "2025-12-14.jsonl.gz", "wt") as handle:
        handle.write("".join(line + "\n" for line in day_lines(DAY2 - 120_000, 4, 1)))
    write_lines(raw / "2025-12-15.jsonl", day_lines(DAY2, 4, 10))
    (raw / "notes.txt").write_text("not a trade file")
    status, out, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--final")
    assert status == 0, err
    assert "trades=8 bars=4 " in out
    assert [b["timestamp_utc"] for b in bars(vault)] == [
        "2025-12-14T23:58:00Z", "2025-12-14T23:59:00Z", "2025-12-15T00:00:00Z", "2025-12-15T00:01:00Z"
    ]  # fmt: skip


def test_partial_last_line_waits_for_its_newline(vault, raw_dir, run_cli):
    path = raw_dir(INST) / "2025-12-14.jsonl"
    lines = day_lines(DAY1, 6, 1)
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(data[:-20])  # the exporter is mid-way through the last line
    status, out, _ = run_cli("replay", "--instId", INST, "--vault", str(vault))
    assert status == 0 and "trades=5 " in out and "rejects=0 " in out
    state = read_state(VaultPaths.of(vault, INST).state)
    assert state.files["2025-12-14"].offset == len(data) - len(lines[-1]) - 1
    path.write_bytes(data)
    status, out, _ = run_cli("replay", "--instId", INST, "--vault", str(vault))
    assert "trades=1 " in out and "rejects=0 " in out


def test_final_processes_a_last_line_without_newline(vault, raw_dir, run_cli):
    path = raw_dir(INST) / "2025-12-14.jsonl"
    path.write_bytes("\n".join(day_lines(DAY1, 3, 1)).encode())
    assert "trades=2 " in run_cli("replay", "--instId", INST, "--vault", str(vault))[1]
    assert "trades=1 " in run_cli("replay", "--instId", INST, "--vault", str(vault), "--final")[1]


def test_a_torn_line_in_an_older_file_waits_for_its_newline(vault, raw_dir, run_cli, caplog):
    """A recorder mid-write at midnight: the next day's file exists, the last line of the
    previous day is not finished yet. Nothing of it may be lost or rejected (issue #11)."""
    raw = raw_dir(INST)
    full, last = day_lines(DAY2 - 60_000, 2, 1)  # two trades of the day's last minute
    half = len(last) // 2
    (raw / "2025-12-14.jsonl").write_bytes((full + "\n" + last[:half]).encode())
    (raw / "2025-12-15.jsonl").write_bytes(b"")
    status, out, err = run_cli("replay", "--instId", INST, "--vault", str(vault))
    assert status == 0, err
    assert "trades=1 " in out and "rejects=0 " in out
    assert "unterminated" not in caplog.text  # nothing waits behind it: no reason to warn
    with open(raw / "2025-12-14.jsonl", "ab") as handle:
        handle.write((last[half:] + "\n").encode())
    status, out, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--final")
    assert status == 0, err
    assert "trades=1 " in out and "rejects=0 " in out
    assert [(b["timestamp_utc"], b["trade_count"]) for b in bars(vault)] == [("2025-12-14T23:59:00Z", 2)]


def test_later_files_wait_behind_a_torn_line(vault, raw_dir, run_cli, caplog):
    """Reading the next day while the previous one is torn would put the torn trade after
    them (late): replay stops at the torn line, says so, and goes on once it is whole."""
    raw = raw_dir(INST)
    lines = day_lines(DAY2 - 90_000, 3, 1)
    data = "".join(line + "\n" for line in lines).encode()
    (raw / "2025-12-14.jsonl").write_bytes(data[:-10])
    write_lines(raw / "2025-12-15.jsonl", day_lines(DAY2, 2, 10))
    status, out, err = run_cli("replay", "--instId", INST, "--vault", str(vault))
    assert status == 0, err
    assert "trades=2 " in out and "rejects=0 " in out
    assert "2025-12-14.jsonl ends in an unterminated line" in caplog.text
    state = read_state(VaultPaths.of(vault, INST).state)
    assert "2025-12-15" not in state.files or state.files["2025-12-15"].offset == 0
    (raw / "2025-12-14.jsonl").write_bytes(data)
    status, out, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--final")
    assert status == 0, err
    assert "trades=3 " in out and "rejects=0 " in out and "late=0 " in out
    assert [(b["timestamp_utc"][11:16], b["trade_count"]) for b in bars(vault)] == [
        ("23:58", 1), ("23:59", 2), ("00:00", 2)
    ]  # fmt: skip


def test_final_processes_a_torn_line_in_an_older_file(vault, raw_dir, run_cli):
    raw = raw_dir(INST)
    lines = day_lines(DAY1, 3, 1)
    (raw / "2025-12-14.jsonl").write_bytes(("\n".join(lines) + "\n" + lines[2][:30]).encode())
    write_lines(raw / "2025-12-15.jsonl", day_lines(DAY2, 2, 10))
    status, out, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--final")
    assert status == 0, err
    assert "trades=5 " in out and "rejects=1 " in out  # the input is declared complete


def test_a_truncated_gz_archive_is_an_error_and_loses_nothing(vault, raw_dir, run_cli):
    """An archive cut short (no end-of-stream marker) is an error; its torn end is never a
    reject, nothing after it is read, and the complete archive later carries on."""
    raw = raw_dir(INST)
    lines = day_lines(DAY1, 400, 1)
    blob = gzip.compress("".join(line + "\n" for line in lines).encode())
    (raw / "2025-12-14.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    write_lines(raw / "2025-12-15.jsonl", day_lines(DAY2, 2, 1000))
    for final in ([], ["--final"]):
        status, out, err = run_cli("replay", "--instId", INST, "--vault", str(vault), *final)
        assert status == 1 and "2025-12-14.jsonl.gz" in err, err
    assert not VaultPaths.of(vault, INST).rejects.exists() or not VaultPaths.of(vault, INST).rejects.read_bytes()
    (raw / "2025-12-14.jsonl.gz").write_bytes(blob)
    status, out, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--final")
    assert status == 0, err
    assert "rejects=0 " in out and "late=0 " in out
    assert sum(b["trade_count"] for b in bars(vault)) == 402


def test_bom_and_mixed_line_endings(vault, raw_dir, run_cli):
    lines = day_lines(DAY1, 4, 1)
    data = b"\xef\xbb\xbf" + (lines[0] + "\r\n" + lines[1] + "\n\r\n" + lines[2] + "\r\n\n" + lines[3] + "\n").encode()
    (raw_dir(INST) / "2025-12-14.jsonl").write_bytes(data)
    status, out, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--final")
    assert status == 0, err
    assert "trades=4 " in out and "rejects=0 " in out and "skipped=0 " in out


def test_archiving_a_consumed_day_as_gz_continues_seamlessly(vault, raw_dir, run_cli):
    raw = raw_dir(INST)
    lines = day_lines(DAY1, 6, 1)
    write_lines(raw / "2025-12-14.jsonl", lines[:4])
    assert "trades=4 " in run_cli("replay", "--instId", INST, "--vault", str(vault))[1]
    with gzip.open(raw / "2025-12-14.jsonl.gz", "wb") as handle:
        handle.write("".join(line + "\n" for line in lines).encode())
    (raw / "2025-12-14.jsonl").unlink()
    status, out, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--final")
    assert status == 0, err
    assert "trades=2 " in out and "late=0 " in out
    # a later run skips the archive without reading it again
    assert "trades=0 " in run_cli("replay", "--instId", INST, "--vault", str(vault))[1]


def test_a_day_present_twice_is_an_error(vault, raw_dir, run_cli):
    raw = raw_dir(INST)
    write_lines(raw / "2025-12-14.jsonl", day_lines(DAY1, 2, 1))
    with gzip.open(raw / "2025-12-14.jsonl.gz", "wt") as handle:
        handle.write("")
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault))
    assert status == 1 and "keep one of them" in err


def test_a_replaced_input_file_is_noticed(vault, raw_dir, run_cli):
    path = raw_dir(INST) / "2025-12-14.jsonl"
    write_lines(path, day_lines(DAY1, 5, 1))
    run_cli("replay", "--instId", INST, "--vault", str(vault))
    write_lines(path, day_lines(DAY1, 5, 500))  # same length, other content
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault))
    assert status == 2 and "replaced or rewritten" in err and "--rebuild" in err


def test_corrupt_gzip_is_a_source_error(vault, raw_dir, run_cli):
    (raw_dir(INST) / "2025-12-14.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault))
    assert status == 1 and "cannot read" in err


def test_spot_and_futures_use_their_folders(vault):
    assert VaultPaths.of(vault, "BTC-USDT").raw_dir.parts[-2:] == ("trades_spot", "BTC-USDT")
    paths = VaultPaths.of(vault, "BTC-USD-250627")
    assert paths.output().relative_to(vault).as_posix() == "derived/volume/okx/futures/BTC-USD-250627/volume_1m.jsonl"
    assert paths.state.relative_to(vault).as_posix() == "state/volume/okx/futures/BTC-USD-250627.state.json"
    assert paths.rejects.relative_to(vault).as_posix() == "state/volume/okx/futures/BTC-USD-250627.rejects.jsonl"
    assert VaultPaths.of(vault, "ETH-USDT-SWAP").raw_dir.relative_to(vault).as_posix() == "raw/okx/trades_perps/ETH-USDT-SWAP"


def test_constructor_validates_without_io(tmp_path):
    with pytest.raises(ConfigError):
        ReplaySource(tmp_path / "nowhere", "NOT AN ID")
    with pytest.raises(ConfigError):
        ReplaySource(tmp_path / "nowhere", INST, chunk_bytes=10)
    ReplaySource(tmp_path / "nowhere", INST)  # a missing vault is fine until it is read
    assert issubclass(SourceError, Exception)


def test_a_missing_vault_is_an_error_and_creates_nothing(tmp_path, run_cli):
    typo = tmp_path / "typo"
    for extra in ([], ["--final"], ["--rebuild"]):
        status, out, err = run_cli("replay", "--instId", INST, "--vault", str(typo), *extra)
        assert status == 2 and out == "", (extra, out)
        assert err == f"vstream: {INST}: vault {typo} does not exist\n", err
    assert not typo.exists()
    status, out, err = run_cli("replay", "--all", "--vault", str(typo))
    assert status == 2 and err == f"vstream: vault {typo} does not exist\n", err
    assert not typo.exists()


def test_an_instrument_without_trade_files_is_an_error_naming_the_folder(vault, raw_dir, run_cli):
    write_lines(raw_dir("ETH-USDT-SWAP") / "2025-12-14.jsonl", [])  # the vault exists
    paths = VaultPaths.of(vault, INST)
    for make_folder in (False, True):
        if make_folder:
            paths.raw_dir.mkdir(parents=True)
            (paths.raw_dir / "notes.txt").write_text("not a day file")
        for extra in ([], ["--rebuild"]):
            status, out, err = run_cli("replay", "--instId", INST, "--vault", str(vault), *extra)
            assert status == 2 and out == "", (make_folder, extra)
            assert str(paths.raw_dir) in err and len(err.splitlines()) == 1, err
    assert not paths.state.exists() and not paths.derived_dir.exists() and not paths.state_dir.exists()
    # and status does not list it as a healthy instrument
    status, out, err = run_cli("status", "--vault", str(vault))
    assert INST not in out


def test_rebuild_without_input_keeps_what_was_built(vault, raw_dir, run_cli):
    path = raw_dir(INST) / "2025-12-14.jsonl"
    write_lines(path, day_lines(DAY1, 3, 1))
    assert run_cli("replay", "--instId", INST, "--vault", str(vault), "--final")[0] == 0
    paths = VaultPaths.of(vault, INST)
    before = (paths.output().read_bytes(), paths.state.read_bytes())
    path.rename(path.with_name("2025-12-14.jsonl.bak"))  # moved away by mistake
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--rebuild")
    assert status == 2 and str(paths.raw_dir) in err
    assert (paths.output().read_bytes(), paths.state.read_bytes()) == before


def test_all_skips_folders_without_trade_files(vault, raw_dir, run_cli):
    write_lines(raw_dir(INST) / "2025-12-14.jsonl", day_lines(DAY1, 3, 1))
    raw_dir("ETH-USDT-SWAP")  # a recorder made the folder; no day file yet
    status, out, err = run_cli("replay", "--all", "--vault", str(vault), "--final")
    assert status == 0, err
    assert out.startswith(f"{INST} trades=3 ") and len(out.splitlines()) == 1


def test_iterating_a_source_without_input_raises(tmp_path):
    import asyncio

    async def first(source: ReplaySource) -> None:
        async for _ in source:
            pass

    with pytest.raises(ConfigError, match="does not exist"):
        asyncio.run(first(ReplaySource(tmp_path / "nowhere", INST)))
    (tmp_path / "v").mkdir()
    folder = re.escape(str(VaultPaths.of(tmp_path / "v", INST).raw_dir))
    with pytest.raises(ConfigError, match=f"no trade files in {folder} "):
        asyncio.run(first(ReplaySource(tmp_path / "v", INST, final=True)))


def test_all_discovers_instruments_and_runs_them(vault, raw_dir, run_cli):
    write_lines(raw_dir("BTC-USDT-SWAP") / "2025-12-14.jsonl", day_lines(DAY1, 3, 1))
    write_lines(raw_dir("ETH-USDT-SWAP") / "2025-12-14.jsonl",
                [line.replace("BTC-USDT-SWAP", "ETH-USDT-SWAP") for line in day_lines(DAY1, 2, 1)])  # fmt: skip
    status, out, err = run_cli("replay", "--all", "--vault", str(vault), "--final")
    assert status == 0, err
    assert out.splitlines()[0].startswith("BTC-USDT-SWAP trades=3 ")
    assert out.splitlines()[1].startswith("ETH-USDT-SWAP trades=2 ")


def test_vault_from_environment(vault, raw_dir, run_cli, monkeypatch):
    write_lines(raw_dir(INST) / "2025-12-14.jsonl", day_lines(DAY1, 3, 1))
    monkeypatch.setenv("VSTREAM_VAULT", str(vault))
    status, out, _ = run_cli("replay", "--instId", INST)
    assert status == 0 and "trades=3 " in out


def _read_all(vault, chunk_bytes: int, final: bool) -> tuple[list, list, dict]:
    """Every batch the source gives, flattened: trades, rejects (line, error), positions."""
    import asyncio

    async def collect():
        source = ReplaySource(vault, INST, final=final, chunk_bytes=chunk_bytes)
        trades, rejects = [], []
        async for batch in source:
            trades += [(t.tradeId, t.ts) for t in batch.trades]
            rejects += [(r.file, r.line, r.error, r.raw) for r in batch.rejects]
        return trades, rejects, {day: (p.offset, p.lines, p.tail_crc) for day, p in source.snapshot()[INST].items()}

    return asyncio.run(collect())


@pytest.mark.parametrize("gz", [False, True])
def test_what_is_read_does_not_depend_on_the_chunk_size(tmp_path, monkeypatch, gz):
    """Lines shorter and longer than a chunk, lines over the length limit, a BOM, CRLF, an
    unterminated last line: any chunk size gives the same trades, rejects and positions."""
    import vstream.sources.replay as replay

    monkeypatch.setattr(replay, "MAX_LINE_BYTES", 3000)
    lines = ["\ufeff" + trade_line(1, "100", "1", "buy", DAY1)]
    for i in range(2, 60):
        line = trade_line(i, "100", "1", "buy", DAY1 + i * 1000)
        if i % 7 == 0:  # longer than every chunk below, still under the limit
            line = line[:-1] + ',"pad":"' + "x" * (1100 + 10 * i) + '"}'
        if i % 11 == 0:  # over the limit: a reject, never held whole
            line = line[:-1] + ',"pad":"' + "y" * 5000 + '"}'
        if i % 5 == 0:
            line += "\r"
        lines.append(line)
    data = ("\n".join(lines) + "\n" + trade_line(99, "100", "1", "sell", DAY1 + 99_000)).encode()
    raw = VaultPaths.of(tmp_path / "v", INST).raw_dir
    raw.mkdir(parents=True)
    if gz:
        with gzip.open(raw / "2025-12-14.jsonl.gz", "wb") as handle:
            handle.write(data)
    else:
        (raw / "2025-12-14.jsonl").write_bytes(data)
    for final in (False, True):
        reference = _read_all(tmp_path / "v", 1 << 20, final)
        assert len(reference[1]) == len([i for i in range(2, 60) if i % 11 == 0])
        assert any(error.startswith("line longer than 3000") for _, _, error, _ in reference[1])
        for chunk in (1024, 1500, 4096, 9999):
            assert _read_all(tmp_path / "v", chunk, final) == reference, (chunk, final)
    # an unterminated last line counts only when the input is final (or archived)
    assert len(_read_all(tmp_path / "v", 4096, True)[0]) == len(_read_all(tmp_path / "v", 4096, False)[0]) + (not gz)
