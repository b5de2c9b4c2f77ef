"""``vstream sink-jsonl``: the bars stream into vault files, byte-identical to a local replay,
resumable after a kill at any instant."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from nats_support import PATIENCE, local_output, wait_for

from vstream.cli import main
from vstream.generate import generate_vault
from vstream.instruments import VaultPaths
from vstream.nats.connect import bars_subject, ensure_streams
from vstream.nats.ingest import publish_vault
from vstream.nats.sink import sink_state_path
from vstream.nats.worker import NatsWorker
from vstream.settings import Settings

BTC, ETH = "BTC-USDT-SWAP", "ETH-USDT-SWAP"
TFS = ("1m", "5m")


async def replay_final(vault: Path, *insts: str) -> None:
    args = ["-q", "replay", "--vault", str(vault), "--final", "--timeframes", ",".join(TFS)]
    for inst in insts:
        args += ["--instId", inst]
    assert await asyncio.to_thread(main, args) == 0


async def cli(*args: str) -> int:
    return await asyncio.to_thread(main, ["-q", *args])


def outputs(vault: Path, inst: str) -> dict[str, bytes]:
    paths = VaultPaths.of(vault, inst)
    return {tf: paths.output(tf).read_bytes() for tf in TFS if paths.output(tf).exists()}


async def publish_bar_lines(nc: Any, local: Path, inst: str) -> int:
    """The local replay's bars published as a worker publishes them (1m and 5m interleaved)."""
    js = nc.jetstream()
    lines = {tf: local_output(local, inst, tf).splitlines() for tf in TFS}
    count = 0
    five = iter(lines["5m"])
    for i, line in enumerate(lines["1m"]):
        await js.publish(bars_subject(inst, "1m"), line)
        count += 1
        if i % 5 == 4:
            nxt = next(five, None)
            if nxt is not None:
                await js.publish(bars_subject(inst, "5m"), nxt)
                count += 1
    for rest in five:
        await js.publish(bars_subject(inst, "5m"), rest)
        count += 1
    return count


async def test_publish_workers_sink_equals_a_local_final_replay(nats_server: Any, nc: Any, tmp_path: Path) -> None:
    vault = tmp_path / "Vault"
    generate_vault(vault, instruments=(BTC, ETH), hours=2, seed=5)
    local = tmp_path / "Local"
    shutil.copytree(vault, local)
    await replay_final(local, BTC, ETH)
    expected = {inst: outputs(local, inst) for inst in (BTC, ETH)}
    want = sum(body.count(b"\n") for files in expected.values() for body in files.values())

    await ensure_streams(nc.jetstream())
    for inst in (BTC, ETH):
        await publish_vault(nc, vault, inst, final=True, chunk_bytes=64 << 10)
    stop = asyncio.Event()
    workers = [
        NatsWorker(nc, Settings(timeframes=TFS), worker_id=f"w{i}", lease_ttl=2.0, checkpoint_interval=0.2)
        for i in range(2)
    ]
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    out = tmp_path / "Sunk"
    try:
        await wait_for(lambda: sum(w.bars for w in workers) >= want, what="all bars")
        assert await cli("sink-jsonl", "--nats", nats_server.url, "--vault", str(out), "--all") == 0
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    for inst in (BTC, ETH):
        assert outputs(out, inst) == expected[inst], inst
    # Caught up: a second run adds nothing.
    assert await cli("sink-jsonl", "--nats", nats_server.url, "--vault", str(out), "--instId", BTC) == 0
    assert outputs(out, BTC) == expected[BTC]


async def test_killed_at_any_instant_and_rerun_no_bar_lost_or_doubled(nats_server: Any, nc: Any, tmp_path: Path) -> None:
    local = tmp_path / "Local"
    generate_vault(local, instruments=(BTC,), hours=6, seed=8)
    await replay_final(local, BTC)
    expected = outputs(local, BTC)
    await ensure_streams(nc.jetstream())
    await publish_bar_lines(nc, local, BTC)

    out = tmp_path / "Sunk"
    command = [
        sys.executable, "-m", "vstream", "-q", "sink-jsonl", "--nats", nats_server.url,
        "--vault", str(out), "--instId", BTC, "--batch", "1",
    ]
    rng = random.Random(1)
    kills = 0
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    one = VaultPaths.of(out, BTC).output("1m")

    def size() -> int:
        return one.stat().st_size if one.exists() else -1

    for _ in range(40):
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env
        )
        if kills < 8:
            # Kill while it writes: a random instant after its output started growing.
            before = size()
            await wait_for(lambda p=process, b=before: p.returncode is not None or size() != b, what="the output to grow")
            await asyncio.sleep(rng.uniform(0, 0.08))  # a random kill instant on purpose, not a wait
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
                await process.wait()
                kills += 1
                continue
        await process.wait()
        assert process.returncode == 0, await process.stderr.read() if process.stderr else ""
        break
    assert kills >= 3  # the runs really were cut short, mid-write
    # A torn tail, as a kill between the append and the state write leaves it: cut back.
    one.write_bytes(one.read_bytes() + b'{"timestamp_utc":"2099-01-01T00:00:00Z","instId":"BTC-USDT-SWAP"')
    assert await cli("sink-jsonl", "--nats", nats_server.url, "--vault", str(out), "--instId", BTC) == 0
    assert outputs(out, BTC) == expected


