"""Reading the alerts files: only what the state records as durable, by byte offset.

A line past the recorded length may be cut back and made again by the next run, so readers
(``vstream alerts list``, the deliverer) stop at the length the state records, as ``signals``
does for bars. Reading never takes the instrument's lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, StateError
from ..instruments import Kind, VaultPaths, kind_of
from ..state import read_state

#: Bytes read at a time (alert lines are far shorter).
_CHUNK = 256 * 1024


@dataclass(frozen=True)
class AlertFile:
    """One instrument's alerts file as its state describes it."""

    inst_id: str
    path: Path
    #: Bytes of the file that are durable (the state's ``alerts_length``).
    length: int
    #: Bytes at its start made from history (never delivered unless asked for).
    history: int
    #: Changes when the file starts over (a rebuild, a file emptied by hand).
    generation: str
    #: A first run or rebuild has not caught up with its input yet.
    catching_up: bool


def alert_file(vault: Path, inst_id: str) -> AlertFile | None:
    """The alerts file of ``inst_id`` (None while it has none: no rules ever in force, or a
    rebuild has not named its new file yet). :class:`StateError` if the state is unreadable."""
    paths = VaultPaths.of(vault, inst_id)
    if not paths.state.exists():
        return None
    state = read_state(paths.state)
    if state.instId != inst_id:
        raise StateError(f"state {paths.state} belongs to {state.instId}")
    log = state.alerts
    if log is None or not log.generation:
        return None
    return AlertFile(inst_id, paths.alerts, state.alerts_length, min(log.history, state.alerts_length),
                     log.generation, log.catching_up)  # fmt: skip


def alert_instruments(vault: Path) -> list[str]:
    """Instruments with an alerts file in the vault, sorted."""
    found = []
    for kind in Kind:
        folder = vault / "derived" / "alerts" / "okx" / kind.folder
        if not folder.is_dir():
            continue
        for child in folder.iterdir():
            if (child / "alerts.jsonl").is_file():
                try:
                    if kind_of(child.name) is kind:
                        found.append(child.name)
                except ConfigError:
                    continue
    return sorted(found)


def read_lines(path: Path, start: int, limit: int, max_lines: int = 100) -> list[tuple[int, int, bytes]]:
    """Up to ``max_lines`` complete lines of ``path`` from byte ``start`` (a line start) up to
    byte ``limit``, as (start, end, line without its newline)."""
    out: list[tuple[int, int, bytes]] = []
    if start >= limit:
        return out
    with open(path, "rb") as handle:
        pos = start
        size = _CHUNK
        while pos < limit and len(out) < max_lines:
            handle.seek(pos)
            data = handle.read(min(size, limit - pos))
            if not data:
                break
            end = data.rfind(b"\n")
            if end < 0:
                if pos + len(data) >= limit:
                    break  # no complete line left before the limit
                size *= 2  # a line longer than the chunk
                continue
            for line in data[: end + 1].split(b"\n")[:-1]:
                out.append((pos, pos + len(line) + 1, line.rstrip(b"\r")))
                pos += len(line) + 1
                if len(out) >= max_lines:
                    break
    return out


__all__ = ["AlertFile", "alert_file", "alert_instruments", "read_lines"]
