"""Input lines: the ``Trade`` Struct and the decoder that turns raw lines into trades.

Decoding has two paths. The fast path decodes a whole chunk of lines with one call of a
reused typed ``msgspec`` decoder and checks each trade with a few comparisons. Any chunk the
fast path cannot take whole (a bad line, an odd shape) goes through the careful path, line by
line, which judges every trade on its own and says exactly what is wrong. Both paths accept
and reject the same trades; the careful path is the reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

#: 2017-01-01T00:00:00Z in milliseconds: nothing older is an OKX trade.
MIN_TS_MS = 1_483_228_800_000
#: How far past the wall clock a trade stamp may be (SPEC §3).
MAX_FUTURE_MS = 86_400_000
#: Characters of a rejected line kept in its reject record.
RAW_KEEP = 1000

_TRADE_CHANNELS = frozenset(("trades", "trades-all"))
_SIDES = frozenset(("buy", "sell"))


class Trade(msgspec.Struct, gc=False, kw_only=True):
    """One OKX trade, as the analyzer uses it.

    ``px`` keeps the exact decimal string the input gave (bars print it unchanged); ``sz`` is
    in contracts (swaps, futures) or coin (spot); ``ts`` is milliseconds since the epoch;
    ``side`` is the taker's side; ``count`` is how many fills OKX merged into the record.
    """

    instId: str = ""
    tradeId: str = ""
    px: str = ""
    sz: float = 0.0
    side: str = ""
    ts: int = 0
    count: int = 1


class _Arg(msgspec.Struct, gc=False):
    channel: str = ""
    instId: str = ""


class _Line(Trade, gc=False, kw_only=True):
    # A flat trade and a push envelope share one shape so a chunk decodes in one call.
    # UNSET (not None) so that an explicit JSON null goes to the careful path.
    arg: _Arg | UnsetType = UNSET
    data: list[Trade] | UnsetType = UNSET
    event: str | UnsetType = UNSET


class Reject(msgspec.Struct):
    """A rejected input record, as written to the rejects file (SPEC §3)."""

    file: str
    line: int
    error: str
    raw: str


@dataclass(slots=True)
class Decoded:
    """What one chunk of lines held: accepted trades, rejects and the skipped-line count."""

    trades: list[Trade] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    skipped: int = 0


def _raw_text(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        return raw[: RAW_KEEP * 4].decode("utf-8", "replace")[:RAW_KEEP]
    return raw[:RAW_KEEP]


def _decimal(value: Any, name: str) -> tuple[str, float] | str:
    """A positive finite decimal given as a JSON string or number: (text, value) or an error."""
    if isinstance(value, bool) or value is None:
        return f"{name} must be a decimal number, got {_show(value)}"
    if isinstance(value, (int, float)):
        number = float(value)
        text = repr(value) if isinstance(value, int) else repr(number)
    elif isinstance(value, str):
        text = value
        if not _is_plain_decimal(value):
            return f"{name} must be a decimal number, got {_show(value)}"
        number = float(value)
    else:
        return f"{name} must be a decimal number, got {_show(value)}"
    if not math.isfinite(number):
        return f"{name} must be finite, got {_show(value)}"
    if number <= 0:
        return f"{name} must be > 0"
    return text, number


def _is_plain_decimal(text: str) -> bool:
    # JSON-number syntax only: float() alone would also take "1_0", " 5", "nan" and "٣".
    if not text or not text.isascii():
        return False
    body = text[1:] if text[0] == "-" else text
    mantissa, _, exponent = body.lower().partition("e")
    if exponent:
        exp = exponent[1:] if exponent[0] in "+-" else exponent
        if not exp.isdigit():
            return False
    whole, dot, frac = mantissa.partition(".")
    return whole.isdigit() and (not dot or frac.isdigit())


def _show(value: Any) -> str:
    text = msgspec.json.encode(value).decode() if _encodable(value) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _encodable(value: Any) -> bool:
    try:
        msgspec.json.encode(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def check_trade(obj: Any, inst_id: str, now_ms: int) -> Trade | str:
    """Judge one decoded trade object (careful path): a :class:`Trade` or the reason it is bad."""
    if not isinstance(obj, dict):
        return f"trade must be a JSON object, got {type(obj).__name__ if not isinstance(obj, list) else 'array'}"
    inst = obj.get("instId")
    if not isinstance(inst, str) or not inst:
        return "instId missing" if inst is None else "instId must be a non-empty string"
    if inst != inst_id:
        return f"instId {_show(inst)} is not {inst_id}"
    tid = obj.get("tradeId")
    if tid is None:
        return "tradeId missing"
    if not isinstance(tid, str) or not tid:
        return "tradeId must be a non-empty string"
    if not (tid.isascii() and tid.isdigit()):
        return f"tradeId must be a decimal integer, got {_show(tid)}"
    if "px" not in obj:
        return "px missing"
    px = _decimal(obj["px"], "px")
    if isinstance(px, str):
        return px
    if "sz" not in obj:
        return "sz missing"
    try:
        sz = msgspec.convert(obj["sz"], float, strict=False)
    except msgspec.ValidationError:
        return f"sz must be a decimal number, got {_show(obj['sz'])}"
    if not math.isfinite(sz):
        return f"sz must be finite, got {_show(obj['sz'])}"
    if sz <= 0:
        return "sz must be > 0"
    side = obj.get("side")
    if side not in _SIDES:
        return "side missing" if side is None else f"side must be buy or sell, got {_show(side)}"
    ts_raw = obj.get("ts")
    if ts_raw is None:
        return "ts missing"
    try:
        ts = msgspec.convert(ts_raw, int, strict=False)
    except msgspec.ValidationError:
        return f"ts must be integer milliseconds, got {_show(ts_raw)}"
    if ts < MIN_TS_MS:
        return f"ts {ts} is before 2017-01-01 (seconds instead of milliseconds?)"
    if ts > now_ms + MAX_FUTURE_MS:
        return f"ts {ts} is more than a day in the future"
    count = _count(obj.get("count", 1))
    return Trade(instId=inst, tradeId=tid, px=px[0], sz=sz, side=side, ts=ts, count=count)


def _count(value: Any) -> int:
    # An absent or unreadable count must not reject a good trade (SPEC §3): it counts as one fill.
    try:
        count = msgspec.convert(value, int, strict=False)
    except msgspec.ValidationError:
        return 1
    return count if count >= 1 else 1


class LineDecoder:
    """Turns chunks of complete input lines into trades, rejects and skip counts.

    One decoder serves one instrument (trades for other instruments are rejects). ``now_ms``,
    the wall clock used for the far-future check, is passed in with every chunk.
    """

    __slots__ = ("_dec_line", "_dec_list", "inst_id")

    def __init__(self, inst_id: str) -> None:
        self.inst_id = inst_id
        # strict=False lets "12" decode into a float and "1630048897897" into an int in C.
        self._dec_list = msgspec.json.Decoder(list[_Line], strict=False)
        self._dec_line = msgspec.json.Decoder(strict=False)

    def decode(
        self, lines: Sequence[bytes], *, file: str, first_line: int, now_ms: int
    ) -> Decoded:
        """Decode complete lines (newline stripped, ``\\r`` allowed) numbered from ``first_line``."""
        out = Decoded()
        if not lines:
            return out
        if self._fast(lines, now_ms, out):
            return out
        out.trades.clear()
        out.skipped = 0
        for index, raw in enumerate(lines):
            self._careful(raw, file, first_line + index, now_ms, out)
        return out

    def _fast(self, lines: Sequence[bytes], now_ms: int, out: Decoded) -> bool:
        # Blank lines and non-ASCII text are rare: leave them to the careful path.
        if b"" in lines or b"\r" in lines:
            return False
        blob = b"[" + b",".join(lines) + b"]"
        if not blob.isascii() or b"_" in blob:
            return False
        try:
            items = self._dec_list.decode(blob)
        except msgspec.DecodeError:
            return False
        inst = self.inst_id
        lo = MIN_TS_MS
        hi = now_ms + MAX_FUTURE_MS
        trades = out.trades
        append = trades.append
        skipped = 0
        inf = math.inf
        for item in items:
            data: Sequence[Trade]
            if isinstance(item.data, UnsetType):
                if item.event is not UNSET or item.arg is not UNSET:
                    skipped += 1
                    continue
                data = (item,)
            else:
                data = item.data
                arg = item.arg
                if (
                    item.event is not UNSET
                    or isinstance(arg, UnsetType)
                    or arg.channel not in _TRADE_CHANNELS
                ):
                    skipped += 1
                    continue
            for t in data:
                sz = t.sz
                ts = t.ts
                px = t.px
                if not (
                    t.instId == inst
                    and 0.0 < sz < inf
                    and lo <= ts <= hi
                    and t.count >= 1
                    and (t.side == "buy" or t.side == "sell")
                    and t.tradeId.isdigit()
                    # digits with at most one inner dot; anything else is the careful path's
                    and px.replace(".", "", 1).isdigit()
                    and px[0] != "."
                    and px[-1] != "."
                    and 0.0 < float(px) < inf
                ):
                    return False
                append(t)
        out.skipped += skipped
        return True

    def _careful(self, raw: bytes, file: str, line: int, now_ms: int, out: Decoded) -> None:
        text = raw.rstrip(b"\r")
        if not text.strip():
            return  # blank lines are ignored, not counted
        if text.strip() == b"pong":
            out.skipped += 1
            return
        try:
            obj = self._dec_line.decode(text)
        except msgspec.DecodeError as exc:
            out.rejects.append(Reject(file, line, _json_error(exc, text), _raw_text(text)))
            return
        if not isinstance(obj, dict):
            out.rejects.append(
                Reject(file, line, "line is not a JSON object", _raw_text(text))
            )
            return
        if "data" in obj or "arg" in obj or "event" in obj or "op" in obj:
            arg = obj.get("arg")
            channel = arg.get("channel") if isinstance(arg, dict) else None
            data = obj.get("data")
            if "event" in obj or channel not in _TRADE_CHANNELS or not isinstance(data, list):
                out.skipped += 1
                return
            for index, element in enumerate(data):
                verdict = check_trade(element, self.inst_id, now_ms)
                if isinstance(verdict, str):
                    out.rejects.append(
                        Reject(file, line, f"data[{index}]: {verdict}", _raw_text(_dump(element)))
                    )
                else:
                    out.trades.append(verdict)
            return
        verdict = check_trade(obj, self.inst_id, now_ms)
        if isinstance(verdict, str):
            out.rejects.append(Reject(file, line, verdict, _raw_text(text)))
        else:
            out.trades.append(verdict)


def _dump(value: Any) -> str:
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, ValueError, OverflowError):
        return repr(value)


def _json_error(exc: msgspec.DecodeError, text: bytes) -> str:
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return "line is not valid UTF-8"
    return f"invalid JSON: {exc}"