async def test_follow_writes_new_bars_until_sigint(nats_server: Any, nc: Any, tmp_path: Path) -> None:
    local = tmp_path / "Local"
    generate_vault(local, instruments=(BTC,), hours=1, seed=2)
    await replay_final(local, BTC)
    lines = local_output(local, BTC, "1m").splitlines(keepends=True)
    await ensure_streams(nc.jetstream())
    js = nc.jetstream()
    for line in lines[:10]:
        await js.publish(bars_subject(BTC, "1m"), line.rstrip(b"\n"))
    out = tmp_path / "Sunk"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vstream", "sink-jsonl", "--nats", nats_server.url, "--vault", str(out),
        "--all", "--follow", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    path = VaultPaths.of(out, BTC).output("1m")
    try:
        await wait_for(lambda: path.exists() and path.read_bytes() == b"".join(lines[:10]), what="the first bars")
        for line in lines[10:]:
            await js.publish(bars_subject(BTC, "1m"), line.rstrip(b"\n"))
        await wait_for(lambda: path.read_bytes() == b"".join(lines), what="the new bars")
    finally:
        process.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.wait_for(process.communicate(), PATIENCE)
    assert process.returncode == 0, stderr
    assert stdout.decode().startswith(f"{BTC} bars={len(lines)} (1m={len(lines)})")


async def test_refuses_what_it_cannot_resume_and_rebuilds(nats_server: Any, nc: Any, tmp_path: Path) -> None:
    local = tmp_path / "Local"
    generate_vault(local, instruments=(BTC,), hours=1, seed=4)
    await replay_final(local, BTC)
    await ensure_streams(nc.jetstream())
    await publish_bar_lines(nc, local, BTC)
    url = nats_server.url
    # Replay's vault: the sink never writes files replay keeps.
    assert await cli("sink-jsonl", "--nats", url, "--vault", str(local), "--instId", BTC) == 2
    out = tmp_path / "Sunk"
    assert await cli("sink-jsonl", "--nats", url, "--vault", str(out), "--instId", BTC) == 0
    state = sink_state_path(VaultPaths.of(out, BTC))
    # An output without a state, or shorter than recorded: exit 2 naming --rebuild.
    state.unlink()
    assert await cli("sink-jsonl", "--nats", url, "--vault", str(out), "--instId", BTC) == 2
    assert await cli("sink-jsonl", "--nats", url, "--vault", str(out), "--instId", BTC, "--rebuild") == 0
    assert outputs(out, BTC) == outputs(local, BTC)
    one = VaultPaths.of(out, BTC).output("1m")
    one.write_bytes(one.read_bytes()[:-100])
    assert await cli("sink-jsonl", "--nats", url, "--vault", str(out), "--instId", BTC) == 2
    assert await cli("sink-jsonl", "--nats", url, "--vault", str(out), "--instId", BTC, "--rebuild") == 0
    assert outputs(out, BTC) == outputs(local, BTC)


