"""``vstream signals`` and ``vstream status`` over a replayed synthetic vault.

Expected results are computed here by reading the bar files naively with ``json``; the
commands must agree with that, whatever shortcuts (seeking, durable-length limits) they take.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vstream.cli import main
from vstream.errors import ConfigError
from vstream.generate import generate_vault
from vstream.instruments import VaultPaths
from vstream.query import (
    SignalFilter,
    find_signals,
    parse_duration,
    parse_time,
    read_bars,
    vault_status,
)
from vstream.state import read_state

BTC, ETH = "BTC-USDT-SWAP", "ETH-USDT-SWAP"
RunCli = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    vault = tmp_path_factory.mktemp("q") / "Vault"
    generate_vault(vault, instruments=(BTC, ETH), hours=4, seed=3)
    status = main(["-q", "replay", "--all", "--vault", str(vault), "--final", "--timeframes", "1m,5m"])
    assert status == 0
    return vault


@pytest.fixture
def copy(replayed: Path, tmp_path: Path) -> Path:
    target = tmp_path / "Vault"
    shutil.copytree(replayed, target)
    return target


def bars_of(vault: Path, inst: str, tf: str = "1m") -> list[dict[str, Any]]:
    text = VaultPaths.of(vault, inst).output(tf).read_text()
    return [json.loads(line) for line in text.splitlines()]


def naive(bar: dict[str, Any], flt: SignalFilter) -> bool:
    if flt.tiers and bar["volume_tier"] not in flt.tiers:
        return False
    wanted = []
    if flt.absorption:
        wanted.append(bar["absorption"])
    if flt.divergence:
        wanted.append(bar["divergence"] and flt.divergence in ("any", bar["divergence_type"]))
    if flt.whale:
        wanted.append(bar["whale_count"] > 0)
    return any(wanted) if wanted else True


FILTERS = [
    SignalFilter(),
    SignalFilter(tiers=frozenset({"T4"})),
    SignalFilter(absorption=True),
    SignalFilter(divergence="any"),
    SignalFilter(divergence="bearish"),
    SignalFilter(tiers=frozenset({"T3", "T4"}), divergence="bullish", absorption=True),
    SignalFilter(whale=True),
]


@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: repr(f))
def test_filters_agree_with_a_naive_reading(replayed: Path, flt: SignalFilter) -> None:
    expected = [b for b in bars_of(replayed, BTC) if naive(b, flt)]
    got = [bar for bar, _ in find_signals(replayed, [BTC], flt)]
    assert [b.timestamp_utc for b in got] == [b["timestamp_utc"] for b in expected]


@pytest.mark.parametrize(
    ("text", "flt"),
    [
        ("tier=T4 and absorption", SignalFilter(tiers=frozenset({"T4"}), absorption=True)),
        ("tier=T3,T4 and (absorption or divergence=bullish)", FILTERS[5]),
        ("whale", SignalFilter(whale=True)),
    ],
)
def test_an_expression_finds_the_bars_of_the_same_signals_options(replayed: Path, text: str, flt: SignalFilter) -> None:
    from vstream.filters import parse_filter

    got = [line for _, line in find_signals(replayed, [BTC, ETH], parse_filter(text))]
    assert got == [line for _, line in find_signals(replayed, [BTC, ETH], flt)]
    assert got


def test_the_vault_has_every_kind_of_signal(replayed: Path) -> None:
    bars = bars_of(replayed, BTC) + bars_of(replayed, ETH)
    assert any(b["volume_tier"] == "T4" for b in bars)
    assert any(b["absorption"] for b in bars)
    assert any(b["divergence_type"] == "bearish" for b in bars)
    assert any(b["divergence_type"] == "bullish" for b in bars)
    assert any(b["whale_count"] for b in bars)


@pytest.mark.parametrize(
    ("since", "until"),
    [
        ("2025-01-01T22:17:00Z", None),
        ("2025-01-01T22:17:30Z", "2025-01-02T00:03:00Z"),
        (None, "2025-01-01T21:30:00Z"),
        ("2020-01-01T00:00:00Z", "2030-01-01T00:00:00Z"),
        ("2030-01-01T00:00:00Z", None),
        ("2025-01-01T21:00:00Z", "2025-01-01T21:01:00Z"),
    ],
)
def test_time_range_by_seeking_equals_scanning(replayed: Path, since: str | None, until: str | None) -> None:
    paths = VaultPaths.of(replayed, BTC)
    s = parse_time(since, 0) if since else None
    u = parse_time(until, 0) if until else None
    expected = [
        b["timestamp_utc"] for b in bars_of(replayed, BTC)
        if (s is None or b["timestamp_utc"] >= s) and (u is None or b["timestamp_utc"] < u)
    ]  # fmt: skip
    assert [b.timestamp_utc for b, _ in read_bars(paths, "1m", s, u)] == expected


def test_several_instruments_come_out_in_time_order_as_exact_jsonl(replayed: Path, run_cli: RunCli) -> None:
    status, out, err = run_cli("signals", "--instId", BTC, "--instId", ETH, "--vault", str(replayed),
                               "--tier", "T4", "--json")  # fmt: skip
    assert status == 0, err
    lines = out.splitlines(keepends=True)
    raw = set(VaultPaths.of(replayed, BTC).output().read_text().splitlines(keepends=True))
    raw |= set(VaultPaths.of(replayed, ETH).output().read_text().splitlines(keepends=True))
    assert lines and all(line in raw for line in lines)  # byte for byte the bar lines
    keys = [(json.loads(x)["timestamp_utc"], json.loads(x)["instId"]) for x in lines]
    assert keys == sorted(keys)
    assert {k[1] for k in keys} == {BTC, ETH}
    assert all(json.loads(x)["volume_tier"] == "T4" for x in lines)


def test_table_output_and_last(replayed: Path, run_cli: RunCli) -> None:
    status, out, _ = run_cli("signals", "--all", "--vault", str(replayed), "--absorption", "--divergence", "--last", "3")
    assert status == 0
    header, *rows = out.splitlines()
    assert header.split() == ["timestamp_utc", "instId", "close", "chg%", "volume", "delta", "ratio", "tier", "signals"]
    assert len(rows) == 3
    assert all(("absorption" in r) or ("divergence" in r) for r in rows)


def test_higher_timeframe_and_missing_timeframe(replayed: Path, run_cli: RunCli) -> None:
    status, out, _ = run_cli("signals", "--instId", BTC, "--vault", str(replayed), "--timeframe", "5m", "--json")
    assert status == 0
    assert [json.loads(x)["timestamp_utc"] for x in out.splitlines()] == [
        b["timestamp_utc"] for b in bars_of(replayed, BTC, "5m")
    ]
    status, _, err = run_cli("signals", "--instId", BTC, "--vault", str(replayed), "--timeframe", "1h")
    assert status == 2 and "no 1h bars" in err and "--timeframes 1m,1h" in err


def test_bars_past_the_last_checkpoint_are_not_shown(copy: Path) -> None:
    out = VaultPaths.of(copy, BTC).output()
    last = out.read_text().splitlines()[-1]
    fake = json.loads(last)
    fake["timestamp_utc"] = "2025-01-02T05:00:00Z"
    with out.open("a") as handle:
        handle.write(json.dumps(fake) + "\n")  # as if a run died before its checkpoint
    shown = [b.timestamp_utc for b, _ in find_signals(copy, [BTC], SignalFilter())]
    assert shown[-1] == json.loads(last)["timestamp_utc"]


def test_time_and_duration_parsing() -> None:
    now = 1736000000.0  # 2025-01-04T14:13:20Z
    assert parse_time("2025-12-14", now) == "2025-12-14T00:00:00Z"
    assert parse_time("2025-12-14T21:34:59Z", now) == "2025-12-14T21:34:00Z"
    assert parse_time("2025-12-15T05:34+08:00", now) == "2025-12-14T21:34:00Z"
    assert parse_time("2h", now) == "2025-01-04T12:13:00Z"
    assert parse_duration("15m") == 900 and parse_duration("1d") == 86400
    with pytest.raises(ConfigError, match="cannot read time"):
        parse_time("yesterday", now)
    with pytest.raises(ConfigError, match="cannot read duration"):
        parse_duration("10 minutes")


# -- status -------------------------------------------------------------------------------

NOW = 1735783200.0  # 2025-01-02T02:00:00Z: one hour after the synthetic data ends


def test_status_of_a_healthy_vault(replayed: Path, run_cli: RunCli) -> None:
    result = vault_status(replayed, now=NOW, remember=False)
    assert [s.instId for s in result] == [BTC, ETH]
    for st in result:
        state = read_state(VaultPaths.of(replayed, st.instId).state)
        assert st.ok, st.problems
        assert st.counters["trades"] == state.assembler.counters.trades
        assert st.last_bar == bars_of(replayed, st.instId)[-1]["timestamp_utc"]
        assert st.timeframes["5m"] == bars_of(replayed, st.instId, "5m")[-1]["timestamp_utc"]
        assert st.backlog_bytes == 0
        assert st.lag_seconds is not None and 3000 < st.lag_seconds < 3700
    status, out, err = run_cli("status", "--vault", str(replayed), "--no-remember")
    assert status == 0, err
    assert out.splitlines()[0].split() == [
        "instId", "last_bar", "lag", "trades", "bars", "rejects", "duplicates", "late", "backlog", "health",
    ]  # fmt: skip
    assert out.count(" ok") == 2


def test_lag_beyond_max_lag_is_a_problem(replayed: Path, run_cli: RunCli) -> None:
    assert all(s.ok for s in vault_status(replayed, now=NOW, max_lag=7200, remember=False))
    lagging = vault_status(replayed, now=NOW, max_lag=600, remember=False)
    assert not lagging[0].ok and "more than --max-lag 10m00s" in lagging[0].problems[0]
    status, out, _ = run_cli("status", "--vault", str(replayed), "--max-lag", "10m", "--no-remember", "--json")
    assert status == 1
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["ok"] for r in rows] == [False, False]


def test_unreadable_state_and_short_output_are_problems(copy: Path, run_cli: RunCli) -> None:
    VaultPaths.of(copy, BTC).state.write_text("{not json")
    out = VaultPaths.of(copy, ETH).output()
    out.write_bytes(out.read_bytes()[:-100])
    status, text, _ = run_cli("status", "--vault", str(copy))
    assert status == 1
    assert f"{BTC}: PROBLEM: state" in text and "unreadable" in text
    assert f"{ETH}: PROBLEM: output" in text and "--rebuild" in text


def test_uncheckpointed_tail_is_a_note_not_a_problem(copy: Path) -> None:
    with VaultPaths.of(copy, BTC).output().open("a") as handle:
        handle.write('{"timestamp_utc":"2025-01-02T05:00:00Z"}\n')
    [st] = vault_status(copy, [BTC], now=NOW, remember=False)
    assert st.ok and "past the last checkpoint" in st.notes[0]
    assert st.last_bar == bars_of(copy, BTC)[-2]["timestamp_utc"]


def test_growing_rejects_are_reported_once(copy: Path, run_cli: RunCli) -> None:
    assert run_cli("status", "--vault", str(copy))[0] == 0  # remembers the counts
    raw = VaultPaths.of(copy, BTC).raw_dir
    newest = sorted(raw.iterdir())[-1]
    with newest.open("a") as handle:
        handle.write('{"instId":"BTC-USDT-SWAP","tradeId":"1","px":"1","sz":"0","side":"buy","ts":"1735790000000"}\n')
        handle.write("garbage\n")
        # Good lines too: a run that rejects all (or most) of what it read is another problem.
        for tid in (1, 2, 3):
            handle.write(f'{{"instId":"BTC-USDT-SWAP","tradeId":"{tid}","px":"1","sz":"1","side":"buy","ts":"1735790000000"}}\n')
    assert run_cli("status", "--vault", str(copy))[0] == 0
    assert VaultPaths.of(copy, BTC).raw_dir.exists()
    st = vault_status(copy, [BTC], now=NOW, remember=False)[0]
    assert st.backlog_bytes > 0  # written but not replayed yet
    assert main(["-q", "replay", "--instId", BTC, "--vault", str(copy), "--final", "--timeframes", "1m,5m"]) == 0
    status, out, _ = run_cli("status", "--vault", str(copy))
    assert status == 1
    assert "2 new rejected lines since the last status" in out
    assert "(+2)" in out
    assert run_cli("status", "--vault", str(copy))[0] == 0  # nothing new since


def test_never_replayed_instrument(copy: Path, run_cli: RunCli) -> None:
    raw = VaultPaths.of(copy, "SOL-USDT-SWAP").raw_dir
    raw.mkdir(parents=True)
    (raw / "2025-01-01.jsonl").write_text("")
    status, out, _ = run_cli("status", "--vault", str(copy), "--no-remember")
    assert status == 0 and "SOL-USDT-SWAP: note: never replayed" in out
    status, out, _ = run_cli("status", "--vault", str(copy), "--instId", "SOL-USDT-SWAP", "--no-remember")
    assert status == 1 and "never replayed" in out


def test_status_of_a_missing_vault(tmp_path: Path, run_cli: RunCli) -> None:
    status, _, err = run_cli("status", "--vault", str(tmp_path / "nowhere"))
    assert status == 2 and "does not exist" in err


@pytest.mark.parametrize("given", ["parent", "derived", "derived/volume/okx", "elsewhere"])
def test_status_of_a_folder_that_is_not_a_vault_is_a_usage_error(
    replayed: Path, tmp_path: Path, run_cli: RunCli, given: str
) -> None:
    # Not "no instruments" and exit 0, which a health check reads as fine: the folder named
    # (the vault's parent, its derived/ folder, ...) holds none of what a vault holds.
    folder = {"parent": replayed.parent, "elsewhere": tmp_path}.get(given) or replayed / given
    status, out, err = run_cli("status", "--vault", str(folder), "--no-remember")
    assert status == 2 and out == "", err
    assert len(err.splitlines()) == 1, err
    assert f"{folder} is not a vault" in err
    for part in ("raw/okx/trades_*", "derived/volume", "state/volume"):
        assert part in err
    if given == "elsewhere":
        assert "did you mean" not in err
    else:
        assert f"did you mean {replayed}?" in err
    status, _, err = run_cli("status", "--vault", str(folder), "--instId", BTC, "--no-remember")
    assert status == 2 and "is not a vault" in err


def test_status_of_a_vault_with_no_instruments_yet(tmp_path: Path, run_cli: RunCli) -> None:
    vault = tmp_path / "Vault"
    (vault / "raw" / "okx" / "trades_perps").mkdir(parents=True)  # the exporter has not written yet
    status, out, err = run_cli("status", "--vault", str(vault), "--no-remember")
    assert status == 0, err
    assert out == f"no instruments in vault {vault} yet (no trade files in raw/okx/trades_*/INSTID/, no replay states)\n"


def test_status_flags_an_instrument_without_trade_files(copy: Path, run_cli: RunCli) -> None:
    # A state with no input beside it (a vault mistyped by an older version, or raw files
    # moved away): replay of it fails, so status must not call it healthy.
    raw = VaultPaths.of(copy, ETH).raw_dir
    shutil.move(raw, copy / "moved")
    status, out, err = run_cli("status", "--vault", str(copy), "--no-remember")
    assert status == 1, err
    assert f"{ETH}: PROBLEM: no trade files in {raw}" in out
    assert f"{BTC}: PROBLEM" not in out
