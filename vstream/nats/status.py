"""``vstream cluster-status``: who works each instrument and how far behind the trades it is.

Everything is read from the server (nothing is changed but a short-lived ephemeral consumer
per lagging instrument, used to count the trade messages after the worker's position):

* the lease (bucket ``VSTREAM_LEASES``): owner, age of its last renewal (server time), when it
  expires without renewal;
* the worker's position: the trades-stream sequence of the last trade message it consumed —
  what it announced in ``VSTREAM_WORKERS`` (about every second), else its last checkpoint;
* the trades subject's last sequence, and how many trade messages (and, when there are few,
  trades) come after the worker's position;
* the lag in seconds: the newest trade in the stream against the newest trade the worker fed;
* the last 1m bar and how long ago its minute ended.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import ConfigError, VStreamError
from .connect import (
    BARS_STREAM,
    LEASES_BUCKET,
    TRADES_PREFIX,
    TRADES_STREAM,
    WORKERS_BUCKET,
    bars_subject,
    ckpt_subject,
    live_keys,
    trades_subject,
    translate,
)
from .core import Checkpoint, decode_checkpoint

if TYPE_CHECKING:
    from nats.aio.client import Client

#: Trade messages read to count trades exactly; beyond this only messages are counted.
COUNT_TRADES_UP_TO = 200


class _Ts(msgspec.Struct):
    ts: int | str = 0


class _Stamp(msgspec.Struct):
    timestamp_utc: str = ""


class _Lease(msgspec.Struct):
    owner: str = ""
    written_ms: int = 0


class _Worker(msgspec.Struct):
    worker: str = ""
    host: str = ""
    pid: int = 0
    instruments: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    written_ms: int = 0


_ts_lines = msgspec.json.Decoder(_Ts)


@dataclass(slots=True)
class InstrumentHealth:
    """One instrument's line of ``cluster-status``."""

    instId: str
    owner: str | None = None
    lease_age_s: float | None = None
    lease_expires_in_s: float | None = None
    done_seq: int = 0  # trades-stream sequence the worker has consumed up to
    last_seq: int = 0  # the trades subject's last sequence
    behind_messages: int = 0
    behind_trades: int | None = 0  # None: too many messages behind to count them
    lag_s: float | None = None
    checkpoint_age_s: float | None = None
    last_bar: str | None = None
    bar_age_s: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(slots=True)
class WorkerHealth:
    """One worker's line: what it announced in ``VSTREAM_WORKERS``."""

    worker: str
    host: str
    pid: int
    instruments: list[str]
    announced_age_s: float
    behind_messages: int


@dataclass(slots=True)
class ClusterStatus:
    instruments: list[InstrumentHealth]
    workers: list[WorkerHealth]
    lease_ttl: float | None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(i.ok for i in self.instruments)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "lease_ttl": self.lease_ttl,
            "problems": self.problems,
            "instruments": [asdict(i) for i in self.instruments],
            "workers": [asdict(w) for w in self.workers],
        }


def newest_ts(body: bytes) -> int:
    """The newest ``ts`` among the trade lines of a trades message (0 if none)."""
    newest = 0
    for line in body.splitlines():
        if not line.strip():
            continue
        with contextlib.suppress(msgspec.DecodeError, ValueError):
            ts = int(_ts_lines.decode(line).ts)
            newest = max(newest, ts)
    return newest


async def _last(nc: Client, stream: str, subject: str) -> Any:
    from nats.js.errors import NotFoundError

    try:
        return await nc.jetstream().get_last_msg(stream, subject)
    except NotFoundError:
        return None


