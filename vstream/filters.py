"""Filter expressions over bars, in the words of ``vstream signals``.

    tier=T4 and (absorption or divergence)
    stacked-imbalance=sell and not whale
    poc-shift=up and poc-shift-min=20
    poor-high or poor-low

``and`` binds tighter than ``or``, ``not`` tighter than both, parentheses group; keywords and
words are case-insensitive. A word is a flag (``absorption``) or ``word=value``. The meaning
of every word is the one ``vstream signals`` gives it (:mod:`vstream.query`):

========================  =============================================================
``tier=T4``               the bar's tier is T4 (``tier=T3,T4``: one of them)
``absorption``            absorption
``divergence[=KIND]``     divergence (``any``, ``bearish``, ``bullish``; bare: any)
``whale``                 at least one whale trade (``whale_usd``) in the bar
``stacked-imbalance[=S]`` a stacked imbalance of side ``buy``/``sell`` (bare: either)
``poc-shift[=DIR]``       the POC moved ``up``/``down``/``any`` from the previous bar's
``poc-shift-min=PRICE``   the POC moved by at least PRICE (either way, more than zero)
``poor-high``/``poor-low`` the bar's ``poor_high``/``poor_low`` flag is set
``timeframe=5m``          the bar's timeframe (bars without the key are ``1m``)
========================  =============================================================

:func:`parse_filter` returns a :class:`BarFilter` (``matches(bar, previous)``), which
:func:`vstream.query.find_signals` accepts like a :class:`~vstream.query.SignalFilter`.
Parsing is pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

from .assembler import Bar
from .errors import ConfigError
from .query import (
    TIERS,
    has_absorption,
    has_divergence,
    has_stack,
    has_whale,
    is_poor,
    poc_shift,
    tier_in,
    timeframe_of,
)
from .settings import TIMEFRAMES

__all__ = ["WORDS", "BarFilter", "parse_filter"]

#: Longest expression accepted (a config typo should not build a huge tree).
MAX_LENGTH = 2000
_MAX_DEPTH = 50

Test = Callable[[Bar, "Bar | None", Any], bool]


@dataclass(frozen=True)
class _Word:
    """One signal word: how its value is read (None: a flag, no value) and what it tests."""

    test: Test
    #: value text -> the value the test gets; raises ValueError with the reason.
    read: Callable[[str], Any] | None = None
    #: The value of the bare word (None: the word needs ``=value``).
    bare: str | None = None
    #: Needs the previous bar of the same timeframe.
    previous: bool = False


def _choice(*allowed: str) -> Callable[[str], str]:
    def read(text: str) -> str:
        value = text.lower()
        if value not in allowed:
            raise ValueError(f"choose from {'|'.join(allowed)}")
        return value

    return read


def _tiers(text: str) -> frozenset[str]:
    items = [t.strip().upper() for t in text.split(",") if t.strip()]
    for tier in items:
        if tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}; choose from {','.join(TIERS)}")
    if not items:
        raise ValueError("name at least one tier")
    return frozenset(items)


def _price(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError("not a price") from None
    if not value.is_finite() or value < 0:
        raise ValueError("must be a price >= 0")
    return value


def _timeframe(text: str) -> str:
    if text not in TIMEFRAMES:
        raise ValueError(f"choose from {'|'.join(TIMEFRAMES)}")
    return text


#: Every word of the language, by name.
WORDS: dict[str, _Word] = {
    "tier": _Word(lambda bar, _, tiers: tier_in(bar, tiers), read=_tiers),
    "absorption": _Word(lambda bar, _, __: has_absorption(bar)),
    "divergence": _Word(
        lambda bar, _, kind: has_divergence(bar, kind), read=_choice("any", "bearish", "bullish"), bare="any"
    ),
    "whale": _Word(lambda bar, _, __: has_whale(bar)),
    "stacked-imbalance": _Word(
        lambda bar, _, side: has_stack(bar, side), read=_choice("buy", "sell", "any"), bare="any"
    ),
    "poc-shift": _Word(
        lambda bar, prev, way: poc_shift(bar, prev, way), read=_choice("up", "down", "any"), bare="any",
        previous=True,
    ),
    "poc-shift-min": _Word(
        lambda bar, prev, least: poc_shift(bar, prev, "any", least), read=_price, previous=True
    ),
    "poor-high": _Word(lambda bar, _, __: is_poor(bar, "high")),
    "poor-low": _Word(lambda bar, _, __: is_poor(bar, "low")),
    "timeframe": _Word(lambda bar, _, tf: timeframe_of(bar) == tf, read=_timeframe),
}


class BarFilter:
    """A parsed expression: :meth:`matches` tells whether a bar passes.

    ``text`` is the expression in a canonical form (lower-case words, single spaces, only
    the parentheses precedence needs), so two spellings of one rule compare equal.
    """

    __slots__ = ()

    text: str

    def matches(
        self, bar: Bar, previous: Bar | None = None, untouched: Container[tuple[str, str]] = ()
    ) -> bool:
        """Whether ``bar`` passes (``previous``: the bar before it of its timeframe;
        ``untouched`` is not used: no word asks whether later bars traded through a level)."""
        raise NotImplementedError

    #: (:func:`vstream.query.find_signals` asks; no word needs the later bars.)
    untouched = False

    @property
    def needs_previous(self) -> bool:
        """Some word compares the bar with the previous one of its timeframe (poc-shift)."""
        return any(w.spec.previous for w in self.words())

    @property
    def timeframes(self) -> frozenset[str] | None:
        """The timeframes named by ``timeframe=`` words, None when there is none."""
        named = {w.value for w in self.words() if w.name == "timeframe"}
        return frozenset(named) if named else None

    def words(self) -> list[_Atom]:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"parse_filter({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BarFilter) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


class _Atom(BarFilter):
    __slots__ = ("name", "spec", "text", "value")

    def __init__(self, name: str, spec: _Word, value: Any, shown: str | None) -> None:
        self.name = name
        self.spec = spec
        self.value = value
        self.text = name if shown is None else f"{name}={shown}"

    def matches(
        self, bar: Bar, previous: Bar | None = None, untouched: Container[tuple[str, str]] = ()
    ) -> bool:
        return self.spec.test(bar, previous, self.value)

    def words(self) -> list[_Atom]:
        return [self]


class _Not(BarFilter):
    __slots__ = ("item", "text")

    def __init__(self, item: BarFilter) -> None:
        self.item = item
        self.text = "not " + (f"({item.text})" if isinstance(item, (_And, _Or)) else item.text)

    def matches(
        self, bar: Bar, previous: Bar | None = None, untouched: Container[tuple[str, str]] = ()
    ) -> bool:
        return not self.item.matches(bar, previous)

    def words(self) -> list[_Atom]:
        return self.item.words()


class _And(BarFilter):
    __slots__ = ("items", "text")

    def __init__(self, items: list[BarFilter]) -> None:
        self.items = items
        self.text = " and ".join(f"({i.text})" if isinstance(i, _Or) else i.text for i in items)

    def matches(
        self, bar: Bar, previous: Bar | None = None, untouched: Container[tuple[str, str]] = ()
    ) -> bool:
        return all(i.matches(bar, previous) for i in self.items)

    def words(self) -> list[_Atom]:
        return [w for i in self.items for w in i.words()]


class _Or(BarFilter):
    __slots__ = ("items", "text")

    def __init__(self, items: list[BarFilter]) -> None:
        self.items = items
        self.text = " or ".join(i.text for i in items)

    def matches(
        self, bar: Bar, previous: Bar | None = None, untouched: Container[tuple[str, str]] = ()
    ) -> bool:
        return any(i.matches(bar, previous) for i in self.items)

    def words(self) -> list[_Atom]:
        return [w for i in self.items for w in i.words()]


_TOKEN = re.compile(r"\s*(?:(?P<punct>[()=])|(?P<word>[A-Za-z0-9_.,+\-]+))")
_KEYWORDS = ("and", "or", "not")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, int]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            match = _TOKEN.match(text, pos)
            if match is None:
                at = pos + len(text[pos:]) - len(text[pos:].lstrip())
                self.fail(f"unexpected character {text[at]!r}", at)
            token = match.group("punct") or match.group("word")
            self.tokens.append((token, match.start("punct") if match.group("punct") else match.start("word")))
            pos = match.end()
        self.i = 0
        self.depth = 0

    def fail(self, reason: str, at: int | None = None) -> NoReturn:
        where = f" at character {at + 1}" if at is not None else " at its end"
        raise ConfigError(f"filter {self.text!r}: {reason}{where}")

    def peek(self) -> str | None:
        return self.tokens[self.i][0] if self.i < len(self.tokens) else None

    def at(self) -> int | None:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else None

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token.lower() == word:
            self.i += 1
            return True
        return False

    def parse(self) -> BarFilter:
        if not self.tokens:
            raise ConfigError(f"filter {self.text!r} is empty: name at least one signal word")
        node = self.parse_or()
        if self.i < len(self.tokens):
            token = self.peek()
            self.fail(f"unexpected {token!r} (expected and, or, or the end)", self.at())
        return node

    def parse_or(self) -> BarFilter:
        items = [self.parse_and()]
        while self.keyword("or"):
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else _Or(_flat(items, _Or))

    def parse_and(self) -> BarFilter:
        items = [self.parse_not()]
        while self.keyword("and"):
            items.append(self.parse_not())
        return items[0] if len(items) == 1 else _And(_flat(items, _And))

    def parse_not(self) -> BarFilter:
        if self.keyword("not"):
            self.nest()
            item = self.parse_not()
            self.depth -= 1
            return item.item if isinstance(item, _Not) else _Not(item)
        return self.parse_atom()

    def nest(self) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            self.fail(f"nested more than {_MAX_DEPTH} deep", self.at())

    def parse_atom(self) -> BarFilter:
        token, at = self.peek(), self.at()
        if token is None or at is None:
            self.fail("a signal word or '(' is missing")
        if token == "(":
            self.i += 1
            self.nest()
            node = self.parse_or()
            self.depth -= 1
            if self.peek() != ")":
                self.fail("')' is missing", self.at())
            self.i += 1
            return node
        if token in (")", "="):
            self.fail(f"unexpected {token!r}", at)
        name = token.lower()
        if name in _KEYWORDS:
            self.fail(f"{name!r} needs a signal word before it", at)
        spec = WORDS.get(name)
        if spec is None:
            self.fail(f"unknown word {token!r}; the words are {', '.join(WORDS)}", at)
        self.i += 1
        if self.peek() == "=":
            if spec.read is None:
                self.fail(f"{name} takes no value", self.at())
            self.i += 1
            raw, raw_at = self.peek(), self.at()
            if raw is None or raw in ("(", ")", "="):
                self.fail(f"{name}= needs a value", raw_at)
            self.i += 1
            try:
                value = spec.read(raw)
            except ValueError as exc:
                self.fail(f"{name}={raw}: {exc}", raw_at)
            # The bare word's value is written bare: one rule, one text.
            bare = spec.read(spec.bare) if spec.bare is not None else None
            return _Atom(name, spec, value, None if value == bare else _shown(value))
        if spec.read is None:
            return _Atom(name, spec, None, None)
        if spec.bare is None:
            self.fail(f"{name} needs a value ({name}=...)", at)
        return _Atom(name, spec, spec.read(spec.bare), None)


def _flat(items: list[BarFilter], kind: type[BarFilter]) -> list[BarFilter]:
    out: list[BarFilter] = []
    for item in items:
        out.extend(item.items if isinstance(item, (_And, _Or)) and isinstance(item, kind) else [item])
    return out


def _shown(value: Any) -> str:
    if isinstance(value, frozenset):
        return ",".join(sorted(value))
    return str(value)


def parse_filter(text: str) -> BarFilter:
    """Parse a filter expression; :class:`ConfigError` says what is wrong and where."""
    if not isinstance(text, str):
        raise ConfigError(f"a filter is a text, got {text!r}")
    if len(text) > MAX_LENGTH:
        raise ConfigError(f"filter is longer than {MAX_LENGTH} characters")
    return _Parser(text).parse()