async def test_status_reads_a_vault_written_by_the_sink(
    nats_server: Any, nc: Any, tmp_path: Path, capsys: Any
) -> None:
    import json

    local = tmp_path / "Local"
    generate_vault(local, instruments=(BTC,), hours=1, seed=6)
    await replay_final(local, BTC)
    await ensure_streams(nc.jetstream())
    count = await publish_bar_lines(nc, local, BTC)
    out = tmp_path / "Sunk"
    assert await cli("sink-jsonl", "--nats", nats_server.url, "--vault", str(out), "--all") == 0
    capsys.readouterr()
    for args in (["--instId", BTC], []):  # named, and found in the vault by its sink state
        assert await asyncio.to_thread(main, ["status", "--vault", str(out), "--json", "--no-remember", *args]) == 0
        (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        last = json.loads(local_output(local, BTC, "1m").splitlines()[-1])
        assert row["instId"] == BTC and row["ok"] and row["last_bar"] == last["timestamp_utc"]
        assert row["counters"] == {"bars": count}
        assert any("sink-jsonl" in note for note in row["notes"])


async def test_a_bars_stream_created_again_is_noticed(nats_server: Any, nc: Any, tmp_path: Path) -> None:
    local = tmp_path / "Local"
    generate_vault(local, instruments=(BTC,), hours=1, seed=7)
    await replay_final(local, BTC)
    url, out = nats_server.url, tmp_path / "Sunk"
    # No bars stream at all: a usage error, saying so.
    assert await cli("sink-jsonl", "--nats", url, "--vault", str(out), "--all") == 2
    await ensure_streams(nc.jetstream())
    await publish_bar_lines(nc, local, BTC)
    assert await cli("sink-jsonl", "--nats", url, "--vault", str(out), "--all") == 0
    # Deleted and made again: its sequences start over, the saved position means nothing.
    await nc.jetstream().delete_stream("VSTREAM_BARS")
    await ensure_streams(nc.jetstream())
    await publish_bar_lines(nc, local, BTC)
    assert await cli("sink-jsonl", "--nats", url, "--vault", str(out), "--instId", BTC) == 2
    assert await cli("sink-jsonl", "--nats", url, "--vault", str(out), "--instId", BTC, "--rebuild") == 0
    assert outputs(out, BTC) == outputs(local, BTC)


async def test_all_against_a_stream_without_bars_says_so(
    nats_server: Any, nc: Any, tmp_path: Path, capsys: Any
) -> None:
    """No bar in the stream (only a worker's checkpoint): one line on stderr, exit 1."""
    from vstream.instruments import resolve
    from vstream.nats.batch import publish_batch
    from vstream.nats.connect import ckpt_subject
    from vstream.nats.core import InstrumentCore, Step

    await ensure_streams(nc.jetstream())
    out = tmp_path / "Sunk"
    for with_checkpoint in (False, True):  # an empty stream, then one holding only a checkpoint
        if with_checkpoint:
            core = InstrumentCore(resolve(BTC), Settings(), owner="w")
            await publish_batch(nc, Step([], core.checkpoint()).messages(), fence=(ckpt_subject(BTC), 0))
        capsys.readouterr()
        code = await asyncio.to_thread(main, ["sink-jsonl", "--nats", nats_server.url, "--vault", str(out), "--all"])
        captured = capsys.readouterr()
        assert code == 1, captured.err
        assert captured.err == "vstream: no bars in stream VSTREAM_BARS yet (no worker has finished one): nothing to write\n"
        assert captured.out == ""
    assert not out.exists() or not any(out.rglob("*.jsonl"))


async def test_all_follow_against_a_stream_without_bars_says_so_and_waits(
    nats_server: Any, nc: Any, tmp_path: Path
) -> None:
    """With --follow the line is said once, the sink writes the first bars when they come, and
    SIGINT ends it with exit 0."""
    local = tmp_path / "Local"
    generate_vault(local, instruments=(BTC,), hours=1, seed=3)
    await replay_final(local, BTC)
    lines = local_output(local, BTC, "1m").splitlines(keepends=True)
    await ensure_streams(nc.jetstream())
    out = tmp_path / "Sunk"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vstream", "sink-jsonl", "--nats", nats_server.url, "--vault", str(out),
        "--all", "--follow", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    path = VaultPaths.of(out, BTC).output("1m")
    try:
        # The line is the behaviour under test, and no bar exists until it has been said.
        first = await asyncio.wait_for(process.stderr.readline(), PATIENCE)
        assert first == b"vstream: no bars in stream VSTREAM_BARS yet; following it for the first ones\n"
        js = nc.jetstream()
        for line in lines[:3]:
            await js.publish(bars_subject(BTC, "1m"), line.rstrip(b"\n"))
        await wait_for(lambda: path.exists() and path.read_bytes() == b"".join(lines[:3]), what="the first bars")
    finally:
        process.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.wait_for(process.communicate(), PATIENCE)
    assert process.returncode == 0, stderr
    assert stderr == b""  # said once
    assert stdout.decode().startswith(f"{BTC} bars=3 (1m=3)")


def test_a_sink_killed_between_its_first_append_and_its_first_state_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instant the subprocess test above hit now and then (twice in some twenty runs), made
    certain: the first bars are appended and synced, then the process dies before the state
    is replaced. The next run cuts them back and reads them again (no --rebuild needed)."""
    import vstream.nats.sink as sink_module
    from vstream.nats.sink import SinkStore

    class Died(BaseException):
        pass

    def die(*_: object) -> None:
        raise Died()

    paths = VaultPaths.of(tmp_path / "Sunk", BTC)
    store = SinkStore(paths)
    state = store.open(rebuild=False, stream_created="2025-01-01T00:00:00+00:00")
    monkeypatch.setattr(sink_module, "write_atomic", die)
    with pytest.raises(Died):
        store.commit(state, {"1m": bytearray(b'{"timestamp_utc":"2025-01-01T00:00:00Z"}\n')})
    store.close()
    monkeypatch.undo()
    assert paths.output("1m").stat().st_size > 0
    again = SinkStore(paths)
    resumed = again.open(rebuild=False, stream_created="2025-01-01T00:00:00+00:00")
    again.close()
    assert resumed.seq == 0 and resumed.bars == 0
    assert paths.output("1m").read_bytes() == b""  # cut back: those bars are read again
