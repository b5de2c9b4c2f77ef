"""Writing trades into a vault the trader's other tools share: ``live --record``, ``import-okx``.

The vault's raw trade files are filled by the trader's own exporter and read by their other
tools (VWAP, wick tracker), which build a record from every key of a line. vstream writes into
them in the format they already hold:

* **Which format** (:func:`choose_format`): the one asked for (``--record-format`` /
  ``--format``), else the format of the instrument's own files (:func:`vault_format`, the
  newest file with a trade line), else, for an instrument with no trade lines yet, ``exporter``
  when every other instrument of the vault that has trade lines holds exporter lines (and at
  least one does): a vault the exporter fills gets its lines; otherwise ``okx``.
* **Exporter lines** (:class:`RecordStyle`): exactly the exporter's twelve keys in its order,
  every value a string (:func:`vstream.formats.exporter.encode`). ``ctVal``/``ctMult``/``ctType``
  are the instrument's as text: those of the vault's instrument file (``normalized``, else
  ``raw``, else a flat row's), else the resolved contract value (override, cache, built-in
  table; else the one stored in the instrument's state) as OKX writes numbers; ``""`` for spot.
  The format has no ``count``: a recorded record counts as one fill, so live feeds its bars
  with ``count`` 1 too (:meth:`RecordStyle.as_read`) and replay yields the very same bars.
* **Line ends** (:func:`newline_for`): those of the instrument's newest file with a complete
  line (CRLF or LF); an instrument with none yet gets the platform's (``os.linesep``: CRLF on
  Windows, as the exporter writes there). OKX-format lines are written with ``\\n``.
* **The instrument file** (:func:`write_meta`): ``meta/okx/instruments/{INSTID}.json`` in the
  exporter's shape, ``{"instId", "raw": OKX row, "normalized": {"ctVal", "ctMult", "ctType",
  "tickSz", "lotSz"}}``, every value a string, indented by 2, written atomically where there is
  none; an existing one is never touched.

Everything here but :class:`RecordStyle` does blocking file I/O.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from .errors import ConfigError
from .formats import FORMATS, Format, exporter
from .formats.common import Trade
from .instruments import Kind, VaultPaths, kind_of, load_cache, load_meta, meta_path, resolve
from .sources.replay import day_files, vault_format
from .state import write_atomic

log = logging.getLogger("vstream")

#: The contract facts the exporter's instrument file keeps in ``normalized``, in its order.
NORMALIZED_KEYS = ("ctVal", "ctMult", "ctType", "tickSz", "lotSz")


@dataclass(frozen=True, slots=True)
class RecordStyle:
    """How an instrument's trades are written as exporter lines: its ``contract`` texts and
    the line end. ``ct_val``/``inverse`` are those texts as a reader of the line takes them
    (see :meth:`of`). Pure: no I/O."""

    inst_id: str
    contract: exporter.Contract
    newline: bytes
    ct_val: float
    inverse: bool

    @classmethod
    def of(cls, inst_id: str, contract: exporter.Contract, newline: bytes) -> RecordStyle:
        """The style of ``contract``; a ``ctVal`` or ``ctType`` text no reader would take is a
        :class:`ConfigError` (its lines would be rejected)."""
        ct_val = exporter.ct_value(contract.ct_val) if contract.ct_val else 0.0
        if contract.ct_val and not ct_val > 0:
            raise ConfigError(f"{inst_id}: ctVal {contract.ct_val!r} is not a contract value")
        if contract.ct_type not in ("", "linear", "inverse"):
            raise ConfigError(f"{inst_id}: ctType {contract.ct_type!r} is not linear or inverse")
        if contract.ct_type:
            inverse = contract.ct_type == "inverse"
        else:
            inverse = exporter.default_inverse(inst_id)
        return cls(inst_id, contract, newline, ct_val, inverse)

    def line(self, trade: Trade) -> bytes:
        """``trade`` as one exporter line, its newline included."""
        return exporter.encode((trade,), self.contract, newline=self.newline)

    def as_read(self, trade: Trade) -> Trade:
        """``trade`` as a replay reads it back from :meth:`line`: one fill (the line has no
        ``count``) converted with the line's contract facts."""
        if trade.count == 1 and trade.ct_val == self.ct_val and trade.ct_inverse == self.inverse:
            return trade
        return msgspec.structs.replace(trade, count=1, ct_val=self.ct_val, ct_inverse=self.inverse)


