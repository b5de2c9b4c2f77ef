"""The ``[alerts]`` table of the config file: the rules, and where alerts are delivered.

::

    [alerts]
    whale_trade_usd = 1000000
    burst_count = 3
    burst_seconds = 60

    [alerts.bars]
    t4-absorption = "tier=T4 and absorption"

    [[alerts.destinations]]
    name = "desk"
    type = "discord"
    url = "${DISCORD_WEBHOOK}"

Secrets (webhook URLs hold a token, bot tokens) are best given as ``${NAME}`` references to
environment variables: they are read when the file is loaded and the values never appear in
a log line, an error or a file vstream writes (:class:`Redactor`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import msgspec

from ..errors import ConfigError
from ..instruments import kind_of
from .rules import KINDS, RULE_FIELDS, AlertRules

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
TELEGRAM_API = "https://api.telegram.org"

#: Requests per window each kind of destination is held to unless ``rate`` says otherwise:
#: Discord allows a webhook 5 per 2 s, Telegram a bot one message a second per chat.
DEFAULT_RATES: dict[str, tuple[int, float]] = {"discord": (5, 2.0), "telegram": (1, 1.0), "webhook": (10, 1.0)}


class Destination(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One ``[[alerts.destinations]]`` entry (secrets already read from the environment).

    ``type`` ``discord`` posts ``{"content": text}`` to ``url`` (the webhook URL);
    ``telegram`` posts ``chat_id`` and ``text`` to ``{api_url}/bot{token}/sendMessage``;
    ``webhook`` posts the alert line itself (JSON) to ``url``, with ``headers``. ``kinds``,
    ``instIds`` and ``rules`` keep only those alerts (default: all). ``rate`` is
    ``"CALLS/DURATION"`` (``"5/2s"``)."""

    name: str
    type: Literal["discord", "telegram", "webhook"]
    url: str | None = None
    token: str | None = None
    chat_id: str | int | None = None
    api_url: str = TELEGRAM_API
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    kinds: list[str] | None = None
    instIds: list[str] | None = None
    rules: list[str] | None = None
    rate: str | None = None
    timeout: float = 10.0

    def validate(self) -> None:
        where = f"alerts destination {self.name!r}"
        if not _NAME.match(self.name):
            raise ConfigError(f"{where}: a name is 1 to 64 letters, digits, '_', '.', '-'")
        if self.type in ("discord", "webhook"):
            if not self.url:
                raise ConfigError(f"{where}: {self.type} needs url")
            _check_url(self.url, where, "url")
        if self.type == "telegram":
            if not self.token or self.chat_id in (None, ""):
                raise ConfigError(f"{where}: telegram needs token and chat_id")
            _check_url(self.api_url, where, "api_url")
        for kind in self.kinds or []:
            if kind not in KINDS:
                raise ConfigError(f"{where}: unknown kind {kind!r}; choose from {', '.join(KINDS)}")
        for inst in self.instIds or []:
            kind_of(inst)
        if not (0 < self.timeout <= 300):
            raise ConfigError(f"{where}: timeout must be > 0 and <= 300 seconds")
        self.rate_limit()

    def rate_limit(self) -> tuple[int, float]:
        """(calls, seconds) this destination is held to."""
        if self.rate is None:
            return DEFAULT_RATES[self.type]
        match = _RATE.match(self.rate)
        calls = int(match.group(1)) if match else 0
        per = float(match.group(2)) * _UNIT[match.group(3)] if match else 0.0
        if not match or calls < 1 or not per > 0:
            raise ConfigError(f"alerts destination {self.name!r}: rate {self.rate!r}: write CALLS/DURATION, e.g. 5/2s")
        return calls, per

    def wants(self, inst_id: str, kind: str, rule: str | None) -> bool:
        """Whether an alert of ``inst_id``, ``kind`` (and bar ``rule``) goes here."""
        if self.kinds is not None and kind not in self.kinds:
            return False
        if self.instIds is not None and inst_id not in self.instIds:
            return False
        return self.rules is None or kind != "bar" or rule in self.rules

    def secrets(self) -> list[str]:
        """The values that must never be shown: URLs (their path holds the token), the bot
        token, header values."""
        found = [v for v in (self.url, self.token) if v]
        found += list(self.headers.values())
        if self.url:
            parts = urlsplit(self.url)
            # A token's own text (a server may echo it without the URL); long parts only, so
            # words like "webhooks" stay readable.
            found += [p for p in parts.path.split("/") if len(p) >= 16] + ([parts.query] if parts.query else [])
        return found


