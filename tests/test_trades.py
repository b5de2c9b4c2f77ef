"""SPEC §3: the three kinds of input line and the trade rules, on both decoder paths."""

from __future__ import annotations

import json

import pytest
from support import trade_line

from vstream.trades import MAX_FUTURE_MS, Decoded, LineDecoder

INST = "BTC-USDT-SWAP"
TS = 1_765_748_040_000
NOW = TS + 3_600_000


def decode(*lines: str | bytes) -> Decoded:
    raw = [line.encode() if isinstance(line, str) else line for line in lines]
    return LineDecoder(INST).decode(raw, file="2025-12-14.jsonl", first_line=1, now_ms=NOW)


def good(tid: int = 1, **changes: object) -> dict[str, object]:
    trade: dict[str, object] = json.loads(trade_line(tid, "42219.9", "12", "buy", TS, INST))
    trade.update(changes)
    return trade


def test_flat_trade_with_all_okx_fields():
    line = '{"instId":"BTC-USDT-SWAP","tradeId":"130639474","px":"42219.9","sz":"12","side":"buy","ts":"1630048897897","count":"3","source":"0","seqId":1234}'
    out = decode(line)
    assert out.rejects == [] and out.skipped == 0
    (t,) = out.trades
    assert (t.tradeId, t.px, t.sz, t.side, t.ts, t.count) == ("130639474", "42219.9", 12.0, "buy", 1630048897897, 3)


def test_push_envelope_trades_and_trades_all():
    data = [good(1), good(2, side="sell")]
    for channel in ("trades", "trades-all"):
        out = decode(json.dumps({"arg": {"channel": channel, "instId": INST}, "data": data}))
        assert [t.tradeId for t in out.trades] == ["1", "2"] and out.rejects == []


@pytest.mark.parametrize(
    "line",
    [
        '{"event":"subscribe","arg":{"channel":"trades","instId":"BTC-USDT-SWAP"},"connId":"a4d3ae55"}',
        '{"event":"error","code":"60012","msg":"Invalid request","connId":"a4d3ae55"}',
        '{"event":"notice","code":"64008","msg":"The connection will soon be closed for a service upgrade."}',
        '{"arg":{"channel":"tickers","instId":"BTC-USDT-SWAP"},"data":[{"last":"1"}]}',
        '{"arg":{"channel":"candle1m","instId":"BTC-USDT-SWAP"},"data":[["1","2"]]}',
        "pong",
        "pong\r",
    ],
)
def test_other_okx_messages_are_skipped_and_counted(line):
    out = decode(line)
    assert (out.trades, out.rejects, out.skipped) == ([], [], 1)


def test_blank_lines_are_ignored_not_counted():
    out = decode("", "\r", "   ", trade_line(1, "1", "1", "buy", TS, INST))
    assert len(out.trades) == 1 and out.skipped == 0 and out.rejects == []


def test_crlf_endings_are_accepted():
    out = decode(trade_line(1, "1", "1", "buy", TS, INST) + "\r", trade_line(2, "1", "1", "buy", TS, INST) + "\r")
    assert len(out.trades) == 2


def test_numbers_may_be_json_numbers():
    out = decode(json.dumps(good(px=42219.9, sz=12, ts=TS)))
    (t,) = out.trades
    assert (t.px, t.sz, t.ts) == ("42219.9", 12.0, TS)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"sz": "0"}, "sz must be > 0"),
        ({"sz": "-3"}, "sz must be > 0"),
        ({"sz": "NaN"}, "sz must be finite"),
        ({"sz": "abc"}, "sz must be a decimal number"),
        ({"px": "0"}, "px must be > 0"),
        ({"px": "Infinity"}, "px must be a decimal number"),
        ({"px": "1_000"}, "px must be a decimal number"),
        ({"px": " 5"}, "px must be a decimal number"),
        # an exponent marker with no digits after it (float() would raise on these)
        ({"px": "1e"}, "px must be a decimal number"),
        ({"px": "1E"}, "px must be a decimal number"),
        ({"px": "2.5e-"}, "px must be a decimal number"),
        ({"px": None}, "px must be a decimal number"),
        ({"px": True}, "px must be a decimal number"),
        ({"side": "hold"}, "side must be buy or sell"),
        ({"side": None}, "side missing"),
        ({"tradeId": ""}, "tradeId must be a non-empty string"),
        ({"tradeId": 5}, "tradeId must be a non-empty string"),
        ({"tradeId": "12a"}, "tradeId must be a decimal integer"),
        ({"ts": "1765748040"}, "before 2017-01-01"),
        ({"ts": str(NOW + MAX_FUTURE_MS + 1)}, "more than a day in the future"),
        ({"ts": "soon"}, "ts must be integer milliseconds"),
        ({"instId": "ETH-USDT-SWAP"}, "is not BTC-USDT-SWAP"),
        ({"instId": 7}, "instId must be a non-empty string"),
    ],
)
def test_bad_trades_are_rejected_with_a_reason(changes, error):
    out = decode(json.dumps(good(**changes)))
    assert out.trades == []
    (reject,) = out.rejects
    assert error in reject.error
    assert (reject.file, reject.line) == ("2025-12-14.jsonl", 1)