# -- which format ---------------------------------------------------------------------------


def default_format(vault: Path, inst_id: str) -> Format:
    """The format vstream writes ``inst_id``'s trades in when none is asked for (module docs)."""
    paths = VaultPaths.of(vault, inst_id)
    own = vault_format(paths.raw_dir)
    if own is not None:
        return own
    others: set[Format] = set()
    base = vault / "raw" / "okx"
    for kind in Kind:
        folder = base / f"trades_{kind.folder}"
        try:
            children = sorted(folder.iterdir())
        except OSError:
            continue
        for child in children:
            if child.name == inst_id or not child.is_dir():
                continue
            found = vault_format(child)
            if found is not None:
                others.add(found)
    return "exporter" if others == {"exporter"} else "okx"


def choose_format(vault: Path, inst_id: str, requested: str | None) -> Format:
    """``requested`` (``okx``/``exporter``), or :func:`default_format`. A format other than
    the one the instrument's files hold is written as asked, with a warning."""
    if requested is None:
        return default_format(vault, inst_id)
    if requested not in FORMATS:
        raise ConfigError(f"line format must be okx or exporter, not {requested!r}")
    chosen: Format = "exporter" if requested == "exporter" else "okx"
    held = vault_format(VaultPaths.of(vault, inst_id).raw_dir)
    if held is not None and held != chosen:
        log.warning(
            "%s: writing %s lines into trade files that hold %s lines, as asked; the trader's "
            "other tools reading these files may not understand the new ones",
            inst_id, chosen, held,
        )
    return chosen


# -- line ends ------------------------------------------------------------------------------


def file_newline(path: Path) -> bytes | None:
    """The line end of ``path``'s first complete line (``\\r\\n`` or ``\\n``); None for a file
    without one (or that cannot be read)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 16)
            while b"\n" not in head:
                more = handle.read(1 << 16)
                if not more:
                    return None
                head += more
    except OSError:
        return None
    end = head.index(b"\n")
    return b"\r\n" if end > 0 and head[end - 1 : end] == b"\r" else b"\n"


def newline_for(raw_dir: Path) -> bytes:
    """The line end new lines of an instrument get: that of its newest plain day file with a
    complete line, else the platform's (``os.linesep``)."""
    for _day, path in reversed(day_files(raw_dir)):
        if path.name.endswith(".gz"):
            continue
        found = file_newline(path)
        if found is not None:
            return found
    return os.linesep.encode()


# -- contract texts -------------------------------------------------------------------------


class _Row(msgspec.Struct):
    ctVal: str | float | None = None
    ctMult: str | float | None = None
    ctType: str | None = None


class _Meta(_Row):
    normalized: _Row | None = None
    raw: _Row | None = None


