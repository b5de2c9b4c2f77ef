"""Settings: every threshold of the bar contract, with SPEC defaults, and their loading."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from .errors import ConfigError

#: Timeframes a run can produce, in minutes.
TIMEFRAMES: dict[str, int] = {"1m": 1, "5m": 5, "15m": 15, "1h": 60}

#: Largest ``median_window``: about two years of one-minute bars.
MAX_MEDIAN_WINDOW = 1_000_000

#: Largest contract value: OKX's largest are 1e7 (meme coins); far beyond, a notional
#: (sz x ctVal x px, with sz and px up to 1e15) would no longer be a finite number.
MAX_CT_VAL = 1e12


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything that shapes bars, plus run options. Defaults are those of SPEC.md §5/§6.

    ``ct_val`` maps an instrument id to an explicit contract value; it overrides the instrument
    cache and the built-in table.
    """

    whale_usd: float = 100_000.0
    median_window: int = 100
    min_history: int = 20
    absorption_volume_ratio: float = 2.0
    absorption_max_price_pct: float = 0.1
    divergence_min_price_pct: float = 0.1
    divergence_min_delta_ratio: float = 0.1
    grace: float = 2.0
    ct_val: dict[str, float] = msgspec.field(default_factory=dict)
    timeframes: tuple[str, ...] = ("1m",)
    #: Footprint price step for every instrument of a run (None: no footprint) ...
    footprint_tick: float | None = None
    #: ... and per instrument (wins over ``footprint_tick``).
    footprint: dict[str, float] = msgspec.field(default_factory=dict)
    imbalance_ratio: float = 3.0
    stacked_levels: int = 3
    value_area: float = 0.7
    #: Running-delta extremes and the day's cumulative delta on each bar.
    cvd: bool = False
    #: Footprint: the least taker USD each side must have traded at a bar's highest (lowest)
    #: level for a poor high (low); both sides must be > 0 whatever this is (docs/levels.md).
    poor_min_usd: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first setting that is out of range."""
        positive = {
            "whale_usd": self.whale_usd,
            "absorption_volume_ratio": self.absorption_volume_ratio,
            "absorption_max_price_pct": self.absorption_max_price_pct,
            "divergence_min_price_pct": self.divergence_min_price_pct,
        }
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
        if not (math.isfinite(self.divergence_min_delta_ratio) and 0 <= self.divergence_min_delta_ratio <= 1):
            raise ConfigError(
                f"divergence_min_delta_ratio must be between 0 and 1, got {self.divergence_min_delta_ratio!r}"
            )
        if not (math.isfinite(self.grace) and self.grace >= 0):
            raise ConfigError(f"grace must be >= 0 seconds, got {self.grace!r}")
        if not 1 <= self.median_window <= MAX_MEDIAN_WINDOW:
            raise ConfigError(
                f"median_window must be between 1 and {MAX_MEDIAN_WINDOW}, got {self.median_window}"
            )
        if not 1 <= self.min_history <= self.median_window:
            raise ConfigError(
                f"min_history must be between 1 and median_window ({self.median_window}), got {self.min_history}"
            )
        for inst, value in self.ct_val.items():
            if not 0 < value <= MAX_CT_VAL:
                raise ConfigError(
                    f"ct_val for {inst} must be a number > 0 and <= {MAX_CT_VAL:g}, got {value!r}"
                )
        ticks = dict(self.footprint)
        if self.footprint_tick is not None:
            ticks["footprint_tick"] = self.footprint_tick
        for name, tick in ticks.items():
            tick_fraction(tick, name)
        if not (math.isfinite(self.imbalance_ratio) and self.imbalance_ratio >= 1):
            raise ConfigError(f"imbalance_ratio must be a finite number >= 1, got {self.imbalance_ratio!r}")
        if self.stacked_levels < 2:
            raise ConfigError(f"stacked_levels must be >= 2, got {self.stacked_levels}")
        if not (math.isfinite(self.value_area) and 0 < self.value_area <= 1):
            raise ConfigError(f"value_area must be > 0 and <= 1, got {self.value_area!r}")
        if not (math.isfinite(self.poor_min_usd) and self.poor_min_usd >= 0):
            raise ConfigError(f"poor_min_usd must be a finite number >= 0, got {self.poor_min_usd!r}")
        if not self.timeframes:
            raise ConfigError("timeframes must name at least one of " + ", ".join(TIMEFRAMES))
        for tf in self.timeframes:
            if tf not in TIMEFRAMES:
                raise ConfigError(f"unknown timeframe {tf!r}; choose from " + ", ".join(TIMEFRAMES))
        repeated = sorted({tf for tf in self.timeframes if self.timeframes.count(tf) > 1})
        if repeated:
            raise ConfigError(f"timeframes names {', '.join(repeated)} more than once")
        if "1m" not in self.timeframes:
            raise ConfigError("timeframes must include 1m (the other timeframes are resumed with it)")

    def tick_of(self, inst_id: str) -> float | None:
        """The footprint price step of ``inst_id``, or None when it gets no footprint."""
        return self.footprint.get(inst_id, self.footprint_tick)

    def shape(self, ct_val: float | None, inst_id: str | None = None) -> BarShape:
        """What shapes the bars of one instrument whose contract value is ``ct_val`` (and whose
        footprint tick is the one set for ``inst_id``)."""
        return BarShape(
            whale_usd=self.whale_usd,
            median_window=self.median_window,
            min_history=self.min_history,
            absorption_volume_ratio=self.absorption_volume_ratio,
            absorption_max_price_pct=self.absorption_max_price_pct,
            divergence_min_price_pct=self.divergence_min_price_pct,
            divergence_min_delta_ratio=self.divergence_min_delta_ratio,
            ct_val=ct_val,
            timeframes=tuple(sorted(self.timeframes, key=TIMEFRAMES.__getitem__)),
            footprint=self.tick_of(inst_id) if inst_id is not None else None,
            imbalance_ratio=self.imbalance_ratio,
            stacked_levels=self.stacked_levels,
            value_area=self.value_area,
            cvd=self.cvd,
            poor_min_usd=self.poor_min_usd,
        )

    def fingerprint(self, ct_val: float | None, inst_id: str | None = None) -> str:
        """A short hash of what shapes one instrument's bars (not run options like ``grace``)."""
        return self.shape(ct_val, inst_id).fingerprint()

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied and validated."""
        return msgspec.structs.replace(self, **changes)

    def with_shape(self, shape: BarShape, inst_id: str) -> Settings:
        """A copy for ``inst_id`` whose bar-shaping values are ``shape``'s (its ``ct_val`` is
        the instrument's, kept apart: the ``ct_val`` mapping is left as it is)."""
        footprint = {k: v for k, v in self.footprint.items() if k != inst_id}
        if shape.footprint is not None:
            footprint[inst_id] = shape.footprint
        return self.replace(
            **{f: getattr(shape, f) for f in SHAPE_FIELDS},
            footprint=footprint,
            footprint_tick=None,
        )


