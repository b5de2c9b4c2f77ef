"""Helpers of the distributed-mode tests (this folder is on sys.path while they run)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vstream.cli import main
from vstream.instruments import VaultPaths


async def replay_final(vault: Path, *insts: str, extra: tuple[str, ...] = ()) -> None:
    """The local reference: ``vstream replay --final`` (in a thread: the test owns the loop)."""
    args = ["-q", "replay", "--vault", str(vault), "--final", *extra]
    for inst in insts:
        args += ["--instId", inst]
    assert await asyncio.to_thread(main, args) == 0


async def read_subjects(nc: Any, stream: str, subject: str) -> list[tuple[str, bytes, dict[str, str]]]:
    """Every message on ``subject`` (wildcards allowed) now in ``stream``: (subject, body, headers)."""
    from nats.js.api import ConsumerConfig, DeliverPolicy

    js = nc.jetstream()
    info = await js.stream_info(stream)
    last = info.state.last_seq
    out: list[tuple[str, bytes, dict[str, str]]] = []
    if info.state.messages == 0:
        return out
    sub = await js.subscribe(
        subject, ordered_consumer=True, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=2)
            except Exception:
                break
            out.append((msg.subject, msg.data, dict(msg.headers or {})))
            if msg.metadata.sequence.stream >= last or msg.metadata.num_pending == 0:
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


async def wait_for(predicate: Callable[[], Any], seconds: float, what: str) -> None:
    """Poll ``predicate`` (sync or async) until true; fail after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.05)
