"""Hypothesis fuzz of the line decoder (``vstream.trades.LineDecoder``).

The decoder has a fast path (one typed decode per chunk) and a careful path (line by line, the
reference). Properties checked on generated lines, from near-valid trades with one field bent
to arbitrary bytes:

- ``decode`` never raises;
- what ``decode`` returns (trades, rejects, skipped) equals the careful path run line by line;
- every non-blank line is accounted for: it gives trades, a reject or a skip.

The flat path's alignment check exists twice (compiled ``vstream._lines.flat_lines`` and the
interpreted ``flat_lines_py``, with different rules that give the same guarantee): the tests
that decode file chunks run with each.
"""

from __future__ import annotations

from collections.abc import Callable
from unittest import mock

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import vstream.trades
from vstream.trades import Decoded, LineDecoder, Trade, flat_lines_py

try:
    from vstream._lines import flat_lines as compiled_flat_lines
except ImportError:  # a pure-Python install: test_lines.py says whether that was expected
    CHECKS: list[Callable[[bytes | bytearray, int, int], int]] = [flat_lines_py]
else:
    CHECKS = [compiled_flat_lines, flat_lines_py]

each_check = pytest.mark.parametrize("check", CHECKS, ids=lambda f: f.__module__)

INST = "BTC-USDT-SWAP"
NOW_MS = 1_765_843_200_000  # 2025-12-16T00:00:00Z: fixed, so the far-future check is stable
TS = NOW_MS - 3_600_000

