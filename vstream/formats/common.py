"""What every input line format shares: the :class:`Trade` it decodes to, the reject record,
and the rules of SPEC §3 that judge a trade's fields whatever the line called them.

A format module (:mod:`vstream.formats.okx`, :mod:`vstream.formats.exporter`) maps its own keys
onto these fields; :class:`vstream.trades.LineDecoder` picks the format line by line.
"""

from __future__ import annotations

import math
from typing import Any, Final

import msgspec

#: 2017-01-01T00:00:00Z in milliseconds: nothing older is an OKX trade.
MIN_TS_MS = 1_483_228_800_000
#: How far past the wall clock a trade stamp may be (SPEC §3).
MAX_FUTURE_MS = 86_400_000
#: Characters of a rejected line kept in its reject record.
RAW_KEEP = 1000
#: Plausibility bounds that keep every later computation finite and cheap: a px or sz above
#: MAX_DECIMAL (or a px below MIN_PX) would overflow the bar's float/Fraction arithmetic, and
#: a px text or tradeId longer than these would hit Python's int-string limit; no real OKX
#: trade comes near them. A count outside 1..MAX_COUNT is unreadable and counts as one fill.
MAX_DECIMAL = 1e15
MIN_PX = 1e-15
MAX_PX_CHARS = 64
MAX_ID_DIGITS = 32
MAX_COUNT = 1_000_000_000

class Trade(msgspec.Struct, gc=False, kw_only=True, omit_defaults=True):
    """One OKX trade, as the analyzer uses it, whatever line format it came in.

    ``px`` keeps the exact decimal string the input gave (bars print it unchanged); ``sz`` is
    in contracts (swaps, futures) or coin (spot); ``ts`` is milliseconds since the epoch;
    ``side`` is the taker's side; ``count`` is how many fills OKX merged into the record.

    ``ct_val``/``ct_inverse`` are the trade's own contract facts where its line carried them
    (an exporter line's ``ctVal``/``ctType``, SPEC §4): ``ct_val`` > 0 converts this trade
    instead of the instrument's contract value; 0.0 means the instrument's.
    """

    instId: str = ""
    tradeId: str = ""
    px: str = ""
    sz: float = 0.0
    side: str = ""
    ts: int = 0
    count: int = 1
    ct_val: float = 0.0
    ct_inverse: bool = False


class Reject(msgspec.Struct):
    """A rejected input record, as written to the rejects file (SPEC §3)."""

    file: str
    line: int
    error: str
    raw: str


SIDES: Final = frozenset(("buy", "sell"))


