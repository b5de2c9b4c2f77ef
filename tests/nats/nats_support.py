"""Helpers of the distributed-mode tests (this folder is on sys.path while they run).

Tests wait for *states* of the server — who holds a lease, what a worker announced, how far a
checkpoint is, which bars are in the stream, a file's content — by polling them with
:func:`wait_for` and a generous deadline; never for a log line, never for a fixed time. The
machine may be loaded (two cores, other test runs beside): a deadline is only there so a test
that can never pass fails, saying what it saw, instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from vstream.cli import main
from vstream.instruments import VaultPaths

#: Seconds a test waits for a state that should come soon. Generous on purpose: a loaded machine
#: is slow, and a state that comes passes at once however long the deadline is.
PATIENCE = 120.0


async def replay_final(vault: Path, *insts: str, extra: tuple[str, ...] = ()) -> None:
    """The local reference: ``vstream replay --final`` (in a thread: the test owns the loop)."""
    args = ["-q", "replay", "--vault", str(vault), "--final", *extra]
    for inst in insts:
        args += ["--instId", inst]
    assert await asyncio.to_thread(main, args) == 0


async def read_subjects(nc: Any, stream: str, subject: str) -> list[tuple[str, bytes, dict[str, str]]]:
    """Every message on ``subject`` (wildcards allowed) now in ``stream``: (subject, body, headers).

    How many there are is asked first, then exactly that many are read (each with a generous
    wait): a slow server makes this slow, never short.
    """
    from nats.js.api import ConsumerConfig, DeliverPolicy

    js = nc.jetstream()
    info = await js.stream_info(stream, subjects_filter=subject)
    count = sum((info.state.subjects or {}).values())
    out: list[tuple[str, bytes, dict[str, str]]] = []
    if count == 0:
        return out
    sub = await js.subscribe(
        subject, ordered_consumer=True, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    )
    try:
        while True:
            msg = await sub.next_msg(timeout=30)
            out.append((msg.subject, msg.data, dict(msg.headers or {})))
            if len(out) >= count or msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out


def bar_lines(messages: list[tuple[str, bytes, dict[str, str]]], inst_id: str, tf: str = "1m") -> bytes:
    """The bars of one instrument and timeframe as the file ``sink-jsonl`` would write."""
    subject = f"vstream.bars.{inst_id}.{tf}"
    return b"".join(body + b"\n" for s, body, _ in messages if s == subject)


def local_output(vault: Path, inst_id: str, tf: str = "1m") -> bytes:
    return VaultPaths.of(vault, inst_id).output(tf).read_bytes()


async def _value(thing: Callable[[], Any]) -> Any:
    result = thing()
    if asyncio.iscoroutine(result):
        result = await result
    return result


async def wait_for(
    predicate: Callable[[], Any],
    seconds: float = PATIENCE,
    what: str = "a state",
    *,
    seen: Callable[[], Any] | None = None,
    every: float = 0.05,
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something true; return that.

    An exception of the predicate counts as "not yet" (a server failing over, a file being
    written). After ``seconds`` it fails, naming ``what`` and what was seen last: ``seen()``
    (sync or async) if given, else the predicate's last result or exception.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    last: Any = None
    while True:
        try:
            result = await _value(predicate)
        except Exception as exc:
            result, last = None, exc
        else:
            if result:
                return result
            last = result
        if loop.time() > deadline:
            if seen is not None:
                try:
                    last = await _value(seen)
                except Exception as exc:
                    last = exc
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what}; last seen: {last!r}")
        await asyncio.sleep(every)


# -- states of the cluster -------------------------------------------------------------------


async def leases_of(leases: Any) -> dict[str, tuple[str, int]]:
    """``instId -> (owner, revision)`` of the live keys of ``VSTREAM_LEASES``."""
    from nats.js.errors import KeyNotFoundError

    from vstream.nats.connect import LEASES_BUCKET, live_keys

    out: dict[str, tuple[str, int]] = {}
    for key in await live_keys(leases._js, LEASES_BUCKET):
        try:
            entry = await leases.get(key)
        except KeyNotFoundError:
            continue  # expired or released since the listing
        if entry.value:
            out[key] = (msgspec.json.decode(entry.value)["owner"], int(entry.revision or 0))
    return out


async def owners(leases: Any) -> dict[str, str]:
    """``instId -> owner`` of the live leases."""
    return {inst: owner for inst, (owner, _) in (await leases_of(leases)).items()}


async def worker_records(nc: Any) -> dict[str, dict[str, Any]]:
    """``worker id -> record`` of the live keys of ``VSTREAM_WORKERS`` (with its ``revision``)."""
    from nats.js.errors import BucketNotFoundError, KeyNotFoundError

    from vstream.nats.connect import WORKERS_BUCKET, live_keys

    try:
        kv = await nc.jetstream().key_value(WORKERS_BUCKET)
    except BucketNotFoundError:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for key in await live_keys(nc.jetstream(), WORKERS_BUCKET):
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            continue
        if entry.value:
            out[key] = {**msgspec.json.decode(entry.value), "revision": int(entry.revision or 0)}
    return out


async def progress(nc: Any, insts: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per instrument: the trades subject's last sequence and the last checkpoint's position."""
    from nats.js.errors import NotFoundError

    from vstream.nats.connect import BARS_STREAM, TRADES_STREAM, ckpt_subject, trades_subject
    from vstream.nats.core import decode_checkpoint

    js = nc.jetstream()
    out: dict[str, dict[str, Any]] = {}
    for inst in insts:
        row: dict[str, Any] = {"last_trades_seq": 0, "ckpt_seq": 0, "ckpt_part": 0, "owner": None}
        with contextlib.suppress(NotFoundError):
            row["last_trades_seq"] = int((await js.get_last_msg(TRADES_STREAM, trades_subject(inst))).seq or 0)
        try:
            raw = await js.get_last_msg(BARS_STREAM, ckpt_subject(inst))
        except NotFoundError:
            pass
        else:
            ckpt = decode_checkpoint(raw.data, inst)
            row.update(ckpt_seq=ckpt.seq, ckpt_part=ckpt.part, owner=ckpt.owner)
        out[inst] = row
    return out


async def consumed(nc: Any, insts: Iterable[str]) -> bool:
    """Whether every instrument's checkpoint covers its last trade message whole.

    Then its bars are final: a later bar would need a trade message after the checkpoint, and
    a batch of a worker that lost the instrument is refused by the fence.
    """
    rows = await progress(nc, insts)
    return all(r["last_trades_seq"] > 0 and r["ckpt_seq"] >= r["last_trades_seq"] and r["ckpt_part"] == 0 for r in rows.values())


class LeaseLog:
    """Every write to ``VSTREAM_LEASES`` as the server stamped it, from a watcher: timing
    measured on the server's clock, whatever delays the test process itself."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str | None, datetime]] = []  # key, owner (None: deleted), time
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, leases: Any) -> None:
        self._watcher = await leases.watchall()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for entry in self._watcher:
            if entry is None:
                continue  # the end of what was there at the start
            owner = msgspec.json.decode(entry.value)["owner"] if entry.operation is None and entry.value else None
            self.writes.append((entry.key, owner, entry.created))

    def takeover_seconds(self, key: str, victim: str) -> float | None:
        """Seconds from ``victim``'s last write of ``key`` to another owner's first one after."""
        last = max((t for k, o, t in self.writes if k == key and o == victim), default=None)
        if last is None:
            return None
        first = min((t for k, o, t in self.writes if k == key and o not in (None, victim) and t > last), default=None)
        return None if first is None else (first - last).total_seconds()

    async def stop(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
