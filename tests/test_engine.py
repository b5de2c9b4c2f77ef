"""The embeddable engine: same bars as the CLI, cancellation, slow sinks, side-by-side engines."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import msgspec
import pytest

import vstream
from vstream import Bar, ConfigError, Engine, ReplaySource, Settings, SinkError, VaultPaths
from vstream.generate import generate_vault
from vstream.sinks.jsonl import JsonlSink
from vstream.testing import CollectingSink, ListSource, LiveListSource, ManualClock, make_trade

INST = "BTC-USDT-SWAP"


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """Three hours of generated trades for two instruments (bad lines included)."""
    vault = tmp_path_factory.mktemp("sample")
    generate_vault(vault, hours=3, seed=3)
    return vault


def copy_raw(sample: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(sample / "raw", dest / "raw")
    return dest


def output(vault: Path, inst: str = INST) -> bytes:
    return VaultPaths.of(vault, inst).output().read_bytes()


async def test_embedded_bars_equal_cli_output(sample, tmp_path):
    from vstream.cli import main

    cli_vault = copy_raw(sample, tmp_path / "cli")
    assert await asyncio.to_thread(main, ["replay", "--instId", INST, "--vault", str(cli_vault), "--final"]) == 0
    seen: list[Bar] = []
    lib_vault = copy_raw(sample, tmp_path / "lib")
    async with Engine([ReplaySource(lib_vault, INST, final=True)], vault=lib_vault) as engine:
        async for bar in engine.bars():
            seen.append(bar)
    assert msgspec.json.Encoder().encode_lines(seen) == output(cli_vault) == output(lib_vault)
    # and with no vault at all: bars only, straight from the source
    async with Engine([ReplaySource(lib_vault, INST, final=True)]) as engine:
        again = [bar async for bar in engine.bars()]
    assert again == seen


async def test_an_engine_on_a_source_without_input_raises_before_touching_the_vault(tmp_path):
    vault = tmp_path / "v"
    vault.mkdir()
    with pytest.raises(ConfigError, match="no trade files in"):
        async with Engine([ReplaySource(vault, INST, final=True)], vault=vault) as engine:
            await engine.run()
    assert list(vault.iterdir()) == []  # no state, lock or output folder left behind
    with pytest.raises(ConfigError, match="does not exist"):
        async with Engine([ReplaySource(tmp_path / "typo", INST)], vault=tmp_path / "typo") as engine:
            await engine.run()
    assert not (tmp_path / "typo").exists()


async def test_cancelling_mid_run_checkpoints_and_next_run_completes_identically(sample, tmp_path):
    whole = copy_raw(sample, tmp_path / "whole")
    async with Engine([ReplaySource(whole, INST, final=True)], vault=whole) as engine:
        await engine.run()
    for stop_after in (1, 40, 150):
        vault = copy_raw(sample, tmp_path / f"cut{stop_after}")
        cancelled = asyncio.Event()

        def count(bar: Bar, seen: list[Bar] = [], limit: int = stop_after, done: asyncio.Event = cancelled) -> None:  # noqa: B006
            seen.append(bar)
            if len(seen) == limit:
                done.set()

        engine = Engine([ReplaySource(vault, INST, final=True, chunk_bytes=4096)], [count], vault=vault,
                        checkpoint_interval=3600)  # fmt: skip
        task = asyncio.create_task(engine.run())
        await cancelled.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        state = vstream.state.read_state(VaultPaths.of(vault, INST).state)
        assert 0 < state.output_length <= len(output(whole))
        assert output(vault) == output(whole)[: state.output_length]
        async with Engine([ReplaySource(vault, INST, final=True)], vault=vault) as engine:
            await engine.run()
        assert output(vault) == output(whole)


async def test_slow_sink_does_not_slow_the_jsonl_sink_or_the_source(sample, tmp_path):
    vault = copy_raw(sample, tmp_path / "v")
    paths = VaultPaths.of(vault, INST)
    observed: list[int] = []  # output size seen by the slow sink at each of its writes

    class SlowSink:
        async def write(self, bar: Bar) -> None:
            observed.append(paths.output().stat().st_size if paths.output().exists() else 0)
            await asyncio.sleep(1.0)

        async def aclose(self) -> None:
            pass

    engine = Engine([ReplaySource(vault, INST, final=True)], [SlowSink()], vault=vault, sink_close_timeout=1.5)
    async with engine:
        stats = await engine.run()
    total_bars = stats.instruments[INST].bars
    assert total_bars > 100
    # By the slow sink's second bar, every bar was already durable in volume_1m.jsonl.
    assert observed[1:] and observed[1] == len(output(vault)) > 0
    (sink_stats,) = engine.stats.sinks
    assert sink_stats.delivered <= 3 and sink_stats.dropped >= total_bars - 3


async def test_overflow_policy_drop_oldest_keeps_the_latest_bars():
    trades = [make_trade(i, "100", 1, "buy", 1_765_748_040_000 + i * 60_000) for i in range(1, 51)]
    slow = CollectingSink(delay=0.01)
    engine = Engine([ListSource(INST, trades)], [slow], sink_buffer=5, sink_overflow="drop_oldest")
    async with engine:
        await engine.run()
    assert len(slow.bars) >= 5
    assert slow.bars[-1].timestamp_utc == "2025-12-14T22:24:00Z"  # the last minute arrived
    stats = engine.stats.sinks[0]
    assert stats.delivered + stats.dropped == 50


async def test_sink_errors_are_logged_and_counted_or_fatal(caplog):
    trades = [make_trade(i, "100", 1, "buy", 1_765_748_040_000 + i * 60_000) for i in range(1, 11)]
    flaky = CollectingSink(fail_every=3)
    good = CollectingSink()
    with caplog.at_level(logging.ERROR, logger="vstream"):
        async with Engine([ListSource(INST, trades)], [flaky, good]) as engine:
            await engine.run()
    assert len(good.bars) == 10 and len(flaky.bars) == 7
    assert engine.stats.sinks[0].errors == 3 and "failing on call 9" in (engine.stats.sinks[0].last_error or "")
    assert "sink 0:CollectingSink failed" in caplog.text
    with pytest.raises(SinkError, match="failed"):
        async with Engine([ListSource(INST, trades, delay=0.01)], [CollectingSink(fail_every=1)],
                          sink_errors="raise") as engine:  # fmt: skip
            await engine.run()


async def test_plain_and_async_callables_are_sinks():
    trades = [make_trade(i, "100", 1, "buy", 1_765_748_040_000 + i * 60_000) for i in range(1, 4)]
    sync_seen: list[str] = []
    async_seen: list[str] = []

    async def on_bar(bar: Bar) -> None:
        async_seen.append(bar.timestamp_utc)

    async with Engine([ListSource(INST, trades)], [lambda b: sync_seen.append(b.timestamp_utc), on_bar]) as e:
        await e.run()
    assert sync_seen == async_seen and len(sync_seen) == 3


async def test_two_engines_side_by_side_in_one_loop(sample, tmp_path):
    singles = {}
    for inst in ("BTC-USDT-SWAP", "ETH-USDT-SWAP"):
        vault = copy_raw(sample, tmp_path / f"single-{inst}")
        async with Engine([ReplaySource(vault, inst, final=True)], vault=vault) as engine:
            await engine.run()
        singles[inst] = output(vault, inst)
    shared = copy_raw(sample, tmp_path / "shared")
    policy = asyncio.get_event_loop_policy()
    handler = signal.getsignal(signal.SIGINT)

    async def one(inst: str) -> None:
        async with Engine([ReplaySource(shared, inst, final=True, chunk_bytes=8192)], vault=shared) as engine:
            await engine.run()

    await asyncio.gather(one("BTC-USDT-SWAP"), one("ETH-USDT-SWAP"))
    assert {i: output(shared, i) for i in singles} == singles
    assert asyncio.get_event_loop_policy() is policy and signal.getsignal(signal.SIGINT) is handler


async def test_stop_ends_a_run_cleanly_with_a_checkpoint(tmp_path):
    trades = [make_trade(i, "100", 1, "buy", 1_765_748_040_000 + i * 60_000) for i in range(1, 200)]
    source = ListSource(INST, trades, batch_size=1, delay=0.001)
    twenty = asyncio.Event()

    def watch(bar: Bar) -> None:
        if bar.timestamp_utc >= "2025-12-14T21:54:00Z":  # the 20th minute is out
            twenty.set()

    engine = Engine([source], [watch])
    async with engine:
        task = asyncio.create_task(engine.run())
        await twenty.wait()
        engine.stop()
        stats = await task
    assert 19 <= stats.batches < 199 and stats.instruments[INST].trades == stats.batches
    assert source.snapshot()[INST]["next"] >= stats.batches


async def test_engine_validates_its_arguments():
    with pytest.raises(ConfigError):
        Engine([])
    with pytest.raises(ConfigError):
        Engine([ListSource(INST, [])], sink_overflow="explode")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Engine([ListSource(INST, []), ListSource(INST, [])])
    with pytest.raises(ConfigError, match="no contract value"):
        async with Engine([ListSource("FOO-USDT-SWAP", [])]):
            pass
    with pytest.raises(ConfigError):
        Settings(min_history=0)


def test_public_api_is_exported_and_documented():
    for name in vstream.__all__:
        obj = getattr(vstream, name)
        if callable(obj) and not isinstance(obj, str):
            assert obj.__doc__, f"vstream.{name} has no docstring"


async def test_any_source_resumes_in_a_vault_from_its_own_position(tmp_path):
    trades = [make_trade(i, "100", 1, "buy", 1_765_748_040_000 + i * 60_000) for i in range(1, 31)]
    whole = CollectingSink()
    async with Engine([ListSource(INST, trades)], [whole], vault=tmp_path / "a") as engine:
        await engine.run()
    async with Engine([ListSource(INST, trades[:12], final=False)], vault=tmp_path / "b") as engine:
        await engine.run()
    async with Engine([ListSource(INST, trades)], vault=tmp_path / "b") as engine:
        await engine.run()  # resumes after the 12th trade: the first 12 are not fed twice
        assert engine.assembler(INST).counters.trades == 30
    assert output(tmp_path / "b") == output(tmp_path / "a") == msgspec.json.Encoder().encode_lines(whole.bars)


async def test_a_live_source_gets_wall_clock_closing_from_the_engine():
    m0 = 1_765_748_040_000
    clock = ManualClock(m0 / 1000 + 10)
    bars: list[Bar] = []
    got = asyncio.Event()

    def collect(bar: Bar) -> None:
        bars.append(bar)
        got.set()

    source = LiveListSource(INST, [make_trade(1, "100", 1, "buy", m0 + 5_000)], final=False)
    engine = Engine([source], [collect], settings=Settings(grace=2.0), clock=clock)
    async with engine:
        task = asyncio.create_task(engine.run())
        await asyncio.sleep(0.6)  # the ticker ran: the minute is not over on the clock
        assert bars == [] and engine.assembler(INST).open_minute is not None
        clock.t = m0 / 1000 + 61.9  # ended, but within grace
        await asyncio.sleep(0.6)
        assert bars == []
        clock.t = m0 / 1000 + 62.0
        async with asyncio.timeout(5):
            await got.wait()
        engine.stop()
        await task
    assert [b.timestamp_utc for b in bars] == ["2025-12-14T21:34:00Z"]


async def test_stopping_while_the_clock_closes_a_minute_still_writes_its_bar(tmp_path, monkeypatch):
    # The ticker closes a minute and writes it; a stop that lands while that write is under
    # way must not cancel it halfway (a live bar without a recording cannot be recomputed).
    m0 = 1_765_748_040_000
    clock = ManualClock(m0 / 1000 + 10)
    writing = asyncio.Event()
    release = asyncio.Event()
    real_append = JsonlSink.append

    async def slow_append(self: JsonlSink, data: bytes) -> int:
        if data and self.path.name == "volume_1m.jsonl":
            writing.set()
            await release.wait()
        return await real_append(self, data)

    monkeypatch.setattr(JsonlSink, "append", slow_append)
    source = LiveListSource(INST, [make_trade(1, "100", 1, "buy", m0 + 5_000)], final=False)
    engine = Engine([source], settings=Settings(grace=2.0), clock=clock, vault=tmp_path)
    async with engine:
        task = asyncio.create_task(engine.run())
        await asyncio.sleep(0.3)
        clock.t = m0 / 1000 + 62.0
        async with asyncio.timeout(5):
            await writing.wait()
        engine.stop()
        await asyncio.sleep(0.3)
        release.set()
        await task
    written = VaultPaths.of(tmp_path, INST).output().read_bytes()
    assert written.count(b"\n") == 1 and b'"2025-12-14T21:34:00Z"' in written
