"""The trader's own vault: exporter trade lines (CRLF), its instrument files, replayed end to
end through the command line (SPEC §2-§4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import REAL_DATA, exporter_line, trade_line, write_lines

from vstream import Bar, VaultPaths
from vstream.cli import main
from vstream.instruments import load_meta, meta_path, resolve

real = pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/data/real is not beside the checkout")
M0 = 1_765_748_040_000  # 2025-12-14T21:34:00Z


def bars_of(vault: Path, inst: str) -> list[Bar]:
    data = VaultPaths.of(vault, inst).output().read_bytes()
    return [msgspec.json.decode(line, type=Bar) for line in data.splitlines()]


@real
def test_real_exporter_file_gives_okx_own_candle_with_no_ct_val(vault, raw_dir, run_cli):
    # 14 real fills as the exporter writes them (CRLF); MATIC-USDT-SWAP is in no built-in
    # table and the vault has no instrument file: the lines' own ctVal (10) converts them.
    shutil.copy(REAL_DATA / "exporter_MATIC-USDT-SWAP_2023-08-20.jsonl", raw_dir("MATIC-USDT-SWAP") / "2023-08-20.jsonl")
    status, out, err = run_cli("replay", "--instId", "MATIC-USDT-SWAP", "--vault", str(vault), "--final")
    assert status == 0, err
    assert "trades=14 bars=1 rejects=0" in out
    (bar,) = bars_of(vault, "MATIC-USDT-SWAP")
    assert bar.timestamp_utc == "2023-08-20T16:01:00Z"
    assert (bar.open, bar.high, bar.low, bar.close) == ("0.5747", "0.5748", "0.5744", "0.5744")
    assert bar.total_volume == "6889"  # OKX: volCcyQuote 6889.352 USDT
    assert bar.trade_count == 14 and bar.fill_count == 14
    assert "ctVal" not in err  # every line says 10: nothing to report


@real
def test_real_instrument_file_gives_the_contract_value(vault):
    path = meta_path(vault, "BTC-USDT-SWAP")
    path.parent.mkdir(parents=True)
    shutil.copy(REAL_DATA / "exporter_meta_BTC-USDT-SWAP.json", path)
    row = load_meta(vault, "BTC-USDT-SWAP")
    assert row is not None and (row.ctVal, row.ctType) == ("0.01", "linear")


def write_meta(vault: Path, inst: str, obj: object) -> None:
    path = meta_path(vault, inst)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


@pytest.mark.parametrize(
    "meta",
    [
        {"instId": "MATIC-USDT-SWAP", "raw": {"ctVal": "1", "ctType": "linear"}, "normalized": {"ctVal": "10", "ctMult": "1", "ctType": "linear", "tickSz": "0.0001", "lotSz": "1"}},
        {"instId": "MATIC-USDT-SWAP", "raw": {"instType": "SWAP", "ctVal": "10", "ctType": "linear"}},
        {"instId": "MATIC-USDT-SWAP", "instType": "SWAP", "ctVal": "10", "ctType": "linear", "tickSz": "0.0001"},
    ],
    ids=["normalized", "raw", "flat-row"],
)
def test_okx_lines_take_the_contract_value_from_the_vaults_instrument_file(vault, raw_dir, run_cli, meta):
    write_meta(vault, "MATIC-USDT-SWAP", meta)
    write_lines(raw_dir("MATIC-USDT-SWAP") / "2023-08-20.jsonl", [trade_line(1, "0.5747", "38", "buy", M0, "MATIC-USDT-SWAP")])
    status, _, err = run_cli("replay", "--instId", "MATIC-USDT-SWAP", "--vault", str(vault), "--final")
    assert status == 0, err
    assert bars_of(vault, "MATIC-USDT-SWAP")[0].total_volume == "218"  # 38 × 10 × 0.5747


def test_contract_value_order(vault):
    write_meta(vault, "BTC-USDT-SWAP", {"instId": "BTC-USDT-SWAP", "normalized": {"ctVal": "0.02", "ctType": "linear"}})
    meta = load_meta(vault, "BTC-USDT-SWAP")
    assert resolve("BTC-USDT-SWAP", {"BTC-USDT-SWAP": 0.5}, meta=meta).ct_val == 0.5  # an override first
    assert resolve("BTC-USDT-SWAP", meta=meta).ct_val == 0.02  # then the instrument file
    assert resolve("BTC-USDT-SWAP").ct_val == 0.01  # then the built-in table


@pytest.mark.parametrize(
    ("content", "error"),
    [("{not json", "is unreadable"), ('{"instId": "ETH-USDT-SWAP", "ctVal": "1"}', "is for ETH-USDT-SWAP")],
)
def test_a_broken_instrument_file_is_a_clear_error(vault, raw_dir, run_cli, content, error):
    meta_path(vault, "BTC-USDT-SWAP").parent.mkdir(parents=True)
    meta_path(vault, "BTC-USDT-SWAP").write_text(content)
    write_lines(raw_dir() / "2025-12-14.jsonl", [trade_line(1, "100", "1", "buy", M0)])
    status, _, err = run_cli("replay", "--instId", "BTC-USDT-SWAP", "--vault", str(vault))
    assert status == 2 and error in err and "BTC-USDT-SWAP.json" in err


def test_lines_with_another_ct_val_are_converted_with_theirs_and_reported_once(vault, raw_dir, run_cli, caplog):
    # BTC-USDT-SWAP's ctVal is 0.01; these lines say 0.1 (as OKX would after a contract change)
    lines = [exporter_line(i, "100000", "2", "buy", M0 + i * 1000, ct_val="0.1") for i in range(1, 40)]
    lines += [exporter_line(50, "100000", "2", "sell", M0 + 70_000)]
    write_lines(raw_dir() / "2025-12-14.jsonl", lines, newline="\r\n")
    status, _, err = run_cli("replay", "--instId", "BTC-USDT-SWAP", "--vault", str(vault), "--final")
    assert status == 0, err
    warnings = [r.getMessage() for r in caplog.records if "ctVal" in r.getMessage()]
    assert len(warnings) == 1 and "ctVal 0.1 (linear)" in warnings[0] and "0.01 (linear)" in warnings[0], warnings
    first, second = bars_of(vault, "BTC-USDT-SWAP")
    assert first.buy_volume == str(39 * 2 * 100000 // 10)  # 0.1 × 2 × 100000 per line
    assert second.sell_volume == "2000"  # the line that says 0.01


def test_a_line_without_ct_val_where_only_lines_have_one_stops_the_run_keeping_nothing(vault, raw_dir, run_cli):
    inst = "MATIC-USDT-SWAP"
    lines = [exporter_line(i, "0.5", "10", "buy", M0 + i * 30_000, inst, ct_val="10") for i in range(1, 9)]
    lines.insert(5, trade_line(99, "0.5", "10", "buy", M0 + 155_000, inst))  # an OKX object: no ctVal
    write_lines(raw_dir(inst) / "2025-12-14.jsonl", lines, newline="\r\n")
    status, _, err = run_cli("replay", "--instId", inst, "--vault", str(vault), "--final")
    assert status == 2 and "no contract value (ctVal) known for MATIC-USDT-SWAP" in err
    paths = VaultPaths.of(vault, inst)
    assert not paths.output().exists() or paths.output().stat().st_size == 0  # no bar kept
    # Given the contract value (a new setting: --rebuild), the same input replays, and every
    # line's own still counts.
    status, out, err = run_cli("replay", "--instId", inst, "--vault", str(vault), "--final", "--rebuild", "--ct-val", f"{inst}=10")
    assert status == 0, err
    assert "trades=9 " in out and len(bars_of(vault, inst)) == 5


TRADES = st.lists(
    st.tuples(
        st.integers(0, 400_000),  # ms after M0
        st.sampled_from(["100", "100.5", "99.9", "101.25", "1e2"]),
        st.sampled_from(["1", "3", "0.5", "2500", "12.0"]),
        st.sampled_from(["buy", "sell"]),
        st.integers(1, 4),  # the OKX line's count
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trades=TRADES, with_count=st.booleans())
def test_the_same_trades_as_okx_lines_and_as_exporter_lines_give_the_same_bars(tmp_path_factory, trades, with_count):
    base = tmp_path_factory.mktemp("formats")
    out: dict[str, bytes] = {}
    for fmt in ("okx", "exporter"):
        vault = base / fmt
        raw = VaultPaths.of(vault, "BTC-USDT-SWAP").raw_dir
        raw.mkdir(parents=True)
        if fmt == "okx":
            lines = [trade_line(i + 1, px, sz, side, M0 + ms, **({"count": str(c)} if with_count else {}))
                     for i, (ms, px, sz, side, c) in enumerate(trades)]  # fmt: skip
            write_lines(raw / "2025-12-14.jsonl", lines)
        else:
            lines = [exporter_line(i + 1, px, sz, side, M0 + ms) for i, (ms, px, sz, side, _) in enumerate(trades)]
            write_lines(raw / "2025-12-14.jsonl", lines, newline="\r\n")
        flags = ["--min-history", "2", "--median-window", "3", "--timeframes", "1m,5m", "--footprint", "0.5", "--cvd"]
        assert main(["replay", "--instId", "BTC-USDT-SWAP", "--vault", str(vault), "--final", "-q", *flags]) == 0
        paths = VaultPaths.of(vault, "BTC-USDT-SWAP")
        out[fmt] = paths.output("1m").read_bytes() + paths.output("5m").read_bytes()
    if with_count:
        # fill counts aside (the exporter's lines have none: each is one fill), byte for byte
        def strip(data: bytes) -> list[dict[str, object]]:
            return [{k: v for k, v in json.loads(line).items() if k != "fill_count"} for line in data.splitlines()]

        assert strip(out["okx"]) == strip(out["exporter"])
    else:
        assert out["okx"] == out["exporter"]
    shutil.rmtree(base)


@pytest.fixture(scope="module")
def exporter_vault(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated vault as the trader's exporter leaves it: CRLF lines with bad ones among
    them, and its instrument files; a space in the vault's name."""
    from vstream.generate import generate_vault

    vault = tmp_path_factory.mktemp("exporter") / "Rave Quant Vault"
    generate_vault(vault, instruments=("BTC-USDT-SWAP", "DOGE-USDT-SWAP"), hours=3, seed=11, line_format="exporter")
    return vault


