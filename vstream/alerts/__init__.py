"""Alerts: big trades, bursts of them, bars matching a filter, silence (README "Alerts").

* :mod:`.rules` — :class:`AlertRules`, stored with each instrument's state;
* :mod:`.detect` — :class:`AlertDetector`, the I/O-free core the engine feeds;
* the engine appends each alert to ``derived/alerts/okx/{market}/{INSTID}/alerts.jsonl``
  in the durability order of the bars (appended and fsynced before the state recording
  the file's length), so every alert is in the file exactly once.
"""

from .detect import KINDS, Alert, AlertDetector, DetectorState, iso_ms
from .rules import RULE_FIELDS, AlertRules, bar_rules

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
