"""Input lines: the ``Trade`` Struct and the decoder that turns raw lines into trades.

Decoding has two paths. The fast path decodes a whole chunk of lines with one call of a
reused typed ``msgspec`` decoder and checks each trade with a few comparisons. Any chunk the
fast path cannot take whole (a bad line, an odd shape) goes through the careful path, line by
line, which judges every trade on its own and says exactly what is wrong. Both paths accept
and reject the same trades; the careful path is the reference.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from msgspec import UNSET, Raw, UnsetType

from .formats import exporter
from .formats.common import (
    MAX_COUNT,
    MAX_DECIMAL,
    MAX_FUTURE_MS,
    MAX_ID_DIGITS,
    MAX_PX_CHARS,
    MIN_PX,
    MIN_TS_MS,
    RAW_KEEP,
    Reject,
    Trade,
    px_accepted,
    raw_text,
)
from .formats.okx import TRADE_CHANNELS, check_trade, fast_fields
from .kernel import exporter_ready, texts_ok

__all__ = [
    "MAX_COUNT",
    "MAX_DECIMAL",
    "MAX_FUTURE_MS",
    "MAX_ID_DIGITS",
    "MAX_PX_CHARS",
    "MIN_PX",
    "MIN_TS_MS",
    "RAW_KEEP",
    "TRADE_CHANNELS",
    "Decoded",
    "LineDecoder",
    "Reject",
    "Trade",
    "check_trade",
    "flat_lines",
    "flat_lines_py",
]

_TRADE_CHANNELS = frozenset(TRADE_CHANNELS)


class _Arg(msgspec.Struct, gc=False):
    channel: str = ""
    instId: str = ""


@dataclass(slots=True)
class Decoded:
    """What one chunk of lines held: accepted trades, rejects and the skipped-line count."""

    trades: list[Trade] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    skipped: int = 0
    #: Lines the chunk held, blank ones included (set by ``decode``/``decode_body``).
    lines: int = 0


_ENVELOPE_KEYS = ("arg", "data", "event", "op")
#: Lines are decoded as one JSON array, joined by this. The raw newline keeps a string from
#: running across a line boundary (a control character is invalid inside a JSON string).
#: Lines could still regroup (one holding two values, two broken ones completing each
#: other): the flat path admits only chunks with one ``}`` per line and one item per line,
#: the mixed path checks each value's span against its line.
_SEP = b"\n,"
#: What a fast decoder raises for input it will not take (deep nesting is RecursionError).
_REFUSED = (msgspec.DecodeError, RecursionError, UnicodeDecodeError)
_RAW_LIST = msgspec.json.Decoder(list[Raw])


#: Every byte but "}", "[" and newline, deleted by bytes.translate in the alignment check.
_NOT_BRACE_OR_NEWLINE = bytes(b for b in range(256) if b not in b"}[\n")
#: Every byte but "{", "}", "[" and newline. ("[" is kept so that a line holding an array,
#: such as an envelope's ``data``, never passes for a flat trade.)
_NOT_BRACES_OR_NEWLINE = bytes(b for b in range(256) if b not in b"{}[\n")
#: Every byte but brackets, braces and newline.
_NOT_BRACKETS_OR_NEWLINE = bytes(b for b in range(256) if b not in b"{}[]\n")
#: Lines shaped as trade envelopes, ``{"arg":{...},"data":[{...},...]}``, once every other
#: byte is deleted. Each such line is one balanced value that opens at its first byte and
#: closes at its last: no value can end or start elsewhere on it, or span two lines.
_ENVELOPE_LINES = re.compile(rb"(?:\{\{\}\[(?:\{\})*\]\}\n)*(?:\{\{\}\[(?:\{\})*\]\})?")


def _one_brace_per_line(blob: bytes | bytearray, count: int) -> bool:
    """True if each of the ``count`` lines joined in the array ``blob`` holds exactly one
    ``}`` and no ``[``.

    Then no line can hold two objects (each needs its own ``}``), so a decode giving exactly
    ``count`` objects gives one per line: two broken lines completing each other would give
    fewer. A flat trade line has exactly one ``}`` and no array; anything else takes a slower
    path. One C-speed pass (translate keeps only those bytes), no per-line work.
    """
    kept = blob.translate(None, _NOT_BRACE_OR_NEWLINE)
    one_each = b"[" + b"}\n" * (count - 1) + b"}"
    return kept == one_each or kept == one_each + b"\n"


def _kept(body: bytes | bytearray, start: int, stop: int, delete: bytes) -> bytes | bytearray:
    """``body[start:stop]`` with the bytes in ``delete`` deleted, without copying the span:
    deletion works byte by byte, so it is the whole buffer's result less the parts of the
    (short) bytes around the span."""
    kept = body.translate(None, delete)
    if start or stop < len(body):
        before = len(body[:start].translate(None, delete))
        after = len(body[stop:].translate(None, delete))
        kept = kept[before : len(kept) - after]
    return kept


def flat_lines_py(body: bytes | bytearray, start: int, stop: int) -> int:
    """How many lines ``body[start:stop]`` holds if each holds exactly one ``{`` and, after
    it, one ``}`` (and no ``[``); -1 otherwise. The interpreted alignment check: see
    :func:`_one_pair_per_line`. ``vstream._lines.flat_lines`` is the compiled one."""
    if stop <= start:
        return -1
    kept = _kept(body, start, stop, _NOT_BRACES_OR_NEWLINE)
    return _one_pair_per_line(kept, body[stop - 1] == 0x0A)


def _one_pair_per_line(kept: bytes | bytearray, terminated: bool) -> int:
    """How many lines a body holds if each holds exactly one ``{`` and, after it, one ``}``;
    -1 otherwise. ``kept`` is the body with every byte but braces and newlines deleted.

    Newline-delimited values need no commas, so a line could end one object and start the
    next (``{..} {"px":`` then ``..}``). With one brace pair per line, in that order, a
    decode that gives one brace-free object per line cannot have regrouped anything: the
    first ``{`` opens an object that its line's ``}`` closes, and so on line by line. The
    deletion is one C-speed pass (bytes.translate), with no per-line objects.
    """
    count = (len(kept) + (not terminated)) // 3
    shape = b"{}\n" * count if terminated else b"{}\n" * (count - 1) + b"{}"
    return count if count and kept == shape else -1


try:
    # The same guarantee by another rule, per line instead of per byte (see _lines.c):
    # every line starts with "{" and ends with "}", and no "[" anywhere.
    from ._lines import flat_lines as _compiled_flat_lines
except ImportError:  # built without a compiler: the interpreted check
    flat_lines: Callable[[bytes | bytearray, int, int], int] = flat_lines_py
else:
    flat_lines = _compiled_flat_lines

#: How long a fast decoder's baked-in "ts not in the future" bound may lag the wall clock.
#: The bound is at most this much stricter than SPEC §3; a stamp it refuses goes to the
#: careful path, which applies the exact rule, so the lag never changes what is accepted.
_BOUND_REFRESH_MS = 3_600_000
#: Below this many lines a chunk the fast decoders refused is judged line by line.
_LEAF = 8


#: Kept for callers of the decoder's old private name.
_px_accepted = px_accepted


class _TradeArg(msgspec.Struct, gc=False):
    channel: Literal["trades", "trades-all"]


class _FastKinds:
    """The typed decoders of the fast paths, for one instrument and one future-stamp bound.

    Every SPEC §3 rule that msgspec can check runs in C during decoding: ``instId`` must be
    the instrument (a ``Literal``), ``side`` buy/sell, ``sz`` finite and > 0, ``ts`` an integer
    inside the accepted range, ``count`` in range, ``tradeId``/``px`` strings of a sane
    length (the plausibility bounds of :func:`check_trade` included). A flat line that also
    carries ``arg``, ``data``, ``event`` or ``op`` is a trade if its trade fields are complete
    and valid (the careful path's rule); an envelope's ``data`` array never reaches the flat
    decoder (the alignment check refuses any ``[``). What C cannot check —
    ``tradeId`` all digits, ``px`` plain decimal text — is checked per chunk afterwards.
    Anything refused goes to a slower path; nothing is accepted that the careful path rejects.
    """

    __slots__ = ("arg", "envelopes", "exporter_line", "flat", "flat_line", "lines", "trades", "ts_max")

    def __init__(self, inst_id: str, ts_max: int) -> None:
        self.ts_max = ts_max
        fields = fast_fields(inst_id, ts_max)
        opts: dict[str, Any] = {"bases": (Trade,), "gc": False, "kw_only": True}
        # An envelope element: a trade whatever other keys it carries.
        element = msgspec.defstruct("_Element", fields, **opts)
        # A flat line: the same. Other keys are skipped, envelope and control keys too: a
        # line holding a complete, valid trade is a trade (see LineDecoder._careful); an
        # envelope's data array fails the alignment check before decoding.
        flat = msgspec.defstruct("_Flat", fields, **opts)
        # Any line shape: trade fields optional (still checked when present), envelope
        # parts kept raw so a foreign channel's data or an odd ``arg`` cannot fail the chunk.
        loose = [(f[0], f[1] | UnsetType, f[2] if len(f) > 2 else UNSET) for f in fields]
        line = msgspec.defstruct(
            "_AnyLine", [*loose, *((k, Raw | UnsetType, UNSET) for k in _ENVELOPE_KEYS)], **opts
        )
        self.flat: msgspec.json.Decoder[list[Trade]] = msgspec.json.Decoder(
            list[flat], strict=False  # type: ignore[valid-type]
        )
        # The same, one line at a time: ``decode_lines`` needs no framing of the chunk.
        self.flat_line: msgspec.json.Decoder[Trade] = msgspec.json.Decoder(flat, strict=False)
        self.lines: msgspec.json.Decoder[list[Any]] = msgspec.json.Decoder(
            list[line], strict=False  # type: ignore[valid-type]
        )
        self.trades: msgspec.json.Decoder[list[Trade]] = msgspec.json.Decoder(
            list[element], strict=False  # type: ignore[valid-type]
        )
        self.arg = msgspec.json.Decoder(_Arg)
        # A whole line that is a trades envelope: the channel a trade channel, every element
        # a trade (checked as above); a control key (event, op) sends the chunk elsewhere.
        envelope = msgspec.defstruct(
            "_EnvelopeLine",
            [
                ("arg", _TradeArg),
                ("data", list[element]),  # type: ignore[valid-type]
                ("event", UnsetType, UNSET),
                ("op", UnsetType, UNSET),
            ],
            gc=False,
        )
        self.envelopes: msgspec.json.Decoder[Any] = msgspec.json.Decoder(envelope, strict=False)
        # An exporter line, one at a time (``ts`` and the contract facts are filled after).
        self.exporter_line: msgspec.json.Decoder[Trade] = msgspec.json.Decoder(
            exporter.fast_struct(inst_id), strict=False
        )


class LineDecoder:
    """Turns chunks of complete input lines into trades, rejects and skip counts.

    One decoder serves one instrument (trades for other instruments are rejects). ``now_ms``,
    the wall clock used for the far-future check, is passed in with every chunk.

    Three paths, fastest first, each falling back to the next for what it cannot take:

    1. *flat*: the whole chunk decoded in one call as flat trades, every trade checked in C
       (see :class:`_FastKinds`) plus two per-chunk checks; the common case of a vault file.
    2. *mixed*: the chunk decoded in one call with every line shape allowed, then judged line
       by line; envelopes, control messages, blank lines and ``pong`` are handled here.
    3. *careful*: one line at a time with plain JSON decoding and :func:`check_trade`, which
       names the exact problem. A chunk the mixed decoder refuses is halved until the bad
       lines are isolated; only those are judged here.

    All three accept and reject exactly the same trades; the careful path is the reference.
    """

    __slots__ = ("_dec_line", "_inverse", "_kinds", "_minutes", "_now", "_prefer_exporter", "_px_ok", "inst_id")

    def __init__(self, inst_id: str) -> None:
        self.inst_id = inst_id
        self._dec_line = msgspec.json.Decoder(strict=False)
        self._kinds: _FastKinds | None = None
        self._now = 0
        # Price texts already found to be plain positive decimals.
        self._px_ok: set[str] = set()
        self._inverse = exporter.default_inverse(inst_id)
        # Milliseconds of the exporter stamps' minute prefixes already read.
        self._minutes: dict[str, int] = {}
        # The format the last flat chunk was in: a file keeps to one, so it is tried first.
        self._prefer_exporter = False

    def _fast_kinds(self, now_ms: int) -> _FastKinds:
        kinds = self._kinds
        if kinds is None or not (self._now <= now_ms <= self._now + _BOUND_REFRESH_MS):
            kinds = self._kinds = _FastKinds(self.inst_id, now_ms + MAX_FUTURE_MS)
            self._now = now_ms
        return kinds

    def decode(
        self, lines: Sequence[bytes], *, file: str, first_line: int, now_ms: int
    ) -> Decoded:
        """Decode complete lines (newline stripped, ``\\r`` allowed) numbered from ``first_line``."""
        out = Decoded()
        if lines:
            self._run(b"[" + _SEP.join(lines) + b"]", lines, file, first_line, now_ms, out)
        return out

    def decode_body(
        self,
        body: bytes | bytearray,
        *,
        file: str,
        first_line: int,
        now_ms: int,
        start: int = 0,
        end: int | None = None,
    ) -> Decoded:
        """Decode a run of complete lines as read from a file: ``body[start:end]``,
        ``\\n``-separated, the last newline optional; its first line is numbered
        ``first_line``. The span lets a reader decode straight from its buffer, uncopied."""
        out = Decoded()
        stop = len(body) if end is None else end
        if stop <= start:
            return out
        kinds = self._fast_kinds(now_ms)
        # The flat path needs no per-line objects and no framing: the span is decoded as
        # newline-delimited JSON in one call, and the alignment check counts its lines.
        count = flat_lines(body, start, stop)
        span = memoryview(body)[start:stop]
        # msgspec skips unknown keys without checking their UTF-8: the flat path is for
        # ASCII only (the whole buffer is one cheap test; the span alone, the exact one).
        if count > 0 and (body.isascii() or bytes(span).isascii()):
            exporter_first = self._prefer_exporter
            for as_exporter in (exporter_first, not exporter_first):
                trades = self._flat_span(kinds, span, count, as_exporter)
                if trades is not None:
                    self._prefer_exporter = as_exporter
                    out.trades = trades
                    out.lines = count
                    return out
        elif count < 0 and self._envelopes(kinds, body, start, stop, span, out):
            return out
        lines = bytes(span).split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        out.lines = len(lines)
        self._mixed(kinds, lines, 0, len(lines), file, first_line, now_ms, out)
        out.rejects.sort(key=_reject_line)
        return out

    def _flat_span(
        self, kinds: _FastKinds, span: memoryview | bytes, count: int, as_exporter: bool
    ) -> list[Trade] | None:
        """The trades of ``count`` aligned flat lines decoded in one call, all OKX objects or
        all exporter lines; None if any line is not one (a slower path then judges them)."""
        decoder = kinds.exporter_line if as_exporter else kinds.flat_line
        try:
            trades = decoder.decode_lines(span)
        except _REFUSED:
            return None
        if len(trades) != count or not self._texts_ok(trades):
            return None
        if as_exporter and not exporter_ready(
            trades, kinds.ts_max, self._inverse, self._minutes, exporter.stamp_value
        ):
            return None
        return trades

    def _envelopes(
        self,
        kinds: _FastKinds,
        body: bytes | bytearray,
        start: int,
        stop: int,
        span: memoryview,
        out: Decoded,
    ) -> bool:
        """The flat path for a chunk of trade envelopes (as websocket recorders write them):
        one decode call when every line is one; False (nothing taken) otherwise."""
        if not (body.isascii() or bytes(span).isascii()):
            return False
        kept = _kept(body, start, stop, _NOT_BRACKETS_OR_NEWLINE)
        if not kept.startswith(b"{{}[") or _ENVELOPE_LINES.fullmatch(kept) is None:
            return False
        count = kept.count(b"\n") + (body[stop - 1] != 0x0A)
        try:
            lines = kinds.envelopes.decode_lines(span)
        except _REFUSED:
            return False
        if len(lines) != count:
            return False
        trades: list[Trade] = []
        for line in lines:
            trades += line.data
        if not self._texts_ok(trades):
            return False
        out.trades = trades
        out.lines = count
        return True

    def _run(
        self,
        blob: bytes | bytearray,
        lines: Sequence[bytes],
        file: str,
        first_line: int,
        now_ms: int,
        out: Decoded,
    ) -> None:
        kinds = self._fast_kinds(now_ms)
        # Lines are joined with commas, so a broken line can swallow its neighbour (or hold
        # two values): a decode that does not give one item per line is refused.
        count = out.lines = len(lines)
        if self._flat(kinds, blob, count, out):
            return
        self._mixed(kinds, lines, 0, len(lines), file, first_line, now_ms, out)
        # The mixed path settles some lines early: put rejects back in line order (a stable
        # sort keeps an envelope's rejects in element order), so the rejects file does not
        # depend on where a chunk started (a resumed run must write the same bytes).
        out.rejects.sort(key=_reject_line)

    def _flat(self, kinds: _FastKinds, blob: bytes | bytearray, count: int, out: Decoded) -> bool:
        if not blob.isascii():
            return False  # msgspec skips unknown keys without checking that they are UTF-8
        if not _one_brace_per_line(blob, count):
            return False
        try:
            trades = kinds.flat.decode(blob)
        except _REFUSED:
            return False
        if len(trades) != count or not self._texts_ok(trades):
            return False
        out.trades = trades
        return True

    def _texts_ok(self, trades: list[Trade]) -> bool:
        """The checks C could not do: all ``tradeId`` ASCII digits and every distinct ``px``
        a plain positive decimal (see :func:`vstream.kernel.texts_ok`)."""
        return texts_ok(trades, self._px_ok, _px_accepted)

    def _mixed(
        self,
        kinds: _FastKinds,
        lines: Sequence[bytes],
        lo: int,
        hi: int,
        file: str,
        first_line: int,
        now_ms: int,
        out: Decoded,
    ) -> None:
        """Lines ``lo:hi``, in order: each run of lines that start like an object goes through
        the any-shape decoder; the others (blank, ``pong``, anything odd) through the careful
        path. Order matters: a trade judged out of turn could close a minute early."""
        run: list[int] = []
        for index in range(lo, hi):
            text = lines[index]
            # Non-ASCII lines go the careful way: msgspec does not check skipped keys' UTF-8.
            if text and text[0] == 0x7B and text.isascii():
                run.append(index)
                continue
            if run:
                self._mixed_kept(kinds, lines, run, file, first_line, now_ms, out)
                run = []
            self._careful(text, file, first_line + index, now_ms, out)
        if run:
            self._mixed_kept(kinds, lines, run, file, first_line, now_ms, out)

    def _mixed_kept(
        self,
        kinds: _FastKinds,
        lines: Sequence[bytes],
        kept: list[int],
        file: str,
        first_line: int,
        now_ms: int,
        out: Decoded,
    ) -> None:
        if len(kept) <= _LEAF:
            for index in kept:
                self._careful(lines[index], file, first_line + index, now_ms, out)
            return
        texts = [lines[i] for i in kept]
        if b'"trade_id"' in texts[0]:
            # A run of exporter lines, most likely: taken whole if every line is one, halved
            # until the lines that are not are isolated (the careful path judges those).
            joined = b"\n".join(texts)
            if flat_lines(joined, 0, len(joined)) == len(texts):
                trades = self._flat_span(kinds, joined, len(texts), True)
                if trades is not None:
                    out.trades.extend(trades)
                    return
            mid = len(kept) // 2
            self._mixed_kept(kinds, lines, kept[:mid], file, first_line, now_ms, out)
            self._mixed_kept(kinds, lines, kept[mid:], file, first_line, now_ms, out)
            return
        blob = b"[" + _SEP.join(texts) + b"]"
        try:
            items = kinds.lines.decode(blob)
            # Joined lines can regroup (one line holding two values, two broken lines
            # completing each other): each value must span exactly its own line.
            spans = _RAW_LIST.decode(blob)
            if len(items) != len(kept) or list(map(len, spans)) != [len(t.strip()) for t in texts]:
                raise msgspec.DecodeError("lines regrouped")
        except _REFUSED:
            mid = len(kept) // 2
            self._mixed_kept(kinds, lines, kept[:mid], file, first_line, now_ms, out)
            self._mixed_kept(kinds, lines, kept[mid:], file, first_line, now_ms, out)
            return
        self._judge(kinds, lines, kept, items, file, first_line, now_ms, out)

    def _judge(
        self,
        kinds: _FastKinds,
        lines: Sequence[bytes],
        kept: list[int],
        items: list[Any],
        file: str,
        first_line: int,
        now_ms: int,
        out: Decoded,
    ) -> None:
        """Judge decoded lines in order; a line with anything unusual goes to the careful path."""
        trades = out.trades
        for index, item in zip(kept, items, strict=True):
            if not (item.arg is UNSET and item.data is UNSET and item.event is UNSET and item.op is UNSET):
                if item.data is UNSET or bytes(item.data)[:1] != b"[":
                    # a control message or a trade with extra keys: rare, judged exactly
                    self._careful(lines[index], file, first_line + index, now_ms, out)
                    continue
                got = self._envelope(kinds, item)
                if got is None:
                    self._careful(lines[index], file, first_line + index, now_ms, out)
                elif got == "skip":
                    out.skipped += 1
                else:
                    trades.extend(got)
                continue
            if (
                item.ts is UNSET
                or item.instId is UNSET
                or item.tradeId is UNSET
                or item.px is UNSET
                or item.sz is UNSET
                or item.side is UNSET
                or not self._texts_ok([item])
            ):
                self._careful(lines[index], file, first_line + index, now_ms, out)
            else:
                trades.append(item)

    def _envelope(self, kinds: _FastKinds, item: Any) -> list[Trade] | Literal["skip"] | None:
        """The trades of a push envelope (``data`` is an array), "skip" for a message to
        skip, None if unsure."""
        if item.event is not UNSET or item.arg is UNSET:
            return "skip"  # a control message, or no channel: nothing to judge
        if item.op is not UNSET:
            return None  # odd enough for the careful path
        try:
            arg = kinds.arg.decode(item.arg)
        except _REFUSED:
            return None
        if arg.channel not in _TRADE_CHANNELS:
            return "skip"
        try:
            trades = kinds.trades.decode(item.data)
        except _REFUSED:
            return None
        return trades if self._texts_ok(trades) else None

    def _careful(self, raw: bytes, file: str, line: int, now_ms: int, out: Decoded) -> None:
        text = raw.rstrip(b"\r")
        if not text.strip():
            return  # blank lines are ignored, not counted
        if text.strip() == b"pong":
            out.skipped += 1
            return
        try:
            obj = self._dec_line.decode(text)
        except UnicodeDecodeError:  # msgspec raises it for bad bytes inside a string
            out.rejects.append(Reject(file, line, "line is not valid UTF-8", raw_text(text)))
            return
        except RecursionError:
            out.rejects.append(Reject(file, line, "invalid JSON: nested too deeply", raw_text(text)))
            return
        except msgspec.DecodeError as exc:
            out.rejects.append(Reject(file, line, _json_error(exc, text), raw_text(text)))
            return
        if not isinstance(obj, dict):
            out.rejects.append(
                Reject(file, line, "line is not a JSON object", raw_text(text))
            )
            return
        if exporter.is_exporter(obj):
            verdict = exporter.check(obj, self.inst_id, now_ms)
            if isinstance(verdict, str):
                out.rejects.append(Reject(file, line, verdict, raw_text(text)))
            else:
                out.trades.append(verdict)
            return
        if "data" in obj or "arg" in obj or "event" in obj or "op" in obj:
            data = obj.get("data")
            if not isinstance(data, list):
                # Not a push of trades: a control message, unless it holds a complete, valid
                # trade of its own (then the extra keys are just unknown keys).
                verdict = check_trade(obj, self.inst_id, now_ms)
                if isinstance(verdict, str):
                    out.skipped += 1
                else:
                    out.trades.append(verdict)
                return
            arg = obj.get("arg")
            channel = arg.get("channel") if isinstance(arg, dict) else None
            if "event" in obj or channel not in _TRADE_CHANNELS:
                out.skipped += 1
                return
            for index, element in enumerate(data):
                verdict = check_trade(element, self.inst_id, now_ms)
                if isinstance(verdict, str):
                    out.rejects.append(
                        Reject(file, line, f"data[{index}]: {verdict}", raw_text(_dump(element)))
                    )
                else:
                    out.trades.append(verdict)
            return
        verdict = check_trade(obj, self.inst_id, now_ms)
        if isinstance(verdict, str):
            out.rejects.append(Reject(file, line, verdict, raw_text(text)))
        else:
            out.trades.append(verdict)


def _reject_line(reject: Reject) -> int:
    return reject.line


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