@pytest.mark.parametrize("missing", ["instId", "tradeId", "px", "sz", "side", "ts"])
def test_missing_required_field(missing):
    trade = good()
    del trade[missing]
    (reject,) = decode(json.dumps(trade)).rejects
    assert reject.error == f"{missing} missing"


def test_ts_limit_is_one_day_past_the_clock_inclusive():
    assert len(decode(json.dumps(good(ts=NOW + MAX_FUTURE_MS))).trades) == 1
    assert len(decode(json.dumps(good(ts=1_483_228_800_000))).trades) == 1  # 2017-01-01 exactly


@pytest.mark.parametrize("count", ["0", "x", None, -2, "2.5"])
def test_optional_fields_never_cause_a_reject(count):
    out = decode(json.dumps(good(count=count, source={"nested": 1}, seqId="not a number", extra=[1, 2])))
    (t,) = out.trades
    assert t.count == 1 and out.rejects == []


def test_invalid_json_and_non_objects_are_rejected_with_raw_kept():
    long_garbage = "{" + "x" * 5000
    out = decode("not json", "[1, 2]", '"text"', long_garbage, b"\xff\xfe{}")
    errors = [r.error for r in out.rejects]
    assert errors[0].startswith("invalid JSON") and errors[1] == errors[2] == "line is not a JSON object"
    assert len(out.rejects[3].raw) == 1000
    assert errors[4] == "line is not valid UTF-8"
    assert [r.line for r in out.rejects] == [1, 2, 3, 4, 5]


def test_envelope_trades_are_judged_one_by_one():
    data = [good(1), good(2, sz="0"), good(3, instId="ETH-USDT-SWAP"), good(4)]
    out = decode(json.dumps({"arg": {"channel": "trades", "instId": INST}, "data": data}))
    assert [t.tradeId for t in out.trades] == ["1", "4"]
    assert [r.error for r in out.rejects] == ["data[1]: sz must be > 0", 'data[2]: instId "ETH-USDT-SWAP" is not BTC-USDT-SWAP']
    assert json.loads(out.rejects[0].raw)["tradeId"] == "2"


def test_good_neighbours_of_a_bad_line_are_kept_with_line_numbers():
    out = decode(trade_line(1, "1", "1", "buy", TS, INST), "oops", "", trade_line(2, "1", "1", "buy", TS, INST))
    assert [t.tradeId for t in out.trades] == ["1", "2"]
    assert [(r.line, r.raw) for r in out.rejects] == [(2, "oops")]


def test_fast_and_careful_paths_agree_on_a_clean_chunk():
    lines = [trade_line(i, f"{100 + i}.5", str(i), "buy" if i % 2 else "sell", TS + i, INST, count=str(i % 3 + 1))
             for i in range(1, 200)]  # fmt: skip
    fast = decode(*lines)
    careful = decode(*lines, "")  # a blank line sends the chunk down the careful path
    assert fields(fast) == fields(careful) and len(fast.trades) == 199


def fields(out: Decoded) -> list[tuple[object, ...]]:
    return [(t.instId, t.tradeId, t.px, t.sz, t.side, t.ts, t.count) for t in out.trades]
