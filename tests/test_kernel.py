"""The per-trade kernel: the compiled module and its interpreted source give the same bars."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from types import ModuleType
from unittest import mock

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

import vstream.assembler
import vstream.kernel
from vstream import BarAssembler, Instrument, Kind, Settings
from vstream.testing import make_trade

M0 = 1_765_747_980_000  # a minute start
LINEAR = Instrument("BTC-USDT-SWAP", Kind.SWAP, inverse=False, ct_val=0.01)
INVERSE = Instrument("BTC-USD-SWAP", Kind.SWAP, inverse=True, ct_val=100.0)


def _pure_kernel() -> ModuleType:
    """vstream/kernel.py run by the interpreter, whatever is installed beside it."""
    path = Path(vstream.kernel.__file__).with_name("kernel.py")
    spec = importlib.util.spec_from_file_location("vstream_kernel_source", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PURE = _pure_kernel()


def test_the_compiled_kernel_is_installed_where_expected():
    # .ci/run sets VSTREAM_EXPECT_COMPILED: a build that silently fell back to pure Python
    # there would leave the compiled code untested and replay at half speed.
    compiled = not vstream.kernel.__file__.endswith(".py")
    if os.environ.get("VSTREAM_EXPECT_COMPILED") == "1":
        assert compiled, f"vstream.kernel is not compiled: {vstream.kernel.__file__}"
    assert not PURE.__file__.endswith((".so", ".pyd"))
    # compiled code reads trades with astuple, interpreted code by attribute
    assert vstream.kernel._ROWS is compiled and PURE._ROWS is False
    # whichever it is, it is the kernel the assembler uses
    assert vstream.assembler.fold is vstream.kernel.fold


@st.composite
def trades(draw: st.DrawFn):
    """Trades over a few minutes: out of order, late, duplicated, ties on ts, ids of
    different lengths (leading zeros too), repeated and exponent prices, whales."""
    n = draw(st.integers(1, 60))
    out = []
    for _ in range(n):
        minute = draw(st.integers(0, 3))
        ts = M0 + minute * 60_000 + draw(st.sampled_from([0, 1, 1, 500, 59_999]))
        tid = draw(st.one_of(st.integers(1, 40).map(str), st.sampled_from(["07", "007", "100", "99"])))
        px = draw(st.sampled_from(["100", "100.0", "99.5", "101.25", "1e2", "0.0001"]))
        sz = draw(st.sampled_from([1.0, 2.5, 0.001, 3000.0, 1e7]))
        side = draw(st.sampled_from(["buy", "sell"]))
        count = draw(st.integers(1, 3))
        out.append(make_trade(tid, px, sz, side, ts, inst_id="BTC-USDT-SWAP", count=count))
    return out


def _run(
    instrument: Instrument, items, cuts: list[int], resume_at: int, flow: bool = False
) -> tuple[bytes, ...]:
    """Bars, counters and final snapshot of feeding ``items`` in pieces, resuming once
    (with ``flow``: footprint, delta extremes and CVD on, and a look at the bar in progress
    after each piece)."""
    extra = {"footprint_tick": 0.5, "cvd": True} if flow else {}
    cfg = Settings(timeframes=["1m", "5m"], min_history=1, **extra)
    asm = BarAssembler(instrument, cfg)
    bars = []
    start = 0
    for number, cut in enumerate([*cuts, len(items)]):
        bars += asm.feed(items[start:cut])
        start = max(start, cut)
        if flow:
            partial = asm.partial()
            if partial is not None:
                bars.append(partial)
        if number == resume_at:
            asm = BarAssembler(instrument, cfg, state=asm.snapshot())
    snap = asm.snapshot()
    bars += asm.close()
    return (
        msgspec.json.encode(bars),
        msgspec.json.encode(asm.counters),
        msgspec.json.encode(snap),
    )


@settings(max_examples=300, deadline=None)
@given(
    items=trades(),
    cuts=st.lists(st.integers(0, 60), max_size=4).map(sorted),
    resume_at=st.integers(-1, 4),
    inverse=st.booleans(),
    flow=st.booleans(),
)
def test_compiled_and_interpreted_kernels_agree(items, cuts, resume_at, inverse, flow):
    instrument = INVERSE if inverse else LINEAR
    installed = _run(instrument, items, cuts, resume_at, flow)
    with mock.patch.multiple(
        vstream.assembler, fold=PURE.fold, MinuteRun=PURE.MinuteRun, flow_rows=PURE.flow_rows,
        fold_flow=PURE.fold_flow,
    ):
        interpreted = _run(instrument, items, cuts, resume_at, flow)
    assert installed == interpreted


def test_both_kernels_decide_a_whale_near_the_threshold_on_its_exact_notional():
    # 100 × 0.01 × px: the rounded micro-dollar notional of each is 100_000_000_000 ± 1.
    near = ["99999.9999994", "99999.9999996", "100000", "100000.0000004", "99999.999999"]
    items = [make_trade(i, px, 100, ts=M0 + i) for i, px in enumerate(near, start=1)]
    installed = _run(LINEAR, items, [2], 0)
    with mock.patch.multiple(vstream.assembler, fold=PURE.fold, MinuteRun=PURE.MinuteRun):
        interpreted = _run(LINEAR, items, [2], 0)
    assert installed == interpreted
    bar = msgspec.json.decode(installed[0])[0]
    assert (bar["whale_count"], bar["whale_volume"]) == (2, "200000")


def test_a_rising_id_is_never_taken_for_a_duplicate_and_a_repeat_always_is():
    # The duplicate check consults a set only once ids stop rising; both ways must agree.
    for kernel in (vstream.kernel, PURE):
        run = kernel.MinuteRun(1e6, True, 10**18)
        ids = ["5", "6", "10", "6", "9", "10", "11", "05", "5"]
        items = [make_trade(t, "1", 1, ts=M0) for t in ids]
        assert kernel.fold(run, items, 0) == len(items)
        assert run.accepted == 6  # 5 6 10 9 11 05
        assert run.duplicates == 3
        assert sorted(run.seen) == sorted(["5", "6", "10", "9", "11", "05"])


_TEXT = st.text(alphabet="0123456789.e-+ a٣", min_size=0, max_size=6)


@settings(max_examples=300, deadline=None)
@given(pairs=st.lists(st.tuples(_TEXT, _TEXT), max_size=12), known=st.sets(_TEXT, max_size=3))
def test_both_kernels_check_trade_texts_alike(pairs, known):
    from vstream.trades import _px_accepted

    items = [make_trade(0, "1", 1).__replace__(tradeId=tid, px=px) for tid, px in pairs]
    results = []
    for kernel in (vstream.kernel, PURE):
        seen = set(known)
        results.append((kernel.texts_ok(items, seen, _px_accepted), seen))
    assert results[0] == results[1]
    ok = results[0][0]
    # and what they say is the rule: ids all ASCII digits, prices plain positive decimals
    expected = all(t.tradeId.isascii() and t.tradeId.isdigit() for t in items) and all(
        t.px in known or _px_accepted(t.px) for t in items
    )
    assert ok == expected


class _Reordered(msgspec.Struct):
    """A trade-like Struct whose fields are not in a Trade's order (read by attribute)."""

    ts: int
    count: int
    side: str
    sz: float
    px: str
    tradeId: str
    instId: str
    ct_inverse: bool
    ct_val: float