_FIELD_VALUES: dict[str, st.SearchStrategy[object]] = {
    "instId": st.sampled_from([INST, "ETH-USDT-SWAP", "", "btc-usdt-swap", None, 7]),
    "tradeId": st.one_of(
        st.integers(0, 10**40).map(str),
        st.sampled_from(["", "-1", "1.5", "1e3", "١٢", " 12", "12 ", "0x1f", "9" * 33]),
        st.integers(),
        st.none(),
    ),
    "px": st.one_of(
        st.sampled_from(
            ["42219.9", "0.0001", "1e5", "1E-3", "100.", ".5", "-1", "0", "NaN", "Infinity",
             "1_0", " 5", "+5", "1e400", "1e-400", "1e15", "1e16", "1e-15", "1e-16", "0100",
             "٣", "1" * 65, "1." + "0" * 70 + "1"]
        ),
        st.decimals(allow_nan=False, allow_infinity=False, places=4).map(str),
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(-(10**20), 10**20),
        st.booleans(),
        st.none(),
        st.text(max_size=8),
    ),
    "sz": st.one_of(
        st.sampled_from(["12", "0.5", "0", "-3", "nan", "inf", "1e16", "1e15", "1e-320", "1_0"]),
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(-(10**20), 10**20),
        st.booleans(),
        st.text(max_size=8),
        st.lists(st.integers(), max_size=2),
    ),
    "side": st.sampled_from(["buy", "sell", "BUY", "hold", "", None, 1]),
    "ts": st.one_of(
        st.integers(TS - 10**6, TS + 10**6).map(str),
        st.integers(TS - 10**6, TS + 10**6),
        st.sampled_from(
            [str(TS // 1000), "4102444800000", str(NOW_MS + 86_400_000), str(NOW_MS + 86_400_001),
             "1483228800000", "1483228799999", f"{TS}.0", f"{TS}.5", "1.7e12", "", "x", True]
        ),
        st.floats(allow_nan=False, allow_infinity=False),
    ),
    "count": st.one_of(
        st.integers(-5, 10**12), st.sampled_from(["3", "x", 2.0, 2.5, None, "1e3", 10**30])
    ),
}


@st.composite
def trade_obj(draw: st.DrawFn) -> dict[str, object]:
    """A good trade with a few fields replaced by arbitrary values or removed."""
    obj: dict[str, object] = {
        "instId": INST,
        "tradeId": str(draw(st.integers(1, 10**12))),
        "px": "42219.9",
        "sz": "12",
        "side": draw(st.sampled_from(["buy", "sell"])),
        "ts": str(TS + draw(st.integers(-120_000, 120_000))),
        "count": "1",
    }
    for name in draw(st.lists(st.sampled_from(sorted(_FIELD_VALUES)), max_size=3, unique=True)):
        if draw(st.booleans()):
            obj[name] = draw(_FIELD_VALUES[name])
        else:
            obj.pop(name, None)
    if draw(st.booleans()):
        obj["source"] = "0"
        obj["seqId"] = draw(st.integers(0, 10**12))
    return obj


def _encode(obj: object) -> bytes:
    return msgspec.json.encode(obj)


@st.composite
def line(draw: st.DrawFn) -> bytes:
    """One input line (no newline): mostly trades, envelopes, control messages, garbage."""
    kind = draw(st.integers(0, 10))
    if kind == 10:
        # a trade (good or not) that also carries an envelope or control key, not an array
        obj = draw(trade_obj())
        key = draw(st.sampled_from(["event", "op", "arg", "data"]))
        obj[key] = draw(st.sampled_from(["x", 1, None, True, "trades", {"channel": "trades"}]))
        return _encode(obj)
    if kind <= 3:
        return _encode(draw(trade_obj()))
    if kind == 4:
        data = draw(st.lists(st.one_of(trade_obj(), st.integers(), st.none()), max_size=4))
        channel = draw(st.sampled_from(["trades", "trades-all", "tickers"]))
        return _encode({"arg": {"channel": channel, "instId": INST}, "data": data})
    if kind == 5:
        return draw(
            st.sampled_from(
                [b"pong", b"", b"  ", b"\r", b'{"event":"subscribe","arg":{"channel":"trades"}}',
                 b'{"event":"error","code":"60012"}', b"null", b"[]", b"[1,2]", b'"x"', b"42",
                 b'{"data":null,"arg":{"channel":"trades"}}', b'{"arg":null}', b'{"op":"ping"}',
                 b'{"data":[],"arg":{"channel":"trades"}}', b"\xef\xbb\xbf{}", b"\x00", b"{",
                 b"[" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000]
            )
        )
    if kind == 6:
        good = _encode(draw(trade_obj()))
        cut = draw(st.integers(0, len(good)))
        return good[:cut] + draw(st.binary(max_size=4)) + good[cut:]
    if kind == 7:
        return _encode(draw(trade_obj())) + draw(st.sampled_from([b"\r", b" ", b"\t\r", b"x"]))
    if kind == 8:
        return draw(st.binary(max_size=64)).replace(b"\n", b"")
    return _encode(draw(trade_obj())).replace(b'"buy"', b'"b\\u0075y"')


def _careful(decoder: LineDecoder, lines: list[bytes]) -> Decoded:
    out = Decoded()
    for index, raw in enumerate(lines):
        decoder._careful(raw, "f.jsonl", 1 + index, NOW_MS, out)
    return out


def _as_plain(decoded: Decoded) -> tuple[object, object, int]:
    # A trade by its Trade fields (the fast paths' Structs are subclasses with more)
    return (
        [{name: getattr(t, name) for name in Trade.__struct_fields__} for t in decoded.trades],
        msgspec.to_builtins(decoded.rejects),
        decoded.skipped,
    )


GOOD = (
    b'{"instId":"BTC-USDT-SWAP","tradeId":"1","px":"42219.9","sz":"12","side":"buy",'
    b'"ts":"1765839600000","count":"3","source":"0","seqId":1234}'
)


@each_check
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(line(), max_size=12))
@example([GOOD, GOOD.replace(b'"12"', b'"1e16"')])
@example([GOOD.replace(b'"42219.9"', b'"1e-16"')])
@example([GOOD.replace(b'"count":"3"', b'"count":1000000000000000000000000000000')])
@example([GOOD.replace(b'"1"', b'"' + b"1" * 40 + b'"', 1)])
@example([GOOD.replace(b'"seqId":1234', b'"x":' + b"[" * 3000 + b"]" * 3000)])
@example([b'{"event":"', b"\x80", b'"'])  # non-UTF-8 only once lines are joined
@example([GOOD[:-1] + b',"x":"', b'"}'])  # two broken lines that join into one trade
@example([GOOD[:-1] + b',"x":"', b'"}'] * 5 + [b'{"event":"x"}', b"pong"] * 6)
@example([GOOD + GOOD, GOOD[:-1] + b',"x":{"y":{}', b'{"z":1}}'])  # ends "}" but still open
@example([GOOD[:-1] + b',"x":"}', b'{"}'])  # a string across the newline
@example([GOOD + b" " + GOOD[:40], GOOD[40:]])  # one line ends a trade and starts the next
def test_fast_path_equals_careful_path(check, lines: list[bytes]) -> None:
    with mock.patch.object(vstream.trades, "flat_lines", check):
        decoder = LineDecoder(INST)
        fast = decoder.decode(lines, file="f.jsonl", first_line=1, now_ms=NOW_MS)
        careful = _careful(LineDecoder(INST), lines)
        assert _as_plain(fast) == _as_plain(careful)
        if any(b"\n" in raw for raw in lines):
            return  # not lines of a file
        # the same lines as a file chunk (replay's path: newline-delimited, no framing)
        body = LineDecoder(INST).decode_body(
            b"\n".join(lines) + b"\n", file="f.jsonl", first_line=1, now_ms=NOW_MS
        )
        assert _as_plain(body) == _as_plain(careful)
        # ... and as the span of a reader's buffer, between bytes that are not its lines
        chunk = b"\n".join(lines) + b"\n"
        buffer = bytearray(b'{"x":"\xc3\xa9"}}{\n' + chunk + b'{"y":1}\n{')
        span = LineDecoder(INST).decode_body(
            buffer, file="f.jsonl", first_line=1, now_ms=NOW_MS, start=13, end=13 + len(chunk)
        )
        assert _as_plain(span) == _as_plain(careful)


