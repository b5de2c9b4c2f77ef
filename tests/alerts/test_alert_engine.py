"""Alerts written by the engine: into the vault beside the bars, in their durability order,
cut back and resumed like them, history told apart from new input, rules stored."""

from __future__ import annotations

import asyncio
import logging

import msgspec
import pytest

from vstream import Engine, Settings
from vstream.alerts import Alert, AlertRules
from vstream.instruments import VaultPaths
from vstream.sinks.jsonl import JsonlSink
from vstream.state import read_state
from vstream.testing import ListSource, LiveListSource, ManualClock, make_trade

INST = "BTC-USDT-SWAP"
M0 = 1_765_748_040_000
RULES = AlertRules(
    whale_trade_usd=1_000_000, burst_count=3, burst_seconds=60, burst_usd=300_000,
    bars={"t34": "tier=T3,T4", "whale-bar": "whale"},
)  # fmt: skip


def stream(n: int = 400) -> list:
    """Trades over n/12 minutes: every 7th a whale ($1M+), runs of $300k+ trades, small ones."""
    out = []
    for i in range(1, n + 1):
        sz = 1000 if i % 7 == 0 else (300 if i % 5 == 0 else 1 + i % 13)
        out.append(make_trade(i, f"{100000 + (i % 17) * 10}", sz, "buy" if i % 3 else "sell", M0 + i * 5_000))
    return out


def alerts_of(vault) -> list[Alert]:
    data = VaultPaths.of(vault, INST).alerts.read_bytes()
    return [msgspec.json.decode(line, type=Alert) for line in data.splitlines()]


async def run(vault, trades, *, final: bool = True, alerts: AlertRules | None = RULES, **kw) -> Engine:
    engine = Engine([ListSource(INST, trades, final=final, batch_size=kw.pop("batch_size", 37))],
                    settings=Settings(min_history=3), vault=vault, alerts=alerts, **kw)  # fmt: skip
    async with engine:
        await engine.run()
    return engine


async def test_alerts_go_to_the_vault_with_their_length_in_the_state(tmp_path):
    await run(tmp_path, stream())
    paths = VaultPaths.of(tmp_path, INST)
    assert paths.alerts == tmp_path / "derived/alerts/okx/perps/BTC-USDT-SWAP/alerts.jsonl"
    got = alerts_of(tmp_path)
    kinds = {a.kind for a in got}
    assert kinds == {"whale", "burst", "bar"}
    assert len({a.alert_id for a in got}) == len(got)
    state = read_state(paths.state)
    assert state.alerts_length == paths.alerts.stat().st_size
    assert state.alerts is not None
    # a first run is history: all of it, and it ended (the run caught up with its input)
    assert (state.alerts.history, state.alerts.catching_up) == (state.alerts_length, False)
    assert msgspec.convert(state.alerts.rules, AlertRules) == RULES


async def test_runs_in_pieces_write_the_alerts_of_one_run(tmp_path):
    trades = stream()
    await run(tmp_path / "one", trades)
    for k, stop in enumerate([50, 51, 140, 260, 261, 399]):
        await run(tmp_path / "pieces", trades[:stop], final=False, batch_size=5 + k * 11)
    await run(tmp_path / "pieces", trades)
    one = VaultPaths.of(tmp_path / "one", INST)
    pieces = VaultPaths.of(tmp_path / "pieces", INST)
    assert pieces.alerts.read_bytes() == one.alerts.read_bytes()
    assert pieces.output().read_bytes() == one.output().read_bytes()


async def test_new_input_after_history_is_past_the_history_mark(tmp_path):
    trades = stream()
    await run(tmp_path, trades[:200], final=False)
    first = read_state(VaultPaths.of(tmp_path, INST).state)
    await run(tmp_path, trades)
    second = read_state(VaultPaths.of(tmp_path, INST).state)
    assert first.alerts is not None and second.alerts is not None
    assert second.alerts.history == first.alerts.history == first.alerts_length
    assert second.alerts_length > first.alerts_length
    assert second.alerts.generation == first.alerts.generation


