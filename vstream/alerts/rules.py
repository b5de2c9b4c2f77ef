"""What makes an alert: the rules stored with each instrument's state (no I/O here)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..filters import BarFilter

#: The kinds of alert.
KINDS = ("whale", "burst", "bar", "silence")
#: Fields of :class:`AlertRules` (the keys of ``[alerts]`` that are not destinations).
RULE_FIELDS = ("enabled", "whale_trade_usd", "burst_count", "burst_seconds", "burst_usd", "silence_seconds", "bars")
_MAX_NAME = 200


class AlertRules(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The alert rules of an instrument (``[alerts]`` in the config file, README "Alerts").

    * ``whale_trade_usd``: one accepted trade of at least this notional is a ``whale`` alert
      (apart from the bars' ``whale_usd``);
    * ``burst_count`` trades of at least ``burst_usd`` (default: ``whale_trade_usd``) on one
      side whose stamps lie within ``burst_seconds`` is a ``burst`` alert (0: off);
    * ``bars``: rule name -> filter expression (:mod:`vstream.filters`); a finished bar
      matching it is a ``bar`` alert. A rule without a ``timeframe=`` word looks at 1m bars;
    * ``silence_seconds``: live mode, no trade of the instrument for longer than this is a
      ``silence`` alert (0: off).

    Stored in the instrument's state: a run that gives none uses the stored ones.
    """

    enabled: bool = True
    whale_trade_usd: float = 1_000_000.0
    burst_count: int = 3
    burst_seconds: float = 60.0
    burst_usd: float | None = None
    silence_seconds: float = 0.0
    bars: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first rule out of range (or a bad filter)."""
        for name in ("whale_trade_usd", "burst_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"alerts: {name} must be a finite number > 0, got {value!r}")
        if self.burst_usd is not None and not (math.isfinite(self.burst_usd) and self.burst_usd > 0):
            raise ConfigError(f"alerts: burst_usd must be a finite number > 0, got {self.burst_usd!r}")
        if self.burst_count != 0 and not 2 <= self.burst_count <= 10_000:
            raise ConfigError(f"alerts: burst_count must be 0 (off) or 2 to 10000, got {self.burst_count}")
        if not (math.isfinite(self.silence_seconds) and self.silence_seconds >= 0):
            raise ConfigError(f"alerts: silence_seconds must be >= 0 (0: off), got {self.silence_seconds!r}")
        from ..filters import parse_filter  # (with the signal words: only once rules are used)

        for name, text in self.bars.items():
            if not name or len(name) > _MAX_NAME or not name.isprintable():
                raise ConfigError(f"alerts: bar rule name {name!r} must be 1 to {_MAX_NAME} printable characters")
            try:
                parse_filter(text)
            except ConfigError as exc:
                raise ConfigError(f"alerts: bar rule {name!r}: {exc}") from None

    @property
    def burst_threshold(self) -> float:
        return self.burst_usd if self.burst_usd is not None else self.whale_trade_usd

    def filters(self) -> list[tuple[str, BarFilter]]:
        """The bar rules parsed, in name order."""
        from ..filters import parse_filter

        return [(name, parse_filter(self.bars[name])) for name in sorted(self.bars)]

    def watch_usd(self) -> float | None:
        """The least notional a trade needs to matter to these rules (None: trades never do)."""
        if not self.enabled:
            return None
        if self.burst_count:
            return min(self.whale_trade_usd, self.burst_threshold)
        return self.whale_trade_usd

    def overlay(self, given: Mapping[str, Any]) -> AlertRules:
        """A copy with the ``given`` fields replaced (validated)."""
        unknown = sorted(set(given) - set(RULE_FIELDS))
        if unknown:
            raise ConfigError(f"alerts: unknown key(s) {', '.join(unknown)}")
        values = {f: getattr(self, f) for f in RULE_FIELDS}
        values.update(given)
        try:
            return msgspec.convert(values, AlertRules, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"alerts: bad value: {exc}") from exc

    def differences(self, other: AlertRules) -> list[str]:
        """``burst_count 3 -> 5`` for each field that differs (``self`` the old rules)."""
        return [
            f"{name} {_show(getattr(self, name))} -> {_show(getattr(other, name))}"
            for name in RULE_FIELDS
            if getattr(self, name) != getattr(other, name)
        ]


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def bar_rules(texts: Iterable[str]) -> dict[str, str]:
    """Bar rules given on the command line (``--alert-bar EXPR``): each named by its
    canonical text, so the same rule keeps the same alert ids whichever way it is written."""
    from ..filters import parse_filter

    out: dict[str, str] = {}
    for text in texts:
        parsed = parse_filter(text)
        out[parsed.text] = parsed.text
    return out


__all__ = ["KINDS", "RULE_FIELDS", "AlertRules", "bar_rules"]
