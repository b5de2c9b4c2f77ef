"""Alerts: big trades, bursts of them, bars matching a filter, silence (README "Alerts").

* :mod:`.rules` — :class:`AlertRules`, stored with each instrument's state;
* :mod:`.detect` — :class:`AlertDetector`, the I/O-free core the engine feeds;
* the engine appends each alert to ``derived/alerts/okx/{market}/{INSTID}/alerts.jsonl``
  in the durability order of the bars (appended and fsynced before the state recording
  the file's length), so every alert is in the file exactly once;
* :mod:`.deliver` — :class:`~vstream.alerts.deliver.Deliverer` posts new lines of those
  files to Discord, Telegram and webhooks (:mod:`.config` reads ``[alerts]``).

The detector and the signal words load on first use: ``import vstream`` stays light.
"""

from typing import TYPE_CHECKING, Any

from .rules import KINDS, RULE_FIELDS, AlertRules, bar_rules

if TYPE_CHECKING:
    from .detect import Alert, AlertDetector, DetectorState, iso_ms

_DETECT = ("Alert", "AlertDetector", "DetectorState", "iso_ms")


def __getattr__(name: str) -> Any:
    if name in _DETECT:
        from . import detect

        return getattr(detect, name)
    raise AttributeError(f"module 'vstream.alerts' has no attribute {name!r}")


__all__ = [
    "KINDS",
    "RULE_FIELDS",
    "Alert",
    "AlertDetector",
    "AlertRules",
    "DetectorState",
    "bar_rules",
    "iso_ms",
]
