"""Filter expressions (``tier=T4 and (absorption or divergence)``): parsing, canonical text,
errors, and meaning — the meaning being exactly that of ``vstream signals``' options."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from msgspec import UNSET

from vstream import Bar, ConfigError
from vstream.assembler import Stack
from vstream.filters import WORDS, parse_filter
from vstream.query import SignalFilter


def bar(**changes: Any) -> Bar:
    base: dict[str, Any] = dict(
        timestamp_utc="2025-12-14T21:34:00Z", instId="BTC-USDT-SWAP", exchange="okx", market="perp",
        open="100", high="101", low="99", close="100.5", price_change_pct="+0.50",
        total_volume="1000", buy_volume="600", sell_volume="400", delta="+200", whale_volume="0",
        whale_count=0, trade_count=3, volume_tier="T2", absorption=False, divergence=False,
        divergence_type=None, volume_ratio="0.80", fill_count=3,
    )  # fmt: skip
    base.update(changes)
    return Bar(**base)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("absorption", "absorption"),
        ("  ABSORPTION ", "absorption"),
        ("tier=T4", "tier=T4"),
        ("tier = t4", "tier=T4"),
        ("tier=T4,T3", "tier=T3,T4"),
        ("tier=T4 and (absorption or divergence)", "tier=T4 and (absorption or divergence)"),
        ("tier=T4 AND absorption OR divergence", "tier=T4 and absorption or divergence"),
        ("(tier=T4 and absorption) or divergence", "tier=T4 and absorption or divergence"),
        ("divergence=any", "divergence"),
        ("divergence=Bearish", "divergence=bearish"),
        ("stacked-imbalance=sell", "stacked-imbalance=sell"),
        ("stacked-imbalance", "stacked-imbalance"),
        ("not not whale", "whale"),
        ("not (absorption or whale)", "not (absorption or whale)"),
        ("not absorption and whale", "not absorption and whale"),
        ("((whale))", "whale"),
        ("whale and (absorption and divergence)", "whale and absorption and divergence"),
        ("whale or (absorption or divergence)", "whale or absorption or divergence"),
        ("poc-shift=up and poc-shift-min=20.5", "poc-shift=up and poc-shift-min=20.5"),
        ("poc-shift=any", "poc-shift"),
        ("poor-high or poor-low", "poor-high or poor-low"),
        ("timeframe=5m and tier=T4", "timeframe=5m and tier=T4"),
    ],
)
def test_canonical_text(text: str, canonical: str) -> None:
    parsed = parse_filter(text)
    assert parsed.text == canonical == str(parsed)
    assert parse_filter(canonical) == parsed  # the canonical text reads back as itself


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("tier=T5", "tier=T5: unknown tier 'T5'"),
        ("tier", "tier needs a value"),
        ("tier=", "tier= needs a value at its end"),
        ("absorption=yes", "absorption takes no value at character 11"),
        ("absorbtion", "unknown word 'absorbtion'"),
        ("tier=T4 and", "a signal word or '(' is missing at its end"),
        ("tier=T4 absorption", "unexpected 'absorption' (expected and, or, or the end) at character 9"),
        ("(whale", "')' is missing at its end"),
        ("whale)", "unexpected ')'"),
        ("and whale", "'and' needs a signal word before it at character 1"),
        ("whale & absorption", "unexpected character '&' at character 7"),
        ("divergence=sideways", "choose from any|bearish|bullish"),
        ("stacked-imbalance=up", "choose from buy|sell|any"),
        ("poc-shift-min=-1", "must be a price >= 0"),
        ("poc-shift-min=abc", "not a price"),
        ("timeframe=2m", "choose from 1m|5m|15m|1h"),
        ("=T4", "unexpected '='"),
        ("(" * 60 + "whale" + ")" * 60, "nested more than 50 deep"),
        ("whale or " * 300 + "whale", "longer than 2000 characters"),
    ],
)
def test_errors_say_what_and_where(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="filter") as info:
        parse_filter(text)
    assert message in str(info.value)


T4_ABS = bar(volume_tier="T4", absorption=True)
T4_DIV = bar(volume_tier="T4", divergence=True, divergence_type="bearish")
T3_ABS = bar(volume_tier="T3", absorption=True)
WARM = bar(volume_tier=None, absorption=False, whale_count=2)
STACK_SELL = bar(stacked=[Stack("sell", "99", "101", 3)], poc="100")
STACK_BUY = bar(stacked=[Stack("buy", "99", "101", 3)], poc="110")
PLAIN_POC = bar(poc="100")
POOR_HIGH = bar(poor_high=True, poor_low=False)
FIVE = bar(timeframe="5m", volume_tier="T4", absorption=True)


@pytest.mark.parametrize(
    ("text", "current", "previous", "expected"),
    [
        ("tier=T4 and (absorption or divergence)", T4_ABS, None, True),
        ("tier=T4 and (absorption or divergence)", T4_DIV, None, True),
        ("tier=T4 and (absorption or divergence)", T3_ABS, None, False),
        ("tier=T3,T4 and absorption", T3_ABS, None, True),
        ("tier=T4", WARM, None, False),  # warming up: no tier
        ("not tier=T4", WARM, None, True),
        ("whale", WARM, None, True),
        ("whale", T4_ABS, None, False),
        ("divergence=bearish", T4_DIV, None, True),
        ("divergence=bullish", T4_DIV, None, False),
        ("divergence", T4_ABS, None, False),
        ("stacked-imbalance=sell", STACK_SELL, None, True),
        ("stacked-imbalance=buy", STACK_SELL, None, False),
        ("stacked-imbalance", STACK_BUY, None, True),
        ("stacked-imbalance", T4_ABS, None, False),  # no footprint
        ("poc-shift=up", STACK_BUY, STACK_SELL, True),  # 100 -> 110
        ("poc-shift=down", STACK_BUY, STACK_SELL, False),
        ("poc-shift", PLAIN_POC, STACK_SELL, False),  # not moved
        ("poc-shift", STACK_BUY, None, False),  # nothing before it
        ("poc-shift-min=10", STACK_BUY, STACK_SELL, True),
        ("poc-shift-min=10.01", STACK_BUY, STACK_SELL, False),
        ("poc-shift=down and poc-shift-min=5", STACK_SELL, STACK_BUY, True),
        ("poor-high", POOR_HIGH, None, True),
        ("poor-low", POOR_HIGH, None, False),
        ("poor-high or poor-low", T4_ABS, None, False),  # a bar without the keys
        ("timeframe=5m and tier=T4", FIVE, None, True),
        ("timeframe=1m", FIVE, None, False),
        ("timeframe=1m", T4_ABS, None, True),
    ],
)
def test_hand_table(text: str, current: Bar, previous: Bar | None, expected: bool) -> None:
    assert parse_filter(text).matches(current, previous) is expected


def test_poor_flags_are_read_from_the_bar_lines_keys():
    # The keys a footprint bar line carries (poor_high/poor_low), read back from the line;
    # a line without them (no footprint) never matches.
    line = msgspec.json.encode(POOR_HIGH)
    assert b'"poor_high":true,"poor_low":false' in line
    assert parse_filter("poor-high").matches(msgspec.json.decode(line, type=Bar))
    assert not parse_filter("poor-low").matches(msgspec.json.decode(line, type=Bar))
    plain = msgspec.json.decode(msgspec.json.encode(bar()), type=Bar)
    assert b"poor_" not in msgspec.json.encode(plain)
    assert not parse_filter("poor-high or poor-low").matches(plain)


def test_previous_and_timeframes_are_known_from_the_words():
    assert parse_filter("poc-shift=up or whale").needs_previous
    assert parse_filter("poc-shift-min=1").needs_previous
    assert not parse_filter("tier=T4 and absorption").needs_previous
    assert parse_filter("absorption").timeframes is None
    assert parse_filter("timeframe=5m or timeframe=1h").timeframes == frozenset({"5m", "1h"})
    assert set(WORDS) >= {"tier", "absorption", "divergence", "whale", "stacked-imbalance",
                          "poc-shift", "poc-shift-min", "poor-high", "poor-low"}  # fmt: skip


_bars = st.builds(
    bar,
    volume_tier=st.sampled_from([None, "T1", "T2", "T3", "T4"]),
    absorption=st.booleans(),
    divergence=st.booleans(),
    divergence_type=st.sampled_from([None, "bearish", "bullish"]),
    whale_count=st.integers(0, 2),
    stacked=st.one_of(
        st.just(UNSET),
        st.lists(st.sampled_from([Stack("buy", "1", "3", 3), Stack("sell", "1", "3", 3)]), max_size=2),
    ),
    poc=st.one_of(st.just(UNSET), st.sampled_from(["100", "105", "110"])),
    poor_high=st.sampled_from([UNSET, True, False]),
    poor_low=st.sampled_from([UNSET, True, False]),
)


@given(
    current=_bars,
    previous=st.one_of(st.none(), _bars),
    tiers=st.sets(st.sampled_from(["T1", "T2", "T3", "T4"]), max_size=2),
    absorption=st.booleans(),
    divergence=st.sampled_from([None, "any", "bearish", "bullish"]),
    whale=st.booleans(),
    stacked=st.sampled_from([None, "buy", "sell"]),
    shift=st.sampled_from([None, "up", "down", "any"]),
    least=st.sampled_from([Decimal(0), Decimal(5), Decimal(10)]),
    poor_high=st.booleans(),
    poor_low=st.booleans(),
)
def test_an_expression_means_what_the_signals_options_mean(
    current, previous, tiers, absorption, divergence, whale, stacked, shift, least, poor_high, poor_low
):
    # `signals --tier T3,T4 --absorption --divergence bearish` is "a tier of those and at
    # least one of the signals": the expression in the same words gives the same bars.
    flt = SignalFilter(
        tiers=frozenset(tiers), absorption=absorption, divergence=divergence, whale=whale,
        stacked=stacked, poc_shift=shift, poc_shift_min=least, poor_high=poor_high, poor_low=poor_low,
    )  # fmt: skip
    signals = [
        *(["absorption"] if absorption else []),
        *([f"divergence={divergence}"] if divergence else []),
        *([f"stacked-imbalance={stacked}"] if stacked else []),
        *([f"(poc-shift={shift} and poc-shift-min={least})"] if shift else []),
        *(["whale"] if whale else []),
        *(["poor-high"] if poor_high else []),
        *(["poor-low"] if poor_low else []),
    ]
    parts = [f"tier={','.join(sorted(tiers))}"] if tiers else []
    if signals:
        parts.append("(" + " or ".join(signals) + ")")
    if not parts:
        return  # "every bar": the language has no empty expression
    expr = parse_filter(" and ".join(parts))
    assert expr.matches(current, previous) == flt.matches(current, previous)