@settings(max_examples=300, deadline=None)
@given(st.lists(line(), min_size=1, max_size=8))
def test_every_line_is_accounted_for(lines: list[bytes]) -> None:
    decoder = LineDecoder(INST)
    for index, raw in enumerate(lines):
        out = Decoded()
        decoder._careful(raw, "f.jsonl", index + 1, NOW_MS, out)
        if not raw.rstrip(b"\r").strip():
            assert (out.trades, out.rejects, out.skipped) == ([], [], 0)
            continue
        if not (out.trades or out.rejects or out.skipped):
            # only a trades envelope with an empty data list holds nothing to count
            obj = msgspec.json.decode(raw)
            assert obj["data"] == [] and obj["arg"]["channel"] in ("trades", "trades-all")
        assert out.skipped <= 1
        for reject in out.rejects:
            assert reject.line == index + 1 and reject.error and len(reject.raw) <= 1000
            msgspec.json.encode(reject)  # always writable to the rejects file


@each_check
@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"")), max_size=6))
def test_arbitrary_bytes_never_raise(check, lines: list[bytes]) -> None:
    with mock.patch.object(vstream.trades, "flat_lines", check):
        decoder = LineDecoder(INST)
        fast = decoder.decode(lines, file="f.jsonl", first_line=1, now_ms=NOW_MS)
        careful = _careful(LineDecoder(INST), lines)
        assert _as_plain(fast) == _as_plain(careful)
        msgspec.json.encode(fast.rejects)
        body = b"\n".join(lines)  # unterminated: the last chunk of a complete file
        got = LineDecoder(INST).decode_body(body, file="f.jsonl", first_line=1, now_ms=NOW_MS)
        assert _as_plain(got) == _as_plain(careful)


@settings(max_examples=200, deadline=None)
@given(st.lists(trade_obj(), min_size=1, max_size=10))
def test_accepted_trades_obey_the_contract(objs: list[dict[str, object]]) -> None:
    lines = [_encode(o) for o in objs]
    out = LineDecoder(INST).decode(lines, file="f.jsonl", first_line=1, now_ms=NOW_MS)
    for t in out.trades:
        assert t.instId == INST
        assert t.tradeId.isascii() and t.tradeId.isdigit()
        assert float(t.px) > 0 and t.sz > 0
        assert t.side in ("buy", "sell")
        assert 1_483_228_800_000 <= t.ts <= NOW_MS + 86_400_000
        assert t.count >= 1
    assert len(out.trades) + len(out.rejects) == len(objs)