class BarShape(msgspec.Struct, frozen=True, kw_only=True):
    """The settings that shape one instrument's bars, stored in its state.

    A run that does not choose one of these takes it from here, so an instrument keeps the
    bar definition it was built with; a run choosing a different value must rebuild.
    """

    # ``int | float``: a value is kept as it was given (5000 or 5000.0) through the state
    # file, so the fingerprint computed from it stays the one written beside it.
    whale_usd: int | float
    median_window: int
    min_history: int
    absorption_volume_ratio: int | float
    absorption_max_price_pct: int | float
    divergence_min_price_pct: int | float
    divergence_min_delta_ratio: int | float
    ct_val: int | float | None
    timeframes: tuple[str, ...]
    # Order flow (off by default: states written before it existed decode with these).
    footprint: int | float | None = None
    imbalance_ratio: int | float = 3.0
    stacked_levels: int = 3
    value_area: int | float = 0.7
    cvd: bool = False
    poor_min_usd: int | float = 0

    def fingerprint(self) -> str:
        """A short hash of these values (the same as states written before they were stored).

        The order-flow options enter it only when they are on, so the fingerprint of a run
        without them is what it was before they existed (existing states stay valid);
        ``poor_min_usd`` only with a footprint and away from its default 0, so a footprint
        state written before it existed keeps its fingerprint too.
        """
        values: list[Any] = [getattr(self, f) for f in _PLAIN_SHAPE]
        if self.footprint is not None:
            flow: dict[str, Any] = {
                "footprint": self.footprint,
                "imbalance_ratio": self.imbalance_ratio,
                "stacked_levels": self.stacked_levels,
                "value_area": self.value_area,
            }
            if self.poor_min_usd != 0:
                flow["poor_min_usd"] = self.poor_min_usd
            values.append(flow)
        if self.cvd:
            values.append({"cvd": True})
        return hashlib.sha256(msgspec.json.encode(values)).hexdigest()[:16]

    def in_force(self) -> frozenset[str]:
        """The fields that shape bars as these values stand (the footprint's own settings only
        with a footprint): a difference in any other field changes no bar."""
        footprint_only = {"imbalance_ratio", "stacked_levels", "value_area", "poor_min_usd"}
        off = footprint_only if self.footprint is None else set()
        return frozenset(self.__struct_fields__) - off

    def differences(self, other: BarShape, fields: Iterable[str]) -> list[str]:
        """``"whale_usd is 5000 in the state, 7000 given"`` for each of ``fields`` that differs
        (``self`` is the stored shape, ``other`` the one given)."""
        return [
            f"{name} is {_show(getattr(self, name))} in the state, {_show(getattr(other, name))} given"
            for name in self.__struct_fields__
            if name in fields
            and name in (self.in_force() | other.in_force())
            and getattr(self, name) != getattr(other, name)
        ]

    def overlay(self, other: BarShape, fields: Iterable[str]) -> BarShape:
        """A copy of ``self`` with ``fields`` taken from ``other``."""
        chosen = set(fields)
        return msgspec.structs.replace(
            self, **{f: getattr(other, f) for f in self.__struct_fields__ if f in chosen}
        )


