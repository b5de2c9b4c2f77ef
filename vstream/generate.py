"""Deterministic synthetic OKX trades: realistic order flow, vault files and benchmark files.

Used by ``vstream demo`` (so a newcomer sees bars without any data), by the benchmarks and by
the tests. It deliberately imports nothing from the rest of vstream: the generator is the
independent witness the analyzer is checked against, so it must not share the analyzer's code.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec

Trade = dict[str, str | int]
"""A flat OKX trade as the ``trades`` channel sends it (``seqId`` is an int, the rest strings)."""

MINUTE_MS = 60_000
DAY_MS = 86_400_000
DEFAULT_START = datetime(2025, 1, 1, 21, 0, tzinfo=UTC)
"""Fixed (not "now") so output is reproducible; 21:00 so a 6 h vault crosses UTC midnight."""


@dataclass(frozen=True, slots=True)
class Instrument:
    """An instrument preset: how prices and sizes look and how a trade turns into USD."""

    inst_id: str
    market: str  # "perp", "futures" or "spot", as in the bar output
    price: float  # typical starting price
    px_decimals: int  # the tick is 10**-px_decimals
    ct_val: float  # coin per contract (linear), USD per contract (inverse), 1 for spot
    inverse: bool = False
    sz_decimals: int = 0  # 0: whole contracts; spot sizes are coin with decimals
    min_sz_units: int = 1  # smallest size, in units of 10**-sz_decimals
    order_usd: float = 6000.0  # median taker order notional
    trades_per_minute: float = 60.0

    @property
    def trades_dir(self) -> str:
        """Folder under ``raw/okx/`` holding this market's trade files (SPEC §2)."""
        return {"perp": "trades_perps", "futures": "trades_futures"}.get(self.market, "trades_spot")

    def notional_usd(self, px: float, sz: float) -> float:
        """USD notional of one trade, per SPEC §4."""
        if self.inverse:
            return sz * self.ct_val
        return sz * self.ct_val * px


INSTRUMENTS: dict[str, Instrument] = {
    i.inst_id: i
    for i in (
        Instrument("BTC-USDT-SWAP", "perp", 60000.0, 1, 0.01, order_usd=8000.0, trades_per_minute=90.0),
        Instrument("ETH-USDT-SWAP", "perp", 3000.0, 2, 0.1, order_usd=5000.0, trades_per_minute=70.0),
        Instrument("SOL-USDT-SWAP", "perp", 150.0, 2, 1.0, order_usd=2500.0, trades_per_minute=45.0),
        Instrument("DOGE-USDT-SWAP", "perp", 0.35, 5, 1000.0, order_usd=1500.0, trades_per_minute=30.0),
        Instrument("BTC-USD-SWAP", "perp", 60000.0, 1, 100.0, inverse=True, order_usd=5000.0),
        Instrument("ETH-USD-SWAP", "perp", 3000.0, 2, 10.0, inverse=True, order_usd=3000.0),
        Instrument("SOL-USD-SWAP", "perp", 150.0, 2, 10.0, inverse=True, order_usd=1500.0,
                   trades_per_minute=25.0),
        Instrument("BTC-USDT", "spot", 60000.0, 1, 1.0, sz_decimals=8, min_sz_units=1000,
                   order_usd=2500.0, trades_per_minute=70.0),
        Instrument("ETH-USDT", "spot", 3000.0, 2, 1.0, sz_decimals=6, min_sz_units=100,
                   order_usd=1500.0, trades_per_minute=50.0),
        Instrument("BTC-USD-250627", "futures", 61000.0, 1, 100.0, inverse=True, order_usd=4000.0,
                   trades_per_minute=20.0),
        Instrument("BTC-USDT-250627", "futures", 61000.0, 1, 0.01, order_usd=5000.0,
                   trades_per_minute=20.0),
    )
}  # fmt: skip
BUILTIN_PRICES: dict[str, float] = {k: v.price for k, v in INSTRUMENTS.items()}


