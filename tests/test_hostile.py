"""Hostile input (SPEC §3): a corpus of bad lines interleaved with good trades.

Every good trade must be counted exactly as SPEC.md says (the output equals one clean run over
the good trades alone), every bad line must appear in the rejects file with its file, line and
reason, OKX control messages are skipped and counted, blank lines ignored, nothing crashes, and
a line of any length is read in bounded memory.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from vstream.instruments import VaultPaths
from vstream.state import read_state

INST = "BTC-USDT-SWAP"
BASE_TS = 1_735_779_600_000  # 2025-01-02T01:00:00Z


def trade(tid: int, ts: int, /, **change: object) -> dict[str, object]:
    obj: dict[str, object] = {
        "instId": INST, "tradeId": str(tid), "px": "42219.9", "sz": "12", "side": "buy",
        "ts": str(ts), "count": "1", "source": "0", "seqId": tid,
    }  # fmt: skip
    obj.update(change)
    return {k: v for k, v in obj.items() if v is not DROP}


DROP = object()


def enc(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def bad(**change: object) -> Callable[[int, int], bytes]:
    return lambda tid, ts: enc(trade(tid, ts, **change))


def raw(line: bytes) -> Callable[[int, int], bytes]:
    return lambda tid, ts: line


# (kind, line maker (tradeId, ts) -> bytes, expectation). Expectation: ("reject", reason part),
# ("skip",) for an OKX control message, ("ignore",) for a blank line, ("good",) for a line that
# must be accepted as is, ("envelope", reason part) for an envelope with one bad trade.
HOSTILE: list[tuple[str, Callable[[int, int], bytes], tuple[str, ...]]] = [
    ("truncated json", lambda t, s: enc(trade(t, s))[:37], ("reject", "invalid JSON")),
    ("truncated at end", lambda t, s: enc(trade(t, s))[:-1], ("reject", "invalid JSON")),
    ("non-utf8 in string", lambda t, s: enc(trade(t, s)).replace(b'"0"', b'"\xff\xfe"'), ("reject", "not valid UTF-8")),
    ("non-utf8 garbage", raw(b"\xc3\x28\xa0\xa1 garbage \x80"), ("reject", "not valid UTF-8")),
    ("nul bytes", raw(b"\x00\x00\x00"), ("reject", "invalid JSON")),
    ("nul inside object", lambda t, s: enc(trade(t, s)).replace(b",", b",\x00", 1), ("reject", "invalid JSON")),
    ("deeply nested array", raw(b"[" * 200_000 + b"]" * 200_000), ("reject", "nested too deeply")),
    ("deeply nested in a trade", lambda t, s: enc(trade(t, s))[:-1] + b',"x":' + b"[" * 50_000 + b"]" * 50_000 + b"}", ("reject", "nested too deeply")),
    ("json array", raw(b"[1,2,3]"), ("reject", "not a JSON object")),
    ("json string", raw(b'"hello"'), ("reject", "not a JSON object")),
    ("json number", raw(b"42"), ("reject", "not a JSON object")),
    ("json null", raw(b"null"), ("reject", "not a JSON object")),
    ("json true", raw(b"true"), ("reject", "not a JSON object")),
    ("instId number", bad(instId=7), ("reject", "instId must be a non-empty string")),
    ("instId other", bad(instId="ETH-USDT-SWAP"), ("reject", "is not BTC-USDT-SWAP")),
    ("instId missing", bad(instId=DROP), ("reject", "instId missing")),
    ("tradeId number", lambda t, s: enc(trade(t, s, tradeId=t)), ("reject", "tradeId must be a non-empty string")),
    ("tradeId letters", bad(tradeId="abc"), ("reject", "tradeId must be a decimal integer")),
    ("tradeId empty", bad(tradeId=""), ("reject", "tradeId must be a non-empty string")),
    ("tradeId missing", bad(tradeId=DROP), ("reject", "tradeId missing")),
    ("tradeId 40 digits", bad(tradeId="1" * 40), ("reject", "tradeId must be at most")),
    ("px bool", bad(px=True), ("reject", "px must be a decimal number")),
    ("px null", bad(px=None), ("reject", "px must be a decimal number")),
    ("px object", bad(px={"v": 1}), ("reject", "px must be a decimal number")),
    ("px missing", bad(px=DROP), ("reject", "px missing")),
    ("px NaN", bad(px="NaN"), ("reject", "px must be a decimal number")),
    ("px Infinity", bad(px="Infinity"), ("reject", "px must be a decimal number")),
    ("px 1e400", bad(px="1e400"), ("reject", "px must be finite")),
    ("px zero", bad(px="0"), ("reject", "px must be > 0")),
    ("px negative", bad(px="-42219.9"), ("reject", "px must be > 0")),
    ("px absurd", bad(px="1e300"), ("reject", "px must be at most")),
    ("px tiny", bad(px="1e-320"), ("reject", "px must be at least")),
    ("px 5000 digits", bad(px="1." + "0" * 5000 + "1"), ("reject", "px must be at most 64 characters")),
    ("px huge json int", lambda t, s: enc(trade(t, s)).replace(b'"42219.9"', b"1" + b"0" * 400), ("reject", "px must be at most")),
    ("sz array", bad(sz=[1]), ("reject", "sz must be a decimal number")),
    ("sz NaN", bad(sz="NaN"), ("reject", "sz must be finite")),
    ("sz bare NaN token", lambda t, s: enc(trade(t, s)).replace(b'"12"', b"NaN"), ("reject", "invalid JSON")),
    ("sz Infinity", bad(sz="Infinity"), ("reject", "sz must be finite")),
    ("sz zero", bad(sz="0"), ("reject", "sz must be > 0")),
    ("sz negative", bad(sz=-3), ("reject", "sz must be > 0")),
    ("sz absurd", bad(sz="1e300"), ("reject", "sz must be at most")),
    ("sz duplicate key", lambda t, s: enc(trade(t, s))[:-1] + b',"sz":"0"}', ("reject", "sz must be > 0")),
    ("side unknown", bad(side="hold"), ("reject", "side must be buy or sell")),
    ("side upper case", bad(side="BUY"), ("reject", "side must be buy or sell")),
    ("side number", bad(side=1), ("reject", "side must be buy or sell")),
    ("side missing", bad(side=DROP), ("reject", "side missing")),
    ("ts bool", bad(ts=True), ("reject", "ts must be integer milliseconds")),
    ("ts text", bad(ts="yesterday"), ("reject", "ts must be integer milliseconds")),
    ("ts fraction", lambda t, s: enc(trade(t, s, ts=s + 0.5)), ("reject", "ts must be integer milliseconds")),
    ("ts in seconds", lambda t, s: enc(trade(t, s, ts=str(s // 1000))), ("reject", "before 2017")),
    ("ts far future", bad(ts=str(int(time.time() * 1000) + 3 * 86_400_000)), ("reject", "in the future")),
    ("ts year 2100", bad(ts="4102444800000"), ("reject", "in the future")),
    ("lone surrogate", lambda t, s: enc(trade(t, s)).replace(b'"0"', b'"\\ud800"'), ("reject", "invalid JSON")),
    ("bom mid-file", lambda t, s: b"\xef\xbb\xbf" + enc(trade(t, s)), ("reject", "invalid JSON")),
    ("envelope one bad", lambda t, s: enc({"arg": {"channel": "trades", "instId": INST}, "data": [trade(t, s), trade(t + 1, s, side="hold"), trade(t + 2, s)]}), ("envelope", "data[1]: side must be buy or sell")),
    ("envelope data null", raw(b'{"arg":{"channel":"trades","instId":"BTC-USDT-SWAP"},"data":null}'), ("skip",)),
    ("other channel", raw(b'{"arg":{"channel":"tickers","instId":"BTC-USDT-SWAP"},"data":[{"last":"1"}]}'), ("skip",)),
    ("event error", raw(b'{"event":"error","code":"60012","msg":"bad"}'), ("skip",)),
    ("pong", raw(b"pong"), ("skip",)),
    ("blank", raw(b""), ("ignore",)),
    ("whitespace", raw(b" \t "), ("ignore",)),
    ("count unreadable", bad(count="many"), ("good",)),
    ("count absurd", lambda t, s: enc(trade(t, s)).replace(b'"count":"1"', b'"count":' + b"9" * 40), ("good",)),
    ("unknown keys", bad(extra={"deep": [1, 2]}, foo=None), ("good",)),
    ("numbers not strings", lambda t, s: enc(trade(t, s, px=42219.9, sz=12, ts=s, count=1)), ("good",)),
    ("escaped side", lambda t, s: enc(trade(t, s)).replace(b'"buy"', b'"\\u0062uy"'), ("good",)),
]
LONG_LINE = 10 * 1024 * 1024


def _good_equivalent(kind: str, tid: int, ts: int) -> list[bytes]:
    """The plain good lines a good or mixed hostile line must count as."""
    if kind == "envelope one bad":
        return [enc(trade(tid, ts)), enc(trade(tid + 2, ts))]
    if kind in ("count unreadable", "count absurd"):
        return [enc(trade(tid, ts))]  # an unreadable count is one fill
    return [enc(trade(tid, ts))]


def build(vault: Path, clean: bool) -> dict[str, object]:
    """Write the hostile vault (or, with ``clean``, only its good trades); return expectations."""
    raw_dir = VaultPaths.of(vault, INST).raw_dir
    raw_dir.mkdir(parents=True)
    days: dict[str, list[bytes]] = {"2025-01-02.jsonl": [], "2025-01-03.jsonl": []}
    expected_rejects: list[tuple[str, int, str]] = []
    good = skipped = 0
    tid = 1000
    for index, (kind, make, expect) in enumerate(HOSTILE):
        name = "2025-01-02.jsonl" if index < len(HOSTILE) // 2 else "2025-01-03.jsonl"
        lines = days[name]
        ts = BASE_TS + index * 60_000
        for k in range(2):  # good neighbours on both sides of every bad line
            lines.append(enc(trade(tid, ts + k, side="sell" if k else "buy")))
            tid += 1
            good += 1
        line = make(tid, ts + 5)
        if clean:
            if expect[0] in ("good", "envelope"):
                lines.extend(_good_equivalent(kind, tid, ts + 5))
        else:
            lines.append(line)
            if expect[0] in ("reject", "envelope"):
                expected_rejects.append((name, len(lines), expect[1]))
            skipped += expect[0] == "skip"
        good += {"good": 1, "envelope": 2}.get(expect[0], 0)
        tid += 3
        if index == len(HOSTILE) // 2 + 3 and not clean:
            lines.append(b'{"instId":"' + b"x" * LONG_LINE + b'"}')
            expected_rejects.append((name, len(lines), "longer than"))
    last = enc(trade(tid, BASE_TS + len(HOSTILE) * 60_000))
    good += 1
    (raw_dir / "2025-01-01.jsonl").write_bytes(b"")  # an empty file
    # A UTF-8 byte-order mark starts day 2, right before its first trade.
    (raw_dir / "2025-01-02.jsonl").write_bytes(
        b"\xef\xbb\xbf" + b"".join(x + b"\n" for x in days["2025-01-02.jsonl"])
    )
    # Day 3: mixed CRLF and LF endings, and a last line without a newline.
    body = b"".join(x + (b"\r\n" if i % 2 else b"\n") for i, x in enumerate(days["2025-01-03.jsonl"]))
    (raw_dir / "2025-01-03.jsonl").write_bytes(body + last)
    return {"rejects": expected_rejects, "good": good, "skipped": skipped}


def test_corpus_has_at_least_30_kinds_of_bad_lines() -> None:
    assert sum(1 for _, _, e in HOSTILE if e[0] in ("reject", "envelope")) + 1 >= 30


def test_hostile_corpus(tmp_path: Path, run_cli: Callable[..., tuple[int, str, str]]) -> None:
    hostile, clean = tmp_path / "hostile", tmp_path / "clean"
    expect = build(hostile, clean=False)
    build(clean, clean=True)
    paths, ref = VaultPaths.of(hostile, INST), VaultPaths.of(clean, INST)

    # Without --final the unterminated last line waits for its newline.
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(hostile))
    assert status == 0, err
    first = read_state(paths.state).assembler.counters
    assert first.trades == expect["good"] - 1
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(hostile), "--final")
    assert status == 0, err
    assert run_cli("replay", "--instId", INST, "--vault", str(clean), "--final")[0] == 0

    assert paths.output("1m").read_bytes() == ref.output("1m").read_bytes()
    counters = read_state(paths.state).assembler.counters
    assert counters.trades == expect["good"]
    assert counters.bars == len(HOSTILE) + 1
    assert counters.skipped == expect["skipped"]
    assert counters.rejects == len(expect["rejects"])
    assert (counters.duplicates, counters.late) == (0, 0)

    rejects = [msgspec.json.decode(x) for x in paths.rejects.read_bytes().splitlines()]
    got = [(r["file"], r["line"], r["error"]) for r in rejects]
    assert len(got) == len(expect["rejects"])
    for (file, line, error), (efile, eline, part) in zip(got, expect["rejects"], strict=True):
        assert (file, line) == (efile, eline), (file, line, error, part)
        assert part in error, (error, part)
    assert all(len(r["raw"]) <= 1000 for r in rejects)


def test_strict_stops_at_the_first_bad_line(tmp_path: Path, run_cli: Callable[..., tuple[int, str, str]]) -> None:
    vault = tmp_path / "v"
    build(vault, clean=False)
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(vault), "--strict")
    assert status == 1
    assert err.startswith("vstream: ") and "--strict" in err and len(err.strip().splitlines()) == 1


_MEASURE = """
import resource, sys
from vstream.cli import main
status = main(sys.argv[1:])
print(status, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss_kib(vault: Path) -> tuple[int, int]:
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, "-q", "replay", "--instId", INST, "--vault", str(vault), "--final"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    status, peak = proc.stdout.splitlines()[-1].split()
    assert status == "0", proc.stderr
    return int(status), int(peak)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is KiB on Linux only")
def test_a_huge_line_is_read_in_bounded_memory(tmp_path: Path) -> None:
    """A 96 MB line costs no more memory than the 4 MB cap: it is skipped, never held."""
    assert resource.RUSAGE_SELF is not None
    peaks = {}
    for size in (0, 96 << 20):
        vault = tmp_path / str(size)
        raw_dir = VaultPaths.of(vault, INST).raw_dir
        raw_dir.mkdir(parents=True)
        with open(raw_dir / "2025-01-02.jsonl", "wb") as f:
            for i in range(2000):
                f.write(enc(trade(10_000 + i, BASE_TS + i * 1000)) + b"\n")
                if i == 1000 and size:
                    f.write(b'{"instId":"')
                    chunk = b"y" * (1 << 20)
                    for _ in range(size >> 20):
                        f.write(chunk)
                    f.write(b'"}\n')
        status, peaks[size] = _peak_rss_kib(vault)
        assert status == 0
    assert peaks[96 << 20] - peaks[0] < 48 * 1024, peaks  # KiB: well under half the line


# -- the vault exporter's lines (SPEC §3 item 4) --------------------------------------------


def ex_trade(tid: int, ts: int, /, **change: object) -> dict[str, object]:
    """An exporter line's object: its twelve keys in order, every value a string."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts // 1000)) + f".{ts % 1000:03d}000Z"
    obj: dict[str, object] = {
        "timestamp_utc": stamp, "exchange": "okx", "market": "perp", "instId": INST, "symbol_canon": "BTC/USDT",
        "trade_id": str(tid), "side": "buy", "price": "42219.9", "qty_contracts": "12.0", "ctVal": "0.01",
        "ctMult": "1", "ctType": "linear",
    }  # fmt: skip
    obj.update(change)
    return {k: v for k, v in obj.items() if v is not DROP}


def ex_enc(obj: object) -> bytes:
    return json.dumps(obj).encode()  # the exporter's own separators


def ex_bad(**change: object) -> Callable[[int, int], bytes]:
    return lambda tid, ts: ex_enc(ex_trade(tid, ts, **change))


def _stamp_of(ts: int) -> str:
    return str(ex_trade(0, ts)["timestamp_utc"])


EXPORTER_HOSTILE: list[tuple[str, Callable[[int, int], bytes], tuple[str, ...]]] = [
    ("impossible date", lambda t, s: ex_enc(ex_trade(t, s, timestamp_utc="2025-02-30" + _stamp_of(s)[10:])), ("reject", "timestamp_utc must be an RFC 3339 time")),
    ("stamp a number", ex_bad(timestamp_utc=1735779600000), ("reject", "RFC 3339 time text")),
    ("stamp without zone", lambda t, s: ex_enc(ex_trade(t, s, timestamp_utc=_stamp_of(s)[:-1])), ("reject", "no time zone")),
    ("stamp in another zone", lambda t, s: ex_enc(ex_trade(t, s, timestamp_utc=_stamp_of(s)[:-1] + "+02:00")), ("reject", "must be in UTC")),
    ("stamp far future", ex_bad(timestamp_utc="2099-01-01T00:00:00.000000Z"), ("reject", "more than a day in the future")),
    ("stamp before 2017", ex_bad(timestamp_utc="2016-12-31T23:59:59.000000Z"), ("reject", "before 2017-01-01")),
    ("nine digits", lambda t, s: ex_enc(ex_trade(t, s, timestamp_utc=_stamp_of(s)[:-1] + "001Z")), ("good",)),
    ("+00:00", lambda t, s: ex_enc(ex_trade(t, s, timestamp_utc=_stamp_of(s)[:-1] + "+00:00")), ("good",)),
    ("ctVal zero", ex_bad(ctVal="0"), ("reject", "ctVal must be > 0")),
    ("ctVal text", ex_bad(ctVal="abc"), ("reject", "ctVal must be a decimal number")),
    ("ctVal empty", ex_bad(ctVal=""), ("good",)),
    ("ctType unknown", ex_bad(ctType="quanto"), ("reject", "ctType must be linear or inverse")),
    ("exchange not okx", ex_bad(exchange="binance"), ("reject", "exchange must be okx")),
    ("extra key", ex_bad(note="hello", ctMult="10"), ("good",)),
    ("missing qty_contracts", ex_bad(qty_contracts=DROP), ("reject", "qty_contracts missing")),
    ("missing price", ex_bad(price=DROP), ("reject", "price missing")),
    ("missing timestamp_utc", ex_bad(timestamp_utc=DROP), ("reject", "timestamp_utc missing")),
    ("missing trade_id", ex_bad(trade_id=DROP), ("reject", "tradeId missing")),
    ("trade_id not digits", ex_bad(trade_id="12a"), ("reject", "trade_id must be a decimal integer")),
    ("qty zero", ex_bad(qty_contracts="0"), ("reject", "qty_contracts must be > 0")),
    ("price negative", ex_bad(price="-1"), ("reject", "price must be > 0")),
    ("other instrument", ex_bad(instId="ETH-USDT-SWAP"), ("reject", "is not BTC-USDT-SWAP")),
    ("side hold", ex_bad(side="hold"), ("reject", "side must be buy or sell")),
    ("truncated", lambda t, s: ex_enc(ex_trade(t, s))[:60], ("reject", "invalid JSON")),
    ("with an OKX tradeId", ex_bad(tradeId="5"), ("reject", "px missing")),
]  # fmt: skip


def build_exporter(vault: Path, *, clean: bool) -> dict[str, object]:
    """Exporter files (CRLF) with every hostile kind between good neighbours; a byte-order
    mark starts day 2 and its last line is torn (no CRLF). ``clean``: the good lines only."""
    raw_dir = VaultPaths.of(vault, INST).raw_dir
    raw_dir.mkdir(parents=True)
    days: dict[str, list[bytes]] = {"2025-01-02.jsonl": [], "2025-01-03.jsonl": []}
    expected: list[tuple[str, int, str]] = []
    good = 0
    tid = 1000
    for index, (_, make, expect) in enumerate(EXPORTER_HOSTILE):
        name = "2025-01-02.jsonl" if index < len(EXPORTER_HOSTILE) // 2 else "2025-01-03.jsonl"
        lines = days[name]
        ts = BASE_TS + index * 60_000
        for k in range(2):
            lines.append(ex_enc(ex_trade(tid, ts + k, side="sell" if k else "buy")))
            tid += 1
            good += 1
        line = make(tid, ts + 5)
        if expect[0] == "good":
            good += 1
            lines.append(line if not clean else ex_enc(ex_trade(tid, ts + 5)))
        elif not clean:
            lines.append(line)
            expected.append((name, len(lines), expect[1]))
        tid += 3
    last = ex_enc(ex_trade(tid, BASE_TS + len(EXPORTER_HOSTILE) * 60_000))
    good += 1
    (raw_dir / "2025-01-02.jsonl").write_bytes(b"".join(x + b"\r\n" for x in days["2025-01-02.jsonl"]))
    body = b"\xef\xbb\xbf" + b"".join(x + b"\r\n" for x in days["2025-01-03.jsonl"])
    (raw_dir / "2025-01-03.jsonl").write_bytes(body + last)
    return {"rejects": expected, "good": good}


def test_hostile_exporter_lines(tmp_path: Path, run_cli: Callable[..., tuple[int, str, str]]) -> None:
    hostile, clean = tmp_path / "hostile", tmp_path / "clean"
    expect = build_exporter(hostile, clean=False)
    build_exporter(clean, clean=True)
    paths, ref = VaultPaths.of(hostile, INST), VaultPaths.of(clean, INST)
    status, _, err = run_cli("replay", "--instId", INST, "--vault", str(hostile))
    assert status == 0, err
    assert read_state(paths.state).assembler.counters.trades == expect["good"] - 1  # the torn line waits
    assert run_cli("replay", "--instId", INST, "--vault", str(hostile), "--final")[0] == 0
    assert run_cli("replay", "--instId", INST, "--vault", str(clean), "--final")[0] == 0
    # the good lines make exactly the bars they make alone (each line's own ctVal 0.01 or
    # none: the instrument's 0.01)
    assert paths.output("1m").read_bytes() == ref.output("1m").read_bytes()
    counters = read_state(paths.state).assembler.counters
    assert counters.trades == expect["good"] and counters.rejects == len(expect["rejects"])
    rejects = [msgspec.json.decode(x) for x in paths.rejects.read_bytes().splitlines()]
    got = [(r["file"], r["line"], r["error"]) for r in rejects]
    for (file, line, error), (efile, eline, part) in zip(got, expect["rejects"], strict=True):
        assert (file, line) == (efile, eline), (file, line, error, part)
        assert part in error, (error, part)
