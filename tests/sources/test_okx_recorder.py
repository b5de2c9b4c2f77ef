"""The ``--record`` writer on its own: positions a replay resumes from, days, torn lines."""

from __future__ import annotations

import asyncio
import gzip
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from vstream import SourceError
from vstream.instruments import VaultPaths
from vstream.sources import Batch
from vstream.sources.okx_recorder import Recorder
from vstream.sources.replay import ReplaySource

BTC = "BTC-USDT-SWAP"
DAY1 = 1_765_670_400_000  # 2025-12-14T00:00:00Z


def line(tid: int, ts: int) -> tuple[int, bytes]:
    trade = {"instId": BTC, "tradeId": str(tid), "px": "42000.5", "sz": "1", "side": "buy"}
    trade["ts"] = str(ts)
    return ts, msgspec.json.encode(trade) + b"\n"


async def replay(vault: Path, position: dict[str, Any]) -> list[Batch]:
    source = ReplaySource(vault, BTC, clock=lambda: DAY1 / 1000 + 10 * 86400)
    source.resume({BTC: position})
    return [b async for b in source]


async def test_positions_are_where_a_replay_resumes(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, [BTC])
    rec.start(BTC, {})
    rec.prepare(BTC)  # no folder yet: nothing to do
    rec.write(BTC, [line(1, DAY1 + 1000), line(2, DAY1 + 86_400_000)])  # two days
    rec.write(BTC, [line(3, DAY1 + 2000)])  # day 1 again: stays in the newer file
    rec.close()
    raw = VaultPaths.of(tmp_path, BTC).raw_dir
    assert sorted(p.name for p in raw.iterdir()) == ["2025-12-14.jsonl", "2025-12-15.jsonl"]
    position = rec.position(BTC)
    assert {d: (p.offset, p.lines) for d, p in position.items()} == {
        "2025-12-14": ((raw / "2025-12-14.jsonl").stat().st_size, 1),
        "2025-12-15": ((raw / "2025-12-15.jsonl").stat().st_size, 2),
    }
    assert rec.snapshot() == {BTC: position}
    # From the recorder's position a replay finds nothing new (and accepts the tail CRCs) ...
    assert [t for b in await replay(tmp_path, position) for t in b.trades] == []
    # ... and from the start it reads the lines in the order they were recorded.
    got = [t.tradeId for b in await replay(tmp_path, {}) for t in b.trades]
    assert got == ["1", "2", "3"]


async def test_prepare_cuts_a_torn_last_line_and_appends_after_it(tmp_path: Path) -> None:
    raw = VaultPaths.of(tmp_path, BTC).raw_dir
    raw.mkdir(parents=True)
    whole = line(1, DAY1 + 1000)[1] + line(2, DAY1 + 2000)[1]
    (raw / "2025-12-14.jsonl").write_bytes(whole + b'{"instId":"BTC-USDT-SW')
    batches = await replay(tmp_path, {})  # the catch-up: the torn line stays unconsumed
    rec = Recorder(tmp_path, [BTC])
    rec.start(BTC, batches[-1].position)
    rec.prepare(BTC)
    assert (raw / "2025-12-14.jsonl").read_bytes() == whole
    assert rec.last_recorded(BTC, DAY1 + 3000) == (2, DAY1 + 2000)
    rec.write(BTC, [line(3, DAY1 + 3000)])
    rec.close()
    assert [t for b in await replay(tmp_path, rec.position(BTC)) for t in b.trades] == []
    got = [t.tradeId for b in await replay(tmp_path, {}) for t in b.trades]
    assert got == ["1", "2", "3"]


def test_a_day_already_archived_is_a_clear_error(tmp_path: Path) -> None:
    raw = VaultPaths.of(tmp_path, BTC).raw_dir
    raw.mkdir(parents=True)
    (raw / "2025-12-14.jsonl.gz").write_bytes(b"")
    rec = Recorder(tmp_path, [BTC])
    with pytest.raises(SourceError, match="already archived"):
        rec.write(BTC, [line(1, DAY1 + 1000)])
    assert not (raw / "2025-12-14.jsonl").exists()


def test_sync_fsyncs_only_what_was_written(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, [BTC])
    asyncio.run(rec.sync())  # nothing open: nothing to do
    rec.write(BTC, [line(1, DAY1 + 1000)])
    track = rec._tracks[BTC]
    assert track.dirty == {"2025-12-14"}
    asyncio.run(rec.sync())
    assert track.dirty == set() and track.handle is not None
    rec.close()
    rec.close()  # idempotent
    assert track.handle is None


