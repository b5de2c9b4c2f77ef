"""Instrument kinds, vault path segments and the contract value (``ctVal``) used for notional."""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from .errors import ConfigError
from .settings import MAX_CT_VAL

#: The most traded OKX swaps (SPEC §4). Linear ones are in coin per contract, inverse in USD.
BUILTIN_CT_VAL: dict[str, float] = {
    "BTC-USDT-SWAP": 0.01,
    "ETH-USDT-SWAP": 0.1,
    "SOL-USDT-SWAP": 1.0,
    "XRP-USDT-SWAP": 100.0,
    "DOGE-USDT-SWAP": 1000.0,
    "TON-USDT-SWAP": 1.0,
    "LTC-USDT-SWAP": 1.0,
    "BTC-USDC-SWAP": 0.0001,
    "ETH-USDC-SWAP": 0.001,
    "BTC-USD-SWAP": 100.0,
    "ETH-USD-SWAP": 10.0,
    "SOL-USD-SWAP": 10.0,
}

_LINEAR_SETTLE = ("USDT", "USDC")
_SWAP = re.compile(r"^[A-Z0-9]+-[A-Z0-9]+-SWAP$")
_FUTURE = re.compile(r"^[A-Z0-9]+-[A-Z0-9]+-\d{6}$")
_SPOT = re.compile(r"^[A-Z0-9]+-[A-Z0-9]+$")
#: The name of an input trade file: ``{DATE}.jsonl`` or an archived ``{DATE}.jsonl.gz``.
DAY_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.jsonl(\.gz)?$")


class Kind(enum.Enum):
    """What an instrument is, with its vault folder names and output ``market`` word."""

    SWAP = ("perps", "perp")
    FUTURES = ("futures", "futures")
    SPOT = ("spot", "spot")

    @property
    def folder(self) -> str:
        return self.value[0]

    @property
    def market(self) -> str:
        return self.value[1]


@dataclass(frozen=True, slots=True)
class Instrument:
    """One OKX instrument as the analyzer sees it.

    ``ct_val`` is ``None`` for spot; ``inverse`` instruments have ``ct_val`` in USD and a
    notional of ``sz × ctVal``, linear ones ``sz × ctVal × px``, spot ``sz × px``.
    """

    inst_id: str
    kind: Kind
    inverse: bool
    ct_val: float | None

    @property
    def market(self) -> str:
        return self.kind.market

    def notional(self, px: float, sz: float) -> float:
        """USD notional of one trade (SPEC §4)."""
        if self.inverse:
            assert self.ct_val is not None
            return sz * self.ct_val
        return sz * px * (self.ct_val if self.ct_val is not None else 1.0)


def kind_of(inst_id: str) -> Kind:
    """Classify an instrument id, or raise :class:`ConfigError` for what vstream does not handle."""
    if _SWAP.match(inst_id):
        return Kind.SWAP
    if _FUTURE.match(inst_id):
        return Kind.FUTURES
    if _SPOT.match(inst_id):
        return Kind.SPOT
    raise ConfigError(
        f"unsupported instrument id {inst_id!r}: expected a swap (BTC-USDT-SWAP), "
        "a dated future (BTC-USD-250627) or a spot pair (BTC-USDT)"
    )


class CachedInstrument(msgspec.Struct, frozen=True):
    """One row of the instrument cache (a subset of OKX ``/api/v5/public/instruments``)."""

    instId: str
    ctVal: str = ""
    ctType: str = ""
    instType: str = ""
    settleCcy: str = ""


class InstrumentCache(msgspec.Struct):
    """The vault's ``state/instruments/okx.json``: OKX instrument rows by id.

    ``rows`` keeps the whole OKX row, as it was returned, of each instrument ``vstream live``
    was started for: ``live --record`` writes the vault's instrument file from it."""

    fetched_at: str = ""
    instruments: dict[str, CachedInstrument] = msgspec.field(default_factory=dict)
    rows: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)


