"""How alert delivery stands, for ``vstream status``: each destination's delivered count,
the alerts waiting for it, and whether it is failing or nobody is delivering to it."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from ..errors import StateError
from .deliver import DestinationState, deliveries_dir, load_cursor
from .detect import Alert
from .files import alert_file, alert_instruments, read_lines

#: A destination with alerts waiting is behind (a problem) once no deliverer has looked at
#: the files for this long: a running deliverer looks at least every 30 s.
STALE_SECONDS = 120.0
_decoder = msgspec.json.Decoder(Alert)


@dataclass
class DestinationStatus:
    """One destination, as ``vstream status`` prints it."""

    destination: str
    type: str = ""
    delivered: int = 0
    waiting: int = 0
    checked_at: str = ""
    last_ok_at: str = ""
    failing_since: str = ""
    attempts: int = 0
    last_error: str = ""
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def waiting_alerts(vault: Path, state: DestinationState) -> int:
    """Durable alerts past the destination's cursors (and its history) that it takes."""
    count = 0
    for inst in alert_instruments(vault):
        if state.instIds is not None and inst not in state.instIds:
            continue
        af = alert_file(vault, inst)
        if af is None:
            continue
        cursor = state.instruments.get(inst)
        offset = cursor.offset if cursor is not None and cursor.generation == af.generation else 0
        pos = offset if state.deliver_history else max(offset, af.history)
        while True:
            lines = read_lines(af.path, pos, af.length, 10_000)
            if not lines:
                break
            for _, end, line in lines:
                pos = end
                try:
                    alert = _decoder.decode(line)
                except msgspec.DecodeError:
                    continue
                if state.kinds is not None and alert.kind not in state.kinds:
                    continue
                if state.rules is not None and alert.kind == "bar" and alert.rule not in state.rules:
                    continue
                count += 1
    return count


def _age(stamp: str, now: float) -> float | None:
    try:
        return now - datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def delivery_status(vault: Path, now: float | None = None, stale: float = STALE_SECONDS) -> list[DestinationStatus]:
    """Every destination that has a delivery state in the vault (a deliverer ran for it)."""
    now = time.time() if now is None else now
    folder = deliveries_dir(vault)
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.json")):
        name = path.stem
        status = DestinationStatus(name)
        out.append(status)
        try:
            state = load_cursor(vault, name)
        except StateError as exc:
            status.problems.append(str(exc))
            continue
        if state is None:
            continue
        status.type = state.type
        status.delivered = state.delivered
        status.checked_at, status.last_ok_at = state.checked_at, state.last_ok_at
        status.failing_since, status.attempts, status.last_error = state.failing_since, state.attempts, state.last_error
        try:
            status.waiting = waiting_alerts(vault, state)
        except (OSError, StateError) as exc:
            status.problems.append(f"cannot count the alerts waiting: {exc}")
        if state.failing_since:
            status.problems.append(
                f"failing since {state.failing_since} ({state.attempts} attempts): {state.last_error}"
            )
        if status.waiting:
            age = _age(state.checked_at, now)
            if age is None or age > stale:
                since = f"since {state.checked_at}" if state.checked_at else "ever"
                status.problems.append(f"behind: {status.waiting} alerts waiting, no deliverer has looked {since}")
            elif not state.failing_since:
                status.notes.append(f"{status.waiting} alerts waiting (a deliverer is at work)")
    return out


def delivery_lines(found: list[DestinationStatus]) -> list[str]:
    """The lines ``vstream status`` prints under its table, one per destination and problem."""
    lines = []
    for st in found:
        health = "ok" if st.ok else "PROBLEM"
        lines.append(
            f"alerts {st.destination} ({st.type or '?'}): delivered {st.delivered}, waiting {st.waiting}, {health}"
        )
        lines += [f"alerts {st.destination}: PROBLEM: {p}" for p in st.problems]
        lines += [f"alerts {st.destination}: note: {n}" for n in st.notes]
    return lines


__all__ = ["STALE_SECONDS", "DestinationStatus", "delivery_lines", "delivery_status", "waiting_alerts"]