def _check_url(url: str, where: str, key: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # The URL itself may be the secret: say what is wrong, never what it is.
        raise ConfigError(f"{where}: {key} must be an http:// or https:// URL")


@dataclass
class AlertsConfig:
    """What ``[alerts]`` says: the rule fields it sets and the destinations."""

    rules: dict[str, Any] = field(default_factory=dict)
    destinations: list[Destination] = field(default_factory=list)

    @property
    def redactor(self) -> Redactor:
        return Redactor(s for d in self.destinations for s in d.secrets())


def resolve_env(value: str, env: Mapping[str, str], where: str) -> str:
    """``${NAME}`` references replaced by the environment's values."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return env[name]

    return _ENV.sub(lookup, value)


def parse_alerts(
    table: Any, env: Mapping[str, str] | None = None, source: str = "config", *, destinations: bool = True
) -> AlertsConfig:
    """The ``[alerts]`` table (as TOML decodes it) as an :class:`AlertsConfig`.

    Without ``destinations`` they are left out, unread: a command that only makes alerts
    (``replay``) needs none of their secrets in its environment."""
    env = os.environ if env is None else env
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [alerts] must be a table")
    unknown = sorted(set(table) - set(RULE_FIELDS) - {"destinations"})
    if unknown:
        raise ConfigError(f"{source}: [alerts]: unknown key(s) {', '.join(unknown)}")
    rules = {k: v for k, v in table.items() if k != "destinations"}
    AlertRules().overlay(rules)  # refuse bad rules now, with the file's name
    found: list[Destination] = []
    raw = table.get("destinations", []) if destinations else []
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: alerts.destinations must be an array of tables ([[alerts.destinations]])")
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: alerts.destinations[{index}] must be a table")
        name = entry.get("name")
        where = f"{source}: alerts destination {name!r}" if isinstance(name, str) else f"{source}: alerts.destinations[{index}]"
        values = dict(entry)
        for key in ("url", "token", "chat_id", "api_url"):
            if isinstance(values.get(key), str):
                values[key] = resolve_env(values[key], env, where)
        if isinstance(values.get("headers"), dict):
            values["headers"] = {
                k: resolve_env(v, env, where) if isinstance(v, str) else v for k, v in values["headers"].items()
            }
        try:
            dest = msgspec.convert(values, Destination, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{where}: {_scrub(str(exc), values)}") from None
        dest.validate()
        found.append(dest)
    names = [d.name for d in found]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: two alerts destinations share a name")
    return AlertsConfig(rules, found)


def _scrub(text: str, values: Mapping[str, Any]) -> str:
    for key in ("url", "token", "api_url"):
        value = values.get(key)
        if isinstance(value, str) and value:
            text = text.replace(value, "***")
    return text


def load_alerts(
    path: str | Path | None, env: Mapping[str, str] | None = None, *, destinations: bool = True
) -> AlertsConfig:
    """The ``[alerts]`` table of a TOML config file (empty without a file or a table); see
    :func:`parse_alerts` for ``destinations``."""
    if path is None:
        return AlertsConfig()
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data = msgspec.toml.decode(raw)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    if not isinstance(data, dict) or "alerts" not in data:
        return AlertsConfig()
    return parse_alerts(data["alerts"], env, f"config file {path}", destinations=destinations)


class Redactor:
    """Replaces every secret (and its URL-encoded form) in a text with ``***``; then any URL
    left is cut to its scheme and host (``https://discord.com/***``), so a message about a
    destination never shows where its token is."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        found = {s for s in secrets if s}
        found |= {quote(s, safe="") for s in found} | {quote(s) for s in found}
        self._secrets = sorted(found, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return _URL.sub(lambda m: f"{m.group(1)}/***" if m.group(2) else m.group(1), text)


_URL = re.compile(r"(https?://[^/\s'\"<>]+)(/[^\s'\"<>]*)?")


__all__ = [
    "DEFAULT_RATES",
    "TELEGRAM_API",
    "AlertsConfig",
    "Destination",
    "Redactor",
    "load_alerts",
    "parse_alerts",
    "resolve_env",
]
