"""Alert detection: a plain class fed accepted trades and finished bars, time passed in.

:class:`AlertDetector` knows nothing of files, sockets or clocks. The engine feeds it, in
the order things happen in the stream, the big trades the assembler accepted
(:attr:`~vstream.BarAssembler.big_trades`) and the bars it finished, and (live mode only) asks
it about silence with the wall clock's time. It returns :class:`Alert` records, and its
:meth:`~AlertDetector.snapshot` resumes it exactly, so a run cut anywhere and resumed makes
the very alerts of one run.

Every alert has an ``alert_id`` made from the instrument, the kind and what fired it (the
trade id, the bar's time and rule), so a recompute makes the same id and a receiver can drop
a message it already has.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from fractions import Fraction

import msgspec

from ..assembler import Bar, exact_notional
from ..instruments import Instrument
from ..kernel import MINUTE_MS
from ..query import signal_tags, timeframe_of
from ..trades import Trade
from .rules import KINDS, AlertRules


class Alert(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One line of ``alerts.jsonl``. Keys after ``time`` are those of its kind."""

    alert_id: str
    #: ``whale``, ``burst``, ``bar`` or ``silence``.
    kind: str
    instId: str
    #: The trade's time (ms), the bar's ``timestamp_utc``, or when the silence was noticed.
    time: str
    side: str | None = None
    tradeId: str | None = None
    px: str | None = None
    sz: str | None = None
    #: The trade's (burst: the trades') USD notional, whole dollars.
    notional_usd: str | None = None
    #: The threshold it reached (``whale_trade_usd``, ``burst_usd``).
    threshold_usd: str | None = None
    count: int | None = None
    window_seconds: float | None = None
    first_time: str | None = None
    tradeIds: list[str] | None = None
    rule: str | None = None
    filter: str | None = None
    timeframe: str | None = None
    close: str | None = None
    price_change_pct: str | None = None
    total_volume: str | None = None
    delta: str | None = None
    volume_tier: str | None = None
    volume_ratio: str | None = None
    signals: str | None = None
    silent_seconds: int | None = None
    threshold_seconds: float | None = None
    last_trade_time: str | None = None


class _Held(msgspec.Struct, array_like=True):
    """A burst candidate: stamp, trade id, notional in micro-dollars."""

    ts: int
    tradeId: str
    micro: int


class DetectorState(msgspec.Struct):
    """What :class:`AlertDetector` needs to continue exactly (stored in the state file)."""

    #: side -> the burst candidates inside the window, in arrival order.
    burst: dict[str, list[_Held]] = msgspec.field(default_factory=dict)
    #: timeframe -> the last finished bar (kept only while a rule compares with it).
    previous: dict[str, Bar] = msgspec.field(default_factory=dict)
    #: The last trade heard (live silence) and the one a silence alert already fired after.
    last_trade_id: str = ""
    last_trade_ts: int = 0
    silence_after: str | None = None