async def _count_after(nc: Client, subject: str, after: int) -> tuple[int, int | None]:
    """Trade messages on ``subject`` after sequence ``after``, and their trades (if few)."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    js = nc.jetstream()
    name = "vstream-status-" + secrets.token_hex(6)
    config = ConsumerConfig(
        name=name, filter_subject=subject, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=after + 1, ack_policy=AckPolicy.NONE, mem_storage=True, num_replicas=1,
        inactive_threshold=10.0,
    )
    info = await js.add_consumer(TRADES_STREAM, config)
    try:
        pending = int(info.num_pending or 0)
        if pending == 0 or pending > COUNT_TRADES_UP_TO:
            return pending, 0 if pending == 0 else None
        sub = await js.pull_subscribe_bind(name, stream=TRADES_STREAM)
        trades = 0
        seen = 0
        try:
            while seen < pending:
                msgs = await sub.fetch(min(pending - seen, 100), timeout=2.0)
                for msg in msgs:
                    trades += sum(1 for line in msg.data.splitlines() if line.strip())
                seen += len(msgs)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return pending, trades
    finally:
        with contextlib.suppress(Exception):
            await js.delete_consumer(TRADES_STREAM, name)


async def _kv_entries(nc: Client, bucket: str) -> dict[str, tuple[bytes, float]]:
    """``key -> (value, server time of its last write)`` of a bucket's live keys."""
    js = nc.jetstream()
    keys = await live_keys(js, bucket)
    out: dict[str, tuple[bytes, float]] = {}
    for key in keys:
        raw = await _last(nc, f"KV_{bucket}", f"$KV.{bucket}.{key}")
        if raw is None:
            continue
        operation = (raw.headers or {}).get("KV-Operation", "")
        if operation in ("DEL", "PURGE"):
            continue
        when = raw.time.timestamp() if raw.time is not None else time.time()
        out[key] = (raw.data or b"", when)
    return out


async def _lease_ttl(nc: Client) -> float | None:
    from nats.js.errors import BucketNotFoundError, NotFoundError

    try:
        kv = await nc.jetstream().key_value(LEASES_BUCKET)
        status = await kv.status()
    except (BucketNotFoundError, NotFoundError):
        return None
    return float(status.ttl) if status.ttl else None


async def cluster_status(
    nc: Client,
    inst_ids: list[str] | None = None,
    *,
    now: float | None = None,
    max_lag: float = 120.0,
) -> ClusterStatus:
    """Read the cluster's state; ``max_lag`` seconds of trades behind is a problem."""
    from nats.js.errors import NotFoundError

    now = time.time() if now is None else now
    js = nc.jetstream()
    problems: list[str] = []
    try:
        try:
            info = await js.stream_info(TRADES_STREAM, subjects_filter=TRADES_PREFIX + ">")
            subjects = info.state.subjects or {}
        except NotFoundError:
            subjects = {}
            problems.append(f"stream {TRADES_STREAM} does not exist: nothing was published yet")
        ttl = await _lease_ttl(nc)
        leases = await _kv_entries(nc, LEASES_BUCKET)
        announced = await _kv_entries(nc, WORKERS_BUCKET)
    except VStreamError:
        raise
    except Exception as exc:
        raise translate(exc, "reading the cluster's state") from exc
    in_stream = {s[len(TRADES_PREFIX):] for s in subjects if s.startswith(TRADES_PREFIX)}
    names = inst_ids if inst_ids is not None else sorted(in_stream | set(leases))

    workers: dict[str, tuple[_Worker, float]] = {}
    for key, (value, when) in announced.items():
        try:
            workers[key] = (msgspec.json.decode(value, type=_Worker), when)
        except msgspec.DecodeError:
            problems.append(f"worker record {key!r} in {WORKERS_BUCKET} is unreadable")

    out: list[InstrumentHealth] = []
    for inst in names:
        health = InstrumentHealth(inst)
        try:
            await _instrument(nc, health, inst in in_stream, leases, workers, ttl, now, max_lag)
        except VStreamError as exc:
            health.problems.append(str(exc))
        except Exception as exc:
            health.problems.append(str(translate(exc, f"reading {inst}")))
        out.append(health)

    worker_lines = []
    for key, (record, when) in sorted(workers.items()):
        mine = sorted(i for i, h in ((h.instId, h) for h in out) if h.owner == key)
        worker_lines.append(
            WorkerHealth(
                worker=record.worker or key, host=record.host, pid=record.pid,
                instruments=mine, announced_age_s=round(max(0.0, now - when), 3),
                behind_messages=sum(h.behind_messages for h in out if h.owner == key),
            )
        )
    return ClusterStatus(out, worker_lines, ttl, problems)


