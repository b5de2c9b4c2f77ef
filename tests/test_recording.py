"""vstream.recording: which format, which line ends and which contract texts vstream writes
into a vault, and the exporter's instrument file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec
import pytest
from support import REAL_DATA, exporter_line, trade_line

from vstream.errors import ConfigError
from vstream.formats import exporter
from vstream.instruments import VaultPaths, meta_path
from vstream.recording import (
    RecordStyle,
    choose_format,
    default_format,
    meta_bytes,
    newline_for,
    record_style,
    write_meta,
)
from vstream.trades import LineDecoder, Trade

BTC = "BTC-USDT-SWAP"
TS = 1_765_748_096_123


def day(vault: Path, inst: str, text: str, name: str = "2025-12-14.jsonl") -> Path:
    raw = VaultPaths.of(vault, inst).raw_dir
    raw.mkdir(parents=True, exist_ok=True)
    path = raw / name
    path.write_bytes(text.encode())
    return path


def exp(inst: str = BTC, newline: str = "\r\n") -> str:
    return exporter_line(1, "1.5", "2.0", "buy", TS, inst=inst) + newline


def okx(inst: str = BTC) -> str:
    return trade_line(1, "1.5", "2", "buy", TS, inst=inst) + "\n"


def test_an_instrument_keeps_the_format_of_its_newest_file(tmp_path: Path) -> None:
    day(tmp_path, BTC, okx(), "2025-12-13.jsonl")
    day(tmp_path, BTC, exp())
    assert default_format(tmp_path, BTC) == "exporter"
    day(tmp_path, "ETH-USDT-SWAP", okx())
    assert default_format(tmp_path, "ETH-USDT-SWAP") == "okx"


@pytest.mark.parametrize(
    ("others", "expected"),
    [
        ({}, "okx"),  # a new vault: vstream's own format
        ({"ETH-USDT-SWAP": "exp", "BTC-USDT": "exp"}, "exporter"),  # the exporter fills it
        ({"ETH-USDT-SWAP": "exp", "BTC-USDT": "okx"}, "okx"),  # mixed: not the exporter's
        ({"ETH-USDT-SWAP": "okx"}, "okx"),
        ({"ETH-USDT-SWAP": "empty"}, "okx"),  # a file with no trade line says nothing
    ],
)
def test_a_new_instrument_gets_exporter_lines_only_where_the_vault_holds_nothing_else(
    tmp_path: Path, others: dict[str, str], expected: str
) -> None:
    for inst, kind in others.items():
        day(tmp_path, inst, {"exp": exp(inst), "okx": okx(inst), "empty": ""}[kind])
    (VaultPaths.of(tmp_path, BTC).raw_dir).mkdir(parents=True, exist_ok=True)  # no file yet
    assert default_format(tmp_path, BTC) == expected
    assert choose_format(tmp_path, BTC, None) == expected
    assert choose_format(tmp_path, BTC, "okx") == "okx"
    assert choose_format(tmp_path, BTC, "exporter") == "exporter"
    with pytest.raises(ConfigError):
        choose_format(tmp_path, BTC, "csv")


def test_line_ends_follow_the_newest_file_with_a_line(tmp_path: Path) -> None:
    raw = VaultPaths.of(tmp_path, BTC).raw_dir
    assert newline_for(raw) == os.linesep.encode()  # a new instrument: the platform's
    day(tmp_path, BTC, exp(newline="\r\n"), "2025-12-12.jsonl")
    assert newline_for(raw) == b"\r\n"
    day(tmp_path, BTC, exp(newline="\n"), "2025-12-13.jsonl")
    assert newline_for(raw) == b"\n"
    day(tmp_path, BTC, exp(newline="")[:50], "2025-12-14.jsonl")  # no complete line yet
    assert newline_for(raw) == b"\n"


def test_contract_texts_come_from_the_instrument_file_as_written(tmp_path: Path) -> None:
    path = meta_path(tmp_path, BTC)
    path.parent.mkdir(parents=True)
    facts = {"ctVal": "0.010", "ctMult": "1", "ctType": "linear", "tickSz": "0.1", "lotSz": "1"}
    path.write_text(json.dumps({"instId": BTC, "raw": {"ctVal": "0.01"}, "normalized": facts}, indent=2))
    style = record_style(tmp_path, BTC, {BTC: 0.02}, newline=b"\n")  # the file's, not the override
    assert style.contract == exporter.Contract(market="perp", ct_val="0.010", ct_mult="1", ct_type="linear")
    assert (style.ct_val, style.inverse) == (0.01, False)


def test_contract_texts_fall_back_to_the_resolved_contract_value(tmp_path: Path) -> None:
    assert record_style(tmp_path, BTC, newline=b"\n").contract.ct_val == "0.01"  # built-in
    assert record_style(tmp_path, BTC, {BTC: 0.5}, newline=b"\n").contract.ct_val == "0.5"
    inverse = record_style(tmp_path, "BTC-USD-SWAP", newline=b"\n")
    assert (inverse.contract.ct_val, inverse.contract.ct_type, inverse.inverse) == ("100", "inverse", True)
    spot = record_style(tmp_path, "BTC-USDT", newline=b"\n").contract
    assert (spot.market, spot.ct_val, spot.ct_type) == ("spot", "", "")
    # A contract value nobody gives but the instrument's state stores (an earlier --ct-val).
    state = VaultPaths.of(tmp_path, "PEPE-USDT-SWAP").state
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"instId": "PEPE-USDT-SWAP", "settings": {"ct_val": 10000000.0}}))
    assert record_style(tmp_path, "PEPE-USDT-SWAP", newline=b"\n").contract.ct_val == "10000000"
    with pytest.raises(ConfigError, match=r"meta/okx/instruments/WIF-USDT-SWAP\.json"):
        record_style(tmp_path, "WIF-USDT-SWAP", newline=b"\n")


def test_an_instrument_file_no_reader_takes_is_not_copied_into_lines(tmp_path: Path) -> None:
    path = meta_path(tmp_path, BTC)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"instId": BTC, "normalized": {"ctVal": "lots", "ctType": "linear"}}))
    assert record_style(tmp_path, BTC, newline=b"\n").contract.ct_val == "0.01"


@pytest.mark.parametrize(
    ("inst", "contract"),
    [
        (BTC, exporter.Contract(market="perp", ct_val="0.01", ct_type="linear")),
        ("BTC-USD-SWAP", exporter.Contract(market="perp", ct_val="100", ct_type="inverse")),
        ("BTC-USD-250627", exporter.Contract(market="futures", ct_val="100", ct_type="")),
        ("BTC-USDT", exporter.Contract(market="spot")),
    ],
)
def test_a_trade_is_delivered_as_a_replay_reads_its_line_back(inst: str, contract: exporter.Contract) -> None:
    style = RecordStyle.of(inst, contract, b"\r\n")
    trade = Trade(instId=inst, tradeId="42", px="101250.50", sz=45.0, side="sell", ts=TS, count=7)
    line = style.line(trade)
    assert line.endswith(b"\r\n") and b"count" not in line
    assert list(json.loads(line)) == list(exporter.KEYS)
    [back] = LineDecoder(inst).decode([line], file="f", first_line=1, now_ms=TS).trades
    assert msgspec.structs.asdict(style.as_read(trade)) == msgspec.structs.asdict(back)
    assert style.as_read(trade).count == 1


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/data/real is not beside the checkout")
def test_the_instrument_file_is_the_exporters_shape() -> None:
    real = (REAL_DATA / "exporter_meta_BTC-USDT-SWAP.json").read_bytes()
    assert meta_bytes(BTC, json.loads(real)["raw"]) == real


def test_an_existing_instrument_file_is_never_overwritten(tmp_path: Path) -> None:
    row = {"instId": BTC, "instType": "SWAP", "ctVal": "0.01", "ctMult": "1", "ctType": "linear",
           "tickSz": "0.1", "lotSz": "1", "listTime": 1611916828000}  # fmt: skip
    assert write_meta(tmp_path, BTC, row)
    written = json.loads(meta_path(tmp_path, BTC).read_text())
    assert written["raw"]["listTime"] == "1611916828000"  # every value a string
    assert written["normalized"] == {"ctVal": "0.01", "ctMult": "1", "ctType": "linear", "tickSz": "0.1", "lotSz": "1"}
    meta_path(tmp_path, BTC).write_text("the trader's own")
    assert not write_meta(tmp_path, BTC, {**row, "ctVal": "0.02"})
    assert meta_path(tmp_path, BTC).read_text() == "the trader's own"
    assert not list(meta_path(tmp_path, BTC).parent.glob("*.tmp"))
