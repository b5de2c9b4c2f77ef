"""The trade lines of the vault's own trades exporter (SPEC §3 item 4), read and written.

``{"timestamp_utc": "2025-12-14T21:34:56.123000Z", "exchange": "okx", "market": "perp",
"instId": "BTC-USDT-SWAP", "symbol_canon": "BTC/USDT", "trade_id": "1234567890", "side": "buy",
"price": "101250.5", "qty_contracts": "45", "ctVal": "0.01", "ctMult": "1", "ctType": "linear"}``

An object with ``trade_id`` and no ``tradeId`` is one. ``trade_id``, ``price`` and
``qty_contracts`` follow the rules of OKX's ``tradeId``, ``px`` and ``sz``; ``timestamp_utc``
(RFC 3339, UTC) rounded to the nearest millisecond is the trade's ``ts``; ``ctVal``/``ctType``,
where present, are the trade's own contract facts. ``market``, ``symbol_canon``, ``ctMult``
and unknown keys are ignored. Other tools read the same files and build a record from every
key, so :func:`encode` writes exactly the exporter's twelve keys in its order.
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from ..settings import MAX_CT_VAL
from .common import (
    Names,
    Trade,
    check_fields,
    check_ts,
    count_value,
    show,
)
from .okx import HIDDEN_FIELDS, fast_fields

#: The exporter's keys, in the order it writes them.
KEYS: Final = (
    "timestamp_utc",
    "exchange",
    "market",
    "instId",
    "symbol_canon",
    "trade_id",
    "side",
    "price",
    "qty_contracts",
    "ctVal",
    "ctMult",
    "ctType",
)
NAMES: Final = Names(trade_id="trade_id", px="price", sz="qty_contracts", ts="timestamp_utc")
#: A field no exporter line can set (see :data:`vstream.formats.okx.HIDDEN_CT_VAL`).
_HIDDEN_TS: Final = "\u00a7ts"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND: Final = timedelta(seconds=1)
#: The seconds field and the fraction after it, in text the RFC 3339 parser accepted.
_FRACTION = re.compile(r"(:\d\d)\.(\d+)")


def is_exporter(obj: dict[str, Any]) -> bool:
    """Whether a decoded line object is an exporter trade line (SPEC §3 item 4)."""
    return "trade_id" in obj and "tradeId" not in obj


def stamp_ms(value: Any, now_ms: int) -> int | str:
    """``timestamp_utc`` as milliseconds since the epoch, rounded to the nearest one (halves
    up), with the range rule of a trade stamp; or what is wrong with it.

    The text decides the rounding: the RFC 3339 parser keeps microseconds, and a value with
    more digits than that would be rounded twice."""
    name = NAMES.ts
    if not isinstance(value, str):
        return f"{name} must be an RFC 3339 time text, got {show(value)}"
    try:
        stamp = msgspec.convert(value, datetime)
    except msgspec.ValidationError:
        return f"{name} must be an RFC 3339 time, got {show(value)}"
    if stamp.tzinfo is None:
        return f"{name} has no time zone (expected Z), got {show(value)}"
    if stamp.utcoffset() != timedelta(0):
        return f"{name} must be in UTC (Z or +00:00), got {show(value)}"
    match = _FRACTION.search(value)
    fraction = 0
    if match is not None:
        digits = match.group(2)
        whole = msgspec.convert(value[: match.start(2) - 1] + value[match.end(2) :], datetime)
        scale = 10 ** len(digits)
        fraction = (int(digits) * 2000 + scale) // (2 * scale)  # ms, halves up
    else:
        whole = stamp
    ts = (whole - _EPOCH) // _SECOND * 1000 + fraction
    bad = check_ts(ts, now_ms, name)
    return bad if bad is not None else ts


def ct_value(value: Any) -> float:
    """A line's ``ctVal`` (text or number) as a contract value, or 0.0 if it is not one (the
    rule of :func:`check`)."""
    got = _ct(value)
    return got if isinstance(got, float) else 0.0


def _ct(value: Any) -> float | str:
    """A line's ``ctVal``: by the rule of a size (a JSON number, or a string holding one),
    finite, > 0 and at most :data:`~vstream.settings.MAX_CT_VAL`; or what is wrong."""
    try:
        ct = msgspec.convert(value, float, strict=False)
    except msgspec.ValidationError:
        return f"ctVal must be a decimal number, got {show(value)}"
    if not math.isfinite(ct):
        return f"ctVal must be finite, got {show(value)}"
    if ct <= 0:
        return "ctVal must be > 0"
    if ct > MAX_CT_VAL:
        return f"ctVal must be at most {MAX_CT_VAL:g}"
    return ct


def default_inverse(inst_id: str) -> bool:
    """The contract type of an instrument named ``inst_id`` when a line does not say: OKX's
    USDT- and USDC-settled contracts are linear, the coin-settled ones inverse."""
    parts = inst_id.split("-")
    return len(parts) > 2 and parts[1] not in ("USDT", "USDC")


def check(obj: dict[str, Any], inst_id: str, now_ms: int) -> Trade | str:
    """Judge one decoded exporter line (careful path): a :class:`Trade` or the reason it is
    bad, naming the exporter's keys."""
    exchange = obj.get("exchange", "okx")
    if exchange != "okx":
        return f"exchange must be okx, got {show(exchange)}"
    fields = check_fields(obj, inst_id, NAMES)
    if isinstance(fields, str):
        return fields
    inst, tid, px, sz, side = fields
    if NAMES.ts not in obj:
        return f"{NAMES.ts} missing"
    ts = stamp_ms(obj[NAMES.ts], now_ms)
    if isinstance(ts, str):
        return ts
    ct_val = 0.0
    raw_ct = obj.get("ctVal")
    if raw_ct is not None and raw_ct != "":
        got = _ct(raw_ct)
        if isinstance(got, str):
            return got
        ct_val = got
    kind = obj.get("ctType")
    if kind is None or kind == "":
        inverse = default_inverse(inst_id)
    elif kind in ("linear", "inverse"):
        inverse = kind == "inverse"
    else:
        return f"ctType must be linear or inverse, got {show(kind)}"
    return Trade(
        instId=inst,
        tradeId=tid,
        px=px,
        sz=sz,
        side=side,
        ts=ts,
        count=count_value(obj.get("count", 1)),
        ct_val=ct_val,
        ct_inverse=inverse,
    )


