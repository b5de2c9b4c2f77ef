"""SPEC §4: a trade line's own contract facts (an exporter line's ctVal/ctType) convert that
trade; the instrument's convert the others. Hand tables through the assembler, both kernels."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import vstream.kernel
from vstream import BarAssembler, Settings
from vstream.errors import ConfigError
from vstream.formats.common import Trade
from vstream.instruments import resolve

M0 = 1_765_748_040_000  # 2025-12-14T21:34:00Z
BTC = resolve("BTC-USDT-SWAP")  # ctVal 0.01, linear


def trade(tid: int, px: str, sz: float, side: str = "buy", ms: int = 0, ct: float = 0.0, inverse: bool = False) -> Trade:
    return Trade(instId="BTC-USDT-SWAP", tradeId=str(tid), px=px, sz=sz, side=side, ts=M0 + ms, ct_val=ct, ct_inverse=inverse)


def one_bar(instrument, trades, **settings):
    asm = BarAssembler(instrument, Settings(**settings))
    asm.feed(trades)
    (bar,) = asm.close()
    return bar, asm


def test_a_line_whose_facts_equal_the_instruments_counts_as_without_them():
    plain, _ = one_bar(BTC, [trade(1, "100000", 45), trade(2, "100010.5", 3, "sell", 5)])
    own, asm = one_bar(BTC, [trade(1, "100000", 45, ct=0.01), trade(2, "100010.5", 3, "sell", 5, ct=0.01)])
    assert own == plain and plain.total_volume == "48000"  # 45000 + 3000.315
    assert asm.odd_contracts() == []


def test_a_line_with_other_facts_is_converted_with_its_own_and_reported():
    bar, asm = one_bar(BTC, [trade(1, "100000", 45), trade(2, "100000", 4, "sell", 5, ct=0.1),
                             trade(3, "100000", 7, "sell", 9, ct=100.0, inverse=True)])  # fmt: skip
    # 45 × 0.01 × 100000 = 45000; 4 × 0.1 × 100000 = 40000; inverse: 7 × 100 = 700 USD
    assert (bar.buy_volume, bar.sell_volume, bar.total_volume) == ("45000", "40700", "85700")
    assert asm.odd_contracts() == [(0.1, False), (100.0, True)]
    assert asm.odd_contracts() == []  # each call reports what came since the last


def test_whales_are_judged_on_the_trades_own_notional_exactly():
    # with the line's ctVal, 2 × 0.5 × 100000 is exactly the $100,000 threshold (a whale);
    # 2 × 0.5 × 99999.99 is a cent below it (none)
    bar, _ = one_bar(BTC, [trade(1, "100000", 2, ct=0.5), trade(2, "99999.99", 2, ms=1, ct=0.5)])
    assert (bar.whale_count, bar.whale_volume) == (1, "100000")


def test_an_instrument_with_no_contract_value_takes_only_trades_that_carry_one():
    matic = resolve("MATIC-USDT-SWAP", required=False)
    assert matic.ct_val is None
    own = Trade(instId="MATIC-USDT-SWAP", tradeId="1", px="0.5747", sz=38.0, side="buy", ts=M0, ct_val=10.0)
    bar, asm = one_bar(matic, [own])
    assert bar.total_volume == "218"  # 38 × 10 × 0.5747 = 218.386
    assert asm.odd_contracts() == []  # nothing to differ from
    fresh = BarAssembler(matic)
    with pytest.raises(ConfigError, match=r"no contract value .* MATIC-USDT-SWAP"):
        fresh.feed([Trade(instId="MATIC-USDT-SWAP", tradeId="2", px="0.5", sz=1.0, side="buy", ts=M0)])
    assert fresh.counters.trades == 0  # refused whole: nothing of the batch was taken


def test_spot_ignores_contract_facts():
    spot = resolve("BTC-USDT")
    bar, _ = one_bar(spot, [Trade(instId="BTC-USDT", tradeId="1", px="100", sz=2.0, side="buy", ts=M0, ct_val=5.0)])
    assert bar.total_volume == "200"


def test_footprint_and_delta_flow_use_the_trades_own_notional():
    trades = [trade(1, "100000", 45), trade(2, "100000.5", 4, "sell", 5, ct=0.1)]
    bar, _ = one_bar(BTC, trades, footprint={"BTC-USDT-SWAP": 1.0}, cvd=True)
    assert [(lvl.px, lvl.buy, lvl.sell) for lvl in bar.footprint] == [("100000", "45000", "40000")]
    assert (bar.delta_min, bar.delta_max) == ("+5000", "+45000")


def _pure_kernel():
    # The interpreted kernel, loaded from its source beside the compiled one.
    spec = importlib.util.spec_from_file_location("kernel_pure", Path(vstream.kernel.__file__).with_name("kernel.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kernel", [vstream.kernel, _pure_kernel()], ids=["installed", "interpreted"])
def test_both_kernels_convert_own_facts_alike(kernel):
    run = kernel.MinuteRun(0.01 * 1e6, True, 100_000 * 1_000_000, ct=0.01, own_ct=True)
    trades = [trade(1, "100000", 45), trade(2, "100000", 4, "sell", 5, ct=0.1), trade(3, "2", 7, ms=9, ct=100.0, inverse=True)]
    assert kernel.fold(run, trades, 0) == 3
    assert (run.buy, run.sell) == (45_000_000_000 + 700_000_000, 40_000_000_000)
    assert run.odd == {(0.1, False), (100.0, True)}