def cache_path(vault: Path) -> Path:
    return vault / "state" / "instruments" / "okx.json"


def load_cache(vault: Path) -> InstrumentCache:
    """Read the instrument cache; a missing cache is empty, a corrupt one a :class:`ConfigError`."""
    path = cache_path(vault)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return InstrumentCache()
    except OSError as exc:
        raise ConfigError(f"cannot read instrument cache {path}: {exc.strerror or exc}") from exc
    try:
        return msgspec.json.decode(raw, type=InstrumentCache)
    except msgspec.DecodeError as exc:
        raise ConfigError(
            f"instrument cache {path} is unreadable ({exc}); delete it or run `vstream live` to refetch"
        ) from exc


class _MetaRow(msgspec.Struct):
    ctVal: str | float = ""
    ctType: str = ""


class _MetaFile(msgspec.Struct):
    """``meta/okx/instruments/{INSTID}.json`` in either shape the trader's exporters write:
    ``{"instId", "raw": {OKX row}, "normalized": {"ctVal", ...}}``, or a flat OKX row."""

    instId: str = ""
    raw: _MetaRow | None = None
    normalized: _MetaRow | None = None
    ctVal: str | float = ""
    ctType: str = ""


def meta_path(vault: Path | str, inst_id: str) -> Path:
    """The vault's instrument file of ``inst_id``, as the trader's trades exporter writes it."""
    return Path(vault) / "meta" / "okx" / "instruments" / f"{inst_id}.json"


def load_meta(vault: Path | str, inst_id: str) -> CachedInstrument | None:
    """The contract facts of ``inst_id`` in the vault's instrument file (``normalized``, else
    ``raw``, else a flat row's), or None where there is no file. An unreadable file is a
    :class:`ConfigError` naming it: its contract value may be the one the bars need."""
    path = meta_path(vault, inst_id)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read instrument file {path}: {exc.strerror or exc}") from exc
    try:
        meta = msgspec.json.decode(data.removeprefix(b"\xef\xbb\xbf"), type=_MetaFile)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"instrument file {path} is unreadable ({exc}): fix or delete it") from exc
    if meta.instId and meta.instId != inst_id:
        raise ConfigError(f"instrument file {path} is for {meta.instId}, not {inst_id}")
    ct_val: str | float = ""
    ct_type = ""
    for row in (meta.normalized, meta.raw, meta):
        if row is None:
            continue
        if not ct_val and row.ctVal not in ("", None):
            ct_val = row.ctVal
        if not ct_type and row.ctType:
            ct_type = row.ctType
    return CachedInstrument(instId=inst_id, ctVal=str(ct_val) if ct_val else "", ctType=ct_type)


def _ct_of(row: CachedInstrument | None) -> float | None:
    """A row's contract value, None where it has none OKX would list (empty or unreadable)."""
    if row is None or not row.ctVal:
        return None
    try:
        ct_val = float(row.ctVal)
    except ValueError:
        return None
    return ct_val if 0 < ct_val <= MAX_CT_VAL else None


def resolve(
    inst_id: str,
    overrides: Mapping[str, float] | None = None,
    cache: InstrumentCache | None = None,
    *,
    required: bool = True,
    meta: CachedInstrument | None = None,
) -> Instrument:
    """Build an :class:`Instrument`, taking ``ctVal`` from overrides, then the vault's
    instrument file (``meta``, see :func:`load_meta`), then the cache, then the table (SPEC §4).

    A swap or future with no known ``ctVal`` is a :class:`ConfigError` naming the fix: vstream
    never guesses a contract size. With ``required=False`` its ``ct_val`` is ``None`` instead
    (the engine then takes the one stored in the instrument's state, or lets trade lines that
    carry their own convert themselves, or raises that error).
    """
    kind = kind_of(inst_id)
    settle = inst_id.split("-")[1]
    cached = cache.instruments.get(inst_id) if cache is not None else None
    if kind is Kind.SPOT:
        return Instrument(inst_id, kind, inverse=False, ct_val=None)
    typed = next((r for r in (meta, cached) if r is not None and r.ctType in ("linear", "inverse")), None)
    inverse = typed.ctType == "inverse" if typed is not None else settle not in _LINEAR_SETTLE
    ct_val: float | None = None
    if overrides and inst_id in overrides:
        ct_val = float(overrides[inst_id])
    else:
        ct_val = _ct_of(meta)
        if ct_val is None:
            ct_val = _ct_of(cached)
    if ct_val is None:
        ct_val = BUILTIN_CT_VAL.get(inst_id)
    if ct_val is not None and not ct_val > 0:
        ct_val = None
    if ct_val is None and required:
        raise missing_ct_val(inst_id)
    return Instrument(inst_id, kind, inverse=inverse, ct_val=ct_val)