async def test_a_first_run_stopped_before_it_caught_up_stays_history(tmp_path):
    trades = stream()
    engine = Engine([ListSource(INST, trades, batch_size=10, delay=0.001)], settings=Settings(min_history=3),
                    vault=tmp_path, alerts=RULES, checkpoint_interval=0.0)  # fmt: skip
    async with engine:
        task = asyncio.create_task(engine.run())
        path = VaultPaths.of(tmp_path, INST).state
        async with asyncio.timeout(10):
            while not (path.exists() and read_state(path).alerts_length):  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        engine.stop()
        await task
    state = read_state(path)
    assert state.alerts is not None and state.alerts.catching_up
    assert state.alerts.history == state.alerts_length > 0
    # the next run goes on with the history and ends it
    await run(tmp_path, trades)
    state = read_state(path)
    assert state.alerts is not None and not state.alerts.catching_up
    assert state.alerts.history == state.alerts_length


async def test_an_instrument_that_takes_alerts_on_later_has_no_history(tmp_path):
    trades = stream()
    await run(tmp_path, trades[:200], final=False, alerts=None)
    assert not VaultPaths.of(tmp_path, INST).alerts.exists()
    await run(tmp_path, trades)
    state = read_state(VaultPaths.of(tmp_path, INST).state)
    assert state.alerts is not None and (state.alerts.history, state.alerts.catching_up) == (0, False)
    assert min(a.time for a in alerts_of(tmp_path)) == "2025-12-14T21:50:00Z"  # the open minute


async def test_alerts_past_the_state_are_cut_back_and_made_again(tmp_path):
    trades = stream()
    await run(tmp_path / "one", trades)
    await run(tmp_path, trades[:250], final=False)
    paths = VaultPaths.of(tmp_path, INST)
    paths.alerts.write_bytes(paths.alerts.read_bytes() + b'{"alert_id":"a crashed run got this far"}\n{"torn')
    await run(tmp_path, trades)
    assert paths.alerts.read_bytes() == VaultPaths.of(tmp_path / "one", INST).alerts.read_bytes()


async def test_an_alerts_file_emptied_by_hand_starts_over_after_what_it_holds(tmp_path, caplog):
    trades = stream()
    await run(tmp_path, trades[:200], final=False)
    paths = VaultPaths.of(tmp_path, INST)
    before = read_state(paths.state)
    paths.alerts.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="vstream"):
        await run(tmp_path, trades)
    assert "alerts file" in caplog.text and "shorter" in caplog.text
    after = read_state(paths.state)
    assert after.alerts is not None and before.alerts is not None
    assert after.alerts.generation != before.alerts.generation
    assert after.alerts.history == 0 and after.alerts_length == paths.alerts.stat().st_size > 0
    # the bars never noticed
    await run(tmp_path / "one", trades)
    assert paths.output().read_bytes() == VaultPaths.of(tmp_path / "one", INST).output().read_bytes()


async def test_stored_rules_apply_when_none_are_given_and_new_ones_replace_them(tmp_path, caplog):
    trades = stream()
    await run(tmp_path, trades[:100], final=False)
    await run(tmp_path, trades[:200], final=False, alerts=None)  # stored rules: still alerting
    n = len(alerts_of(tmp_path))
    assert any(a.time > "2025-12-14T21:43" for a in alerts_of(tmp_path))
    fewer = msgspec.structs.replace(RULES, bars={})
    with caplog.at_level(logging.WARNING, logger="vstream"):
        await run(tmp_path, trades, alerts=fewer, alerts_given=["bars"])
    assert "alert rules changed (bars {t34: tier=T3,T4, whale-bar: whale} -> {})" in caplog.text
    new = alerts_of(tmp_path)[n:]
    assert new and {a.kind for a in new} <= {"whale", "burst"}
    state = read_state(VaultPaths.of(tmp_path, INST).state)
    assert state.alerts is not None
    assert msgspec.convert(state.alerts.rules, AlertRules) == fewer


async def test_a_rebuild_keeps_the_stored_rules_and_makes_history_again(tmp_path):
    trades = stream()
    await run(tmp_path, trades[:200], final=False)
    first = read_state(VaultPaths.of(tmp_path, INST).state)
    await run(tmp_path, trades, alerts=None, rebuild=True)
    await run(tmp_path / "one", trades)
    paths = VaultPaths.of(tmp_path, INST)
    assert paths.alerts.read_bytes() == VaultPaths.of(tmp_path / "one", INST).alerts.read_bytes()
    state = read_state(paths.state)
    assert state.alerts is not None and first.alerts is not None
    assert state.alerts.generation != first.alerts.generation
    assert (state.alerts.history, state.alerts.catching_up) == (state.alerts_length, False)


async def test_alerts_need_a_vault():
    from vstream import ConfigError

    with pytest.raises(ConfigError, match="vault"):
        Engine([ListSource(INST, [])], alerts=RULES)