#: The fields of :class:`BarShape` that :class:`Settings` holds as they are (``ct_val`` is per
#: instrument: the mapping's value, the instrument cache's or the built-in one).
SHAPE_FIELDS: tuple[str, ...] = tuple(f for f in BarShape.__struct_fields__ if f not in ("ct_val", "footprint"))

#: The fields fingerprinted since before order flow existed, in their order.
_PLAIN_SHAPE: tuple[str, ...] = BarShape.__struct_fields__[: BarShape.__struct_fields__.index("footprint")]


def _show(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def tick_fraction(tick: float, name: str = "footprint tick") -> tuple[int, int]:
    """A footprint tick as written (``0.1`` is one tenth) as ``(numerator, 10**decimals)``.

    Raise :class:`ConfigError` unless it is a finite decimal number > 0 with at most 12
    decimals (level prices are printed with the tick's decimals).
    """
    if not (isinstance(tick, (int, float)) and math.isfinite(tick) and tick > 0):
        raise ConfigError(f"{name}: a footprint tick must be a finite number > 0, got {tick!r}")
    exact = Decimal(repr(float(tick))).normalize()
    exponent = exact.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    decimals = max(0, -exponent)
    if decimals > 12:
        raise ConfigError(f"{name}: a footprint tick needs at most 12 decimals, got {tick!r}")
    return int(exact.scaleb(decimals)), 10**decimals


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a mapping of :class:`Settings` fields.

    Unknown keys are an error, so a typo never silently leaves a default in force.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data = msgspec.toml.decode(raw)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a TOML table")
    # ``[alerts]`` is read by vstream.alerts.config: it shapes no bar.
    data.pop("alerts", None)
    fields = set(Settings.__struct_fields__)
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(unknown)}")
    return data


def make_settings(base: Mapping[str, Any] | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from a config mapping plus explicit overrides (``None`` = unset).

    ``ct_val`` overrides are merged with the config file's, the command line winning.
    """
    values: dict[str, Any] = dict(base or {})
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("ct_val", "footprint"):
            merged = dict(values.get(key) or {})
            merged.update(value)
            values[key] = merged
        else:
            values[key] = value
    try:
        return msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"bad setting: {exc}") from exc
