"""OkxProtocol, the OKX source's core, driven by tables of inputs: no sockets, no event loop.

A scenario is a list of steps, each an input (a push of trade ids, a fill result, a connection
coming or going, a wall-clock tick) and the exact outputs it must answer, summarised as
``("emit", [trade ids], gap, now_ms)``, ``("fill", lo, hi)`` or ``("cancel", generation)``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import msgspec
import pytest

from vstream.formats import exporter
from vstream.recording import RecordStyle
from vstream.sources.okx_protocol import (
    CancelFill,
    Emit,
    ErrorFrame,
    OkxProtocol,
    Output,
    Push,
    StartFill,
    Subscribed,
    UpgradeNotice,
    fill_complete,
    merge_fills,
)
from vstream.testing import trades_of

BTC = "BTC-USDT-SWAP"
T0 = 1_700_000_040_000  # a minute start
NOW = T0 + 30_000
MINUTE = 60_000


def rec(tid: int, **kw: Any) -> dict[str, Any]:
    """Trade ``tid`` at ``T0 + tid`` seconds (ids 1..59: minute 0, 60..119: minute 1)."""
    return {
        "instId": BTC,
        "tradeId": str(tid),
        "px": f"{42000 + tid % 7}.5",
        "sz": str(1 + tid % 3),
        "side": "buy" if tid % 2 else "sell",
        "ts": str(T0 + tid * 1000),
        **kw,
    }


def frame(records: list[dict[str, Any]], channel: str = "trades", inst: str = BTC) -> bytes:
    return msgspec.json.encode({"arg": {"channel": channel, "instId": inst}, "data": records})


def summary(outputs: list[Output]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for o in outputs:
        if isinstance(o, Emit):
            b = o.batch
            assert b.inst_id == BTC and b.position is None  # the shell sets positions
            out.append(("emit", [t.tradeId for t in b.trades], b.gap, b.now_ms))
        elif isinstance(o, StartFill):
            out.append(("fill", o.lo, o.hi))
        else:
            assert isinstance(o, CancelFill)
            out.append(("cancel", o.generation))
    return out


def push(p: OkxProtocol, records: list[dict[str, Any]], now: int = NOW) -> list[Output]:
    got = p.receive_frame(frame(records, p.channel))
    assert isinstance(got, Push)
    return p.receive_push(got, now)


def run_step(p: OkxProtocol, step: tuple[Any, ...]) -> list[Output]:
    kind, *args = step
    if kind == "open":
        return p.connection_opened([BTC])
    if kind == "lost":
        return p.connection_lost([BTC])
    if kind == "push":  # ids, or (id, extra fields) pairs
        return push(p, [rec(i) if isinstance(i, int) else rec(i[0], **i[1]) for i in args[0]])
    if kind == "fill":  # ids found, complete?
        gap = p.instruments[BTC].gap
        generation = gap.generation if gap is not None else -1
        rows = {i: msgspec.json.encode(rec(i)) for i in args[0]}
        return p.receive_fill(BTC, generation, rows, complete=args[1], now_ms=NOW)
    if kind == "tick":
        return p.tick(args[0])
    raise AssertionError(kind)


END0 = T0 + MINUTE + 2000  # minute 0's end + grace

# name: (channel, steps [(input, expected outputs)], expected counters)
SCENARIOS: dict[str, tuple[str, list[tuple[tuple[Any, ...], list[Any]]], dict[str, int]]] = {
    "in order: delivered as one batch": (
        "trades",
        [(("open",), []), (("push", [1, 2, 3]), [("emit", ["1", "2", "3"], False, None)])],
        {"frames": 1, "trades": 3, "gaps": 0},
    ),
    "out of order inside a frame: sorted by id": (
        "trades",
        [(("open",), []), (("push", [3, 1, 2]), [("emit", ["1", "2", "3"], False, None)])],
        {"trades": 3, "gaps": 0},
    ),
    "id gap opens a fill and holds later records": (
        "trades",
        [
            (("open",), []),
            (("push", [1, 2]), [("emit", ["1", "2"], False, None)]),
            (("push", [5, 6]), [("fill", 2, 4)]),
            (("push", [7]), []),  # held too
            (("tick", T0 + 10 * MINUTE), []),  # no wall-clock close while held back
        ],
        {"gaps": 1, "gaps_filled": 0, "trades": 5},
    ),
    "fill completes and releases in id order": (
        "trades",
        [
            (("open",), []),
            (("push", [1, 2]), [("emit", ["1", "2"], False, None)]),
            (("push", [5, 6]), [("fill", 2, 4)]),
            (("fill", [3, 4], True), [("emit", ["3", "4", "5", "6"], False, None)]),
            (("push", [7]), [("emit", ["7"], False, None)]),
        ],
        {"gaps": 1, "gaps_filled": 1, "filled_trades": 2, "gaps_failed": 0},
    ),
    "give-up after the gap timeout flags the minutes at the hole": (
        "trades",
        [
            (("open",), []),
            (("push", [1, 2]), [("emit", ["1", "2"], False, None)]),
            (("push", [5, 6]), [("fill", 2, 4)]),
            (
                ("fill", [3], False),
                [("cancel", 1), ("emit", ["3"], True, None), ("emit", ["5", "6"], True, None)],
            ),
            (("push", [7]), [("emit", ["7"], False, None)]),  # 6 is the new frontier
        ],
        {"gaps": 1, "gaps_filled": 0, "gaps_failed": 1, "filled_trades": 0},
    ),
    "give-up with nothing known flags the next record's minute": (
        "trades",
        [
            (("open",), []),
            (("push", [1, 2, 3]), [("emit", ["1", "2", "3"], False, None)]),
            (("push", [(5, {"count": "4"})]), [("fill", 3, 5)]),  # straddles: nothing held
            (("fill", [], False), [("cancel", 1), ("emit", [], True, None)]),
            # no frontier now: the next record starts a new base, its minute flagged
            (("push", [9]), [("emit", ["9"], False, None), ("emit", [], True, None)]),
            (("push", [10]), [("emit", ["10"], False, None)]),
        ],
        {"gaps_failed": 1, "gaps": 1},
    ),
    "late answer of a given-up fill is ignored": (
        "trades",
        [
            (("open",), []),
            (("push", [1]), [("emit", ["1"], False, None)]),
            (("push", [3]), [("fill", 1, 2)]),
            (
                ("fill", [], False),
                [("cancel", 1), ("emit", ["3"], True, None), ("emit", [], True, None)],
            ),
            (("fill", [2], True), []),  # no gap open any more: generation -1
        ],
        {"gaps_filled": 0, "gaps_failed": 1},
    ),
    "duplicates are dropped and counted": (
        "trades",
        [
            (("open",), []),
            (("push", [1, 2, 3]), [("emit", ["1", "2", "3"], False, None)]),
            (("push", [2, 3]), []),
            (("push", [3, 4]), [("emit", ["4"], False, None)]),
        ],
        {"duplicates": 3, "gaps": 0, "trades": 7},
    ),
    "trades: a record covers count ids": (
        "trades",
        [
            (("open",), []),
            (("push", [1]), [("emit", ["1"], False, None)]),
            (("push", [(4, {"count": "3"})]), [("emit", ["4"], False, None)]),  # 2..4
        ],
        {"gaps": 0},
    ),
    "trades-all: a record is one id whatever its count": (
        "trades-all",
        [
            (("open",), []),
            (("push", [1]), [("emit", ["1"], False, None)]),
            (("push", [(4, {"count": "3"})]), [("fill", 1, 3)]),
        ],
        {"gaps": 1},
    ),
    "trades: a record straddling the frontier is fetched fill by fill": (
        "trades",
        [
            (("open",), []),
            (("push", [1, 2, 3]), [("emit", ["1", "2", "3"], False, None)]),
            (("push", [(5, {"count": "4"})]), [("fill", 3, 5)]),  # covers 2..5
            (("fill", [4, 5], True), [("emit", ["4", "5"], False, None)]),
        ],
        {"gaps": 1, "gaps_filled": 1, "duplicates": 0},
    ),
    "wall-clock close at minute end + grace, once": (
        "trades",
        [
            (("open",), []),
            (("push", [1, 2]), [("emit", ["1", "2"], False, None)]),
            (("tick", END0 - 1), []),
            (("tick", END0), [("emit", [], False, END0)]),
            (("tick", END0 + 5000), []),
            (("push", [(3, {"ts": str(T0 + MINUTE)})]), [("emit", ["3"], False, None)]),  # minute 1
            (("tick", END0 + MINUTE), [("emit", [], False, END0 + MINUTE)]),
        ],
        {"trades": 3},
    ),
    "no wall-clock close before the first connection": (
        "trades",
        [(("push", [1]), [("emit", ["1"], False, None)]), (("tick", END0 + MINUTE), [])],
        {},
    ),
    "reconnect opens a fill up to now; the minute waits for it": (
        "trades",
        [
            (("open",), []),
            (("push", [1, 2]), [("emit", ["1", "2"], False, None)]),
            (("lost",), []),
            (("tick", END0), []),  # down: trades of the minute may be missing
            (("open",), [("fill", 2, None)]),
            (("tick", END0), []),  # the fill is still open
            (("fill", [3, 4], True), [("emit", ["3", "4"], False, None)]),
            (("tick", END0), [("emit", [], False, END0)]),
        ],
        {"gaps": 1, "gaps_filled": 1, "filled_trades": 2},
    ),
    "reconnect while a gap is filled fetches what came after it": (
        "trades",
        [
            (("open",), []),
            (("push", [1]), [("emit", ["1"], False, None)]),
            (("push", [4]), [("fill", 1, 3)]),
            (("lost",), []),
            (("open",), []),  # the gap is open: rechecked once it is filled
            (("fill", [2, 3], True), [("fill", 3, None), ("emit", ["2", "3"], False, None)]),
            # 4 came from REST too: the held copy is a duplicate
            (("fill", [4, 5], True), [("emit", ["4", "5"], False, None)]),
        ],
        {"gaps": 2, "gaps_filled": 2, "duplicates": 1},
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str) -> None:
    channel, steps, counters = SCENARIOS[name]
    p = OkxProtocol([BTC], channel=channel)
    for number, (step, want) in enumerate(steps):
        assert summary(run_step(p, step)) == want, f"step {number}: {step}"
    stats = dataclasses.asdict(p.stats)
    assert {k: stats[k] for k in counters} == counters


def test_max_held_gives_the_gap_up_early() -> None:
    p = OkxProtocol([BTC], max_held=2)
    p.connection_opened([BTC])
    push(p, [rec(1)])
    assert summary(push(p, [rec(3), rec(4)])) == [("fill", 1, 2)]
    got = summary(push(p, [rec(5)]))
    assert got == [("cancel", 1), ("emit", ["3"], True, None), ("emit", ["4", "5"], True, None)]
    assert p.stats.gaps_failed == 1
    assert p.instruments[BTC].frontier == 5
    assert p.instruments[BTC].gap is None


def test_filled_fills_are_merged_as_the_trades_channel_merges_them() -> None:
    p = OkxProtocol([BTC])
    p.connection_opened([BTC])
    push(p, [rec(1)])
    assert summary(push(p, [rec(5)])) == [("fill", 1, 4)]
    same = {"side": "sell", "px": "42000.5", "ts": str(T0 + 2000)}
    rows = {i: msgspec.json.encode(rec(i, **same, sz="2")) for i in (2, 3, 4)}
    out = p.receive_fill(BTC, 1, rows, complete=True, now_ms=NOW)
    assert summary(out) == [("emit", ["4", "5"], False, None)]
    assert isinstance(out[0], Emit)
    merged = out[0].batch.trades[0]
    assert (merged.tradeId, merged.count, merged.sz, merged.side) == ("4", 3, 6.0, "sell")
    assert p.stats.filled_trades == 1  # one merged record


def test_trades_all_fills_are_not_merged() -> None:
    p = OkxProtocol([BTC], channel="trades-all")
    p.connection_opened([BTC])
    push(p, [rec(1)])
    push(p, [rec(5)])
    same = {"side": "sell", "px": "42000.5", "ts": str(T0 + 2000)}
    rows = {i: msgspec.json.encode(rec(i, **same)) for i in (2, 3, 4)}
    out = p.receive_fill(BTC, 1, rows, complete=True, now_ms=NOW)
    assert summary(out) == [("emit", ["2", "3", "4", "5"], False, None)]


@pytest.mark.parametrize(
    ("message", "want", "malformed"),
    [
        ("pong", None, 0),
        (b"pong", None, 1),  # OKX's pong is a text frame
        ("this is not json", None, 1),
        (
            '{"event":"subscribe","arg":{"channel":"trades","instId":"BTC-USDT-SWAP"}}',
            Subscribed(BTC),
            0,
        ),
        (
            '{"event":"error","code":"60012","msg":"Invalid request"}',
            ErrorFrame("60012", "Invalid request"),
            0,
        ),
        (
            '{"event":"notice","code":"64008","msg":"upgrade soon"}',
            UpgradeNotice("upgrade soon"),
            0,
        ),
        ('{"event":"notice","code":"64009","msg":"other"}', None, 0),
        ('{"event":"login","code":"0"}', None, 0),
        ('{"arg":{"channel":"books","instId":"BTC-USDT-SWAP"},"data":[]}', None, 1),
        ('{"arg":{"channel":"trades","instId":"ETH-USDT-SWAP"},"data":[]}', None, 1),
        ('{"arg":{"channel":"trades","instId":"BTC-USDT-SWAP"}}', None, 0),  # no data: nothing
    ],
)
def test_control_frames_are_no_pushes(message: str | bytes, want: Any, malformed: int) -> None:
    p = OkxProtocol([BTC])
    assert p.receive_frame(message) == want
    assert p.stats.malformed == malformed
    assert (p.stats.frames, p.stats.trades) == (0, 0)


def test_a_push_for_an_instrument_of_another_connection_is_malformed() -> None:
    p = OkxProtocol([BTC, "ETH-USDT-SWAP"])
    assert p.receive_frame(frame([rec(1)], inst="ETH-USDT-SWAP"), [BTC]) is None
    assert p.stats.malformed == 1
    assert isinstance(p.receive_frame(frame([rec(1)], inst="ETH-USDT-SWAP")), Push)


def test_control_elements_in_a_push_are_skipped_bad_trades_rejected() -> None:
    p = OkxProtocol([BTC])
    p.connection_opened([BTC])
    data = [rec(1), {"event": "subscribe"}, {**rec(2), "sz": "0"}, rec(3)]
    first = p.receive_frame(frame(data))
    assert isinstance(first, Push) and (first.inst_id, first.frame_no) == (BTC, 1)
    out = p.receive_push(first, NOW)
    # 2 was rejected, so 3 opens a gap: a rejected record is not a delivered one
    assert summary(out) == [
        ("fill", 1, 2),
        ("emit", ["1"], False, None),
        ("emit", [], False, None),
    ]
    last = out[-1]
    assert isinstance(last, Emit)
    assert last.batch.skipped == 1
    rejects = [(r.file, r.line, r.error) for r in last.batch.rejects]
    assert rejects == [("ws:trades", 1, "sz must be > 0")]
    assert (p.stats.frames, p.stats.trades) == (1, 2)


def test_recorded_lines_are_the_bytes_that_arrived() -> None:
    p = OkxProtocol([BTC], record=True)
    p.connection_opened([BTC])
    raw1 = b'{"instId":"%s","tradeId":"1","px":"42000.10","sz":"1","side":"buy","ts":"%d"}'
    raw1 %= (BTC.encode(), T0 + 1000)
    raw2 = b'{"instId":"%s",\n"tradeId":"2","px":"42000.2","sz":"1","side":"buy","ts":"%d"}'
    raw2 %= (BTC.encode(), T0 + 2000)
    envelope = b'{"arg":{"channel":"trades","instId":"%s"},"data":[%s,%s]}'
    message = envelope % (BTC.encode(), raw1, raw2)
    got = p.receive_frame(message)
    assert isinstance(got, Push)
    out = p.receive_push(got, NOW)
    assert len(out) == 1 and isinstance(out[0], Emit)
    one_line = raw2.replace(b"\n", b"")  # a recorded line must stay one line
    assert out[0].lines == [(T0 + 1000, raw1 + b"\n"), (T0 + 2000, one_line + b"\n")]


def test_a_trade_late_by_the_wall_clock_is_recorded_wrapped() -> None:
    p = OkxProtocol([BTC], record=True)
    p.connection_opened([BTC])
    push(p, [rec(1)])
    assert summary(p.tick(END0)) == [("emit", [], False, END0)]
    out = push(p, [rec(2)], now=END0 + 1)
    assert summary(out) == [("emit", ["2"], False, None)]  # the engine counts it late
    assert isinstance(out[0], Emit)
    ts, line = out[0].lines[0]
    assert ts == T0 + 2000
    assert line == (
        b'{"event":"vstream-late","arg":{"channel":"trades","instId":"BTC-USDT-SWAP"},"data":['
        + msgspec.json.encode(rec(2)) + b"]}\n"
    )
    assert p.stats.late_recorded == 1
    next_minute = rec(3, ts=str(T0 + MINUTE))
    out = push(p, [next_minute], now=END0 + 2)  # the next minute is not late
    assert isinstance(out[0], Emit)
    assert out[0].lines == [(T0 + MINUTE, msgspec.json.encode(next_minute) + b"\n")]
    assert p.stats.late_recorded == 1


def test_without_record_no_lines() -> None:
    p = OkxProtocol([BTC])
    p.connection_opened([BTC])
    out = push(p, [rec(1)])
    assert isinstance(out[0], Emit) and out[0].lines == []


def test_next_deadline_follows_the_open_minute() -> None:
    p = OkxProtocol([BTC], grace_ms=500)
    assert p.next_deadline() is None
    p.connection_opened([BTC])
    assert p.next_deadline() is None  # nothing delivered yet
    push(p, [rec(1)])
    assert p.next_deadline() == T0 + MINUTE + 500
    push(p, [rec(3)])  # gap: held back
    assert p.next_deadline() is None
    p.receive_fill(BTC, 1, {2: msgspec.json.encode(rec(2))}, complete=True, now_ms=NOW)
    assert p.next_deadline() == T0 + MINUTE + 500
    p.tick(T0 + MINUTE + 500)
    assert p.next_deadline() is None  # closed


@pytest.mark.parametrize(
    ("replayed", "recorded", "age_s", "frontier", "want"),
    [
        ([1, 2, 7], None, 10, 7, []),  # the newest replayed trade is the frontier
        ([], (9, T0), 10, 9, []),  # none replayed: the newest recorded one
        ([], None, 10, None, []),  # nothing recorded: start fresh
        ([7], None, 3601, None, [("emit", [], True, None)]),  # too old to fetch: flagged
    ],
)
def test_resume_from_a_recording(
    replayed: list[int],
    recorded: tuple[int, int] | None,
    age_s: int,
    frontier: int | None,
    want: list[Any],
) -> None:
    p = OkxProtocol([BTC], backfill_limit=3600)
    trades = trades_of([rec(i, ts=str(T0)) for i in replayed])
    p.replayed(BTC, trades)
    out = p.resume_from(BTC, recorded, T0 + age_s * 1000)
    assert summary(out) == want
    assert p.instruments[BTC].frontier == frontier
    if replayed:
        assert p.instruments[BTC].shadow_open == T0 // MINUTE
    if frontier is not None:
        assert summary(p.connection_opened([BTC])) == [("fill", frontier, None)]


@pytest.mark.parametrize(
    ("ids", "lo", "hi", "complete"),
    [
        ([3, 4], 2, 4, True),
        ([4], 2, 4, False),
        ([3, 4, 5], 2, 4, True),  # more than asked is fine
        ([], 2, None, True),  # nothing happened since
        ([3, 4, 5], 2, None, True),
        ([4, 5], 2, None, False),  # the page stopped short of lo
        ([3, 5], 2, None, False),
    ],
)
def test_fill_complete(ids: list[int], lo: int, hi: int | None, complete: bool) -> None:
    assert fill_complete(dict.fromkeys(ids, b""), lo, hi) is complete


def test_merge_fills_keeps_odd_rows_apart() -> None:
    same = {"side": "buy", "px": "1.5", "ts": "5"}
    rows = [
        msgspec.json.encode({"tradeId": "1", "sz": "1", **same}),
        msgspec.json.encode({"tradeId": "2", "sz": "2.5", **same}),
        b"not json",
        msgspec.json.encode({"tradeId": "3", "sz": "1", **same}),
        msgspec.json.encode({"tradeId": "5", "sz": "1", **same}),  # not consecutive
        b"[1]",
    ]
    got = [r if not r.startswith(b"{") else msgspec.json.decode(r) for r in merge_fills(rows)]
    assert got == [
        {"tradeId": "2", "sz": "3.5", **same, "count": "2"},
        b"not json",
        {"tradeId": "3", "sz": "1", **same, "count": "1"},
        {"tradeId": "5", "sz": "1", **same, "count": "1"},
        b"[1]",
    ]


EXPORTER = RecordStyle.of(BTC, exporter.Contract(market="perp", ct_val="0.01", ct_type="linear"), b"\r\n")


def test_exporter_lines_are_recorded_and_delivered_as_replay_reads_them() -> None:
    """A record of 3 fills becomes one exporter line (no count) and reaches the engine as one
    fill with the line's contract facts; the frontier still knows it covered 3 ids."""
    p = OkxProtocol([BTC], record=True)
    p.record_as(BTC, EXPORTER)
    p.connection_opened([BTC])
    out = push(p, [rec(3, count="3"), rec(4, count="1")])
    assert summary(out) == [("emit", ["3", "4"], False, None)]
    assert isinstance(out[0], Emit) and out[0].late == []
    trades = out[0].batch.trades
    assert [(t.count, t.ct_val, t.ct_inverse) for t in trades] == [(1, 0.01, False)] * 2
    lines = [line for _, line in out[0].lines]
    assert [json.loads(x)["trade_id"] for x in lines] == ["3", "4"]
    assert all(list(json.loads(x)) == list(exporter.KEYS) and x.endswith(b"\r\n") for x in lines)
    assert lines[0] == exporter.encode(trades_of([rec(3)]), EXPORTER.contract)
    assert summary(push(p, [rec(5)])) == [("emit", ["5"], False, None)]  # no gap after id 4
    assert p.stats.gaps == 0


def test_an_exporter_trade_late_by_the_wall_clock_is_a_plain_line_named_late() -> None:
    p = OkxProtocol([BTC], record=True)
    p.record_as(BTC, EXPORTER)
    p.connection_opened([BTC])
    push(p, [rec(1)])
    assert summary(p.tick(END0)) == [("emit", [], False, END0)]
    out = push(p, [rec(2), rec(3, ts=str(T0 + MINUTE))], now=END0 + 1)
    assert isinstance(out[0], Emit)
    assert out[0].late == [(0, "2")]  # only the first: the next minute's trade is not late
    assert [line for _, line in out[0].lines] == [
        exporter.encode(trades_of([r]), EXPORTER.contract) for r in (rec(2), rec(3, ts=str(T0 + MINUTE)))
    ]
    assert p.stats.late_recorded == 1
