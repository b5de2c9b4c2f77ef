"""Worker processes killed (SIGKILL) or paused (SIGSTOP) at random instants: no bar lost or doubled."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from nats_support import (
    LeaseLog,
    bar_lines,
    consumed,
    leases_of,
    local_output,
    owners,
    progress,
    read_subjects,
    replay_final,
    wait_for,
    worker_records,
)

from vstream.generate import generate_vault
from vstream.instruments import VaultPaths
from vstream.nats.connect import BARS_STREAM, ensure_streams, lease_buckets
from vstream.nats.ingest import publish_vault
from vstream.testing.nats_server import NatsServer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]

TTL = 2.0
INSTS = ("BTC-USDT-SWAP", "ETH-USDT-SWAP", "SOL-USDT-SWAP", "BTC-USD-SWAP")
TFS = ("1m", "5m")


class Worker:
    """A ``vstream worker`` process with its stderr in a file."""

    def __init__(self, url: str, worker_id: str, logs: Path, extra: tuple[str, ...] = ()) -> None:
        self.worker_id = worker_id
        self.log = logs / f"{worker_id}.log"
        env = dict(os.environ, VSTREAM_CHECKPOINT_INTERVAL="0.1")
        with open(self.log, "wb") as err:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "vstream", "worker", "--nats", url,
                    "--worker-id", worker_id, "--lease-ttl", str(TTL), "--timeframes", ",".join(TFS), *extra,
                ],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env,
            )

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(120)  # a clean stop checkpoints each instrument: slow when loaded
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


def grow(source: Path, target: Path, inst: str, fraction: float) -> None:
    """Copy the first ``fraction`` of each raw file of ``inst`` (cut inside a line: a torn end)."""
    src = VaultPaths.of(source, inst).raw_dir
    dst = VaultPaths.of(target, inst).raw_dir
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        data = path.read_bytes()
        part = data[: int(len(data) * fraction)]
        out = dst / path.name
        if not out.exists() or out.stat().st_size < len(part):
            with open(out, "ab") as handle:
                handle.write(part[out.stat().st_size if out.exists() else 0 :])


async def expected_bars(tmp_path: Path, vault: Path) -> dict[tuple[str, str], bytes]:
    local = tmp_path / "Local"
    shutil.copytree(vault, local)
    await replay_final(local, *INSTS, extra=("--timeframes", ",".join(TFS)))
    return {(i, tf): local_output(local, i, tf) for i in INSTS for tf in TFS}


async def finish_and_compare(nc: Any, grown: Path, expected: dict[tuple[str, str], bytes]) -> None:
    """Publish the rest (with the end marker), wait until every instrument's checkpoint covers
    its last trade message — its bars are final then — and compare them with the local run."""
    for inst in INSTS:
        await publish_vault(nc, grown, inst, final=True, chunk_bytes=8 << 10)
    want = sum(body.count(b"\n") for body in expected.values())
    await wait_for(
        lambda: consumed(nc, INSTS), what="every trade message consumed",
        seen=lambda: progress(nc, INSTS),
    )
    messages = await read_subjects(nc, BARS_STREAM, "vstream.bars.>")
    for (inst, tf), body in expected.items():
        assert bar_lines(messages, inst, tf) == body, (inst, tf)
    assert len(messages) == want


async def test_sigkill_workers_at_random_instants(nc: Any, nats_server: NatsServer, tmp_path: Path) -> None:
    vault = tmp_path / "Vault"
    generate_vault(vault, instruments=INSTS, hours=2, seed=21)
    expected = await expected_bars(tmp_path, vault)
    grown = tmp_path / "Grown"
    await ensure_streams(nc.jetstream())
    leases, _ = await lease_buckets(nc.jetstream(), ttl=TTL)
    rng = random.Random(5)
    logs = tmp_path / "logs"
    logs.mkdir()
    lease_log = LeaseLog()
    await lease_log.start(leases)
    workers = [Worker(nats_server.url, f"w{i}", logs) for i in range(2)]
    started = 2
    kills = 10
    try:
        for round_no in range(1, kills + 1):
            for inst in INSTS:
                grow(vault, grown, inst, round_no / (kills + 1))
                await publish_vault(nc, grown, inst, chunk_bytes=8 << 10)
            # The kill instant is random on purpose (any instant must be safe): not a wait.
            await asyncio.sleep(rng.uniform(0.05, 0.6))
            victim = workers.pop(rng.randrange(len(workers)))
            held = {i for i, o in (await owners(leases)).items() if o == victim.worker_id}
            victim.signal(signal.SIGKILL)
            victim.process.wait()

            async def moved(held: set[str] = held, victim: Worker = victim) -> bool:
                now = await owners(leases)
                return all(now.get(i) not in (None, victim.worker_id) for i in held)

            await wait_for(
                moved, what=f"{sorted(held)} to move off {victim.worker_id}", seen=lambda: leases_of(leases)
            )
            # Within lease TTL + 5 s of the victim's last renewal, by the server's clock.
            for inst in held:
                taken = await wait_for(
                    lambda i=inst, v=victim: lease_log.takeover_seconds(i, v.worker_id),
                    what=f"the takeover of {inst} in the lease log",
                )
                assert taken <= TTL + 5, (inst, taken)
            workers.append(Worker(nats_server.url, f"w{started}", logs))
            started += 1
        for inst in INSTS:
            grow(vault, grown, inst, 1.0)
        await finish_and_compare(nc, grown, expected)
    finally:
        codes = [w.stop() for w in workers]
        await lease_log.stop()
    assert codes == [0, 0], [w.stderr() for w in workers]


async def test_a_paused_worker_is_fenced_off_and_gives_up(nc: Any, nats_server: NatsServer, tmp_path: Path) -> None:
    """Worker a is paused (SIGSTOP) past its lease; b takes a's instruments over and works on.
    Woken (SIGCONT) with trades waiting, a writes nothing for what it lost, gives it up, takes
    its share again as the workers rebalance, and the bars equal one local run's."""
    vault = tmp_path / "Vault"
    generate_vault(vault, instruments=INSTS, hours=1, seed=22)
    expected = await expected_bars(tmp_path, vault)
    grown = tmp_path / "Grown"
    await ensure_streams(nc.jetstream())
    leases, _ = await lease_buckets(nc.jetstream(), ttl=TTL)
    logs = tmp_path / "logs"
    logs.mkdir()
    for inst in INSTS:
        grow(vault, grown, inst, 0.4)
        await publish_vault(nc, grown, inst, chunk_bytes=8 << 10)
    workers = {w: Worker(nats_server.url, w, logs) for w in ("a", "b")}

    async def state() -> dict[str, Any]:
        return {"leases": await leases_of(leases), "workers": await worker_records(nc), "progress": await progress(nc, INSTS)}

    async def settled() -> bool:
        """Both workers announced, each holding its share (2 of 4), each announcing exactly
        the instruments whose leases it holds."""
        table = await leases_of(leases)
        records = await worker_records(nc)
        shares = Counter(owner for owner, _ in table.values())
        if set(records) != {"a", "b"} or shares != Counter({"a": 2, "b": 2}):
            return False
        return all(
            set(records[w]["instruments"]) == {i for i, (o, _) in table.items() if o == w} for w in ("a", "b")
        )

    try:
        await wait_for(settled, what="the instruments shared out 2 and 2", seen=state)
        stale = workers["a"]
        taken = sorted(i for i, o in (await owners(leases)).items() if o == "a")
        assert len(taken) == 2
        stale.signal(signal.SIGSTOP)

        async def taken_over() -> bool:
            # a's record expired (it renews no more), b holds a's instruments, and b's
            # takeover checkpoints are written: a's old fence is stale now.
            now = await owners(leases)
            ckpts = await progress(nc, taken)
            return (
                "a" not in await worker_records(nc)
                and all(now.get(i) == "b" for i in taken)
                and all(ckpts[i]["owner"] == "b" for i in taken)
            )

        await wait_for(taken_over, what="b to take a's instruments over", seen=state)
        # More trades while a sleeps; b works them in, so when a wakes the trades are there
        # for its consumers and b's checkpoints have moved past everything a knew.
        for inst in INSTS:
            grow(vault, grown, inst, 0.8)
            await publish_vault(nc, grown, inst, chunk_bytes=8 << 10)
        await wait_for(lambda: consumed(nc, INSTS), what="b to consume the new trades", seen=state)
        stale.signal(signal.SIGCONT)
        # a gives up what it lost and rejoins: shared out 2 and 2 again (a's share may be
        # other instruments than before), every worker announcing only what it holds. A
        # write of a for what it lost would show in the bars compared at the end.
        await wait_for(settled, what="a to give up what it lost and rejoin", seen=state)
        assert stale.process.poll() is None, stale.stderr()
        for inst in INSTS:
            grow(vault, grown, inst, 1.0)
        await finish_and_compare(nc, grown, expected)
    finally:
        codes = [w.stop() for w in workers.values()]
    assert codes == [0, 0], [w.stderr() for w in workers.values()]
