"""An alert in words, for chat destinations and ``vstream alerts list``."""

from __future__ import annotations

from .detect import Alert


def _usd(text: str | None) -> str:
    try:
        return f"${int(text or ''):,}"
    except ValueError:
        return f"${text}"


def _signed(text: str | None) -> str:
    try:
        return f"{int(text or ''):+,}"
    except ValueError:
        return str(text)


def _g(value: float | None) -> str:
    return f"{value:g}" if value is not None else "?"


def summary(alert: Alert) -> str:
    """One line saying what happened (no id)."""
    inst = alert.instId
    if alert.kind == "whale":
        return (
            f"{inst} whale {str(alert.side).upper()} {_usd(alert.notional_usd)} at {alert.px} "
            f"(sz {alert.sz}) {alert.time}"
        )
    if alert.kind == "burst":
        return (
            f"{inst} burst: {alert.count} {str(alert.side).upper()} trades of {_usd(alert.threshold_usd)}+ "
            f"within {_g(alert.window_seconds)}s, {_usd(alert.notional_usd)} in all, "
            f"{alert.first_time} .. {alert.time}"
        )
    if alert.kind == "bar":
        parts = [
            f"{inst} {alert.timeframe} bar {alert.time} matches {alert.rule}",
            *([f"({alert.filter})"] if alert.filter != alert.rule else []),
            f"close {alert.close} ({alert.price_change_pct}%) volume {_usd(alert.total_volume)} "
            f"delta {_signed(alert.delta)}",
        ]
        if alert.volume_ratio is not None:
            parts.append(f"ratio {alert.volume_ratio}")
        if alert.volume_tier is not None:
            parts.append(alert.volume_tier)
        if alert.signals:
            parts.append(alert.signals)
        return " ".join(parts)
    if alert.kind == "silence":
        last = f"; last trade {alert.tradeId} at {alert.last_trade_time}" if alert.tradeId else ""
        return (
            f"{inst} silent: no trade for {alert.silent_seconds}s (more than "
            f"{_g(alert.threshold_seconds)}s) at {alert.time}{last}"
        )
    return f"{inst} {alert.kind} {alert.time}"


def text(alert: Alert) -> str:
    """The message a chat destination gets: the summary and the alert's id (receivers drop
    a message whose id they already have: a crash may send the one in flight twice)."""
    return f"{summary(alert)}\nalert_id: {alert.alert_id}"


__all__ = ["summary", "text"]