def copy_vault(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_replay_all_on_an_exporter_vault(exporter_vault, tmp_path):
    # --all runs each instrument in a worker process: the same bars as one at a time
    together = copy_vault(exporter_vault, tmp_path / "all")
    apart = copy_vault(exporter_vault, tmp_path / "one")
    assert main(["-q", "replay", "--all", "--vault", str(together), "--final"]) == 0
    for inst in ("BTC-USDT-SWAP", "DOGE-USDT-SWAP"):
        assert main(["-q", "replay", "--instId", inst, "--vault", str(apart), "--final"]) == 0
        got = VaultPaths.of(together, inst).output().read_bytes()
        assert got and got == VaultPaths.of(apart, inst).output().read_bytes()


async def test_the_embedded_replay_source_reads_exporter_lines(exporter_vault, tmp_path):
    import asyncio

    from vstream import Engine, ReplaySource

    cli = copy_vault(exporter_vault, tmp_path / "cli")
    assert await asyncio.to_thread(main, ["-q", "replay", "--instId", "BTC-USDT-SWAP", "--vault", str(cli), "--final"]) == 0
    lib = copy_vault(exporter_vault, tmp_path / "lib")
    async with Engine([ReplaySource(lib, "BTC-USDT-SWAP", final=True)], vault=lib) as engine:
        seen = [bar async for bar in engine.bars()]
    expected = VaultPaths.of(cli, "BTC-USDT-SWAP").output().read_bytes()
    assert msgspec.json.Encoder().encode_lines(seen) == expected == VaultPaths.of(lib, "BTC-USDT-SWAP").output().read_bytes()
    assert engine.stats.instruments["BTC-USDT-SWAP"].rejects == 10  # the generator's bad lines


def test_status_and_backlog_on_an_exporter_vault(exporter_vault, tmp_path, run_cli):
    from vstream.query import vault_status

    vault = copy_vault(exporter_vault, tmp_path / "v")
    assert main(["-q", "replay", "--all", "--vault", str(vault)]) == 0
    rows = {s.instId: s for s in vault_status(vault, now=1_900_000_000, remember=False)}
    assert rows["BTC-USDT-SWAP"].backlog_bytes == 0 and rows["BTC-USDT-SWAP"].counters["trades"] > 1000
    # the exporter appends a few lines: that is the backlog until the next run
    day = sorted(VaultPaths.of(vault, "BTC-USDT-SWAP").raw_dir.iterdir())[-1]
    extra = (exporter_line(999_999_999_999, "60000.1", "1", "buy", 1_735_779_600_000) + "\r\n").encode()
    with open(day, "ab") as f:
        f.write(extra * 3)
    rows = {s.instId: s for s in vault_status(vault, now=1_900_000_000, remember=False)}
    assert rows["BTC-USDT-SWAP"].backlog_bytes == 3 * len(extra)


def test_a_growing_exporter_file_replayed_every_few_lines_equals_one_final_run(tmp_path):
    # as a scheduler running replay while the exporter appends, cut at CRLF and mid-line
    lines = [exporter_line(i, str(100 + i % 7), "3", "buy" if i % 3 else "sell", M0 + i * 7_000) for i in range(1, 200)]
    data = "".join(line + "\r\n" for line in lines).encode()
    whole, pieces = tmp_path / "whole", tmp_path / "pieces"
    for vault in (whole, pieces):
        VaultPaths.of(vault, "BTC-USDT-SWAP").raw_dir.mkdir(parents=True)
    (VaultPaths.of(whole, "BTC-USDT-SWAP").raw_dir / "2025-12-14.jsonl").write_bytes(data)
    assert main(["-q", "replay", "--instId", "BTC-USDT-SWAP", "--vault", str(whole), "--final"]) == 0
    target = VaultPaths.of(pieces, "BTC-USDT-SWAP").raw_dir / "2025-12-14.jsonl"
    for cut in (1, 150, data.index(b"\r\n") + 1, 2_000, 7_777, len(data) // 2, len(data) - 1, len(data)):
        target.write_bytes(data[:cut])
        assert main(["-q", "replay", "--instId", "BTC-USDT-SWAP", "--vault", str(pieces)]) == 0
    assert main(["-q", "replay", "--instId", "BTC-USDT-SWAP", "--vault", str(pieces), "--final"]) == 0
    a, b = VaultPaths.of(whole, "BTC-USDT-SWAP"), VaultPaths.of(pieces, "BTC-USDT-SWAP")
    assert a.output().read_bytes() == b.output().read_bytes() and a.output().stat().st_size > 0
