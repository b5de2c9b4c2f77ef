"""``vstream cluster-status`` against a real server, before, while and after workers run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats_support import wait_for

from vstream.cli import main
from vstream.generate import generate_vault
from vstream.nats.connect import ensure_streams, lease_buckets
from vstream.nats.ingest import publish_vault
from vstream.nats.worker import LeaseValue, NatsWorker
from vstream.settings import Settings

BTC, ETH = "BTC-USDT-SWAP", "ETH-USDT-SWAP"


async def status(capsys: pytest.CaptureFixture[str], url: str, *extra: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["cluster-status", "--nats", url, "--json", *extra])
    out = capsys.readouterr().out
    return code, json.loads(out)


def by_inst(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["instId"]: row for row in report["instruments"]}


async def test_cluster_status_owners_lag_and_workers(
    nats_server: Any, nc: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = nats_server.url
    vault = tmp_path / "Vault"
    generate_vault(vault, instruments=(BTC, ETH), hours=1, seed=9)
    await ensure_streams(nc.jetstream())
    published = {}
    for inst in (BTC, ETH):
        summary = await publish_vault(nc, vault, inst, chunk_bytes=64 << 10)
        published[inst] = summary

    # Before any worker: nobody owns anything, everything is behind (counted in trades).
    code, report = await status(capsys, url)
    assert code == 1 and not report["ok"]
    rows = by_inst(report)
    assert sorted(rows) == [BTC, ETH]
    for inst, row in rows.items():
        assert row["owner"] is None and row["done_seq"] == 0
        assert row["behind_messages"] == published[inst].messages
        assert row["behind_trades"] == published[inst].trades
        assert any("no worker holds its lease" in p for p in row["problems"])
        assert any("of trades behind" in p for p in row["problems"])

    stop = asyncio.Event()
    workers = [
        NatsWorker(nc, Settings(), worker_id=f"w{i}", lease_ttl=30.0, checkpoint_interval=0.2) for i in range(2)
    ]
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    try:
        seen: list[dict[str, Any]] = []

        async def caught_up() -> dict[str, Any] | None:
            code, report = await status(capsys, url)
            seen[:] = [report]
            healthy = (
                code == 0 and len(report["workers"]) == 2
                and all(row["behind_messages"] == 0 for row in report["instruments"])
                # Shared out: the first worker up may hold both until the second announces itself.
                and len({row["owner"] for row in report["instruments"]}) == 2
            )
            return report if healthy else None

        # The report that showed a healthy cluster is the one checked (the next call could
        # see a moment of another state on a loaded machine).
        report = await wait_for(caught_up, what="a healthy cluster", seen=lambda: seen)
        rows = by_inst(report)
        for row in rows.values():
            assert row["owner"] in ("w0", "w1")
            assert row["behind_messages"] == 0 and row["behind_trades"] == 0 and row["lag_s"] == 0.0, json.dumps(report)
            assert row["done_seq"] == row["last_seq"] > 0
            assert row["last_bar"] is not None and row["lease_expires_in_s"] <= 30.0
        assert {row["owner"] for row in rows.values()} == {"w0", "w1"}
        assert sorted(w["worker"] for w in report["workers"]) == ["w0", "w1"]
        assert all(len(w["instruments"]) == 1 for w in report["workers"])
        # The table says the same.
        capsys.readouterr()
        assert await asyncio.to_thread(main, ["cluster-status", "--nats", url]) == 0
        table = capsys.readouterr().out
        assert "w0" in table and "PROBLEM" not in table
    finally:
        stop.set()
        await asyncio.gather(*tasks)

    # A lease held by a worker that does not announce itself (died) is a problem.
    leases, _ = await lease_buckets(nc.jetstream(), ttl=30.0)
    await leases.put(BTC, msgspec.json.encode(LeaseValue(owner="ghost")))
    code, report = await status(capsys, url, "--instId", BTC)
    assert code == 1
    (row,) = report["instruments"]
    assert row["owner"] == "ghost"
    assert any("ghost is not announced" in p for p in row["problems"])
    assert report["workers"] == []


async def test_cluster_status_usage_errors(nats_server: Any) -> None:
    assert await asyncio.to_thread(main, ["cluster-status", "--nats", nats_server.url, "--max-lag", "soon"]) == 2
    assert await asyncio.to_thread(main, ["cluster-status", "--nats", nats_server.url, "--instId", "A.B"]) == 2


async def test_lease_rounds_and_status_leave_no_consumer_on_the_buckets(
    nats_server: Any, nc: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Listing a bucket's keys every round must not leave a consumer behind each time (nats-py's
    KeyValue.keys() leaves its watcher's for five minutes: hundreds, then the server's limit)."""
    from nats_support import worker_records

    from vstream.nats.connect import LEASES_BUCKET, WORKERS_BUCKET, trades_subject

    await ensure_streams(nc.jetstream())
    await nc.jetstream().publish(trades_subject(BTC), b"")
    worker = NatsWorker(nc, Settings(), worker_id="w", lease_ttl=0.6)  # a round every 0.1 s
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        first = (await wait_for(lambda: worker_records(nc), what="the worker's record"))["w"]["revision"]

        async def many_rounds() -> bool:
            record = (await worker_records(nc)).get("w")
            return record is not None and record["revision"] >= first + 20

        await wait_for(many_rounds, what="twenty writes to the buckets", seen=lambda: worker_records(nc))
        await status(capsys, nats_server.url)
    finally:
        stop.set()
        await task
    js = nc.jetstream()
    for bucket in (LEASES_BUCKET, WORKERS_BUCKET):
        info = await js.stream_info(f"KV_{bucket}")
        assert info.state.consumer_count == 0, (bucket, [c.name for c in await js.consumers_info(f"KV_{bucket}")])