def instrument(inst: str | Instrument) -> Instrument:
    """Look up a preset; an ``Instrument`` is passed through so callers can bring their own."""
    if isinstance(inst, Instrument):
        return inst
    try:
        return INSTRUMENTS[inst]
    except KeyError:
        known = ", ".join(INSTRUMENTS)
        raise KeyError(f"no generator preset for {inst!r}; known: {known}") from None


def format_units(units: int, decimals: int) -> str:
    """``units * 10**-decimals`` as OKX prints it: exact, no exponent, no trailing zeros."""
    if decimals == 0:
        return str(units)
    sign = "-" if units < 0 else ""
    q, r = divmod(abs(units), 10**decimals)
    if r == 0:
        return f"{sign}{q}"
    return f"{sign}{q}.{r:0{decimals}d}".rstrip("0")


def to_ms(when: datetime | int) -> int:
    """Epoch milliseconds; a naive datetime is taken as UTC."""
    if isinstance(when, int):
        return when
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


# (sigma of the one-minute return in basis points, activity multiplier)
_REGIMES = ((4.0, 0.6), (9.0, 1.0), (22.0, 1.8))
_LEVELS = (1, 1, 1, 1, 1, 2, 2, 2, 3, 3, 4)  # price levels one taker order sweeps


def iter_trades(
    inst: str | Instrument,
    *,
    start_ms: int,
    minutes: int,
    seed: int,
    trades_per_minute: float | None = None,
    whale_prob: float = 0.06,
    absorption_prob: float = 0.03,
    divergence_prob: float = 0.03,
    quiet_prob: float = 0.03,
    first_trade_id: int | None = None,
) -> Iterator[Trade]:
    """Yield flat OKX trades for ``minutes`` whole UTC minutes from ``start_ms`` (rounded up).

    The order flow is a random walk whose volatility and activity switch between calm, normal
    and volatile regimes. Per minute: ``quiet_prob`` of no trades at all; ``whale_prob`` of a
    block order whose every record is >= $100k; ``absorption_prob`` of 4-7x normal volume
    hitting one resting level (price flat); ``divergence_prob`` of a 0.15-0.45 % move against
    the taker delta. Each taker order sweeps 1-4 levels, giving several records with one ``ts``.
    ``tradeId`` and ``seqId`` strictly increase with small gaps (a record merging ``count``
    fills uses ``count`` ids); ``ts`` never decreases. Same arguments, same trades.
    """
    ins = instrument(inst)
    rng = random.Random(f"vstream.generate:{ins.inst_id}:{seed}")
    tpm = ins.trades_per_minute if trades_per_minute is None else trades_per_minute
    d, szd = ins.px_decimals, ins.sz_decimals
    scale = 10.0**d
    mid = ins.price * scale  # in ticks, kept as float so small drifts accumulate
    trade_id = rng.randrange(100_000_000, 900_000_000) if first_trade_id is None else first_trade_id
    seq = rng.randrange(1_000_000_000, 2_000_000_000)
    regime = 1
    first_minute = -(-start_ms // MINUTE_MS)

    def units_for(usd: float, px_ticks: int, at_least: bool) -> int:
        px = px_ticks / scale
        qty = usd / ins.ct_val if ins.inverse else usd / (ins.ct_val * px)
        raw = qty * 10.0**szd
        # whale pieces round up so every record really clears the whale threshold
        return max(ins.min_sz_units, math.ceil(raw) if at_least else round(raw))

    for k in range(minutes):
        m0 = (first_minute + k) * MINUTE_MS
        if rng.random() < 0.03:
            regime = rng.choice([r for r in range(3) if r != regime])
        sigma, act = _REGIMES[regime]
        if rng.random() < quiet_prob * (2.0, 1.0, 0.3)[regime]:
            mid *= 1.0 + rng.gauss(0.0, sigma * 0.3) / 1e4
            continue
        u = rng.random()
        kind = (
            "absorb"
            if u < absorption_prob
            else "diverge"
            if u < absorption_prob + divergence_prob
            else ""
        )
        size_mult = 1.0
        if kind == "absorb":
            ret_bps = 0.0
            p_buy = rng.choice((0.25, 0.75))  # the wall sits on the side takers are hitting
            records = tpm * rng.uniform(4.0, 7.0) * rng.lognormvariate(0.0, 0.15)
            size_mult = 1.5
        elif kind == "diverge":
            ret_bps = rng.choice((-1.0, 1.0)) * rng.uniform(15.0, 45.0)
            p_buy = 0.2 if ret_bps > 0 else 0.8
            records = tpm * act * rng.lognormvariate(0.0, 0.3)
        else:
            z = rng.gauss(0.0, 1.0)
            ret_bps = z * sigma
            p_buy = min(0.8, max(0.2, 0.5 + 0.15 * z))  # flow usually pushes price its way
            records = tpm * act * rng.lognormvariate(0.0, 0.45)
            if rng.random() < 0.04:
                records *= rng.uniform(2.5, 5.0)  # news burst
        n = max(1, round(records / (1.0 if kind == "absorb" else 1.9)))
        end_mid = mid * (1.0 + ret_bps / 1e4)
        wall = math.floor(mid)

        # a Brownian bridge over order index keeps first/last prints at the intended open/close
        noise = mid * sigma / 1e4 * 0.6 / math.sqrt(n)
        walk = [0.0]
        for _ in range(n - 1):
            walk.append(walk[-1] + rng.gauss(0.0, noise))
        # activity clusters inside the minute (a few bursts plus background), wrapped not
        # clipped so the minute's edges do not pile up prints
        centres = [rng.random() * MINUTE_MS for _ in range(rng.randint(1, 4))]
        spread = rng.uniform(1500.0, 15000.0)
        offsets = sorted(
            int(
                rng.random() * MINUTE_MS
                if rng.random() < 0.4
                else rng.choice(centres) + rng.gauss(0.0, spread)
            )
            % MINUTE_MS
            for _ in range(n)
        )
        whale_at = rng.randrange(n) if rng.random() < whale_prob * (1.0, 1.0, 1.6)[regime] else -1

        for i in range(n):
            t = i / (n - 1) if n > 1 else 1.0
            buy = rng.random() < p_buy
            if kind == "absorb":
                level = wall + (1 if buy else 0)
                px_mid = float(level)
                levels = 1
            else:
                px_mid = mid + (end_mid - mid) * t + walk[i] - t * walk[-1]
                levels = rng.choice(_LEVELS)
            bid = max(1, math.floor(px_mid))
            first_px = bid + 1 if buy else bid
            if kind == "absorb":
                first_px = level
            if i == whale_at:
                buy = rng.random() < (0.8 if p_buy >= 0.5 else 0.2)
                first_px = bid + 1 if buy else bid
                usd = min(5e6, 105_000.0 * rng.uniform(1.0, 1.3) * rng.paretovariate(1.8))
                pieces = max(1, min(rng.choice((1, 1, 2, 3)), int(usd // 105_000.0)))
                sizes = [
                    units_for(usd / pieces, first_px + (j if buy else -j), True)
                    for j in range(pieces)
                ]
            else:
                usd = ins.order_usd * size_mult * rng.lognormvariate(0.0, 1.0)
                units = units_for(usd, first_px, False)
                pieces = max(1, min(levels, units // ins.min_sz_units))
                cuts = (
                    sorted(rng.randrange(1, units) for _ in range(pieces - 1)) if pieces > 1 else []
                )
                bounds = [0, *cuts, units]
                sizes = [b - a for a, b in itertools.pairwise(bounds) if b > a]
                if any(s < ins.min_sz_units for s in sizes):
                    sizes = [units]
            ts = str(m0 + offsets[i])
            side = "buy" if buy else "sell"
            for j, sz in enumerate(sizes):
                count = 1 if kind == "absorb" or rng.random() < 0.6 else rng.randint(2, 6)
                yield {
                    "instId": ins.inst_id,
                    "tradeId": str(trade_id),
                    "px": format_units(max(1, first_px + (j if buy else -j)), d),
                    "sz": format_units(sz, szd),
                    "side": side,
                    "ts": ts,
                    "count": str(count),
                    "source": "1" if rng.random() < 0.02 else "0",
                    "seqId": seq,
                }
                trade_id += count  # merged fills consume their own ids upstream
                seq += rng.randint(1, 3)
        mid = end_mid


@dataclass(slots=True)
class InstrumentReport:
    """What was written for one instrument, so a reader's counters can be checked exactly."""

    inst_id: str
    files: list[Path] = field(default_factory=list)
    trades: int = 0  # distinct good trades (flat and inside envelopes)
    bad_lines: int = 0  # records a reader must reject (a bad trade inside an envelope counts 1)
    control_lines: int = 0  # non-trade OKX messages: skipped and counted, never rejected
    envelope_lines: int = 0  # websocket push envelopes holding trades
    duplicate_lines: int = 0  # exact re-sends of a trade of the open minute
    late_lines: int = 0  # re-sends of a trade of an earlier, already closed minute
    first_ts: int | None = None
    last_ts: int | None = None


@dataclass(slots=True)
class GenerationReport:
    """Result of :func:`generate_vault`."""

    vault: Path
    instruments: dict[str, InstrumentReport] = field(default_factory=dict)

    @property
    def trades(self) -> int:
        """Good trades over all instruments."""
        return sum(r.trades for r in self.instruments.values())


_BAD_KINDS = (
    "invalid_json", "sz_zero", "side_hold", "other_inst", "px_negative", "px_nan",
    "far_future", "ancient", "no_trade_id", "mixed_envelope", "duplicate", "late",
)  # fmt: skip
_encode = msgspec.json.Encoder().encode


#: The line formats :func:`write_lines` writes: OKX's own objects (with websocket envelopes and
#: control messages mixed in), or the lines of the trader's trades exporter (flat trades only).
LINE_FORMATS = ("okx", "exporter")


def _ct_text(value: float) -> str:
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def exporter_line(ins: Instrument, t: Trade) -> bytes:
    """``t`` as the trades exporter writes it: ``json.dumps`` of its twelve keys, every value a
    string, ``timestamp_utc`` with six fractional digits, the size as Python prints a float.
    Keys ``t`` lacks are left out; a ``ts`` that is not a stamp is written as it is. Written
    here from the exporter's description, not by vstream's own encoder (see the module doc)."""
    ts = t.get("ts")
    try:
        ms = int(ts)  # type: ignore[arg-type]
        stamp = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}000Z"
    except (TypeError, ValueError, OverflowError, OSError):
        stamp = str(ts)
    inst = str(t.get("instId", ins.inst_id))
    base, quote = inst.split("-")[:2]
    sz = t.get("sz")
    try:
        size = repr(float(sz))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        size = str(sz)
    obj: dict[str, str] = {
        "timestamp_utc": stamp,
        "exchange": "okx",
        "market": ins.market,
        "instId": inst,
        "symbol_canon": f"{base}/{quote}",
        "trade_id": str(t.get("tradeId", "")),
        "side": str(t.get("side", "")),
        "price": str(t.get("px", "")),
        "qty_contracts": size,
        "ctVal": _ct_text(ins.ct_val) if ins.market != "spot" else "",
        "ctMult": "1",
        "ctType": ("inverse" if ins.inverse else "linear") if ins.market != "spot" else "",
    }
    if "tradeId" not in t:
        del obj["trade_id"]
    return json.dumps(obj).encode()


def _other_inst(inst_id: str) -> str:
    return "ETH-USDT-SWAP" if inst_id == "BTC-USDT-SWAP" else "BTC-USDT-SWAP"


def _day_name(ts: int) -> str:
    return datetime.fromtimestamp(ts // DAY_MS * 86_400, UTC).strftime("%Y-%m-%d")


def write_lines(
    directory: Path,
    inst: str | Instrument,
    *,
    start_ms: int,
    minutes: int,
    seed: int,
    trades_per_minute: float | None = None,
    bad_lines: bool = True,
    envelope_fraction: float = 0.1,
    gzip_old_days: bool = False,
    line_format: str = "okx",
) -> InstrumentReport:
    """Write one instrument's trades to ``directory/{YYYY-MM-DD}.jsonl``, split at UTC midnight.

    ``line_format`` ``exporter`` writes the trader's exporter lines (CRLF) instead: flat trades
    only, no envelopes or control messages, the bad kinds written as exporter lines (and an
    impossible date where an envelope would hold the bad trade).

    Lines are mostly flat trades; about ``envelope_fraction`` of taker orders arrive as a
    websocket push envelope, and a few OKX control messages (subscribe, ``pong``, notice,
    error, another channel) are mixed in. With ``bad_lines``, one of each bad kind per 6 h
    (invalid JSON, sz "0", side "hold", foreign instId, px "-..."/"NaN", ts out of range, no
    tradeId, an envelope with one bad trade among good ones) plus one duplicate and one late
    re-send. The trades themselves do not depend on these options. ``gzip_old_days`` writes
    every day but the newest as ``.jsonl.gz``; an existing file of the other form is removed.
    """
    if line_format not in LINE_FORMATS:
        raise ValueError(f"line_format must be one of {', '.join(LINE_FORMATS)}, not {line_format!r}")
    ins = instrument(inst)
    rep = InstrumentReport(ins.inst_id)
    lay = random.Random(f"vstream.layout:{ins.inst_id}:{seed}")  # separate: trades stay identical
    as_exporter = line_format == "exporter"
    eol = b"\r\n" if as_exporter else b"\n"

    def enc(t: Trade) -> bytes:
        return exporter_line(ins, t) if as_exporter else _encode(t)
    directory.mkdir(parents=True, exist_ok=True)
    first_minute = -(-start_ms // MINUTE_MS)
    due: list[tuple[int, str]] = []
    if bad_lines:
        span = 360
        for r in range(max(1, -(-minutes // span))):
            lo, hi = r * span, min(minutes, (r + 1) * span)
            due += [
                (first_minute + lay.randrange(lo, max(lo + 1, hi)), kind) for kind in _BAD_KINDS
            ]
        due.sort(reverse=True)  # pop() from the end gives the earliest
    bad_id = 9_000_000_000_000
    conn = f"{lay.getrandbits(32):08x}"
    buf: list[bytes] = []
    day = -1
    minute = -1
    prev_minute_trade: Trade | None = None
    last_group: list[Trade] = []
    mix_next = False

    def flush(final: bool) -> None:
        if day < 0:
            return
        gz = gzip_old_days and not final
        path = directory / f"{_day_name(day * DAY_MS)}.jsonl{'.gz' if gz else ''}"
        other = path.with_suffix("") if gz else path.with_name(path.name + ".gz")
        other.unlink(missing_ok=True)
        data = b"".join(buf)
        if gz:
            with open(path, "wb") as raw, gzip.GzipFile("", "wb", 6, raw, mtime=0) as f:
                f.write(data)
        else:
            path.write_bytes(data)
        rep.files.append(path)

    def control(line: bytes) -> None:
        if as_exporter:
            return  # the exporter writes trades only
        buf.append(line + b"\n")
        rep.control_lines += 1

    def bad_trade(base: Trade, **change: str) -> Trade:
        nonlocal bad_id
        bad_id += 1
        t: Trade = {**base, "tradeId": str(bad_id)}
        t.update(change)
        return t

    def bad(kind: str, group: list[Trade]) -> bool:
        nonlocal mix_next
        last = group[-1]
        line: bytes
        if kind == "duplicate":
            rep.duplicate_lines += 1
            line = enc(last)
        elif kind == "late":
            if prev_minute_trade is None:
                return False
            rep.late_lines += 1
            line = enc(prev_minute_trade)
        elif kind == "mixed_envelope" and as_exporter:
            rep.bad_lines += 1
            obj = json.loads(exporter_line(ins, bad_trade(last)))
            obj["timestamp_utc"] = "2025-02-30" + obj["timestamp_utc"][10:]  # no such day
            line = json.dumps(obj).encode()
        elif kind == "mixed_envelope":
            mix_next = True  # the next group carries it, so good trades share its envelope
            return True
        else:
            rep.bad_lines += 1
            if kind == "invalid_json":
                line = enc(last)[:40]
            elif kind == "sz_zero":
                line = enc(bad_trade(last, sz="0"))
            elif kind == "side_hold":
                line = enc(bad_trade(last, side="hold"))
            elif kind == "other_inst":
                line = enc(bad_trade(last, instId=_other_inst(ins.inst_id)))
            elif kind == "px_negative":
                line = enc(bad_trade(last, px=f"-{last['px']}"))
            elif kind == "px_nan":
                line = enc(bad_trade(last, px="NaN"))
            elif kind == "far_future":
                line = enc(bad_trade(last, ts="4102444800000"))  # 2100-01-01
            elif kind == "ancient":
                line = enc(bad_trade(last, ts="1262304000000"))  # 2010, before OKX swaps
            else:
                t = bad_trade(last)
                del t["tradeId"]
                line = enc(t)
        buf.append(line + eol)
        return True

    for group in _groups(
        iter_trades(
            ins, start_ms=start_ms, minutes=minutes, seed=seed, trades_per_minute=trades_per_minute
        )
    ):
        ts = int(group[0]["ts"])
        if ts // DAY_MS != day:
            flush(False)
            buf, day = [], ts // DAY_MS
            if rep.first_ts is None:
                control(
                    _encode(
                        {
                            "event": "subscribe",
                            "arg": {"channel": "trades", "instId": ins.inst_id},
                            "connId": conn,
                        }
                    )
                )
        if ts // MINUTE_MS != minute:
            if last_group:
                prev_minute_trade = last_group[-1]
            minute = ts // MINUTE_MS
            c = lay.random()
            if c < 0.05:
                control(b"pong")
            elif c < 0.06:
                control(
                    _encode(
                        {
                            "event": "notice",
                            "code": "64008",
                            "connId": conn,
                            "msg": "The connection will soon be closed for a service upgrade.",
                        }
                    )
                )
            elif c < 0.07:
                control(
                    _encode(
                        {
                            "arg": {"channel": "tickers", "instId": ins.inst_id},
                            "data": [
                                {"instId": ins.inst_id, "last": group[0]["px"], "ts": str(ts)}
                            ],
                        }
                    )
                )
            elif c < 0.075:
                control(
                    _encode(
                        {
                            "event": "error",
                            "code": "60012",
                            "connId": conn,
                            "msg": 'Invalid request: {"op": "ping"}',
                        }
                    )
                )
        if as_exporter:
            buf.extend(enc(t) + eol for t in group)
        elif mix_next or lay.random() < envelope_fraction:
            data: list[Trade] = list(group)
            if mix_next:
                data.insert(lay.randrange(len(data) + 1), bad_trade(group[0], side="hold"))
                rep.bad_lines += 1
                mix_next = False
            buf.append(
                _encode({"arg": {"channel": "trades", "instId": ins.inst_id}, "data": data}) + b"\n"
            )
            rep.envelope_lines += 1
        else:
            buf.extend(_encode(t) + b"\n" for t in group)
        rep.trades += len(group)
        rep.first_ts = ts if rep.first_ts is None else rep.first_ts
        rep.last_ts = ts
        last_group = group
        while due and due[-1][0] <= minute:
            if not bad(due[-1][1], group):
                break  # a late re-send needs an earlier minute; retry after the next group
            due.pop()
    # kinds scheduled into trailing empty minutes still get written, after the last trade
    for _, kind in reversed(due if last_group else []):
        bad(kind, last_group)
    if mix_next:
        buf.append(
            _encode(
                {
                    "arg": {"channel": "trades", "instId": ins.inst_id},
                    "data": [bad_trade(last_group[-1], side="hold")],
                }
            )
            + b"\n"
        )
        rep.bad_lines += 1
        rep.envelope_lines += 1
    flush(True)
    return rep


def _groups(trades: Iterable[Trade]) -> Iterator[list[Trade]]:
    """Consecutive trades sharing a ``ts``: what one websocket push would carry."""
    group: list[Trade] = []
    for t in trades:
        if group and t["ts"] != group[0]["ts"]:
            yield group
            group = []
        group.append(t)
    if group:
        yield group


def trades_dir(vault: Path, inst: str | Instrument) -> Path:
    """``vault/raw/okx/trades_{perps,spot,futures}/{INSTID}`` per SPEC §2."""
    ins = instrument(inst)
    return vault / "raw" / "okx" / ins.trades_dir / ins.inst_id


def generate_vault(
    vault: Path,
    *,
    instruments: Sequence[str | Instrument] = ("BTC-USDT-SWAP", "ETH-USDT-SWAP"),
    start: datetime | int = DEFAULT_START,
    hours: float = 6,
    seed: int = 1,
    trades_per_minute: float | None = None,
    bad_lines: bool = True,
    envelope_fraction: float = 0.1,
    gzip_old_days: bool = False,
    line_format: str = "okx",
) -> GenerationReport:
    """Fill a vault's raw trade folders with ``hours`` of trades per instrument (see write_lines).

    With ``line_format`` ``exporter`` the vault is as the trader's exporter leaves it: its
    trade lines and, per instrument, its instrument file ``meta/okx/instruments/{INSTID}.json``."""
    vault = Path(vault)
    rep = GenerationReport(vault)
    for inst in instruments:
        ins = instrument(inst)
        rep.instruments[ins.inst_id] = write_lines(
            trades_dir(vault, ins), ins, start_ms=to_ms(start), minutes=round(hours * 60),
            seed=seed, trades_per_minute=trades_per_minute, bad_lines=bad_lines,
            envelope_fraction=envelope_fraction, gzip_old_days=gzip_old_days, line_format=line_format,
        )  # fmt: skip
        if line_format == "exporter":
            write_exporter_meta(vault, ins)
    return rep


def write_exporter_meta(vault: Path, ins: Instrument) -> Path:
    """The exporter's instrument file of ``ins``: ``instId``, ``raw`` (an OKX instruments row)
    and ``normalized``, every value a string, indented by 2."""
    tick = format_units(1, ins.px_decimals) if ins.px_decimals else "1"
    lot = format_units(ins.min_sz_units, ins.sz_decimals) if ins.sz_decimals else "1"
    spot = ins.market == "spot"
    facts = {
        "ctVal": "" if spot else _ct_text(ins.ct_val),
        "ctMult": "" if spot else "1",
        "ctType": "" if spot else ("inverse" if ins.inverse else "linear"),
        "tickSz": tick,
        "lotSz": lot,
    }
    inst_type = {"perp": "SWAP", "futures": "FUTURES", "spot": "SPOT"}[ins.market]
    raw = {"instId": ins.inst_id, "instType": inst_type, **facts, "state": "live"}
    path = vault / "meta" / "okx" / "instruments" / f"{ins.inst_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"instId": ins.inst_id, "raw": raw, "normalized": facts}, indent=2))
    return path


def write_benchmark_file(
    path: Path,
    inst_id: str = "BTC-USDT-SWAP",
    n_trades: int = 2_000_000,
    seed: int = 1,
    *,
    start_ms: int = to_ms(DEFAULT_START),
    trades_per_minute: float = 300.0,
    line_format: str = "okx",
) -> int:
    """Write ``n_trades`` valid flat trade lines fast; return the number of lines written.

    Simpler flow than :func:`iter_trades` (tick random walk, ~40 % of trades share the previous
    ``ts``, heavy-tailed sizes) but the same line shape. Randomness comes from ``randbytes`` and
    lookup tables and lines are joined per 64k chunk, because per-line ``json`` encoding and
    ``random`` calls would dominate a multi-million-line run. ``line_format`` ``exporter``
    writes the same trades as the trades exporter's lines (CRLF, as :func:`exporter_line`
    writes them, byte for byte).
    """
    if line_format not in LINE_FORMATS:
        raise ValueError(f"line_format must be one of {', '.join(LINE_FORMATS)}, not {line_format!r}")
    ins = instrument(inst_id)
    rng = random.Random(f"vstream.bench:{inst_id}:{seed}")
    d, szd = ins.px_decimals, ins.sz_decimals
    p = round(ins.price * 10**d)
    unit_usd = ins.notional_usd(ins.price, 10.0**-szd)
    sizes = [
        format_units(
            max(ins.min_sz_units, round(ins.order_usd * rng.lognormvariate(0.0, 1.2) / unit_usd)),
            szd,
        )
        for _ in range(256)
    ]
    sides = ["buy" if b & 1 else "sell" for b in range(256)]
    # buys lift the price, sells lower it; 1 in 8 trades moves a tick
    steps = [(1 if b & 1 else -1) if (b >> 1) % 8 == 0 else 0 for b in range(256)]
    mean_dt = MINUTE_MS / trades_per_minute / 0.6
    dts = [0 if b < 102 else int(rng.expovariate(1.0 / mean_dt)) for b in range(256)]
    counts = ["1" if b < 180 else str(2 + b % 4) for b in range(256)]
    tid = rng.randrange(100_000_000, 900_000_000)
    seq_off = rng.randrange(1_000_000_000, 2_000_000_000) - tid
    ts = start_ms
    head = '{"instId":"' + ins.inst_id + '","tradeId":"'

    def okx_line(tid: int, px: str, size: int, side: int, ts: int, count: int) -> str:
        return (
            f'{head}{tid}","px":"{px}","sz":"{sizes[size]}","side":"{sides[side]}",'
            f'"ts":"{ts}","count":"{counts[count]}","source":"0","seqId":{tid + seq_off}}}\n'
        )

    make = okx_line if line_format == "okx" else _exporter_benchmark_line(ins, sizes, sides)
    cache: dict[int, str] = {}
    written = 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        while written < n_trades:
            n = min(65_536, n_trades - written)
            ra, rb, rc = rng.randbytes(n), rng.randbytes(n), rng.randbytes(n)
            out = []
            for i in range(n):
                a = ra[i]
                p += steps[a]
                if p < 1:
                    p = 1
                ts += dts[rb[i]]
                px = cache.get(p)
                if px is None:
                    px = cache[p] = format_units(p, d)
                out.append(make(tid, px, rc[i], a, ts, rb[i] ^ rc[i]))
                tid += 1
            f.write("".join(out))
            written += n
    return written


def _exporter_benchmark_line(
    ins: Instrument, sizes: list[str], sides: list[str]
) -> Callable[[int, str, int, int, int, int], str]:
    """:func:`write_benchmark_file`'s line maker for exporter lines (CRLF; no ``count``: the
    exporter has none). Seconds are formatted once each, the rest from cached pieces."""
    base, quote = ins.inst_id.split("-")[:2]
    ct = f'"{_ct_text(ins.ct_val)}", "ctMult": "1", "ctType": "{"inverse" if ins.inverse else "linear"}"}}\r\n'
    mid = (
        f'", "exchange": "okx", "market": "{ins.market}", "instId": "{ins.inst_id}", '
        f'"symbol_canon": "{base}/{quote}", "trade_id": "'
    )
    sizes_text = [repr(float(sz)) for sz in sizes]
    second = -1
    stamp = ""

    def line(tid: int, px: str, size: int, side: int, ts: int, count: int) -> str:
        nonlocal second, stamp
        if ts // 1000 != second:
            second = ts // 1000
            stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return (
            f'{{"timestamp_utc": "{stamp}.{ts % 1000:03d}000Z{mid}{tid}", "side": "{sides[side]}", '
            f'"price": "{px}", "qty_contracts": "{sizes_text[size]}", "ctVal": {ct}'
        )

    return line
