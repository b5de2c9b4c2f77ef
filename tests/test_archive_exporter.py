"""``vstream import-okx`` into a vault the trader's exporter fills: its lines, its line ends.

The real archive rows in ../shared/data/real (MATIC-USDT-SWAP, 2023-08-20 16:01 UTC) are the
very fills the real exporter file there holds, so an import into an exporter-format vault must
write that file byte for byte, and importing again must change nothing.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from support import REAL_DATA, exporter_line

from vstream.archive import import_archives
from vstream.errors import ConfigError
from vstream.instruments import VaultPaths, meta_path

pytestmark = pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/data/real is not beside the checkout")

MATIC = "MATIC-USDT-SWAP"
REAL_CSV = REAL_DATA / "stonkylab_MATIC-USDT-SWAP_2023-08-21_one_minute.csv"
REAL_EXPORTER = REAL_DATA / "exporter_MATIC-USDT-SWAP_2023-08-20.jsonl"
DAY = "2023-08-20"
BEFORE = 1_692_460_800_000  # 2023-08-19T16:00:00Z


def sample(newline: bytes = b"\r\n") -> list[bytes]:
    """The real exporter file's lines with ``newline`` line ends."""
    return [line + newline for line in REAL_EXPORTER.read_bytes().splitlines()]


def day_file(vault: Path, day: str = DAY, inst: str = MATIC) -> Path:
    return VaultPaths.of(vault, inst).raw_dir / f"{day}.jsonl"


def write_meta(vault: Path, inst: str = MATIC, ct_val: str = "10") -> Path:
    """The exporter's instrument file, as it writes it."""
    facts = {"ctVal": ct_val, "ctMult": "1", "ctType": "linear", "tickSz": "0.0001", "lotSz": "1"}
    raw = {"instId": inst, "instType": "SWAP", **facts, "settleCcy": "USDT", "state": "live"}
    path = meta_path(vault, inst)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"instId": inst, "raw": raw, "normalized": facts}, indent=2))
    return path


def exporter_day(vault: Path, day: str, lines: list[bytes], inst: str = MATIC) -> Path:
    path = day_file(vault, day, inst)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(lines))
    return path


def earlier_day(vault: Path, newline: str = "\r\n") -> Path:
    """A day of MATIC exporter lines before the archive's: the instrument is exporter-format."""
    lines = [
        (exporter_line(104_000_001 + i, "0.5801", "3.0", "buy", BEFORE - 60_000 + i, inst=MATIC, ct_val="10")
         + newline).encode()
        for i in range(2)
    ]  # fmt: skip
    return exporter_day(vault, "2023-08-19", lines)


def csv_of(rows: list[list[str]], tmp_path: Path, name: str) -> Path:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["instrument_name", "trade_id", "side", "price", "size", "created_time"])
    writer.writerows(rows)
    path = tmp_path / name
    path.write_text(out.getvalue())
    return path


def real_rows() -> list[list[str]]:
    with REAL_CSV.open(newline="") as handle:
        return [row for row in list(csv.reader(handle))[1:] if row]


def test_an_exporter_instrument_gets_the_exporters_lines_and_reimport_changes_nothing(
    vault: Path,
) -> None:
    write_meta(vault)
    earlier = earlier_day(vault)
    kept = earlier.read_bytes()
    [report] = import_archives(vault, [REAL_CSV])
    assert (report.imported, report.duplicates) == (14, 0)
    assert day_file(vault).read_bytes() == REAL_EXPORTER.read_bytes()  # CRLF, as the vault has
    [again] = import_archives(vault, [REAL_CSV])
    assert (again.imported, again.duplicates) == (0, 14)
    assert day_file(vault).read_bytes() == REAL_EXPORTER.read_bytes()
    assert earlier.read_bytes() == kept


def test_a_day_file_of_exporter_lines_is_read_for_duplicates(vault: Path) -> None:
    """The exporter already wrote these trades: nothing to import (no instrument file needed)."""
    target = exporter_day(vault, DAY, sample())
    [report] = import_archives(vault, [REAL_CSV])
    assert (report.imported, report.duplicates) == (0, 14)
    assert target.read_bytes() == REAL_EXPORTER.read_bytes()


