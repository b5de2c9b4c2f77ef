"""The alert detector: hand tables for whale, burst, bar-filter and silence alerts, the order
alerts come out in, and resuming anywhere (no I/O: trades, bars and times are passed in)."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vstream import BarAssembler, ConfigError, Instrument, Kind, Settings
from vstream.alerts import Alert, AlertDetector, AlertRules, bar_rules
from vstream.instruments import resolve
from vstream.testing import make_trade

M0 = 1_765_748_040_000  # 2025-12-14T21:34:00Z
BTC = resolve("BTC-USDT-SWAP")  # ctVal 0.01, linear
INVERSE = resolve("BTC-USD-SWAP")  # ctVal 100 USD
SPOT = resolve("BTC-USDT")


def trade(tid: int, sz: float, side: str = "buy", s: float = 0.0, px: str = "100000", inst: Instrument = BTC, **kw: Any):
    t = make_trade(tid, px, sz, side, M0 + int(s * 1000), inst_id=inst.inst_id)
    return msgspec.structs.replace(t, **kw) if kw else t


def ids(alerts: list[Alert]) -> list[str]:
    return [a.alert_id for a in alerts]


@pytest.mark.parametrize(
    ("inst", "t", "fires", "usd"),
    [
        (BTC, trade(1, 1000), True, "1000000"),  # 1000 × 0.01 × 100000: exactly the threshold
        (BTC, trade(2, 999.99), False, None),
        (BTC, trade(3, 1000, px="99999.99"), False, None),
        (BTC, trade(4, 2500.5, px="101250.5"), True, "2531769"),  # 2531768.7525
        (INVERSE, trade(5, 10_000, inst=INVERSE), True, "1000000"),  # 10000 × 100 USD
        (INVERSE, trade(6, 9_999, px="1000000", inst=INVERSE), False, None),  # px does not count
        (SPOT, trade(7, 10, inst=SPOT), True, "1000000"),  # 10 × 100000
        (SPOT, trade(8, 10, inst=SPOT, ct_val=5.0), True, "1000000"),  # spot ignores a ctVal
        (BTC, trade(9, 10_000, ct_val=0.001), True, "1000000"),  # the line's own ctVal counts
        (BTC, trade(10, 10_000, ct_val=0.001, ct_inverse=True), False, None),  # 10000 × 0.001 USD
    ],
)
def test_whale_table(inst: Instrument, t, fires: bool, usd: str | None) -> None:
    det = AlertDetector(inst, AlertRules(burst_count=0))
    got = det.feed([t], [])
    assert [a.notional_usd for a in got] == ([usd] if fires else [])
    if fires:
        a = got[0]
        assert a.alert_id == f"{inst.inst_id}:whale:{t.tradeId}"
        assert (a.kind, a.instId, a.side, a.tradeId, a.px, a.threshold_usd) == (
            "whale", inst.inst_id, "buy", t.tradeId, t.px, "1000000"
        )
        assert a.time == "2025-12-14T21:34:00.000Z"


def test_a_whale_line_has_its_keys_in_order():
    a = AlertDetector(BTC, AlertRules(burst_count=0)).feed([trade(1, 1000, "sell", s=56.123)], [])[0]
    assert msgspec.json.encode(a) == (
        b'{"alert_id":"BTC-USDT-SWAP:whale:1","kind":"whale","instId":"BTC-USDT-SWAP",'
        b'"time":"2025-12-14T21:34:56.123Z","side":"sell","tradeId":"1","px":"100000","sz":"1000",'
        b'"notional_usd":"1000000","threshold_usd":"1000000"}'
    )


# (side, seconds, size): 100 contracts = $100,000 at px 100000 and ctVal 0.01
BURSTS = [
    # three buys within 60 s: a burst on the third
    ([("buy", 0, 100), ("buy", 30, 100), ("buy", 59, 100)], ["burst:buy:3"]),
    # exactly 60 s apart still counts (the window holds its ends)
    ([("buy", 0, 100), ("buy", 30, 100), ("buy", 60, 100)], ["burst:buy:3"]),
    # 61 s: the first fell out; a fourth inside the window of the second makes it
    ([("buy", 0, 100), ("buy", 30, 100), ("buy", 61, 100), ("buy", 80, 100)], ["burst:buy:4"]),
    # sells do not help buys, small trades do not count
    ([("buy", 0, 100), ("sell", 1, 100), ("buy", 2, 99), ("sell", 3, 100), ("buy", 4, 100)], []),
    ([("sell", 0, 100), ("sell", 1, 100), ("buy", 2, 100), ("sell", 3, 100)], ["burst:sell:4"]),
    # the trades of a burst make no second one: three more are needed
    ([("buy", s, 100) for s in range(7)], ["burst:buy:3", "burst:buy:6"]),
    # an older trade arriving late still counts if it lies in the window of the newest
    ([("buy", 50, 100), ("buy", 10, 100), ("buy", 55, 100)], ["burst:buy:3"]),
    ([("buy", 50, 100), ("buy", 100, 100), ("buy", 5, 100), ("buy", 101, 100)], ["burst:buy:4"]),
]


@pytest.mark.parametrize(("rows", "expected"), BURSTS)
def test_burst_table(rows: list[tuple[str, float, float]], expected: list[str]) -> None:
    rules = AlertRules(whale_trade_usd=1e9, burst_count=3, burst_seconds=60, burst_usd=100_000)
    trades = [trade(i, sz, side, s) for i, (side, s, sz) in enumerate(rows, start=1)]
    det = AlertDetector(BTC, rules)
    got = [a for t in trades for a in det.feed([t], [])]
    assert ids(got) == [f"BTC-USDT-SWAP:{e}" for e in expected]


def test_a_burst_alert_says_what_made_it():
    rules = AlertRules(whale_trade_usd=1e9, burst_count=3, burst_seconds=60, burst_usd=100_000)
    det = AlertDetector(BTC, rules)
    got = det.feed([trade(1, 100, s=1), trade(2, 150, s=20), trade(3, 200, s=40.5)], [])
    (a,) = got
    assert (a.kind, a.side, a.count, a.notional_usd, a.threshold_usd, a.window_seconds) == (
        "burst", "buy", 3, "450000", "100000", 60.0
    )
    assert (a.first_time, a.time, a.tradeIds) == (
        "2025-12-14T21:34:01.000Z", "2025-12-14T21:34:40.500Z", ["1", "2", "3"]
    )


def test_the_burst_threshold_defaults_to_the_whale_trade_one():
    det = AlertDetector(BTC, AlertRules(whale_trade_usd=100_000, burst_count=2))
    got = det.feed([trade(1, 100), trade(2, 99.9), trade(3, 100)], [])
    assert ids(got) == ["BTC-USDT-SWAP:whale:1", "BTC-USDT-SWAP:whale:3", "BTC-USDT-SWAP:burst:buy:3"]


def bar_of(minute: int, **changes: Any):
    from test_filters import bar  # the same hand-made bars as the filter tests

    stamp = f"2025-12-14T21:{34 + minute:02d}:00Z"
    return bar(timestamp_utc=stamp, **changes)


RULES = AlertRules(
    whale_trade_usd=1_000_000,
    burst_count=0,
    bars={
        "t4-abs": "tier=T4 and (absorption or divergence)",
        "sell-stack": "stacked-imbalance=sell",
        "five": "timeframe=5m and tier=T4",
        "poor": "poor-high",
    },
)


@pytest.mark.parametrize(
    ("bar_changes", "expected"),
    [
        ({"volume_tier": "T4", "absorption": True}, ["t4-abs:1m"]),
        ({"volume_tier": "T4", "divergence": True, "divergence_type": "bullish"}, ["t4-abs:1m"]),
        ({"volume_tier": "T3", "absorption": True}, []),
        ({"volume_tier": None, "absorption": True}, []),
        ({"stacked": [__import__("vstream.assembler").assembler.Stack("sell", "1", "3", 3)]}, ["sell-stack:1m"]),
        # a rule without timeframe= looks at 1m bars only; the 5m one at 5m bars only
        ({"volume_tier": "T4", "absorption": True, "timeframe": "5m"}, ["five:5m"]),
        ({"volume_tier": "T4", "timeframe": "15m"}, []),
    ],
)
def test_bar_rule_table(bar_changes: dict[str, Any], expected: list[str]) -> None:
    det = AlertDetector(BTC, RULES)
    b = bar_of(0, **bar_changes)
    got = det.feed([], [b])
    assert ids(got) == [f"BTC-USDT-SWAP:bar:{e}:2025-12-14T21:34:00Z" for e in expected]
    for a in got:
        assert (a.kind, a.time, a.close, a.total_volume, a.delta, a.volume_tier) == (
            "bar", b.timestamp_utc, b.close, b.total_volume, b.delta, b.volume_tier
        )
        assert a.filter == msgspec.convert(RULES.bars, dict)[a.rule]


def test_poor_high_fires_on_a_bar_carrying_the_key():
    from test_filters import POOR_HIGH

    got = AlertDetector(BTC, RULES).feed([], [POOR_HIGH])
    assert ids(got) == ["BTC-USDT-SWAP:bar:poor:1m:2025-12-14T21:34:00Z"]


def test_poc_shift_rules_compare_with_the_previous_bar_also_after_a_resume():
    rules = AlertRules(burst_count=0, bars={"up": "poc-shift=up"})
    det = AlertDetector(BTC, rules)
    assert det.feed([], [bar_of(0, poc="100")]) == []  # nothing before it
    saved = det.snapshot()
    again = AlertDetector(BTC, rules, saved)
    assert ids(again.feed([], [bar_of(1, poc="101")])) == ["BTC-USDT-SWAP:bar:up:1m:2025-12-14T21:35:00Z"]
    assert again.feed([], [bar_of(2, poc="99")]) == []


def test_alerts_come_out_in_the_order_of_the_stream():
    # A trade of minute m comes after the bars of earlier minutes (the first trade of a later
    # minute finishes a bar) and before the bars of minute m and later.
    det = AlertDetector(BTC, RULES)
    bars = [
        bar_of(0, volume_tier="T4", absorption=True),
        bar_of(1, volume_tier="T4", absorption=True),
        bar_of(0, volume_tier="T4", timeframe="5m"),
    ]
    trades = [trade(1, 1000, s=10), trade(2, 1000, s=70), trade(3, 1000, s=130)]
    assert [a.alert_id.split(":", 1)[1] for a in det.feed(trades, bars)] == [
        "whale:1",
        "bar:t4-abs:1m:2025-12-14T21:34:00Z",
        "whale:2",
        "bar:t4-abs:1m:2025-12-14T21:35:00Z",
        "bar:five:5m:2025-12-14T21:34:00Z",
        "whale:3",
    ]


def test_silence_table():
    rules = AlertRules(silence_seconds=120)
    det = AlertDetector(BTC, rules)
    assert det.silence(5000) == []  # not started: nothing to measure from
    det.start(1000.0)
    assert det.silence(1120.0) == []  # not longer than 120 s
    (a,) = det.silence(1120.5)
    assert (a.alert_id, a.kind, a.silent_seconds, a.threshold_seconds, a.tradeId) == (
        "BTC-USDT-SWAP:silence:none", "silence", 120, 120.0, None
    )
    assert a.time == "1970-01-01T00:18:40.500Z"
    assert det.silence(2000.0) == []  # once per quiet spell
    det.heard(trade(7, 1), 2100.0)
    assert det.silence(2200.0) == []
    (b,) = det.silence(2221.0)
    assert (b.alert_id, b.tradeId, b.last_trade_time) == (
        "BTC-USDT-SWAP:silence:7", "7", "2025-12-14T21:34:00.000Z"
    )
    # a restarted session: the quiet spell after trade 7 was already told
    again = AlertDetector(BTC, rules, det.snapshot())
    again.start(5000.0)
    assert again.silence(5200.0) == []
    # off by default
    off = AlertDetector(BTC, AlertRules())
    off.start(0.0)
    assert off.silence(1e9) == []


def test_disabled_rules_make_no_alert():
    det = AlertDetector(BTC, AlertRules(enabled=False, bars={"x": "whale"}))
    assert det.feed([trade(1, 10_000)], [bar_of(0, whale_count=1)]) == []
    assert AlertRules(enabled=False).watch_usd() is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"whale_trade_usd": 0}, "whale_trade_usd must be a finite number > 0"),
        ({"burst_count": 1}, "burst_count must be 0 (off) or 2 to 10000"),
        ({"burst_seconds": -1}, "burst_seconds must be"),
        ({"burst_usd": float("nan")}, "burst_usd must be"),
        ({"silence_seconds": -5}, "silence_seconds must be >= 0"),
        ({"bars": {"x": "tier=T9"}}, "bar rule 'x': filter 'tier=T9'"),
        ({"bars": {"": "whale"}}, "bar rule name ''"),
    ],
)
def test_rules_out_of_range_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="alerts") as info:
        AlertRules(**values)
    assert message in str(info.value)


def test_command_line_bar_rules_are_named_by_their_canonical_text():
    assert bar_rules(["tier = t4 AND absorption", "whale"]) == {
        "tier=T4 and absorption": "tier=T4 and absorption", "whale": "whale"
    }


@st.composite
def streams(draw: st.DrawFn):
    """Trades over a few minutes (whales, small ones, late and duplicate ones)."""
    out = []
    for i in range(draw(st.integers(1, 80))):
        minute = draw(st.integers(0, 6))
        ts = M0 + minute * 60_000 + draw(st.integers(0, 59_999))
        tid = draw(st.integers(1, 90))
        sz = draw(st.sampled_from([1, 100, 300, 1000, 2000]))
        side = draw(st.sampled_from(["buy", "sell"]))
        out.append(make_trade(tid, "100000", sz, side, ts))
        del i
    return out


@settings(max_examples=150, deadline=None)
@given(trades=streams(), cuts=st.lists(st.integers(0, 80), max_size=5).map(sorted), resume=st.integers(-1, 5))
def test_resumed_anywhere_the_alerts_are_those_of_one_pass(trades, cuts, resume):
    # Assembler and detector fed in pieces (batches), snapshotted and rebuilt at one of the
    # cuts as a resumed run would be: the alerts are those of feeding everything at once.
    settings_ = Settings(timeframes=["1m", "5m"], min_history=1)
    rules = AlertRules(
        whale_trade_usd=1_000_000, burst_count=3, burst_seconds=30, burst_usd=300_000,
        bars={"big": "tier=T3,T4", "five": "timeframe=5m and whale", "shift": "poc-shift"},
    )  # fmt: skip

    def run(pieces: list[list[Any]], resume_at: int) -> list[bytes]:
        asm = BarAssembler(BTC, settings_)
        det = AlertDetector(BTC, rules)
        asm.watch(rules.watch_usd())
        out = []
        for k, piece in enumerate(pieces):
            if k == resume_at:
                asm = BarAssembler(BTC, settings_, asm.snapshot())
                asm.watch(rules.watch_usd())
                det = AlertDetector(BTC, rules, msgspec.json.decode(msgspec.json.encode(det.snapshot()), type=type(det.snapshot())))
            bars = asm.feed(piece)
            out += det.feed(asm.big_trades, bars)
        out += det.bars(asm.close())
        return [msgspec.json.encode(a) for a in out]

    bounds = [0, *cuts, len(trades)]
    pieces = [trades[a:b] for a, b in itertools.pairwise(bounds)]
    assert run(pieces, resume) == run([trades], -1)


def test_an_instrument_kind_of_the_engine():
    # The detector is given the instrument the engine settled (its ctVal from the state).
    inst = Instrument("FOO-USDT-SWAP", Kind.SWAP, inverse=False, ct_val=10.0)
    got = AlertDetector(inst, AlertRules(burst_count=0)).feed([make_trade(1, "100", 1000, inst_id=inst.inst_id)], [])
    assert ids(got) == ["FOO-USDT-SWAP:whale:1"]