def marks_of(vault: Path) -> list[dict[str, Any]]:
    path = VaultPaths.of(vault, BTC).late_marks
    return [msgspec.json.decode(x) for x in path.read_bytes().splitlines()] if path.exists() else []


async def replay_all(vault: Path) -> tuple[list[str], int]:
    batches = await replay(vault, {})
    return [t.tradeId for b in batches for t in b.trades], sum(b.skipped for b in batches)


async def test_late_lines_are_marked_where_they_start_and_replay_drops_them(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, [BTC])
    rec.start(BTC, {})
    rec.prepare(BTC)
    first, late, after = line(1, DAY1 + 1000), line(2, DAY1 + 2000), line(3, DAY1 + 3000)
    rec.write(BTC, [first, late, after], [(1, "2")])
    next_day = line(4, DAY1 + 86_400_000)
    rec.write(BTC, [next_day, line(5, DAY1 + 86_401_000)], [(1, "5")])
    rec.close()
    assert marks_of(tmp_path) == [
        {"file": "2025-12-14.jsonl", "tradeId": "2", "ts": DAY1 + 2000, "offset": len(first[1])},
        {"file": "2025-12-15.jsonl", "tradeId": "5", "ts": DAY1 + 86_401_000, "offset": len(next_day[1])},
    ]
    raw = VaultPaths.of(tmp_path, BTC).raw_dir
    assert sorted(p.name for p in raw.iterdir()) == ["2025-12-14.jsonl", "2025-12-15.jsonl"]
    assert await replay_all(tmp_path) == (["1", "3", "4"], 2)
    # An archived day keeps its offsets.
    day1 = raw / "2025-12-14.jsonl"
    with gzip.open(raw / "2025-12-14.jsonl.gz", "wb") as packed:
        packed.write(day1.read_bytes())
    day1.unlink()
    assert await replay_all(tmp_path) == (["1", "3", "4"], 2)


async def test_a_mark_drops_only_the_line_it_points_at(tmp_path: Path) -> None:
    """The same trade id at another place (recorded again after a crash) is not dropped."""
    rec = Recorder(tmp_path, [BTC])
    rec.start(BTC, {})
    rec.prepare(BTC)
    rec.write(BTC, [line(1, DAY1 + 1000), line(2, DAY1 + 2000)], [(0, "1")])
    rec.close()
    path = VaultPaths.of(tmp_path, BTC).late_marks
    path.write_bytes(path.read_bytes().replace(b'"offset":0', b'"offset":9999'))
    assert await replay_all(tmp_path) == (["1", "2"], 0)


def test_a_mark_is_durable_before_its_line_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder(tmp_path, [BTC])
    rec.start(BTC, {})
    raw_file = VaultPaths.of(tmp_path, BTC).raw_dir / "2025-12-14.jsonl"
    seen: list[tuple[int, bool]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        seen.append((len(marks_of(tmp_path)), raw_file.exists() and raw_file.stat().st_size > 0))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    rec.write(BTC, [line(1, DAY1 + 1000)], [(0, "1")])
    assert seen[0] == (1, False)  # the mark's fsync came first, with no line written yet
    rec.close()


async def test_resuming_removes_marks_of_lines_never_written(tmp_path: Path) -> None:
    """Killed between a mark and its line, or while writing the line (a torn one, cut off):
    the mark must go before a line is appended where it points."""
    rec = Recorder(tmp_path, [BTC])
    rec.start(BTC, {})
    rec.prepare(BTC)
    one, two = line(1, DAY1 + 1000), line(2, DAY1 + 2000)
    rec.write(BTC, [one, two], [(1, "2")])
    rec.close()
    raw = VaultPaths.of(tmp_path, BTC).raw_dir / "2025-12-14.jsonl"
    raw.write_bytes(one[1] + two[1][:20])  # the late line torn
    marks = VaultPaths.of(tmp_path, BTC).late_marks
    marks.write_bytes(marks.read_bytes() + b'{"file":"2025-12-14.jsonl","trade')  # and a torn mark
    batches = await replay(tmp_path, {})
    rec = Recorder(tmp_path, [BTC])
    rec.start(BTC, batches[-1].position)
    rec.prepare(BTC)
    assert marks_of(tmp_path) == []
    rec.write(BTC, [line(3, DAY1 + 3000)])  # where the late line was: not late
    rec.close()
    assert await replay_all(tmp_path) == (["1", "3"], 0)