def raw_text(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        return raw[: RAW_KEEP * 4].decode("utf-8", "replace")[:RAW_KEEP]
    return raw[:RAW_KEEP]


def decimal(value: Any, name: str) -> tuple[str, float] | str:
    """A positive finite decimal given as a JSON string or number: (text, value) or an error."""
    if isinstance(value, bool) or value is None:
        return f"{name} must be a decimal number, got {show(value)}"
    if isinstance(value, (int, float)):
        if isinstance(value, int) and not -(10**16) < value < 10**16:
            return f"{name} must be at most {MAX_DECIMAL:g}"  # float() of a huge int overflows
        number = float(value)
        text = repr(value) if isinstance(value, int) else repr(number)
    elif isinstance(value, str):
        text = value
        if not is_plain_decimal(value):
            return f"{name} must be a decimal number, got {show(value)}"
        number = float(value)
    else:
        return f"{name} must be a decimal number, got {show(value)}"
    if not math.isfinite(number):
        return f"{name} must be finite, got {show(value)}"
    if number <= 0:
        return f"{name} must be > 0"
    if number > MAX_DECIMAL:
        return f"{name} must be at most {MAX_DECIMAL:g}"
    if len(text) > MAX_PX_CHARS:
        return f"{name} must be at most {MAX_PX_CHARS} characters"
    return text, number


def is_plain_decimal(text: str) -> bool:
    # JSON-number syntax only: float() alone would also take "1_0", " 5", "nan" and "٣".
    if not text or not text.isascii():
        return False
    body = text[1:] if text[0] == "-" else text
    mantissa, marker, exponent = body.lower().partition("e")
    if marker:  # "1e" has a marker and no exponent: not a number
        exp = exponent[1:] if exponent[:1] in ("+", "-") else exponent
        if not exp.isdigit():
            return False
    whole, dot, frac = mantissa.partition(".")
    return whole.isdigit() and (not dot or frac.isdigit())


def show(value: Any) -> str:
    text = msgspec.json.encode(value).decode() if encodable(value) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def encodable(value: Any) -> bool:
    try:
        msgspec.json.encode(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def count_value(value: Any) -> int:
    """A trade's ``count``: an absent or unreadable one must not reject a good trade (SPEC
    §3), it counts as one fill."""
    try:
        count = msgspec.convert(value, int, strict=False)
    except msgspec.ValidationError:
        return 1
    return count if 1 <= count <= MAX_COUNT else 1


def px_accepted(text: str) -> bool:
    """Whether ``text`` is accepted as a trade's price (the rules of :func:`check_fields`)."""
    px = decimal(text, "px")
    return not isinstance(px, str) and px[1] >= MIN_PX


class Names(msgspec.Struct, frozen=True):
    """What a line format calls the trade fields, for its error messages."""

    trade_id: str = "tradeId"
    px: str = "px"
    sz: str = "sz"
    ts: str = "ts"


OKX_NAMES: Final = Names()


def check_fields(
    obj: dict[str, Any], inst_id: str, names: Names = OKX_NAMES
) -> tuple[str, str, str, float, str] | str:
    """Judge the fields every format shares (careful path): ``instId``, the trade id, the
    price, the size and ``side``, each under the name ``names`` gives it. Returns
    ``(instId, tradeId, px text, sz, side)`` or the reason the trade is bad."""
    inst = obj.get("instId")
    if not isinstance(inst, str) or not inst:
        return "instId missing" if inst is None else "instId must be a non-empty string"
    if inst != inst_id:
        return f"instId {show(inst)} is not {inst_id}"
    tid_key = names.trade_id
    tid = obj.get(tid_key)
    if tid is None:
        return f"{tid_key} missing"
    if not isinstance(tid, str) or not tid:
        return f"{tid_key} must be a non-empty string"
    if not (tid.isascii() and tid.isdigit()):
        return f"{tid_key} must be a decimal integer, got {show(tid)}"
    if len(tid) > MAX_ID_DIGITS:
        return f"{tid_key} must be at most {MAX_ID_DIGITS} digits"
    px_key = names.px
    if px_key not in obj:
        return f"{px_key} missing"
    px = decimal(obj[px_key], px_key)
    if isinstance(px, str):
        return px
    if px[1] < MIN_PX:
        return f"{px_key} must be at least {MIN_PX:g}"
    sz_key = names.sz
    if sz_key not in obj:
        return f"{sz_key} missing"
    raw_sz = obj[sz_key]
    try:
        sz = msgspec.convert(raw_sz, float, strict=False)
    except msgspec.ValidationError:
        return f"{sz_key} must be a decimal number, got {show(raw_sz)}"
    if not math.isfinite(sz):
        return f"{sz_key} must be finite, got {show(raw_sz)}"
    if sz <= 0:
        return f"{sz_key} must be > 0"
    if sz > MAX_DECIMAL:
        return f"{sz_key} must be at most {MAX_DECIMAL:g}"
    side = obj.get("side")
    if side not in SIDES:
        return "side missing" if side is None else f"side must be buy or sell, got {show(side)}"
    return inst, tid, px[0], sz, side


def check_ts(ts: int, now_ms: int, name: str = "ts") -> str | None:
    """The range rule of a trade stamp in milliseconds (SPEC §3): None, or what is wrong."""
    if ts < MIN_TS_MS:
        return f"{name} {ts} is before 2017-01-01 (seconds instead of milliseconds?)"
    if ts > now_ms + MAX_FUTURE_MS:
        return f"{name} {ts} is more than a day in the future"
    return None