def _text(value: str | float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return exporter.number_text(float(value))


def meta_contract(vault: Path, inst_id: str) -> exporter.Contract | None:
    """The contract texts of the vault's instrument file (``normalized``, else ``raw``, else a
    flat row's, key by key), or None where there is no file or it names no ``ctVal``."""
    if load_meta(vault, inst_id) is None:  # no file (an unreadable one is its ConfigError)
        return None
    try:
        meta = msgspec.json.decode(
            meta_path(vault, inst_id).read_bytes().removeprefix(b"\xef\xbb\xbf"), type=_Meta
        )
    except (OSError, msgspec.DecodeError):
        return None  # read fine a moment ago: replaced meanwhile; the resolved values do
    rows = [r for r in (meta.normalized, meta.raw, meta) if r is not None]

    def first(name: str) -> str:
        return next((t for t in (_text(getattr(r, name)) for r in rows) if t), "")

    market = kind_of(inst_id).market
    ct_val, ct_mult, ct_type = first("ctVal"), first("ctMult"), first("ctType")
    if market == "spot":
        return exporter.Contract(market=market, ct_mult=ct_mult or "1")
    if not ct_val:
        return None
    if not ct_type:  # as a reader of the line takes a missing one
        ct_type = "inverse" if exporter.default_inverse(inst_id) else "linear"
    return exporter.Contract(market=market, ct_val=ct_val, ct_mult=ct_mult or "1", ct_type=ct_type)


class _StoredShape(msgspec.Struct):
    ct_val: float | None = None


class _Stored(msgspec.Struct):
    settings: _StoredShape | None = None


def resolved_contract(
    vault: Path, inst_id: str, overrides: Mapping[str, float] | None = None
) -> exporter.Contract | None:
    """The contract texts of the resolved instrument (override, cache, built-in table; else
    the contract value stored in its state), or None where no contract value is known."""
    kind = kind_of(inst_id)
    if kind is Kind.SPOT:
        return exporter.Contract(market=kind.market)
    ins = resolve(inst_id, overrides, load_cache(vault), required=False)
    ct_val = ins.ct_val
    if ct_val is None:
        try:
            stored = msgspec.json.decode(VaultPaths.of(vault, inst_id).state.read_bytes(), type=_Stored)
        except (OSError, msgspec.DecodeError):
            stored = _Stored()
        if stored.settings is not None:
            ct_val = stored.settings.ct_val
    if ct_val is None or not ct_val > 0:
        return None
    return exporter.Contract(
        market=kind.market,
        ct_val=exporter.number_text(ct_val),
        ct_type="inverse" if ins.inverse else "linear",
    )


def record_style(
    vault: Path,
    inst_id: str,
    overrides: Mapping[str, float] | None = None,
    *,
    newline: bytes | None = None,
) -> RecordStyle:
    """How ``inst_id``'s trades are written as exporter lines into ``vault`` (module docs);
    ``newline`` defaults to :func:`newline_for` its files. No contract value anywhere is a
    :class:`ConfigError` naming the fixes."""
    contract = meta_contract(vault, inst_id)
    if contract is not None:
        try:
            return _style(vault, inst_id, contract, newline)
        except ConfigError as exc:
            log.warning(
                "%s: the vault's instrument file %s has contract facts no reader takes (%s); "
                "writing the resolved ones", inst_id, meta_path(vault, inst_id), exc,
            )
    contract = resolved_contract(vault, inst_id, overrides)
    if contract is None:
        raise ConfigError(
            f"no contract value (ctVal) known for {inst_id} to write its exporter lines with: put "
            f"it in the vault's meta/okx/instruments/{inst_id}.json, pass --ct-val "
            f"{inst_id}=VALUE (live), run `vstream live` once to fill the instrument cache, or "
            f"write OKX lines instead"
        )
    return _style(vault, inst_id, contract, newline)


def _style(vault: Path, inst_id: str, contract: exporter.Contract, newline: bytes | None) -> RecordStyle:
    if newline is None:
        newline = newline_for(VaultPaths.of(vault, inst_id).raw_dir)
    return RecordStyle.of(inst_id, contract, newline)


# -- the instrument file --------------------------------------------------------------------


def _string(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return exporter.number_text(float(value)) if isinstance(value, float) else str(value)
    return value  # a string, or a nested value OKX sent: kept as it came


def meta_bytes(inst_id: str, row: Mapping[str, Any]) -> bytes:
    """The exporter's instrument file for OKX instruments row ``row``: ``instId``, ``raw`` (the
    row, its plain values as strings) and ``normalized``, indented by 2 as ``json.dumps``
    does, without a final newline (as the exporter writes it)."""
    raw = {str(k): _string(v) for k, v in row.items()}
    normalized = {k: v if isinstance(v := raw.get(k, ""), str) else "" for k in NORMALIZED_KEYS}
    return json.dumps({"instId": inst_id, "raw": raw, "normalized": normalized}, indent=2).encode()


def write_meta(vault: Path, inst_id: str, row: Mapping[str, Any]) -> bool:
    """Write ``meta/okx/instruments/{INSTID}.json`` from ``row`` (see :func:`meta_bytes`)
    atomically where there is none; an existing file is left as it is. Whether it was
    written."""
    path = meta_path(vault, inst_id)
    if path.exists():
        return False
    if row.get("instId") != inst_id:
        raise ConfigError(f"an instruments row for {row.get('instId')!r} is not {inst_id}'s")
    write_atomic(path, meta_bytes(inst_id, row))
    return True


def cached_row(vault: Path, inst_id: str) -> dict[str, Any] | None:
    """The whole OKX instruments row of ``inst_id`` in the vault's instrument cache, if any."""
    return load_cache(vault).rows.get(inst_id)


__all__ = [
    "NORMALIZED_KEYS",
    "RecordStyle",
    "cached_row",
    "choose_format",
    "default_format",
    "file_newline",
    "meta_bytes",
    "meta_contract",
    "newline_for",
    "record_style",
    "resolved_contract",
    "write_meta",
]
