"""``vstream chart --footprint``: the footprint view, checked cell by cell and in pixels."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Callable
from decimal import Decimal
from itertools import pairwise
from pathlib import Path

import msgspec
import pytest
from test_chart import RASTER, close_to, needs_raster, rasterize

from vstream import BarAssembler, Instrument, Kind, Settings
from vstream.cli import main
from vstream.errors import ConfigError
from vstream.footprint_chart import BUY_EDGE, MAX_ROWS, POC, SELL_EDGE, render_footprint
from vstream.generate import generate_vault
from vstream.instruments import VaultPaths
from vstream.query import read_bars
from vstream.testing import make_trade

BTC = "BTC-USDT-SWAP"
RunCli = Callable[..., tuple[int, str, str]]
LINEAR = Instrument(BTC, Kind.SWAP, inverse=False, ct_val=0.01)


@pytest.fixture(scope="module")
def flow_bars(tmp_path_factory: pytest.TempPathFactory) -> list:
    vault = tmp_path_factory.mktemp("fp") / "Vault"
    generate_vault(vault, instruments=(BTC,), hours=1, seed=3)
    assert main(["-q", "replay", "--all", "--vault", str(vault), "--final", "--footprint", "10"]) == 0
    return [b for b, _ in read_bars(VaultPaths.of(vault, BTC))]


def test_every_level_of_every_bar_is_a_cell_with_its_marks(flow_bars) -> None:
    bars = flow_bars[-20:]
    view = render_footprint(bars)
    assert view.levels_per_row == 1 and view.tick == Decimal(10)
    by_bar: dict[str, dict[str, tuple[int, int, bool, bool, bool]]] = {}
    for cell in view.cells:
        by_bar.setdefault(cell.timestamp_utc, {})[cell.px] = (
            cell.buy, cell.sell, cell.poc, cell.buy_imbalance, cell.sell_imbalance,
        )  # fmt: skip
    for bar in bars:
        buys = {i.px for i in bar.imbalances if i.side == "buy"}
        sells = {i.px for i in bar.imbalances if i.side == "sell"}
        assert by_bar[bar.timestamp_utc] == {
            level.px: (int(level.buy), int(level.sell), level.px == bar.poc, level.px in buys, level.px in sells)
            for level in bar.footprint
        }
    # higher prices are drawn higher
    cells = sorted(view.cells, key=lambda c: Decimal(c.px))
    assert all(a.y >= b.y for a, b in pairwise(cells))
    root = ET.fromstring(view.svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and "<script" not in view.svg


@needs_raster
def test_the_picture_frames_the_poc_and_edges_imbalances(flow_bars) -> None:
    view = render_footprint(flow_bars[-12:])
    image = rasterize(view.svg)
    assert image.size == (view.width, view.height)
    for cell in view.cells:
        middle = round(cell.y + cell.h / 2)
        # (pixels wholly inside each 2-pixel stroke)
        if cell.poc:  # the frame's left edge, just outside the sell half: x - 3 .. x - 1
            assert close_to(image.getpixel((math.ceil(cell.x - 3), middle)), POC, 60), cell
        if cell.buy_imbalance:  # the edge inside the buy half, on its right side
            assert close_to(image.getpixel((math.ceil(cell.x + 2 * cell.w - 2), middle)), BUY_EDGE, 60), cell
        if cell.sell_imbalance:  # inside the sell half, on its left side: x .. x + 2
            assert close_to(image.getpixel((math.ceil(cell.x), middle)), SELL_EDGE, 60), cell
    assert any(c.buy_imbalance for c in view.cells) and any(c.sell_imbalance for c in view.cells)


def test_many_levels_are_merged_into_rows_and_bad_ranges_are_clear_errors(flow_bars) -> None:
    asm = BarAssembler(LINEAR, Settings(footprint_tick=0.1, stacked_levels=2))
    trades = [make_trade(i, f"{60000 + i * 0.7:.1f}", 5, "buy" if i % 3 else "sell", 1_765_748_040_000 + i)
              for i in range(1, 600)]  # fmt: skip
    (bar,) = asm.feed(trades) + asm.close()
    view = render_footprint([bar])
    assert view.tick == Decimal("0.1")
    levels = int((Decimal(bar.footprint[-1].px) - Decimal(bar.footprint[0].px)) / Decimal("0.1")) + 1
    assert view.levels_per_row == -(-levels // MAX_ROWS) > 1
    assert sum(c.buy for c in view.cells) == sum(int(x.buy) for x in bar.footprint)
    assert sum(c.sell for c in view.cells) == sum(int(x.sell) for x in bar.footprint)
    assert sum(c.poc for c in view.cells) == 1
    with pytest.raises(ConfigError, match="too many for a footprint view"):
        render_footprint(flow_bars * 3)
    with pytest.raises(ConfigError, match="has no footprint: replay with --footprint"):
        render_footprint([msgspec.structs.replace(flow_bars[0], footprint=msgspec.UNSET)])
    with pytest.raises(ConfigError, match="no bars"):
        render_footprint([])


def test_cli_draws_the_footprint_view(tmp_path: Path, run_cli: RunCli) -> None:
    vault = tmp_path / "Vault"
    generate_vault(vault, instruments=(BTC,), hours=1, seed=4)
    assert main(["-q", "replay", "--all", "--vault", str(vault), "--final", "--footprint", "5", "--timeframes", "1m,5m"]) == 0
    status, out, err = run_cli("chart", "--instId", BTC, "--vault", str(vault), "--footprint", "--last", "10",
                               "-o", str(tmp_path / "f.svg"))  # fmt: skip
    assert status == 0, err
    assert "f.svg: 10 1m bars" in out and "footprint tick 5" in out
    ET.fromstring((tmp_path / "f.svg").read_text())
    status, out, err = run_cli("chart", "--instId", BTC, "--vault", str(vault), "--footprint", "--timeframe", "5m",
                               "-o", str(tmp_path / "f.html"))  # fmt: skip
    assert status == 0, err
    assert "5m bars" in out and "<svg" in (tmp_path / "f.html").read_text()
    if RASTER is not None:
        status, _, err = run_cli("chart", "--instId", BTC, "--vault", str(vault), "--footprint", "--last", "5",
                                 "-o", str(tmp_path / "f.png"))  # fmt: skip
        assert status == 0, err
        assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plain = tmp_path / "Plain"
    generate_vault(plain, instruments=(BTC,), hours=1, seed=4)
    assert main(["-q", "replay", "--all", "--vault", str(plain), "--final"]) == 0
    status, _, err = run_cli("chart", "--instId", BTC, "--vault", str(plain), "--footprint", "-o", str(tmp_path / "x.svg"))
    assert status == 2 and "--footprint TICK" in err
