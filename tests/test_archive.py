"""``vstream import-okx``: OKX daily trade archives into the vault's raw trade files.

Built around the real archive rows in ../shared/data/real (MATIC-USDT-SWAP, archive day
2023-08-21 in UTC+8 = 2023-08-20 16:01 UTC), reshaped in each test into the formats OKX has
used: zip, bare CSV, no header, and the older bilingual GBK header with size before price.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import filelock
import pytest
from support import REAL_DATA

from vstream.archive import (
    OVERLAP_MARGIN_MS,
    _scan_existing,
    header_columns,
    import_archives,
)
from vstream.errors import ConfigError, LockedError, StateError
from vstream.instruments import VaultPaths

pytestmark = pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/data/real is not beside the checkout")

MATIC = "MATIC-USDT-SWAP"
REAL_CSV = REAL_DATA / "stonkylab_MATIC-USDT-SWAP_2023-08-21_one_minute.csv"
HEADER = ["instrument_name", "trade_id", "side", "price", "size", "created_time"]
GBK_HEADER = ["instrument_name/交易币对", "trade_id/成交id", "side/交易方向", "size/数量", "price/价格", "created_time/成交时间"]
DAY = "2023-08-20"  # the UTC day of the real rows (16:01 UTC, archive day 2023-08-21 UTC+8)


def real_rows() -> list[list[str]]:
    with REAL_CSV.open(newline="") as handle:
        reader = csv.reader(handle)
        assert next(reader) == HEADER
        return [row for row in reader if row]


def csv_bytes(rows: list[list[str]], header: list[str] | None = HEADER, encoding: str = "utf-8") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode(encoding)


def write_zip(path: Path, data: bytes, member: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member or path.name.replace(".zip", ".csv"), data)
    return path


def day_file(vault: Path, day: str = DAY, inst: str = MATIC) -> Path:
    return VaultPaths.of(vault, inst).raw_dir / f"{day}.jsonl"


def objects(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_zip_archive_becomes_flat_okx_trades_exactly(vault: Path, tmp_path: Path) -> None:
    rows = real_rows()
    archive = write_zip(tmp_path / "MATIC-USDT-SWAP-trades-2023-08-21.zip", REAL_CSV.read_bytes())
    [report] = import_archives(vault, [archive])
    assert (report.rows, report.imported, report.skipped) == (14, 14, 0)
    assert report.days == {MATIC: {DAY: 14}}
    written = objects(day_file(vault))
    assert written == [
        {"instId": r[0], "tradeId": r[1], "px": r[3], "sz": r[4], "side": r[2], "ts": r[5]} for r in rows
    ]
    assert written[0]["sz"] == "38.0"  # the CSV's text, not a reformatted number
    assert list(written[0]) == ["instId", "tradeId", "px", "sz", "side", "ts"]


def test_reimporting_the_same_archive_is_a_no_op(vault: Path, tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "MATIC-USDT-SWAP-trades-2023-08-21.zip", REAL_CSV.read_bytes())
    import_archives(vault, [archive])
    before = day_file(vault).read_bytes()
    [again] = import_archives(vault, [archive])
    assert (again.rows, again.imported, again.duplicates) == (14, 0, 14)
    assert day_file(vault).read_bytes() == before


@pytest.mark.parametrize("variant", ["csv", "no_header", "gbk_bilingual", "bom", "crlf"])
def test_every_archive_format_gives_the_same_day_file(vault: Path, tmp_path: Path, variant: str) -> None:
    reference = tmp_path / "ref"
    import_archives(reference, [REAL_CSV])
    rows = real_rows()
    path = tmp_path / f"MATIC-USDT-SWAP-trades-2023-08-21.{variant}.csv"
    if variant == "csv":
        path.write_bytes(REAL_CSV.read_bytes())
    elif variant == "no_header":
        path.write_bytes(csv_bytes(rows, header=None))
    elif variant == "gbk_bilingual":
        swapped = [[r[0], r[1], r[2], r[4], r[3], r[5]] for r in rows]  # size before price
        data = csv_bytes(swapped, header=GBK_HEADER, encoding="gbk")
        assert not data.isascii()
        path = write_zip(tmp_path / "MATIC-USDT-SWAP-trades-2023-08-21.zip", data)
    elif variant == "bom":
        path.write_bytes(b"\xef\xbb\xbf" + REAL_CSV.read_bytes())
    else:
        path.write_bytes(REAL_CSV.read_bytes().replace(b"\n", b"\r\n"))
    [report] = import_archives(vault, [path])
    assert (report.imported, report.bad) == (14, 0)
    assert day_file(vault).read_bytes() == day_file(reference).read_bytes()


def test_bilingual_header_is_mapped_by_name() -> None:
    assert header_columns(GBK_HEADER) == {
        "instrument_name": 0, "trade_id": 1, "side": 2, "size": 3, "price": 4, "created_time": 5,
    }  # fmt: skip
    with pytest.raises(ConfigError, match="no column for price"):
        header_columns(["instrument_name", "trade_id", "side", "size", "created_time"])


def test_headerless_file_with_other_column_order_needs_columns(vault: Path, tmp_path: Path) -> None:
    rows = [[r[0], r[1], r[2], r[4], r[3], r[5]] for r in real_rows()]
    path = tmp_path / "old.csv"
    path.write_bytes(csv_bytes(rows, header=None))
    order = ["instrument_name", "trade_id", "side", "size", "price", "created_time"]
    [report] = import_archives(vault, [path], columns=order)
    assert report.imported == 14
    assert objects(day_file(vault))[0]["px"] == "0.5747"
    with pytest.raises(ConfigError, match="--columns must name each"):
        import_archives(vault, [path], columns=["trade_id", "side"])


def test_utc_plus_8_archive_day_is_split_at_utc_midnight(vault: Path, tmp_path: Path) -> None:
    # An archive dated 2023-08-21 (UTC+8) runs from 2023-08-20T16:00Z to 2023-08-21T16:00Z.
    start = 1692547200000  # 2023-08-20T16:00:00Z
    midnight = 1692576000000  # 2023-08-21T00:00:00Z
    stamps = [start, midnight - 1, midnight, midnight + 15 * 3600_000]
    rows = [[MATIC, str(500 + i), "buy", "0.57", "1", str(ts)] for i, ts in enumerate(stamps)]
    path = write_zip(tmp_path / "MATIC-USDT-SWAP-trades-2023-08-21.zip", csv_bytes(rows))
    [report] = import_archives(vault, [path])
    assert report.days == {MATIC: {"2023-08-20": 2, "2023-08-21": 2}}
    assert [o["ts"] for o in objects(day_file(vault, "2023-08-20"))] == [str(start), str(midnight - 1)]
    assert [o["ts"] for o in objects(day_file(vault, "2023-08-21"))] == [str(midnight), str(stamps[3])]


def _split_archives(tmp_path: Path, parts: list[slice]) -> list[Path]:
    rows = real_rows()
    paths = []
    for n, part in enumerate(parts):
        path = tmp_path / f"part{n}.csv"
        path.write_bytes(csv_bytes(rows[part]))
        paths.append(path)
    return paths


def test_consecutive_and_overlapping_archives_append_without_duplicates(vault: Path, tmp_path: Path) -> None:
    reference = tmp_path / "ref"
    import_archives(reference, [REAL_CSV])
    first, overlap = _split_archives(tmp_path, [slice(0, 9), slice(5, 14)])
    import_archives(vault, [first])
    size_before = day_file(vault).stat().st_size
    [report] = import_archives(vault, [overlap])
    assert (report.imported, report.duplicates, report.merged) == (5, 4, [])
    assert day_file(vault).read_bytes()[:size_before] == day_file(reference).read_bytes()[:size_before]
    assert day_file(vault).read_bytes() == day_file(reference).read_bytes()


def test_older_rows_are_merged_into_a_file_replay_has_not_read(vault: Path, tmp_path: Path) -> None:
    reference = tmp_path / "ref"
    import_archives(reference, [REAL_CSV])
    late_half, early_half = _split_archives(tmp_path, [slice(7, 14), slice(0, 7)])
    import_archives(vault, [late_half])
    [report] = import_archives(vault, [early_half])
    assert report.imported == 7 and report.merged == [str(day_file(vault))]
    assert report.stale == []
    assert day_file(vault).read_bytes() == day_file(reference).read_bytes()


def test_unordered_archive_rows_are_written_in_trade_order(vault: Path, tmp_path: Path) -> None:
    rows = real_rows()
    path = tmp_path / "shuffled.csv"
    path.write_bytes(csv_bytes(rows[::-1] + rows[3:5]))  # reversed, and two rows twice
    [report] = import_archives(vault, [path])
    assert (report.imported, report.duplicates) == (14, 2)
    ids = [o["tradeId"] for o in objects(day_file(vault))]
    assert ids == [r[1] for r in rows]


def test_bad_rows_are_counted_and_reported_good_rows_still_imported(vault: Path, tmp_path: Path) -> None:
    rows = real_rows()
    bad = [
        [MATIC, "1", "hold", "0.5", "1", rows[0][5]],
        [MATIC, "2", "buy", "0.5", "0", rows[0][5]],
        [MATIC, "3", "buy", "abc", "1", rows[0][5]],
        [MATIC, "4", "buy", "0.5", "1", "1692547262"],  # seconds, not milliseconds
        [MATIC, "x5", "buy", "0.5", "1", rows[0][5]],
        ["not an instrument", "6", "buy", "0.5", "1", rows[0][5]],
        [MATIC, "7", "buy"],
    ]
    path = tmp_path / "bad.csv"
    path.write_bytes(csv_bytes(rows[:5] + bad + rows[5:]))
    [report] = import_archives(vault, [path])
    assert (report.rows, report.imported, report.bad) == (21, 14, 7)
    assert len(report.errors) == 5
    assert "line 7: side must be buy or sell" in report.errors[0]
    assert "size must be > 0" in report.errors[1]
    assert len(objects(day_file(vault))) == 14


def test_instrument_filter_counts_other_rows(vault: Path, tmp_path: Path) -> None:
    rows = real_rows()
    other = [["BTC-USDT-SWAP", str(900 + i), "buy", "29000.1", "2", r[5]] for i, r in enumerate(rows[:3])]
    path = tmp_path / "mixed.csv"
    path.write_bytes(csv_bytes(rows + other))
    [report] = import_archives(vault, [path], inst_ids=[MATIC])
    assert (report.imported, report.other) == (14, 3)
    assert not day_file(vault, inst="BTC-USDT-SWAP").exists()


def test_unterminated_last_line_is_closed_before_appending(vault: Path, tmp_path: Path) -> None:
    first, rest = _split_archives(tmp_path, [slice(0, 5), slice(5, 14)])
    import_archives(vault, [first])
    target = day_file(vault)
    target.write_bytes(target.read_bytes() + b'{"instId":"MATIC-USDT-SWAP","trade')  # a writer died
    import_archives(vault, [rest])
    lines = target.read_bytes().split(b"\n")
    assert lines[5] == b'{"instId":"MATIC-USDT-SWAP","trade'
    assert json.loads(lines[6])["tradeId"] == real_rows()[5][1]


def test_compressed_day_file_is_read_for_duplicates_but_never_appended(vault: Path, tmp_path: Path) -> None:
    import_archives(vault, [REAL_CSV])
    plain = day_file(vault)
    packed = plain.with_name(plain.name + ".gz")
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    [report] = import_archives(vault, [REAL_CSV])
    assert (report.imported, report.duplicates) == (0, 14)
    extra = tmp_path / "extra.csv"
    extra.write_bytes(csv_bytes([[MATIC, "104136999", "buy", "0.5744", "1", "1692547319000"]]))
    with pytest.raises(ConfigError, match="decompress it"):
        import_archives(vault, [extra])
    assert not plain.exists()


def test_a_running_replay_blocks_the_import(vault: Path) -> None:
    paths = VaultPaths.of(vault, MATIC)
    paths.state_dir.mkdir(parents=True)
    lock = filelock.FileLock(paths.lock, timeout=0)
    with lock, pytest.raises(LockedError, match="another vstream process"):
        import_archives(vault, [REAL_CSV])
    assert not day_file(vault).exists()


def test_rows_replay_already_passed_are_refused_then_allowed_with_a_rebuild_hint(
    vault: Path, tmp_path: Path, run_cli: Callable[..., tuple[int, str, str]]
) -> None:
    rows = real_rows()
    missing = rows[4]
    kept = tmp_path / "kept.csv"
    kept.write_bytes(csv_bytes([r for r in rows if r is not missing]))
    import_archives(vault, [kept])
    status, _, err = run_cli("replay", "--instId", MATIC, "--vault", str(vault), "--ct-val", f"{MATIC}=10", "--final")
    assert status == 0, err
    before = day_file(vault).read_bytes()
    gap = tmp_path / "gap.csv"
    gap.write_bytes(csv_bytes([missing]))
    status, out, err = run_cli("import-okx", str(gap), "--vault", str(vault))
    assert status == 2
    assert "would leave the bars stale" in err and f"vstream replay --rebuild --instId {MATIC}" in err
    assert day_file(vault).read_bytes() == before  # nothing written
    status, out, err = run_cli("import-okx", str(gap), "--vault", str(vault), "--allow-stale")
    assert status == 0, err
    assert "imported=1" in out and "bars are now stale" in err
    status, _, err = run_cli("replay", "--instId", MATIC, "--vault", str(vault), "--ct-val", f"{MATIC}=10", "--final")
    assert status == 2 and "--rebuild" in err  # replay notices the rewritten file itself too


def test_imported_archive_replays_to_okx_own_candle(
    vault: Path, tmp_path: Path, run_cli: Callable[..., tuple[int, str, str]]
) -> None:
    archive = write_zip(tmp_path / "MATIC-USDT-SWAP-trades-2023-08-21.zip", REAL_CSV.read_bytes())
    status, out, err = run_cli("import-okx", str(archive), "--vault", str(vault))
    assert status == 0, err
    assert out.strip() == (
        "MATIC-USDT-SWAP-trades-2023-08-21.zip: rows=14 imported=14 skipped=0 (duplicates=0 bad=0)"
        " -> MATIC-USDT-SWAP 2023-08-20 +14"
    )
    status, out, err = run_cli("replay", "--instId", MATIC, "--vault", str(vault), "--ct-val", f"{MATIC}=10", "--final")
    assert status == 0, err
    [bar] = objects(VaultPaths.of(vault, MATIC).output())
    # OKX's own 1m candle: o 0.5747 h 0.5748 l 0.5744 c 0.5744, volCcyQuote 6889.352 USDT.
    assert (bar["open"], bar["high"], bar["low"], bar["close"]) == ("0.5747", "0.5748", "0.5744", "0.5744")
    assert bar["timestamp_utc"] == "2023-08-20T16:01:00Z"
    assert bar["total_volume"] == "6889" and bar["trade_count"] == 14


def test_existing_file_is_read_back_only_as_far_as_the_import_reaches(tmp_path: Path) -> None:
    path = tmp_path / "2023-08-20.jsonl"
    base = 1692489600000  # 2023-08-20T00:00Z
    lines = [
        json.dumps({"instId": MATIC, "tradeId": str(i), "px": "1", "sz": "1", "side": "buy", "ts": str(base + i * 1000)})
        for i in range(20000)
    ]
    path.write_text("\n".join(lines) + "\n")
    since = base + 19990 * 1000
    found = _scan_existing(path, False, since)
    assert found.last == (base + 19999 * 1000, 19999)
    assert found.ids == set(range(19990, 20000))
    # It stopped a margin before `since`, not at the start of the file.
    assert OVERLAP_MARGIN_MS // 1000 < 1000


def test_missing_or_empty_archive_is_a_clear_error(vault: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        import_archives(vault, [tmp_path / "nope.zip"])
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "x")
    with pytest.raises(ConfigError, match=r"holds no \.csv"):
        import_archives(vault, [empty])


def test_state_error_type_for_stale_import(vault: Path, tmp_path: Path, run_cli: Callable[..., tuple[int, str, str]]) -> None:
    rows = real_rows()
    later = tmp_path / "later.csv"
    later.write_bytes(csv_bytes(rows[10:]))
    import_archives(vault, [later])
    assert run_cli("replay", "--instId", MATIC, "--vault", str(vault), "--ct-val", f"{MATIC}=10")[0] == 0
    earlier = tmp_path / "earlier.csv"
    earlier.write_bytes(csv_bytes(rows[:10]))
    with pytest.raises(StateError):
        import_archives(vault, [earlier])


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED], ids=["deflated", "stored"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, -1], ids=["10%", "50%", "90%", "all but a byte"])
def test_a_truncated_zip_is_a_broken_archive(
    vault: Path, tmp_path: Path, run_cli: Callable[..., tuple[int, str, str]], compression: int, keep: float
) -> None:
    whole = tmp_path / "whole.zip"
    with zipfile.ZipFile(whole, "w", compression) as zf:
        zf.writestr("MATIC-USDT-SWAP-trades-2023-08-21.csv", REAL_CSV.read_bytes())
    data = whole.read_bytes()
    cut = tmp_path / "MATIC-USDT-SWAP-trades-2023-08-21.zip"
    cut.write_bytes(data[: int(len(data) * keep)] if keep > 0 else data[:-1])
    status, out, err = run_cli("import-okx", str(cut), "--vault", str(vault))
    assert status == 1 and out == ""
    assert len(err.splitlines()) == 1 and cut.name in err and "truncated" in err, err
    assert not VaultPaths.of(vault, MATIC).raw_dir.exists()  # nothing imported


def test_a_zip_with_damaged_data_is_a_broken_archive(
    vault: Path, tmp_path: Path, run_cli: Callable[..., tuple[int, str, str]]
) -> None:
    archive = write_zip(tmp_path / "MATIC-USDT-SWAP-trades-2023-08-21.zip", REAL_CSV.read_bytes() * 20)
    data = bytearray(archive.read_bytes())
    start = 30 + len("MATIC-USDT-SWAP-trades-2023-08-21.csv")  # the local header, then the deflated data
    for i in range(start + 40, start + 60):
        data[i] ^= 0x5A
    archive.write_bytes(bytes(data))
    status, out, err = run_cli("import-okx", str(archive), "--vault", str(vault))
    assert status == 1 and out == ""
    assert len(err.splitlines()) == 1 and archive.name in err and "damaged" in err, err
    assert not VaultPaths.of(vault, MATIC).raw_dir.exists()
