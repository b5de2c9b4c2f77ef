"""SPEC §3 item 4: the trade lines of the vault's own exporter, read on every decoder path and
written exactly as the exporter writes them."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vstream.formats import exporter, sniff
from vstream.formats.common import Trade
from vstream.trades import Decoded, LineDecoder

INST = "BTC-USDT-SWAP"
STAMP = "2025-12-14T21:34:56.123000Z"
TS = 1_765_748_096_123
NOW = TS + 3_600_000


def line(**changes: object) -> str:
    """One exporter line as the exporter writes it (json.dumps, its key order)."""
    obj: dict[str, object] = {
        "timestamp_utc": STAMP,
        "exchange": "okx",
        "market": "perp",
        "instId": INST,
        "symbol_canon": "BTC/USDT",
        "trade_id": "1234567890",
        "side": "buy",
        "price": "101250.5",
        "qty_contracts": "45",
        "ctVal": "0.01",
        "ctMult": "1",
        "ctType": "linear",
    }
    for key, value in changes.items():
        if value is None:
            obj.pop(key, None)
        else:
            obj[key] = value
    return json.dumps(obj)


def fields(t: Trade) -> dict[str, object]:
    return {name: getattr(t, name) for name in Trade.__struct_fields__}


def every_path(*lines: str, copies: int = 12) -> list[Decoded]:
    """The same lines through the careful path (one by one), the chunk path (lines as a
    list) and the file path (a CRLF body), each at least ``copies`` lines long so the fast
    decoders are tried; every path must agree."""
    raw = [text.encode() for text in lines]
    careful = Decoded()
    dec = LineDecoder(INST)
    for i, text in enumerate(raw * copies):
        dec._careful(text, "f.jsonl", i + 1, NOW, careful)
    chunk = LineDecoder(INST).decode(raw * copies, file="f.jsonl", first_line=1, now_ms=NOW)
    body = b"".join(text + b"\r\n" for text in raw * copies)
    whole = LineDecoder(INST).decode_body(body, file="f.jsonl", first_line=1, now_ms=NOW)
    return [careful, chunk, whole]


def agree(*lines: str) -> Decoded:
    results = every_path(*lines)
    plain = [([fields(t) for t in r.trades], r.rejects, r.skipped) for r in results]
    assert plain[0] == plain[1] == plain[2]
    return results[2]


def test_an_exporter_line_is_a_trade_with_its_own_contract_facts():
    out = agree(line())
    assert not out.rejects
    t = out.trades[0]
    assert (t.instId, t.tradeId, t.px, t.sz, t.side, t.ts, t.count) == (INST, "1234567890", "101250.5", 45.0, "buy", TS, 1)
    assert (t.ct_val, t.ct_inverse) == (0.01, False)
    assert type(t) is not Trade  # the file path took the chunk whole, with the typed decoder


@pytest.mark.parametrize(
    ("stamp", "ms"),
    [
        ("2025-12-14T21:34:56Z", TS - 123),
        ("2025-12-14T21:34:56.1Z", TS - 23),
        ("2025-12-14T21:34:56.123+00:00", TS),
        ("2025-12-14T21:34:56.1234Z", TS),  # 0.4 ms rounds down
        ("2025-12-14T21:34:56.1235Z", TS + 1),  # a half rounds up
        ("2025-12-14T21:34:56.123499999Z", TS),  # nine digits: the text decides, not microseconds
        ("2025-12-14T21:34:56.1234996Z", TS),
        ("2025-12-14T21:34:56.123500001Z", TS + 1),
        ("2025-12-14T21:34:59.9996Z", TS - 123 + 4000),  # rounds into the next second
        ("2025-12-14T21:34:56.123500Z", TS + 1),  # six digits: an exact half, up
        ("2025-12-14T21:34:56.123499Z", TS),
        ("2025-12-14T21:34:59.999999Z", TS - 123 + 4000),
        ("2025-12-14t21:34:56.123z", TS),  # forms the exporter never writes: the careful rule
    ],
)
def test_timestamp_utc_is_rounded_to_the_nearest_millisecond(stamp, ms):
    out = agree(line(timestamp_utc=stamp))
    assert not out.rejects and out.trades[0].ts == ms


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"timestamp_utc": "2025-02-30T10:00:00.000000Z"}, "timestamp_utc must be an RFC 3339 time"),
        ({"timestamp_utc": "yesterday"}, "timestamp_utc must be an RFC 3339 time"),
        ({"timestamp_utc": 1765748096123}, "timestamp_utc must be an RFC 3339 time text"),
        ({"timestamp_utc": "2025-12-14T21:34:56.123"}, "timestamp_utc has no time zone"),
        ({"timestamp_utc": "2025-12-14T23:34:56.123+02:00"}, "timestamp_utc must be in UTC"),
        ({"timestamp_utc": "2016-12-31T23:59:59Z"}, "before 2017-01-01"),
        ({"timestamp_utc": "2099-01-01T00:00:00Z"}, "more than a day in the future"),
        ({"timestamp_utc": None}, "timestamp_utc missing"),
        ({"ctVal": "0"}, "ctVal must be > 0"),
        ({"ctVal": "-1"}, "ctVal must be > 0"),
        ({"ctVal": "abc"}, "ctVal must be a decimal number"),
        ({"ctType": "quanto"}, "ctType must be linear or inverse"),
        ({"exchange": "binance"}, 'exchange must be okx, got "binance"'),
        ({"qty_contracts": "0"}, "qty_contracts must be > 0"),
        ({"qty_contracts": None}, "qty_contracts missing"),
        ({"price": "1,5"}, "price must be a decimal number"),
        ({"trade_id": "12a"}, "trade_id must be a decimal integer"),
        ({"side": "long"}, "side must be buy or sell"),
        ({"instId": "ETH-USDT-SWAP"}, 'instId "ETH-USDT-SWAP" is not BTC-USDT-SWAP'),
    ],
)
def test_a_bad_exporter_line_is_rejected_naming_the_exporters_key(changes, error):
    good = line(trade_id="1")
    out = agree(good, line(**changes), good)
    assert len(out.rejects) == 12, out.rejects  # one per copy, each judged on its own
    assert all(error in r.error for r in out.rejects), out.rejects[0].error
    assert len(out.trades) == 24  # the good neighbours are all kept


def test_one_bad_line_among_many_leaves_the_rest_to_the_typed_decoder():
    lines = [line(trade_id=str(i)) for i in range(1, 201)]
    lines[100] = line(qty_contracts="0")
    body = "".join(text + "\r\n" for text in lines).encode()
    out = LineDecoder(INST).decode_body(body, file="f.jsonl", first_line=1, now_ms=NOW)
    assert [(r.line, r.error) for r in out.rejects] == [(101, "qty_contracts must be > 0")]
    assert [t.tradeId for t in out.trades] == [str(i) for i in range(1, 201) if i != 101]
    # the chunk is halved until the bad line is isolated: all but a few lines stay fast
    assert sum(type(t) is Trade for t in out.trades) <= 16


def test_ignored_and_optional_keys():
    # market, symbol_canon, ctMult and unknown keys are ignored; an extra "ts", "px" or "sz"
    # of an exporter line is an unknown key too, never its stamp, price or size.
    out = agree(line(market="whatever", symbol_canon=7, ctMult="100", extra={"a": 1}, ts="1", px="9", sz="9"))
    assert not out.rejects
    assert (out.trades[0].ts, out.trades[0].px, out.trades[0].sz) == (TS, "101250.5", 45.0)
    # exchange, ctVal and ctType may be missing (or empty): the instrument's facts then count
    out = agree(line(exchange=None, ctVal=None, ctType=None), line(ctVal="", ctType=""))
    assert not out.rejects and {(t.ct_val, t.ct_inverse) for t in out.trades} == {(0.0, False)}
    # a count, where present, is read as on an OKX line
    out = agree(line(count="3"), line(count="zero"))
    assert [t.count for t in out.trades[:2]] == [3, 1]


def test_ct_type_defaults_to_the_instruments_settlement():
    inverse = json.loads(line(ctType=None))
    inverse["instId"] = "BTC-USD-SWAP"
    got = LineDecoder("BTC-USD-SWAP").decode_body((json.dumps(inverse) + "\n").encode() * 10, file="f", first_line=1, now_ms=NOW)
    assert {t.ct_inverse for t in got.trades} == {True}
    assert agree(line(ctType="inverse")).trades[0].ct_inverse is True


def test_an_object_with_trade_id_and_trade_id_in_okx_spelling_is_an_okx_object():
    okx = '{"instId":"BTC-USDT-SWAP","tradeId":"5","px":"1","sz":"2","side":"sell","ts":"%d","trade_id":"9"}' % TS
    out = agree(okx)
    assert not out.rejects and out.trades[0].tradeId == "5"
    out = agree(line(tradeId="77"))  # no px/sz/ts: a broken OKX object, judged as one
    assert out.rejects and out.rejects[0].error == "px missing"


def test_okx_objects_and_exporter_lines_mixed_in_one_file():
    okx = '{"instId":"BTC-USDT-SWAP","tradeId":"5","px":"1","sz":"2","side":"sell","ts":"%d"}' % TS
    out = agree(line(), okx, line(trade_id="6"), "pong", okx.replace('"5"', '"8"'))
    assert not out.rejects and out.skipped == 12
    assert [t.tradeId for t in out.trades[:4]] == ["1234567890", "5", "6", "8"]


def test_an_okx_key_named_like_a_hidden_field_sets_nothing():
    okx = '{"instId":"BTC-USDT-SWAP","tradeId":"5","px":"1","sz":"2","side":"sell","ts":"%d","ct_val":99,"ct_inverse":true}' % TS
    out = agree(okx)
    assert (out.trades[0].ct_val, out.trades[0].ct_inverse) == (0.0, False)


def test_sniff():
    assert sniff(line().encode() + b"\r") == "exporter"
    assert sniff(b'{"instId":"X","tradeId":"1"}') == "okx"
    assert sniff(b'{"arg":{"channel":"trades"},"data":[]}') == "okx"
    assert sniff(b'{"event":"subscribe"}') is None
    assert sniff(b"pong") is None and sniff(b"{broken") is None


def test_encode_writes_exactly_the_exporters_twelve_keys_as_json_dumps_does():
    trades = LineDecoder(INST).decode_body((line() + "\r\n").encode(), file="f", first_line=1, now_ms=NOW).trades
    contract = exporter.Contract(market="perp", ct_val="0.01", ct_type="linear")
    data = exporter.encode(trades, contract)
    assert data == (line().replace('"45"', '"45.0"') + "\r\n").encode()
    obj = json.loads(data)
    assert list(obj) == list(exporter.KEYS) and all(isinstance(v, str) for v in obj.values())
    # a trade without its own facts takes the contract's; LF when asked; count only on demand
    plain = Trade(instId=INST, tradeId="7", px="1.5", sz=2.0, side="sell", ts=TS - 123, count=3)
    data = exporter.encode([plain], contract, newline=b"\n")
    assert json.loads(data) == json.loads(line(trade_id="7", price="1.5", qty_contracts="2.0", side="sell", timestamp_utc="2025-12-14T21:34:56.000000Z"))
    assert data.endswith(b"}\n") and b"count" not in data
    assert json.loads(exporter.encode([plain], contract, counts=True))["count"] == "3"


def test_encoded_lines_read_back_to_equal_trades():
    contract = exporter.Contract(market="perp", ct_val="0.01", ct_type="linear")
    trades = [
        Trade(instId=INST, tradeId=str(i), px=px, sz=sz, side=side, ts=TS + i * 777, ct_val=ct, ct_inverse=inv)
        for i, (px, sz, side, ct, inv) in enumerate(
            [("1", 1.0, "buy", 0.0, False), ("101250.5", 0.1, "sell", 0.01, False), ("3e2", 12.5, "buy", 100.0, True)]
        )
    ]
    data = exporter.encode(trades * 4, contract)
    back = LineDecoder(INST).decode_body(data, file="f", first_line=1, now_ms=NOW).trades
    expect = [{**fields(t), "ct_val": t.ct_val or 0.01} for t in trades * 4]
    assert [fields(t) for t in back] == expect


# Any mix of valid and broken exporter values: every decoder path must judge them alike.
_VALUES = {
    "timestamp_utc": st.sampled_from([STAMP, "2025-12-14T21:34:56Z", "2025-12-14T21:34:56.1234995Z", "2025-12-14T21:34:56.1235Z",
                                      "2025-12-14 21:34:56.123Z", "2025-12-14t21:34:56.123z", "2025-12-14T21:34:56.123-00:00",
                                      "2025-12-14T21:34:56.123+01:00", "2025-12-14T21:34:56.123", "2025-02-30T01:00:00Z",
                                      "2016-01-01T00:00:00Z", "2031-01-01T00:00:00Z", "2025-12-14T21:34:60Z",
                                      "2025-12-14T24:00:00Z", "2025-13-14T21:34:56Z", "2025-12-14T21:34:56.Z",
                                      "2025-12-14T21:34:56.1234567Z", "2025-12-14T21:34:5x.1Z", "2025-12-14T21:34:56.12a4Z",
                                      "２025-12-14T21:34:56Z", "2025-12-14T21:3456.123Z", "", 5, None]),
    "exchange": st.sampled_from(["okx", "OKX", "", None, 1]),
    "instId": st.sampled_from([INST, "ETH-USDT-SWAP", "", None]),
    "trade_id": st.sampled_from(["1", "0042", "12a", "", "9" * 33, 5, None]),
    "side": st.sampled_from(["buy", "sell", "hold", None]),
    "price": st.sampled_from(["101250.5", "1e2", "0", "-1", "nan", "1,5", " 5", "", 7, None]),
    "qty_contracts": st.sampled_from(["45", "38.0", "0.5", "0", "-2", "inf", "x", "", 3, None]),
    "ctVal": st.sampled_from(["0.01", "10", "1e-3", "0", "-1", "", "abc", "1e13", 100, None]),
    "ctType": st.sampled_from(["linear", "inverse", "", "quanto", None]),
    "count": st.sampled_from(["3", 2, "0", "x", None, None, None]),
    "extra": st.sampled_from([None, None, "hello", {"nested": [1, 2]}]),
}


@st.composite
def exporter_objects(draw: st.DrawFn) -> str:
    obj = json.loads(line())
    for key, values in _VALUES.items():
        if draw(st.booleans()):
            value = draw(values)
            if value is None:
                obj.pop(key, None)
            else:
                obj[key] = value
    return json.dumps(obj)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(exporter_objects(), min_size=1, max_size=4))
def test_every_decoder_path_judges_exporter_lines_alike(lines):
    agree(*lines)