@each_check
def test_split_and_merge_in_one_chunk_are_not_accepted(check, monkeypatch) -> None:
    """Joined lines that regroup (one holding two objects, two completing each other) are
    caught on both fast paths: flat trades, and lines mixed with envelopes."""
    monkeypatch.setattr(vstream.trades, "flat_lines", check)
    two_in_one = GOOD + b"," + GOOD.replace(b'"1"', b'"2"', 1)
    crafted = [two_in_one, GOOD[:-1] + b',"x":[{"z":1}', b'{"q":1}]}']
    # Newline-delimited values need no comma: one line ends a trade and starts the next,
    # whose end is the following line. One brace of each kind per line, two trades in all.
    second = GOOD.replace(b'"1"', b'"4"', 1)
    cut = second.index(b'"px"')
    straddle = [GOOD + b" " + second[:cut], second[cut:]]
    envelope = b'{"arg":{"channel":"trades"},"data":[' + GOOD.replace(b'"1"', b'"3"', 1) + b"]}"
    padding = [GOOD.replace(b'"1"', f'"{n}"'.encode(), 1) for n in range(10, 30)]
    # Each line starts with "{" and ends with "}": two trades on one line, and a trade whose
    # "}" at a line's end closes a nested object, completed by the next line.
    nested = [GOOD + GOOD.replace(b'"1"', b'"5"', 1), GOOD[:-1] + b',"x":{"y":{}', b'{"z":1}}']
    for lines in (
        nested,
        [*padding, *nested, *padding],
        crafted,
        [*padding, *crafted],
        [envelope, *padding, *crafted, envelope],
        straddle,
        [*padding, *straddle, *padding],
    ):
        fast = LineDecoder(INST).decode(lines, file="f.jsonl", first_line=1, now_ms=NOW_MS)
        assert _as_plain(fast) == _as_plain(_careful(LineDecoder(INST), lines))
        body = b"\n".join(lines) + b"\n"
        fast = LineDecoder(INST).decode_body(body, file="f.jsonl", first_line=1, now_ms=NOW_MS)
        assert _as_plain(fast) == _as_plain(_careful(LineDecoder(INST), lines))


@each_check
def test_a_span_of_good_lines_takes_the_flat_path(check, monkeypatch) -> None:
    """Good lines in the middle of a reader's buffer (partial lines around them, one not
    ASCII) are decoded in one call: the slower paths are not needed, so they are not used."""
    monkeypatch.setattr(vstream.trades, "flat_lines", check)
    good = [GOOD.replace(b'"1"', f'"{n}"'.encode(), 1) for n in range(1, 40)]
    chunk = b"\n".join(good) + b"\n"
    head, tail = b'"x":"\xc3\xa9"}\n', b'{"instId":"BTC'
    buffer = bytearray(head + chunk + tail)

    def slow(*args: object) -> None:
        raise AssertionError("took the per-line path")

    decoder = LineDecoder(INST)
    monkeypatch.setattr(LineDecoder, "_mixed", slow)
    out = decoder.decode_body(
        buffer, file="f.jsonl", first_line=1, now_ms=NOW_MS, start=len(head), end=len(head) + len(chunk)
    )
    assert [t.tradeId for t in out.trades] == [str(n) for n in range(1, 40)]
    assert out.lines == 39 and not out.rejects


@st.composite
def envelope(draw: st.DrawFn) -> bytes:
    """A trades envelope line as a websocket recorder writes it: mostly good, sometimes odd."""
    data = draw(st.lists(trade_obj(), max_size=4))
    arg: object = {"channel": draw(st.sampled_from(["trades", "trades", "trades-all", "tickers"])), "instId": INST}
    obj: dict[str, object] = {"arg": arg, "data": data}
    odd = draw(st.integers(0, 9))
    if odd == 0:
        obj["event"] = "update"
    elif odd == 1:
        obj["op"] = "x"
    elif odd == 2:
        obj = {"data": data, "arg": arg}  # data first
    elif odd == 3:
        obj["arg"] = "trades"
    raw = _encode(obj)
    return raw + b"\r" if draw(st.booleans()) else raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(envelope(), min_size=1, max_size=10), st.booleans())