async def test_alerts_are_durable_before_the_state_that_counts_them(tmp_path, monkeypatch):
    # The alerts file is appended and fsynced (JsonlSink.append) before the state is
    # replaced: a state never records alerts that are not on disk.
    order: list[str] = []
    real_append = JsonlSink.append

    async def append(self: JsonlSink, data: bytes) -> int:
        if data:
            order.append(self.path.name)
        return await real_append(self, data)

    from vstream.state import InstrumentStore

    real_commit = InstrumentStore.commit

    def commit(self: InstrumentStore, state) -> None:
        order.append(f"state {state.alerts_length}")
        real_commit(self, state)

    monkeypatch.setattr(JsonlSink, "append", append)
    monkeypatch.setattr(InstrumentStore, "commit", commit)
    await run(tmp_path, stream())
    assert order.index("alerts.jsonl") < order.index(next(o for o in order if o.startswith("state ") and o != "state 0"))
    called = []
    await run(tmp_path / "b", stream(), on_alerts=lambda: called.append(1))
    assert called


async def test_live_silence_is_alerted_once_and_live_makes_no_history(tmp_path):
    clock = ManualClock(M0 / 1000 + 10)
    source = LiveListSource(INST, [make_trade(1, "100000", 1, "buy", M0 + 5_000)], final=False)
    rules = AlertRules(silence_seconds=30, burst_count=0)
    engine = Engine([source], settings=Settings(grace=2.0), clock=clock, vault=tmp_path, alerts=rules)
    paths = VaultPaths.of(tmp_path, INST)
    async with engine:
        task = asyncio.create_task(engine.run())
        async with asyncio.timeout(10):
            while engine.assembler(INST).counters.trades < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        clock.t += 31
        async with asyncio.timeout(10):
            while not (paths.state.exists() and read_state(paths.state).alerts_length):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        engine.stop()  # (once per quiet spell: tests/alerts/test_alert_detect.py::test_silence_table)
        await task
    got = alerts_of(tmp_path)
    assert [a.alert_id for a in got] == ["BTC-USDT-SWAP:silence:1"]
    state = read_state(paths.state)
    assert state.alerts is not None and (state.alerts.history, state.alerts.catching_up) == (0, False)


class InBand(LiveListSource):
    """Like OkxSource: trades as they happen, minutes closed by the source itself (no ticker)."""

    live = False


async def test_a_realtime_source_makes_no_history_and_is_watched_for_silence(tmp_path):
    clock = ManualClock(M0 / 1000 + 10)
    trades = [make_trade(1, "100000", 1000, "buy", M0 + 5_000), make_trade(2, "100000", 1, "buy", M0 + 6_000)]
    rules = AlertRules(silence_seconds=30, burst_count=0)
    engine = Engine([InBand(INST, trades, final=False)], clock=clock, vault=tmp_path, alerts=rules)
    paths = VaultPaths.of(tmp_path, INST)

    def durable() -> list[str]:
        state = read_state(paths.state) if paths.state.exists() else None
        if state is None or not state.alerts_length:
            return []
        return [a.alert_id for a in alerts_of(tmp_path)[: paths.alerts.read_bytes()[: state.alerts_length].count(b"\n")]]

    async with engine:
        task = asyncio.create_task(engine.run())
        # the whale is durable (so deliverable) at once, not at the next periodic checkpoint
        async with asyncio.timeout(3):
            while "BTC-USDT-SWAP:whale:1" not in durable():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        clock.t += 31
        async with asyncio.timeout(10):
            while "BTC-USDT-SWAP:silence:2" not in durable():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        engine.stop()
        await task
    assert [a.alert_id for a in alerts_of(tmp_path)] == ["BTC-USDT-SWAP:whale:1", "BTC-USDT-SWAP:silence:2"]
    state = read_state(paths.state)
    assert state.alerts is not None and (state.alerts.history, state.alerts.catching_up) == (0, False)


async def test_a_replay_source_is_never_watched_for_silence(tmp_path):
    clock = ManualClock(M0 / 1000)
    rules = AlertRules(silence_seconds=1, burst_count=0)
    engine = Engine([ListSource(INST, stream(40), delay=0.01, batch_size=4)], clock=clock, vault=tmp_path,
                    alerts=rules)  # fmt: skip
    async with engine:
        task = asyncio.create_task(engine.run())
        clock.t += 100
        await task
    assert not any(a.kind == "silence" for a in alerts_of(tmp_path))