async def _instrument(
    nc: Client,
    health: InstrumentHealth,
    has_trades: bool,
    leases: dict[str, tuple[bytes, float]],
    workers: dict[str, tuple[_Worker, float]],
    ttl: float | None,
    now: float,
    max_lag: float,
) -> None:
    inst = health.instId
    lease = leases.get(inst)
    if lease is not None:
        try:
            health.owner = msgspec.json.decode(lease[0], type=_Lease).owner or None
        except msgspec.DecodeError:
            health.problems.append("its lease is unreadable")
        health.lease_age_s = round(max(0.0, now - lease[1]), 3)
        if ttl is not None:
            health.lease_expires_in_s = round(ttl - health.lease_age_s, 3)
    ckpt: Checkpoint | None = None
    raw = await _last(nc, BARS_STREAM, ckpt_subject(inst))
    if raw is not None and raw.data:
        ckpt = decode_checkpoint(raw.data, inst)
        health.checkpoint_age_s = round(max(0.0, now - ckpt.written_ms / 1000), 3) if ckpt.written_ms else None
    done_seq = ckpt.seq if ckpt is not None else 0
    fed_ts = ckpt.trade_ts if ckpt is not None else 0
    if health.owner is not None and health.owner in workers:
        live = workers[health.owner][0].instruments.get(inst)
        if live and live.get("seq", 0) > done_seq:
            done_seq = live["seq"]
            fed_ts = max(fed_ts, live.get("trade_ts", 0))
    health.done_seq = done_seq
    last = await _last(nc, TRADES_STREAM, trades_subject(inst)) if has_trades else None
    if last is not None:
        health.last_seq = int(last.seq or 0)
        if health.last_seq > done_seq:
            health.behind_messages, health.behind_trades = await _count_after(nc, trades_subject(inst), done_seq)
        newest = newest_ts(last.data or b"")
        if newest and fed_ts:
            health.lag_s = round(max(0.0, (newest - fed_ts) / 1000), 3)
        elif newest:
            health.lag_s = round(max(0.0, now - newest / 1000), 3)  # nothing fed yet
        if health.behind_messages == 0:
            health.lag_s = 0.0
    bar = await _last(nc, BARS_STREAM, bars_subject(inst, "1m"))
    if bar is not None and bar.data:
        with contextlib.suppress(msgspec.DecodeError, ValueError):
            health.last_bar = msgspec.json.decode(bar.data, type=_Stamp).timestamp_utc or None
            if health.last_bar:
                start = datetime.strptime(health.last_bar, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
                health.bar_age_s = round(max(0.0, now - (start + 60)), 3)
    # What needs a person.
    if health.owner is None and has_trades:
        health.problems.append("no worker holds its lease (start a worker, or it is being taken over)")
    elif health.owner is not None and health.owner not in workers:
        expires = f"; the lease expires in {health.lease_expires_in_s:.1f} s" if health.lease_expires_in_s is not None else ""
        health.problems.append(f"its owner {health.owner} is not announced in {WORKERS_BUCKET} (stopped?){expires}")
    if health.lag_s is not None and health.lag_s > max_lag:
        health.problems.append(f"{health.lag_s:.0f} s of trades behind (more than --max-lag {max_lag:g} s)")
    if not has_trades and health.owner is None:
        health.problems.append("no trades in the stream and no lease: unknown instrument")


def format_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f}s"
    from ..query import format_duration

    return format_duration(value)


def format_status(status: ClusterStatus) -> list[str]:
    """The table ``cluster-status`` prints, then one line per problem."""
    from ..query import format_table

    header = ["instId", "owner", "lease_age", "expires_in", "done_seq", "last_seq", "behind_msgs",
              "behind_trades", "lag", "last_bar", "bar_age", "health"]
    rows = []
    for h in status.instruments:
        rows.append([
            h.instId, h.owner or "-", format_seconds(h.lease_age_s), format_seconds(h.lease_expires_in_s),
            str(h.done_seq), str(h.last_seq), str(h.behind_messages),
            "many" if h.behind_trades is None else str(h.behind_trades),
            format_seconds(h.lag_s), h.last_bar or "-", format_seconds(h.bar_age_s),
            "ok" if h.ok else "PROBLEM",
        ])
    lines = format_table(header, rows, {4, 5, 6, 7})
    if status.workers:
        lines.append("")
        lines += format_table(
            ["worker", "host", "pid", "instruments", "announced", "behind_msgs"],
            [[w.worker, w.host, str(w.pid), str(len(w.instruments)), format_seconds(w.announced_age_s) + " ago",
              str(w.behind_messages)] for w in status.workers],
            {2, 3, 5},
        )
    else:
        lines.append("no worker announced")
    for problem in status.problems:
        lines.append(f"PROBLEM: {problem}")
    for h in status.instruments:
        for problem in h.problems:
            lines.append(f"{h.instId}: PROBLEM: {problem}")
    return lines


def check_max_lag(value: float) -> float:
    if not value >= 0:
        raise ConfigError("--max-lag must be >= 0")
    return value


__all__ = ["ClusterStatus", "InstrumentHealth", "WorkerHealth", "cluster_status", "format_status", "newest_ts"]