def missing_ct_val(inst_id: str) -> ConfigError:
    """The error of a swap or future whose contract value is nowhere to be found."""
    return ConfigError(
        f"no contract value (ctVal) known for {inst_id}: pass --ct-val {inst_id}=VALUE, set "
        f"[ct_val] in the config file, put it in the vault's meta/okx/instruments/{inst_id}.json, "
        f"or run `vstream live` once to fill the instrument cache"
    )


@dataclass(frozen=True, slots=True)
class VaultPaths:
    """Where one instrument's files live in a vault (SPEC §2)."""

    vault: Path
    inst_id: str
    kind: Kind

    @classmethod
    def of(cls, vault: Path | str, inst_id: str) -> VaultPaths:
        return cls(Path(vault), inst_id, kind_of(inst_id))

    @property
    def raw_dir(self) -> Path:
        return self.vault / "raw" / "okx" / f"trades_{self.kind.folder}" / self.inst_id

    @property
    def derived_dir(self) -> Path:
        return self.vault / "derived" / "volume" / "okx" / self.kind.folder / self.inst_id

    def output(self, timeframe: str = "1m") -> Path:
        return self.derived_dir / f"volume_{timeframe}.jsonl"

    @property
    def alerts(self) -> Path:
        """The instrument's alerts, one JSON line each (README "Alerts")."""
        return self.vault / "derived" / "alerts" / "okx" / self.kind.folder / self.inst_id / "alerts.jsonl"

    @property
    def state_dir(self) -> Path:
        return self.vault / "state" / "volume" / "okx" / self.kind.folder

    @property
    def state(self) -> Path:
        return self.state_dir / f"{self.inst_id}.state.json"

    @property
    def rejects(self) -> Path:
        return self.state_dir / f"{self.inst_id}.rejects.jsonl"

    @property
    def lock(self) -> Path:
        return self.state_dir / f"{self.inst_id}.lock"

    @property
    def late_marks(self) -> Path:
        """The exporter-format recording's list of trades live found late only by the wall
        clock (see :mod:`vstream.sources.late_marks`): vstream's own, so under ``state``."""
        return self.state_dir / f"{self.inst_id}.late.jsonl"


def discover(vault: Path | str) -> list[str]:
    """Instrument ids with at least one trade file in the vault, sorted.

    A folder without day files yet (a recorder just made it) is not listed. A vault that does
    not exist is a :class:`ConfigError`, as it is for every command.
    """
    vault = Path(vault)
    if not vault.is_dir():
        raise ConfigError(f"vault {vault} does not exist")
    base = vault / "raw" / "okx"
    found: set[str] = set()
    for kind in Kind:
        folder = base / f"trades_{kind.folder}"
        if folder.is_dir():
            for child in folder.iterdir():
                if not child.is_dir():
                    continue
                try:
                    if kind_of(child.name) is not kind:
                        continue
                    names = os.listdir(child)
                except ConfigError:
                    continue
                except OSError as exc:
                    raise ConfigError(f"cannot list {child}: {exc.strerror or exc}") from exc
                if any(DAY_FILE.match(name) for name in names):
                    found.add(child.name)
    return sorted(found)