def fast_struct(inst_id: str) -> type[Trade]:
    """A :class:`Trade` subclass that a typed decoder fills from an exporter line: the rules
    of :func:`check` that msgspec can check in C. ``ts`` and ``ct_inverse`` are left for
    :func:`vstream.kernel.exporter_ready` to fill from ``stamp`` and ``ct_type`` (and an
    empty ``ct_val`` to clear); a line that also has ``tradeId`` (an OKX object, by the rule of
    :func:`is_exporter`) is refused."""
    okx = {f[0]: f for f in fast_fields(inst_id, 0)}
    renamed = {"tradeId": NAMES.trade_id, "px": NAMES.px, "sz": NAMES.sz}
    fields: list[tuple[Any, ...]] = [okx["instId"]]
    for name in ("tradeId", "px", "sz"):
        fields.append((name, okx[name][1], msgspec.field(name=renamed[name])))
    fields += [
        okx["side"],
        ("ts", int, msgspec.field(default=0, name=_HIDDEN_TS)),
        okx["count"],
        # ctVal by the size's rule (a JSON number, or a string holding one), checked in C;
        # "" (an instrument without contracts) is left for exporter_ready to clear
        ("ct_val", Annotated[float, Meta(gt=0.0, le=MAX_CT_VAL)] | Literal[""], msgspec.field(default=0.0, name="ctVal")),
        HIDDEN_FIELDS[1],
        ("stamp", Annotated[datetime, Meta(tz=True)], msgspec.field(name=NAMES.ts)),
        ("ct_type", str, msgspec.field(default="", name="ctType")),
        ("exchange", Literal["okx"], "okx"),
        ("okx_trade_id", UnsetType, msgspec.field(default=UNSET, name="tradeId")),
    ]
    struct: type[Trade] = msgspec.defstruct(  # type: ignore[assignment]
        "_ExporterLine", fields, bases=(Trade,), gc=False, kw_only=True
    )
    # vstream.kernel.exporter_ready reads these by position
    if struct.__struct_fields__[7:11] != ("ct_val", "ct_inverse", "stamp", "ct_type"):
        raise AssertionError(f"exporter Struct laid out as {struct.__struct_fields__}")
    STRUCT_TYPES.add(struct)
    return struct


#: Every Struct :func:`fast_struct` made: their instances encode with the exporter's keys
#: (and hidden fields), so they are written out through :func:`encode`.
STRUCT_TYPES: weakref.WeakSet[type] = weakref.WeakSet()


class Contract(msgspec.Struct, frozen=True):
    """What an exporter line says of its instrument besides the trade: ``market`` (``perp``,
    ``spot``, ``futures``) and the contract facts as text (``""`` for spot)."""

    market: str
    ct_val: str = ""
    ct_mult: str = "1"
    ct_type: str = ""


_encode_text = msgspec.json.Encoder().encode
#: Each key as it starts its pair, json.dumps' default separators (", " and ": ") included.
_KEY_PREFIXES: Final = tuple(b'"%s": ' % key.encode() for key in KEYS)


def encode(
    trades: Iterable[Trade], contract: Contract, *, newline: bytes = b"\r\n", counts: bool = False
) -> bytes:
    """Exporter lines for ``trades``, each ending in ``newline`` (the exporter writes CRLF on
    Windows): see :func:`line`. A trade's own contract facts are written where it has them,
    the contract's otherwise. ``counts`` adds ``count`` after the twelve keys where it is not
    1 (never in the vault: the trader's other tools build a record from every key)."""
    out: list[bytes] = []
    for t in trades:
        base, quote = t.instId.split("-")[:2]
        if t.ct_val > 0.0:
            ct_val, ct_type = number_text(t.ct_val), "inverse" if t.ct_inverse else "linear"
        else:
            ct_val, ct_type = contract.ct_val, contract.ct_type
        values = (
            _timestamp(t.ts),
            "okx",
            contract.market,
            t.instId,
            f"{base}/{quote}",
            t.tradeId,
            t.side,
            t.px,
            repr(t.sz),  # as the exporter prints the size: 38 contracts are "38.0"
            ct_val,
            contract.ct_mult,
            ct_type,
        )
        extra = (("count", str(t.count)),) if counts and t.count != 1 else ()
        out.append(line(values, extra) + newline)
    return b"".join(out)


def line(values: Sequence[str], extra: Sequence[tuple[str, str]] = ()) -> bytes:
    """One exporter line (no newline) of the twelve ``values`` in :data:`KEYS` order, every
    value a string, separated as ``json.dumps`` separates them; ``extra`` pairs follow."""
    pairs = [key + _encode_text(value) for key, value in zip(_KEY_PREFIXES, values, strict=True)]
    pairs += [b'"%s": ' % key.encode() + _encode_text(value) for key, value in extra]
    return b"{" + b", ".join(pairs) + b"}"


def number_text(value: float) -> str:
    """A contract value as OKX writes it: ``10`` rather than ``10.0``, ``0.01`` as it is."""
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def _timestamp(ts: int) -> str:
    return (_EPOCH + timedelta(milliseconds=ts)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
