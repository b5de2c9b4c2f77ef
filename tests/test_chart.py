"""``vstream chart``: the picture is checked the way a person looks at it.

The SVG is rasterized with cairosvg (the optional ``chart`` extra, also in ``test``) and the
pixels are read back: the picture must not be blank, candles and tier colours must be there,
and every absorption / divergence / whale marker must be visible where its bar is — and
nowhere else.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from vstream.assembler import Bar
from vstream.chart import DOWN, MARKER_COLORS, TIER_COLORS, UP, render, write_chart
from vstream.cli import main
from vstream.errors import ConfigError
from vstream.generate import generate_vault
from vstream.instruments import VaultPaths
from vstream.query import read_bars

BTC = "BTC-USDT-SWAP"
RunCli = Callable[..., tuple[int, str, str]]


def _rasterizer() -> Any:
    try:
        import cairosvg
        from PIL import Image
    except (ImportError, OSError):  # cairosvg needs the cairo library too
        return None
    return cairosvg, Image


RASTER = _rasterizer()
needs_raster = pytest.mark.skipif(RASTER is None, reason="cairosvg/Pillow not installed (pip install -e '.[test]')")


def make_bar(i: int, **over: Any) -> Bar:
    """A plain 1m bar at minute ``i`` after 2025-01-01 00:00, drifting up and down."""
    base = 100.0 + 3 * ((i % 20) - 10) / 10
    o, c = base, base + (0.2 if i % 2 else -0.2)
    fields: dict[str, Any] = dict(
        timestamp_utc=f"2025-01-01T{i // 60:02d}:{i % 60:02d}:00Z", instId=BTC, exchange="okx", market="perp",
        open=f"{o:.1f}", high=f"{max(o, c) + 0.3:.1f}", low=f"{min(o, c) - 0.3:.1f}", close=f"{c:.1f}",
        price_change_pct="+0.00", total_volume=str(1_000_000 + 50_000 * (i % 7)), buy_volume="500000",
        sell_volume="500000", delta="+0", whale_volume="0", whale_count=0, trade_count=10,
        volume_tier="T2" if i >= 20 else None, absorption=False, divergence=False, divergence_type=None,
        volume_ratio="0.90" if i >= 20 else None, fill_count=10,
    )  # fmt: skip
    fields.update(over)
    return Bar(**fields)


SIGNALS = {
    25: {"absorption": True, "volume_tier": "T4", "total_volume": "5000000"},
    31: {"divergence": True, "divergence_type": "bearish"},
    37: {"divergence": True, "divergence_type": "bullish"},
    12: {"whale_volume": "400000", "whale_count": 3},
    44: {"absorption": True, "divergence": True, "divergence_type": "bearish", "volume_tier": "T4",
         "whale_volume": "900000", "whale_count": 2, "total_volume": "6000000"},
}  # fmt: skip


def synthetic() -> list[Bar]:
    return [make_bar(i, **SIGNALS.get(i, {})) for i in range(60) if i != 50]  # minute 50: no trades


def rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def close_to(pixel: tuple[int, ...], color: str, tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], rgb(color), strict=True))


def rasterize(svg: str) -> Any:
    cairosvg, image = RASTER
    png = cairosvg.svg2png(bytestring=svg.encode())
    return image.open(io.BytesIO(png)).convert("RGB")


def test_markers_are_exactly_the_signals() -> None:
    chart = render(synthetic())
    kinds = sorted((m.timestamp_utc[11:16], m.kind) for m in chart.markers)
    assert kinds == [
        ("00:12", "whale"), ("00:25", "absorption"), ("00:31", "bearish"), ("00:37", "bullish"),
        ("00:44", "absorption"), ("00:44", "bearish"), ("00:44", "whale"),
    ]  # fmt: skip
    # Bars are placed by time: the missing minute 50 leaves a gap.
    x = chart.bar_x
    step = x["2025-01-01T00:02:00Z"] - x["2025-01-01T00:01:00Z"]
    assert x["2025-01-01T00:51:00Z"] - x["2025-01-01T00:49:00Z"] == pytest.approx(2 * step)


def test_svg_is_well_formed_and_self_contained() -> None:
    chart = render(synthetic(), style="candles")
    root = ET.fromstring(chart.svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    urls = re.findall(r"https?://[^\"' ]+", chart.svg)
    assert set(urls) == {"http://www.w3.org/2000/svg"}  # the namespace only: nothing to fetch
    assert "<script" not in chart.svg and "href" not in chart.svg
    titles = root.findall(".//{http://www.w3.org/2000/svg}title")
    assert len(titles) == 59  # a hover tooltip per bar


@needs_raster
def test_picture_shows_candles_tiers_and_every_marker(tmp_path: Path) -> None:
    chart = render(synthetic(), style="candles")
    image = rasterize(chart.svg)
    assert image.size == (chart.width, chart.height)
    colors = image.getcolors(maxcolors=1 << 20)  # [(count, (r, g, b)), ...]
    total = image.size[0] * image.size[1]
    white = sum(n for n, p in colors if p == (255, 255, 255))
    assert total - white > 0.05 * total  # not blank
    assert len(colors) > 50
    counts = {name: sum(n for n, p in colors if close_to(p, color, 10)) for name, color in
              (("up", UP), ("down", DOWN), ("T2", TIER_COLORS["T2"]), ("T4", TIER_COLORS["T4"]))}  # fmt: skip
    assert all(n > 100 for n in counts.values()), counts
    for marker in chart.markers:
        centre = image.getpixel((round(marker.x), round(marker.y)))
        assert close_to(centre, marker.color), (marker, centre)
    # Where no bar has a signal, no marker colour appears above the candles.
    top = chart.price_panel[1]
    plain = chart.bar_x["2025-01-01T00:05:00Z"]
    column = [image.getpixel((round(plain), y)) for y in range(round(top) + 1, round(top) + 60)]
    for kind in ("absorption", "bearish", "bullish"):
        assert not any(close_to(p, MARKER_COLORS[kind], 25) for p in column), kind


@needs_raster
def test_real_replayed_bars_draw_with_their_markers(tmp_path: Path) -> None:
    vault = tmp_path / "Vault"
    generate_vault(vault, instruments=(BTC,), hours=3, seed=3)
    assert main(["-q", "replay", "--all", "--vault", str(vault), "--final"]) == 0
    bars = [b for b, _ in read_bars(VaultPaths.of(vault, BTC))]
    for style in ("candles", "line"):
        chart = render(bars, style=style)
        assert chart.style == style
        image = rasterize(chart.svg)
        assert {m.kind for m in chart.markers} == {"absorption", "bearish", "bullish", "whale"}
        assert sum(m.kind == "absorption" for m in chart.markers) == sum(b.absorption for b in bars)
        seen = sum(close_to(image.getpixel((round(m.x), round(m.y))), m.color) for m in chart.markers)
        assert seen == len(chart.markers)


def test_cli_writes_svg_html_and_png(tmp_path: Path, run_cli: RunCli) -> None:
    vault = tmp_path / "Vault"
    generate_vault(vault, instruments=(BTC,), hours=2, seed=4)
    assert main(["-q", "replay", "--all", "--vault", str(vault), "--final"]) == 0
    status, out, err = run_cli("chart", "--instId", BTC, "--vault", str(vault), "-o", str(tmp_path / "c.svg"))
    assert status == 0, err
    assert "c.svg: 114 1m bars" in out and "candles" in out
    ET.fromstring((tmp_path / "c.svg").read_text())
    status, out, err = run_cli("chart", "--instId", BTC, "--vault", str(vault), "--since", "2025-01-01T21:30Z",
                               "--until", "2025-01-01T22:00Z", "-o", str(tmp_path / "c.html"))  # fmt: skip
    assert status == 0, err
    page = (tmp_path / "c.html").read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page and "<script" not in page
    assert "29 1m bars 2025-01-01T21:30:00Z .. 2025-01-01T21:59:00Z" in out  # one minute had no trades
    if RASTER is not None:
        status, _, err = run_cli("chart", "--instId", BTC, "--vault", str(vault), "-o", str(tmp_path / "c.png"))
        assert status == 0, err
        assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    status, _, err = run_cli("chart", "--instId", BTC, "--vault", str(vault), "-o", str(tmp_path / "c.pdf"))
    assert status == 2 and "use .svg, .html or .png" in err
    status, _, err = run_cli("chart", "--instId", BTC, "--vault", str(vault), "--since", "2030-01-01", "-o",
                             str(tmp_path / "none.svg"))  # fmt: skip
    assert status == 2 and "no bars to chart" in err


def test_too_many_bars_or_bad_style_is_a_clear_error() -> None:
    bars = synthetic()
    with pytest.raises(ConfigError, match="unknown chart style"):
        render(bars, style="bars")
    with pytest.raises(ConfigError, match="too many for one chart"):
        render(bars * 200)


def test_write_chart_formats(tmp_path: Path) -> None:
    chart = render(synthetic())
    assert write_chart(chart, tmp_path / "a.svg").read_text() == chart.svg
    assert chart.svg in write_chart(chart, tmp_path / "a.html").read_text()



def test_summary_and_legend_give_each_number_one_name(tmp_path: Path, run_cli: RunCli) -> None:
    vault = tmp_path / "Vault"
    generate_vault(vault, instruments=(BTC,), hours=3, seed=3)
    assert run_cli("-q", "replay", "--all", "--vault", str(vault), "--final")[0] == 0
    bars = [b for b, _ in read_bars(VaultPaths.of(vault, BTC))][-180:]  # what the chart shows
    whale_bars, whale_trades = sum(b.whale_count > 0 for b in bars), sum(b.whale_count for b in bars)
    assert whale_bars != whale_trades  # two numbers: neither may pass as plain "whale"
    status, out, err = run_cli("chart", "--instId", BTC, "--vault", str(vault), "-o", str(tmp_path / "c.svg"))
    assert status == 0, err
    summary = {name: int(n) for name, n in re.findall(r"(\w+)=(\d+)", out)}
    legend = {label: int(n) for label, n in re.findall(r">([a-z ]+) \((\d+)\)</text>", (tmp_path / "c.svg").read_text())}
    expected = {
        "absorption": sum(b.absorption for b in bars),
        "bearish": sum(b.divergence_type == "bearish" for b in bars),
        "bullish": sum(b.divergence_type == "bullish" for b in bars),
    }
    assert summary == {**expected, "whale_bars": whale_bars, "whale_trades": whale_trades}
    assert legend == {"absorption": expected["absorption"], "bearish divergence": expected["bearish"],
                      "bullish divergence": expected["bullish"], "whale trades": whale_trades}  # fmt: skip


POOR = {15: {"poor_high": True}, 33: {"poor_low": True}, 40: {"poor_high": True, "poor_low": True}}


def footprint_bars() -> list[Bar]:
    """The synthetic bars as footprint bars: each says whether its high and low are poor."""
    return [
        msgspec.structs.replace(bar, **{"poor_high": False, "poor_low": False, **POOR.get(int(bar.timestamp_utc[14:16]), {})})
        for bar in synthetic()
    ]


def test_poor_highs_and_lows_are_marked_only_on_bars_that_have_them() -> None:
    chart = render(footprint_bars())
    poor = sorted((m.timestamp_utc[11:16], m.kind) for m in chart.markers if m.kind.startswith("poor"))
    assert poor == [("00:15", "poor_high"), ("00:33", "poor_low"), ("00:40", "poor_high"), ("00:40", "poor_low")]
    assert (chart.counts["poor_high"], chart.counts["poor_low"]) == (2, 2)
    assert chart.summary().endswith("poor_high=2 poor_low=2")
    assert ">poor high (2) / low (2), untouched</text>" in chart.svg
    both = {m.kind: m for m in chart.markers if m.timestamp_utc == "2025-01-01T00:40:00Z"}
    assert both["poor_high"].y < both["poor_low"].y  # at the high, above the low
    # 00:15's high 102.0 is reached again at 00:35, 00:33's low 100.6 and 00:40's high 97.3
    # right after; 00:40's low 96.5 is the lowest low from there on: it alone runs on
    assert [(m.timestamp_utc[11:16], m.kind) for m in chart.untouched] == [("00:40", "poor_low")]
    assert chart.untouched[0].y == both["poor_low"].y
    # bars without a footprint: no mark, and the summary and legend are what they were
    plain = render(synthetic())
    assert "poor_high" not in plain.counts and "poor high" not in plain.svg


@needs_raster
def test_poor_marks_are_drawn_across_the_tip_of_their_wick() -> None:
    chart = render(footprint_bars(), style="candles")
    image = rasterize(chart.svg)
    poor = [m for m in chart.markers if m.kind.startswith("poor")]
    assert len(poor) == 4
    white = (255, 255, 255)
    for marker in poor:
        x, y = round(marker.x), round(marker.y)
        # the dash is wider than the wick: its colour left of it, on it and right of it
        for dx in (-4, 0, 4):
            pixel = image.getpixel((x + dx, y))
            assert close_to(pixel, MARKER_COLORS[marker.kind], 30), (marker, dx, pixel)
        # at the tip: the wick goes on below a poor high's dash (above a poor low's), and
        # beside the wick past the dash there is only background
        inward = 4 if marker.kind == "poor_high" else -4
        assert image.getpixel((x, y + inward)) != white, marker
        assert image.getpixel((x + 4, y - inward)) == white, marker
    # the untouched poor low's dashed line runs on to the right edge of the price panel
    ray = chart.untouched[0]
    left, _, width, _ = chart.price_panel
    for x0 in range(round(ray.x) + 20, round(left + width) - 10, 40):
        span = [image.getpixel((x, round(ray.y))) for x in range(x0, x0 + 9)]
        assert any(close_to(p, MARKER_COLORS["poor_low"], 30) for p in span), x0
    # a bar without a poor extreme has no dash anywhere in its column
    plain = round(chart.bar_x["2025-01-01T00:16:00Z"])
    top, height = chart.price_panel[1], chart.price_panel[3]
    column = [image.getpixel((plain + 4, y)) for y in range(round(top) + 1, round(top + height))]
    assert not any(close_to(p, MARKER_COLORS["poor_high"], 30) for p in column)