def iso_ms(ts_ms: int) -> str:
    """``2025-12-14T21:34:56.123Z``."""
    seconds, ms = divmod(ts_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%03dZ" % ms


def _usd(value: Fraction) -> str:
    """Whole dollars, halves away from zero."""
    whole = (value.numerator * 2 + value.denominator) // (2 * value.denominator)
    return str(whole)


def _number(value: float) -> str:
    value = float(value)  # a rule given as an int (5000) reads as 5000.0 from a state
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def _minute(stamp: str) -> int:
    """Minutes since the epoch of a bar's ``timestamp_utc`` (``2025-12-14T21:34:00Z``)."""
    moment = datetime.fromisoformat(stamp.removesuffix("Z")).replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1000 // MINUTE_MS


class AlertDetector:
    """Turns one instrument's accepted big trades and finished bars into alerts.

    :meth:`feed` takes one stretch of the stream: the big trades accepted (in order) and the
    bars finished (in order) while it was folded. Each 1m bar is finished by the first trade
    of a later minute, so a trade of minute *m* comes after the bars of earlier minutes and
    before those of minute *m* and later: that is the order alerts come out in, whatever the
    stretches' boundaries. :meth:`bars` takes bars finished apart from trades (the wall
    clock, the end of the input).
    """

    def __init__(self, instrument: Instrument, rules: AlertRules, state: DetectorState | None = None) -> None:
        self.instrument = instrument
        self.rules = rules
        self._filters = rules.filters() if rules.enabled else []
        self._previous_needed = any(f.needs_previous for _, f in self._filters)
        self._whale_at = Fraction(repr(rules.whale_trade_usd))
        self._burst_at = Fraction(repr(rules.burst_threshold))
        self._burst_ms = round(rules.burst_seconds * 1000)
        self.state = DetectorState()
        self._heard_at: float | None = None
        self._started_at: float | None = None
        if state is not None:
            self.restore(state)

    # -- the stream ---------------------------------------------------------------------

    def feed(self, trades: Sequence[Trade], bars: Sequence[Bar]) -> list[Alert]:
        """Alerts of the big ``trades`` accepted and the ``bars`` finished by one stretch."""
        if not self.rules.enabled:
            return []
        out: list[Alert] = []
        j = 0
        for bar in bars:
            if j < len(trades) and not isinstance(bar.timeframe, str):
                minute = _minute(bar.timestamp_utc)
                while j < len(trades) and trades[j].ts // MINUTE_MS <= minute:
                    out += self._trade(trades[j])
                    j += 1
            out += self._bar(bar)
        for trade in trades[j:]:
            out += self._trade(trade)
        return out

    def bars(self, bars: Sequence[Bar]) -> list[Alert]:
        """Alerts of bars finished without trades (a wall-clock close, the end of input)."""
        return self.feed((), bars)

    def _trade(self, trade: Trade) -> list[Alert]:
        notional = exact_notional(self.instrument, trade.sz, trade.px, trade.ct_val, trade.ct_inverse)
        out: list[Alert] = []
        inst = self.instrument.inst_id
        if notional >= self._whale_at:
            out.append(
                Alert(
                    alert_id=f"{inst}:whale:{trade.tradeId}",
                    kind="whale",
                    instId=inst,
                    time=iso_ms(trade.ts),
                    side=trade.side,
                    tradeId=trade.tradeId,
                    px=trade.px,
                    sz=_number(trade.sz),
                    notional_usd=_usd(notional),
                    threshold_usd=_number(self.rules.whale_trade_usd),
                )
            )
        if self.rules.burst_count and notional >= self._burst_at:
            micro = notional * 1_000_000
            held = self.state.burst.setdefault(trade.side, [])
            held.append(_Held(trade.ts, trade.tradeId, micro.numerator // micro.denominator))
            newest = max(h.ts for h in held)
            held[:] = [h for h in held if h.ts >= newest - self._burst_ms]
            if len(held) >= self.rules.burst_count:
                total = Fraction(sum(h.micro for h in held), 1_000_000)
                out.append(
                    Alert(
                        alert_id=f"{inst}:burst:{trade.side}:{trade.tradeId}",
                        kind="burst",
                        instId=inst,
                        time=iso_ms(trade.ts),
                        side=trade.side,
                        tradeId=trade.tradeId,
                        notional_usd=_usd(total),
                        threshold_usd=_number(self.rules.burst_threshold),
                        count=len(held),
                        window_seconds=float(self.rules.burst_seconds),
                        first_time=iso_ms(min(h.ts for h in held)),
                        tradeIds=[h.tradeId for h in held],
                    )
                )
                # The trades of a burst make no other: the next one needs burst_count more.
                held.clear()
        return out

    def _bar(self, bar: Bar) -> list[Alert]:
        tf = timeframe_of(bar)
        previous = self.state.previous.get(tf)
        out = []
        inst = self.instrument.inst_id
        for name, flt in self._filters:
            named = flt.timeframes
            if (tf not in named) if named is not None else tf != "1m":
                continue
            if flt.matches(bar, previous):
                out.append(
                    Alert(
                        alert_id=f"{inst}:bar:{name}:{tf}:{bar.timestamp_utc}",
                        kind="bar",
                        instId=inst,
                        time=bar.timestamp_utc,
                        rule=name,
                        filter=flt.text,
                        timeframe=tf,
                        close=bar.close,
                        price_change_pct=bar.price_change_pct,
                        total_volume=bar.total_volume,
                        delta=bar.delta,
                        volume_tier=bar.volume_tier,
                        volume_ratio=bar.volume_ratio,
                        signals=signal_tags(bar) or None,
                    )
                )
        if self._previous_needed:
            self.state.previous[tf] = bar
        return out

    # -- silence (live) -----------------------------------------------------------------

    def start(self, now: float) -> None:
        """A live session starts at ``now`` (seconds): silence is counted from here at most."""
        self._started_at = now
        self._heard_at = None

    def heard(self, trade: Trade, now: float) -> None:
        """A trade of the instrument arrived at ``now`` (any trade, accepted or not)."""
        self._heard_at = now
        self.state.last_trade_id = trade.tradeId
        self.state.last_trade_ts = trade.ts

    def silence(self, now: float) -> list[Alert]:
        """A ``silence`` alert if no trade came for longer than ``silence_seconds`` before
        ``now``, once per quiet spell (the next one needs a trade in between)."""
        limit = self.rules.silence_seconds
        since = self._heard_at if self._heard_at is not None else self._started_at
        if not (self.rules.enabled and limit > 0) or since is None or now - since <= limit:
            return []
        after = self.state.last_trade_id
        if self.state.silence_after == after:
            return []
        self.state.silence_after = after
        inst = self.instrument.inst_id
        return [
            Alert(
                alert_id=f"{inst}:silence:{after or 'none'}",
                kind="silence",
                instId=inst,
                time=iso_ms(int(now * 1000)),
                tradeId=after or None,
                silent_seconds=int(now - since),
                threshold_seconds=float(limit),
                last_trade_time=iso_ms(self.state.last_trade_ts) if self.state.last_trade_ts else None,
            )
        ]

    # -- resume -------------------------------------------------------------------------

    def snapshot(self) -> DetectorState:
        """A copy of the state; later feeding does not change it."""
        return msgspec.convert(msgspec.to_builtins(self.state), DetectorState)

    def restore(self, state: DetectorState) -> None:
        self.state = msgspec.convert(msgspec.to_builtins(state), DetectorState)
        if not self._previous_needed:
            self.state.previous.clear()


__all__ = ["KINDS", "Alert", "AlertDetector", "DetectorState", "iso_ms"]