@dataclasses.dataclass
class _Plain:
    instId: str
    tradeId: str
    px: str
    sz: float
    side: str
    ts: int
    count: int
    ct_val: float
    ct_inverse: bool


def _totals(kernel: ModuleType, items: list) -> tuple:
    run = kernel.MinuteRun(1e6, True, 150_000_000)
    done = kernel.fold(run, items, 0)
    return (done, run.buy, run.sell, run.whale, run.whale_count, run.fills, run.accepted,
            run.duplicates, run.open_px, run.close_px, run.high_px, run.low_px, sorted(run.seen))  # fmt: skip


def test_trades_of_any_shape_fold_alike():
    # Trades are read with one astuple call when their fields are laid out as a Trade's,
    # by attribute otherwise: a Trade, a reordered Struct, a plain object, and a mix agree.
    trades = [
        make_trade(t, px, sz, side, M0 + ms, count=c)
        for t, px, sz, side, ms, c in [
            (5, "100", 2.0, "buy", 0, 1), (7, "101.5", 1.0, "sell", 10, 2), (6, "99", 300.0, "buy", 10, 1),
            (7, "100", 1.0, "buy", 20, 1), (9, "100", 0.5, "sell", 59_999, 3), (10, "98", 1.0, "buy", 60_000, 1),
        ]
    ]  # fmt: skip
    fields = msgspec.structs.asdict
    reordered = [_Reordered(**fields(t)) for t in trades]
    plain = [_Plain(**fields(t)) for t in trades]
    mixed = [trades[0], plain[1], reordered[2], trades[3], reordered[4], plain[5]]
    expected = _totals(PURE, trades)
    assert expected[0] == 5 and expected[7] == 1  # stops at the next minute; one duplicate
    for kernel in (vstream.kernel, PURE):
        for items in (trades, reordered, plain, mixed):
            assert _totals(kernel, items) == expected