def test_older_rows_are_merged_into_an_exporter_file_with_its_line_ends(
    vault: Path, tmp_path: Path
) -> None:
    write_meta(vault)
    target = exporter_day(vault, DAY, sample(b"\n")[7:])  # LF, the later half of the minute
    [report] = import_archives(vault, [csv_of(real_rows()[:7], tmp_path, "early.csv")])
    assert report.imported == 7 and report.merged == [str(target)]
    assert target.read_bytes() == b"".join(sample(b"\n"))


def test_rows_after_an_exporter_files_end_are_appended_with_its_line_ends(
    vault: Path, tmp_path: Path
) -> None:
    write_meta(vault)
    target = exporter_day(vault, DAY, sample(b"\n")[:10])
    [report] = import_archives(vault, [REAL_CSV])
    assert (report.imported, report.duplicates, report.merged) == (4, 10, [])
    assert target.read_bytes() == b"".join(sample(b"\n"))


def test_a_new_instrument_of_an_exporter_vault_gets_exporter_lines(vault: Path) -> None:
    """No MATIC file yet, but the vault's other instrument holds exporter lines: a new file
    gets them too, with the platform's line ends."""
    write_meta(vault)
    btc = VaultPaths.of(vault, "BTC-USDT-SWAP").raw_dir
    btc.mkdir(parents=True)
    (btc / "2023-08-19.jsonl").write_text(exporter_line(1, "29000.1", "2.0", "buy", BEFORE) + "\r\n")
    import_archives(vault, [REAL_CSV])
    assert day_file(vault).read_bytes() == b"".join(sample(os.linesep.encode()))


def test_an_okx_vault_keeps_okx_objects(vault: Path) -> None:
    raw = VaultPaths.of(vault, "BTC-USDT-SWAP").raw_dir
    raw.mkdir(parents=True)
    okx = {"instId": "BTC-USDT-SWAP", "tradeId": "1", "px": "1.5", "sz": "2", "side": "buy", "ts": str(BEFORE)}
    (raw / "2023-08-19.jsonl").write_text(json.dumps(okx) + "\n")
    write_meta(vault)
    import_archives(vault, [REAL_CSV])
    first = json.loads(day_file(vault).read_bytes().splitlines()[0])
    assert first == {"instId": MATIC, "tradeId": "104136693", "px": "0.5747", "sz": "38.0", "side": "buy",
                     "ts": "1692547262958"}  # fmt: skip


def test_format_exporter_on_the_command_line(vault: Path, run_cli: Callable[..., tuple[int, str, str]]) -> None:
    write_meta(vault)
    code, out, err = run_cli("import-okx", str(REAL_CSV), "--vault", str(vault), "--format", "exporter")
    assert code == 0, err
    assert "imported=14" in out
    assert day_file(vault).read_bytes() == b"".join(sample(os.linesep.encode()))
    code, out, err = run_cli("import-okx", str(REAL_CSV), "--vault", str(vault))
    assert code == 0, err
    assert "imported=0" in out and "duplicates=14" in out
    assert day_file(vault).read_bytes() == b"".join(sample(os.linesep.encode()))


def test_format_okx_into_an_exporter_instrument_writes_okx_objects(vault: Path, tmp_path: Path) -> None:
    earlier_day(vault)
    import_archives(vault, [REAL_CSV], line_format="okx")
    assert b'"tradeId":"104136693"' in day_file(vault).read_bytes()


def test_exporter_lines_without_a_contract_value_are_a_clear_error(
    vault: Path, run_cli: Callable[..., tuple[int, str, str]]
) -> None:
    earlier_day(vault)  # exporter-format, but no instrument file and MATIC is in no table
    with pytest.raises(ConfigError, match=r"meta/okx/instruments/MATIC-USDT-SWAP\.json"):
        import_archives(vault, [REAL_CSV])
    assert not day_file(vault).exists()
    code, _, err = run_cli("import-okx", str(REAL_CSV), "--vault", str(vault))
    assert code == 2 and "ctVal" in err and len(err.strip().splitlines()) == 1
