"""A 3-node JetStream cluster (R3 streams): killing the bars stream's leader mid-run loses and
doubles no bar."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats_support import consumed, progress, wait_for
from test_nats_processes import INSTS, TFS, Worker, expected_bars, grow

from vstream.errors import VStreamError
from vstream.generate import generate_vault
from vstream.nats.connect import BARS_STREAM, connect, ensure_streams, lease_buckets
from vstream.nats.ingest import publish_vault
from vstream.testing.nats_server import NatsCluster

pytestmark = pytest.mark.slow
TTL = 2.0


@pytest.fixture
async def cluster() -> AsyncIterator[NatsCluster]:
    nodes = NatsCluster.start(3, timeout=60.0)
    try:
        yield nodes
    finally:
        nodes.stop()


async def publish_retrying(nc: Any, vault: Path, inst: str, *, final: bool = False) -> None:
    """``publish`` is resumable: after a failure during the fail-over, run it again."""
    for _ in range(60):
        try:
            await publish_vault(nc, vault, inst, final=final, chunk_bytes=8 << 10, ack_wait=2.0)
            return
        except VStreamError:
            await asyncio.sleep(0.5)  # a pause between attempts while the cluster elects, not a wait
    raise AssertionError(f"could not publish {inst}")


async def test_killing_the_stream_leader_loses_and_doubles_nothing(cluster: NatsCluster, tmp_path: Path) -> None:
    from test_nats_processes import read_subjects  # the same reader, over the cluster

    vault = tmp_path / "Vault"
    generate_vault(vault, instruments=INSTS, hours=1, seed=23)
    expected = await expected_bars(tmp_path, vault)
    grown = tmp_path / "Grown"
    nc = await connect(cluster.url)
    logs = tmp_path / "logs"
    logs.mkdir()
    workers: list[Worker] = []
    try:
        js = nc.jetstream()

        async def setup() -> bool:
            try:
                await ensure_streams(js, replicas=3)
                await lease_buckets(js, ttl=TTL, replicas=3)
            except VStreamError:
                return False
            return True

        await wait_for(setup, what="the cluster to accept R3 streams")
        workers = [Worker(cluster.url, f"w{i}", logs, extra=("--replicas", "3")) for i in range(2)]
        for inst in INSTS:
            grow(vault, grown, inst, 0.5)
            await publish_retrying(nc, grown, inst)

        async def working() -> bool:
            # Mid-run: every instrument taken over by a worker, and bars being written.
            rows = await progress(nc, INSTS)
            bars = await js.stream_info(BARS_STREAM, subjects_filter="vstream.bars.>")
            return all(r["owner"] for r in rows.values()) and bool(bars.state.subjects)

        await wait_for(working, what="the workers to work every instrument", seen=lambda: progress(nc, INSTS))
        info = await js.stream_info(BARS_STREAM)
        assert info.cluster is not None and info.cluster.leader
        leader = next(n for n in cluster.nodes if n.name == info.cluster.leader)
        leader.kill()
        for inst in INSTS:
            grow(vault, grown, inst, 1.0)
            await publish_retrying(nc, grown, inst, final=True)
        want = sum(body.count(b"\n") for body in expected.values())
        try:
            # Every checkpoint covers its last trade message: the bars are final.
            await wait_for(
                lambda: consumed(nc, INSTS), what="every trade consumed after the fail-over",
                seen=lambda: progress(nc, INSTS),
            )
        except AssertionError as exc:
            logs_text = "\n".join(w.stderr()[-3000:] for w in workers)
            raise AssertionError(f"{exc}; workers said:\n{logs_text}") from None
        messages = await read_subjects(nc, BARS_STREAM, "vstream.bars.>")
        for (inst, tf), body in expected.items():
            got = b"".join(b + b"\n" for s, b, _ in messages if s == f"vstream.bars.{inst}.{tf}")
            assert got == body, (inst, tf)
        assert len(messages) == want
    finally:
        for worker in workers:
            worker.stop()
        await nc.close()
    assert TFS