def test_a_chunk_of_envelopes_decodes_as_the_careful_path_does(lines: list[bytes], terminated: bool) -> None:
    body = b"\n".join(lines) + (b"\n" if terminated else b"")
    fast = LineDecoder(INST).decode_body(body, file="f.jsonl", first_line=1, now_ms=NOW_MS)
    assert _as_plain(fast) == _as_plain(_careful(LineDecoder(INST), lines))
    assert fast.lines == len(lines)


def test_a_chunk_of_good_envelopes_takes_the_one_call_path(monkeypatch) -> None:
    def slow(*args: object) -> None:
        raise AssertionError("took the per-line path")

    elements = [GOOD.replace(b'"1"', f'"{n}"'.encode(), 1) for n in range(1, 31)]
    head = b'{"arg":{"channel":"trades","instId":"BTC-USDT-SWAP"},"data":['
    lines = [head + b",".join(elements[i : i + 1 + i % 3]) + b"]}" for i in range(0, 30, 3)]
    lines.append(head + b"]}")  # an empty push holds no trade
    body = b"\n".join(lines) + b"\n"
    careful = _careful(LineDecoder(INST), lines)
    monkeypatch.setattr(LineDecoder, "_mixed", slow)
    out = LineDecoder(INST).decode_body(body, file="f.jsonl", first_line=1, now_ms=NOW_MS)
    assert _as_plain(out) == _as_plain(careful) and out.lines == len(lines)
    assert len(out.trades) == sum(1 + i % 3 for i in range(0, 30, 3))


def test_envelopes_that_regroup_are_not_taken_whole() -> None:
    """One line ending an envelope and starting the next, a value after an envelope on its
    line, an envelope split over two lines: the one-call path refuses each chunk."""
    head = b'{"arg":{"channel":"trades"},"data":['
    one = head + GOOD + b"]}"
    two = head + GOOD.replace(b'"1"', b'"2"', 1)
    cases = [
        [one, one + b" " + two, b"]}", one],
        [one, one + b" 5", one],
        [one, head, GOOD + b"]}", one],
        [one, one + b' "x"', one],
    ]
    for lines in cases:
        body = b"\n".join(lines) + b"\n"
        fast = LineDecoder(INST).decode_body(body, file="f.jsonl", first_line=1, now_ms=NOW_MS)
        assert _as_plain(fast) == _as_plain(_careful(LineDecoder(INST), lines)), lines


@each_check
def test_a_trade_with_extra_keys_is_a_trade_unless_it_pushes_data(check, monkeypatch) -> None:
    """Envelope and control keys on a complete, valid flat trade are just unknown keys; a
    ``data`` array makes the line an envelope (here of no channel: skipped). Same on every
    path: flat chunks, array-framed lines, mixed chunks and the careful one."""
    monkeypatch.setattr(vstream.trades, "flat_lines", check)
    padding = [GOOD.replace(b'"1"', f'"{n}"'.encode(), 1) for n in range(10, 30)]
    extras = [
        GOOD[:-1] + b',"event":"trade"}',
        GOOD[:-1] + b',"op":"x"}',
        GOOD[:-1] + b',"arg":"trades"}',
        GOOD[:-1] + b',"data":null}',
        GOOD[:-1] + b',"data":[]}',
        GOOD[:-1] + b',"data":[1]}',
        GOOD.replace(b'"px":"42219.9"', b'"px":"bad"')[:-1] + b',"event":"x"}',
    ]
    careful = _careful(LineDecoder(INST), [*padding, *extras])
    assert len(careful.trades) == len(padding) + 4 and careful.skipped == 3 and not careful.rejects
    chunks = [[*padding, *extras], extras, *([*padding, one, *padding] for one in extras)]
    for lines in chunks:
        expected = _careful(LineDecoder(INST), lines)
        body = b"\n".join(lines) + b"\n"
        by_body = LineDecoder(INST).decode_body(body, file="f.jsonl", first_line=1, now_ms=NOW_MS)
        by_lines = LineDecoder(INST).decode(lines, file="f.jsonl", first_line=1, now_ms=NOW_MS)
        assert _as_plain(by_body) == _as_plain(expected) == _as_plain(by_lines)
    for one in extras:  # one at a time, as the live source decodes records
        out = LineDecoder(INST).decode([one], file="ws", first_line=1, now_ms=NOW_MS)
        assert _as_plain(out) == _as_plain(_careful(LineDecoder(INST), [one]))
