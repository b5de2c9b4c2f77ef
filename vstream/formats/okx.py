"""OKX's own trade objects (SPEC §3 items 1-3): as OKX sends them inside a websocket push's
``data`` or a REST call returns them, and as vstream writes them.

``{"instId":"BTC-USDT-SWAP","tradeId":"130639474","px":"42219.9","sz":"12","side":"buy",
"ts":"1630048897897","count":"3"}``. Envelopes and control messages are the decoder's business
(:class:`vstream.trades.LineDecoder`); this module judges and writes one trade object.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

from .common import (
    MAX_COUNT,
    MAX_DECIMAL,
    MAX_ID_DIGITS,
    MAX_PX_CHARS,
    MIN_TS_MS,
    Trade,
    check_fields,
    check_ts,
    count_value,
    show,
)

#: The OKX websocket channels that carry trades.
TRADE_CHANNELS: Final = ("trades", "trades-all")

#: Largest finite float: ``le`` this bound rejects inf in C (msgspec refuses ``lt=inf``).
_FLOAT_MAX = sys.float_info.max
#: Trade fields no input line may set, under names no line the typed decoders take can hold
#: (those lines are ASCII). A trade's own contract facts come only from a format that has
#: them (the exporter's ``ctVal``/``ctType``), never from an unknown key of an OKX object.
HIDDEN_CT_VAL: Final = "\u00a7ct_val"
HIDDEN_CT_INVERSE: Final = "\u00a7ct_inverse"
HIDDEN_FIELDS: Final = (
    ("ct_val", float, msgspec.field(default=0.0, name=HIDDEN_CT_VAL)),
    ("ct_inverse", bool, msgspec.field(default=False, name=HIDDEN_CT_INVERSE)),
)


def check_trade(obj: Any, inst_id: str, now_ms: int) -> Trade | str:
    """Judge one decoded OKX trade object (careful path): a :class:`Trade` or the reason it
    is bad."""
    if not isinstance(obj, dict):
        kind = "array" if isinstance(obj, list) else type(obj).__name__
        return f"trade must be a JSON object, got {kind}"
    fields = check_fields(obj, inst_id)
    if isinstance(fields, str):
        return fields
    inst, tid, px, sz, side = fields
    ts_raw = obj.get("ts")
    if ts_raw is None:
        return "ts missing"
    try:
        ts = msgspec.convert(ts_raw, int, strict=False)
    except msgspec.ValidationError:
        return f"ts must be integer milliseconds, got {show(ts_raw)}"
    bad = check_ts(ts, now_ms)
    if bad is not None:
        return bad
    count = count_value(obj.get("count", 1))
    return Trade(instId=inst, tradeId=tid, px=px, sz=sz, side=side, ts=ts, count=count)


def fast_fields(inst_id: str, ts_max: int) -> list[tuple[Any, ...]]:
    """The fields of a typed decoder's OKX trade Struct (a :class:`Trade` subclass): every
    rule of :func:`check_trade` that msgspec can check in C, for one instrument and one
    future-stamp bound. What C cannot check (``tradeId`` all digits, ``px`` plain decimal
    text) the decoder checks per chunk afterwards."""
    return [
        ("instId", Literal[inst_id]),
        ("tradeId", Annotated[str, Meta(min_length=1, max_length=MAX_ID_DIGITS)]),
        ("px", Annotated[str, Meta(min_length=1, max_length=MAX_PX_CHARS)]),
        ("sz", Annotated[float, Meta(gt=0.0, le=min(MAX_DECIMAL, _FLOAT_MAX))]),
        ("side", Literal["buy", "sell"]),
        ("ts", Annotated[int, Meta(ge=MIN_TS_MS, le=ts_max)]),
        ("count", Annotated[int, Meta(ge=1, le=MAX_COUNT)], 1),
        *HIDDEN_FIELDS,
    ]


class _Line(msgspec.Struct, omit_defaults=True, gc=False):
    """An OKX trade object as vstream writes it (``count`` only where it is not 1)."""

    instId: str
    tradeId: str
    px: str
    sz: str
    side: str
    ts: str
    count: str = "1"


_encoder = msgspec.json.Encoder()


def encode(trades: Iterable[Trade]) -> bytes:
    """OKX trade objects, one JSON line each (``\\n``), every value a string as OKX sends it.

    ``sz`` is written as the shortest text that reads back as the same number. A trade's
    own contract facts have no place in this format: write such trades as exporter lines."""
    lines = [
        _Line(t.instId, t.tradeId, t.px, _number(t.sz), t.side, str(t.ts), str(t.count))
        for t in trades
    ]
    return _encoder.encode_lines(lines)


def _number(value: float) -> str:
    """The shortest decimal text of a size: ``12`` rather than ``12.0``."""
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text