def _cuts_by_hand(stamps: list[int], start: int, limit: int) -> list[int]:
    """The rule: a new piece begins at the trade that would make ``limit + 1`` runs of one
    minute in the current piece."""
    cuts, runs, previous = [], 0, None
    for index in range(start, len(stamps)):
        minute = stamps[index] // 60_000
        if minute != previous:
            if runs == limit:
                cuts.append(index)
                runs = 0
            runs += 1
            previous = minute
    return [*cuts, len(stamps)]


@settings(max_examples=300, deadline=None)
@given(
    minutes=st.lists(st.integers(0, 30), max_size=40),
    offsets=st.lists(st.integers(0, 59_999), min_size=40, max_size=40),
    start=st.integers(0, 45),
    limit=st.integers(1, 6),
)
def test_both_kernels_bound_stamps_and_cut_at_minute_runs_alike(minutes, offsets, start, limit):
    # Out-of-order minutes, a start past the end, runs longer and shorter than the limit.
    stamps = [M0 + m * 60_000 + o for m, o in zip(minutes, offsets, strict=False)]
    items = [make_trade(i + 1, "100", 1, ts=ts) for i, ts in enumerate(stamps)]
    rest = stamps[start:]
    bounds = (min(rest), max(rest)) if rest else (0, -1)
    for kernel in (vstream.kernel, PURE):
        assert kernel.stamp_bounds(items, start) == bounds
        assert kernel.minute_cuts(items, start, limit) == _cuts_by_hand(stamps, start, limit)


@settings(max_examples=200, deadline=None)
@given(items=trades(), cuts=st.lists(st.integers(0, 60), max_size=4).map(sorted), inverse=st.booleans())
def test_both_kernels_pick_the_same_big_trades_and_only_accepted_ones(items, cuts, inverse):
    # The alert detector's candidates: accepted trades (never late or duplicate ones) whose
    # notional may reach the watched threshold, in the order they were fed.
    instrument = INVERSE if inverse else LINEAR

    def picked() -> list[tuple[str, int, str, float]]:
        asm = BarAssembler(instrument, Settings(timeframes=["1m", "5m"], min_history=1))
        asm.watch(250.0)
        out = []
        for lo, hi in zip([0, *cuts], [*cuts, len(items)], strict=True):
            asm.feed(items[lo:hi])
            out += [(t.tradeId, t.ts, t.px, t.sz) for t in asm.big_trades]
        return out

    installed = picked()
    with mock.patch.multiple(vstream.assembler, fold=PURE.fold, MinuteRun=PURE.MinuteRun):
        interpreted = picked()
    assert installed == interpreted
    # A plain model of acceptance: not before the open minute, not an id already taken in it.
    accepted, minute, seen = [], None, set()
    for t in items:
        m = t.ts // 60_000
        if minute is not None and m < minute:
            continue
        if m != minute:
            minute, seen = m, set()
        if t.tradeId in seen:
            continue
        seen.add(t.tradeId)
        accepted.append((t.tradeId, t.ts, t.px, t.sz))

    def big(rows):
        return [r for r in rows if vstream.assembler.exact_notional(instrument, r[3], r[2]) >= 250]

    assert set(installed) <= set(accepted)
    assert big(installed) == big(accepted)


def test_watching_no_threshold_collects_nothing():
    asm = BarAssembler(LINEAR)
    asm.feed([make_trade(1, "100000", 10_000, ts=M0)])
    assert asm.big_trades == []
    asm.watch(1.0)
    asm.feed([make_trade(2, "100000", 10_000, ts=M0 + 1)])
    assert [t.tradeId for t in asm.big_trades] == ["2"]
    asm.watch(None)
    asm.feed([make_trade(3, "100000", 10_000, ts=M0 + 2)])
    assert asm.big_trades == []
