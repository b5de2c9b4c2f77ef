"""One live worker per ``--worker-id``: a second is refused at start; a dead one's id is free.

A worker's record in ``VSTREAM_WORKERS`` is rewritten every round and expires ``lease_ttl``
after its last write, so a record that changes belongs to a live worker, and one that stays
as it is until it expires belonged to a dead one.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats_support import owners, wait_for, worker_records
from test_nats_processes import Worker

from vstream.cli import main
from vstream.errors import ConfigError
from vstream.nats.connect import WORKERS_BUCKET, ensure_streams, lease_buckets
from vstream.nats.worker import NatsWorker, WorkerInfo
from vstream.settings import Settings

TTL = 2.0


async def start(nc: Any, worker_id: str, ttl: float = TTL) -> tuple[NatsWorker, asyncio.Event, asyncio.Task[None]]:
    worker = NatsWorker(nc, Settings(), worker_id=worker_id, lease_ttl=ttl)
    stop = asyncio.Event()
    return worker, stop, asyncio.create_task(worker.run(stop))


async def announced(nc: Any, worker: NatsWorker) -> bool:
    """Whether ``worker``'s own record (its token) is the live one under its id."""
    record = (await worker_records(nc)).get(worker.worker_id)
    return record is not None and record.get("token") == worker.token


async def test_a_second_live_worker_with_the_same_id_is_refused_at_start(
    nats_server: Any, nc: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    first, stop, task = await start(nc, "w1", ttl=10.0)
    try:
        await wait_for(lambda: announced(nc, first), what="w1's record", seen=lambda: worker_records(nc))
        capsys.readouterr()
        code = await asyncio.to_thread(
            main, ["worker", "--nats", nats_server.url, "--worker-id", "w1", "--lease-ttl", "10"]
        )
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.count("\n") == 1 and "'w1'" in err and "another live worker" in err, err
        # The first one works on, its record untouched.
        assert not task.done()
        assert await announced(nc, first)
    finally:
        stop.set()
        await task
    assert await worker_records(nc) == {}  # a clean stop deletes the record


async def test_the_id_of_a_worker_that_stopped_is_free_at_once(nc: Any) -> None:
    first, stop, task = await start(nc, "w1", ttl=60.0)
    await wait_for(lambda: announced(nc, first), what="w1's record")
    stop.set()
    await task
    # The record was deleted: no waiting for a 60 s TTL.
    second, stop, task = await start(nc, "w1", ttl=60.0)
    try:
        await wait_for(lambda: announced(nc, second), what="the second w1's record", seen=lambda: worker_records(nc))
    finally:
        stop.set()
        await task


async def test_a_record_nobody_renews_is_waited_out_then_the_id_is_taken(nc: Any) -> None:
    """What a SIGKILLed worker leaves: a record that stays as it is until the TTL drops it."""
    js = nc.jetstream()
    _, workers = await lease_buckets(js, ttl=TTL)
    dead = WorkerInfo(worker="w1", host="elsewhere", pid=1, token="dead")
    await workers.put("w1", msgspec.json.encode(dead))
    worker, stop, task = await start(nc, "w1")
    try:
        await wait_for(lambda: announced(nc, worker), what="w1 taken over", seen=lambda: worker_records(nc))
        assert not task.done()
    finally:
        stop.set()
        await task


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_a_killed_workers_id_can_be_used_again(nats_server: Any, nc: Any, tmp_path: Path) -> None:
    from vstream.nats.connect import trades_subject

    await ensure_streams(nc.jetstream())
    leases, _ = await lease_buckets(nc.jetstream(), ttl=TTL)
    await nc.jetstream().publish(trades_subject("BTC-USDT-SWAP"), b"")  # an instrument to hold
    logs = tmp_path / "logs"
    logs.mkdir()
    killed = Worker(nats_server.url, "w1", logs)
    try:
        await wait_for(lambda: owners(leases), what="w1 to hold the instrument", seen=lambda: worker_records(nc))
        old = (await worker_records(nc))["w1"]
        killed.signal(signal.SIGKILL)
        killed.process.wait()
        worker, stop, task = await start(nc, "w1")
        try:
            await wait_for(lambda: announced(nc, worker), what="the new w1's record", seen=lambda: worker_records(nc))
            assert (await worker_records(nc))["w1"]["pid"] != old["pid"]

            async def holds() -> bool:
                return "BTC-USDT-SWAP" in worker.book.held and (await owners(leases)).get("BTC-USDT-SWAP") == "w1"

            await wait_for(holds, what="the new w1 to work the instrument", seen=lambda: owners(leases))
        finally:
            stop.set()
            await task
    finally:
        killed.stop()


async def test_a_worker_whose_id_another_took_stops_and_leaves_that_record(nc: Any) -> None:
    """Paused past its TTL, a worker's record expired and another worker with the same id took
    it: when the first announces itself again it finds a record not its own and stops."""
    worker, stop, task = await start(nc, "w1", ttl=10.0)
    await wait_for(lambda: announced(nc, worker), what="w1's record")
    kv = await nc.jetstream().key_value(WORKERS_BUCKET)
    other = WorkerInfo(worker="w1", host="elsewhere", pid=2, token="other")
    await kv.put("w1", msgspec.json.encode(other))  # as the new holder's claim writes it
    with pytest.raises(ConfigError, match="'w1' was taken by another worker"):
        await asyncio.wait_for(task, 60)
    stop.set()
    assert (await worker_records(nc))["w1"]["token"] == "other"
