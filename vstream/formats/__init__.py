"""The trade line formats vstream reads and writes, one module each.

- :mod:`~vstream.formats.okx`: OKX's own trade objects (and, read only, its websocket push
  envelopes and control messages);
- :mod:`~vstream.formats.exporter`: the trader's exporter lines (``timestamp_utc``,
  ``trade_id``, ``price``, ``qty_contracts``, ``ctVal`` ...).

Both decode to :class:`~vstream.formats.common.Trade`; :class:`vstream.trades.LineDecoder`
reads any mix of them. Writers (``live --record``, ``import-okx``, ``publish``) keep the
format a vault already holds: :func:`sniff` tells which one a file's lines are in.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal

import msgspec

from . import exporter, okx
from .common import Trade

Format = Literal["okx", "exporter"]
FORMATS: Final[tuple[Format, ...]] = ("okx", "exporter")

_any = msgspec.json.Decoder()


def sniff(line: bytes) -> Format | None:
    """The format of one complete line (a trailing ``\\r`` allowed): ``exporter`` for an
    exporter trade line, ``okx`` for an OKX trade object or push, None for anything else (a
    blank or broken line, a control message)."""
    text = line.strip()
    if not text.startswith(b"{"):
        return None
    try:
        obj = _any.decode(text)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    if exporter.is_exporter(obj):
        return "exporter"
    if "tradeId" in obj or isinstance(obj.get("data"), list):
        return "okx"
    return None


def sniff_lines(lines: Sequence[bytes]) -> Format | None:
    """The format of the first line among ``lines`` that has one."""
    for line in lines:
        found = sniff(line)
        if found is not None:
            return found
    return None


#: How much of a file :func:`sniff_file` reads: a few lines are enough.
_SNIFF_BYTES = 64 << 10


def sniff_file(path: Path) -> Format | None:
    """The format of the first line with one among the first lines of a trade file (plain
    or ``.gz``); None for a file with none yet. Blocking I/O; an unreadable file is None."""
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                head = f.read(_SNIFF_BYTES)
        else:
            with open(path, "rb") as f:
                head = f.read(_SNIFF_BYTES)
    except (OSError, EOFError, zlib.error):
        return None
    lines = head.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    return sniff_lines(lines[:-1] if len(lines) > 1 else lines)


_wire = msgspec.json.Encoder()


def wire_lines(trades: list[Trade]) -> bytes:
    """``trades`` as lines any :class:`~vstream.trades.LineDecoder` reads back to equal
    trades, for messages between vstream processes (JetStream): each trade as its Struct
    encodes (OKX's keys) in one C call, except trades decoded from exporter lines or with
    their own contract facts, which only exporter lines (with ``count``) carry."""
    if not any(t.ct_val > 0.0 or type(t) in exporter.STRUCT_TYPES for t in trades):
        return _wire.encode_lines(trades)
    contract = exporter.Contract(market="")
    out: list[bytes] = []
    for t in trades:
        if t.ct_val > 0.0 or type(t) in exporter.STRUCT_TYPES:
            out.append(exporter.encode((t,), contract, newline=b"\n", counts=True))
        else:
            out.append(_wire.encode(t) + b"\n")
    return b"".join(out)


__all__ = ["FORMATS", "Format", "exporter", "okx", "sniff", "sniff_file", "sniff_lines", "wire_lines"]
