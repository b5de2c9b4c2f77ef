"""The distributed mode's decisions, without a server: leases, steps, publish plans, versions."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import msgspec
import pytest

from vstream.assembler import BarAssembler
from vstream.errors import ConfigError
from vstream.instruments import resolve
from vstream.nats.connect import check_inst_id, check_server_version, check_servers, parse_version
from vstream.nats.core import (
    MAX_BARS_PER_BATCH,
    InstrumentCore,
    LeaseBook,
    bar_message,
    bar_start_ms,
    decode_checkpoint,
)
from vstream.nats.ingest import (
    H_END,
    H_LAST_ID,
    H_NOW,
    SubjectState,
    VaultPos,
    live_message,
    vault_message,
)
from vstream.settings import Settings
from vstream.state import FilePos
from vstream.testing import make_trade

BTC = "BTC-USDT-SWAP"
MINUTE = 60_000
T0 = 1_765_748_040_000


@pytest.mark.parametrize(
    ("version", "ok"),
    [("2.12.0", True), ("2.15.1", True), ("v2.12.0-beta.1", True), ("3.0.0", True),
     ("2.11.9", False), ("2.10.22", False), ("1.4.1", False), ("garbage", False)],
)
def test_server_versions_before_2_12_are_refused(version: str, ok: bool) -> None:
    if ok:
        check_server_version(version)
    else:
        with pytest.raises(ConfigError, match=r"too old.*>= 2\.12.*atomic batch"):
            check_server_version(version, "nats://h:4222")


def test_parse_version() -> None:
    assert parse_version("2.12.1-RC.2") == (2, 12, 1)
    assert parse_version("2.12") == (2, 12, 0)


@pytest.mark.parametrize("bad", ["", "BTC.USDT", "BTC*", ">", "a b"])
def test_ids_that_cannot_be_a_subject_token_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        check_inst_id(bad)


@pytest.mark.parametrize(
    "url",
    ["nats://127.0.0.1:4222", "tls://nats.example:4443", "nats://a:1, nats://b:2,tls://c:3",
     "127.0.0.1:4222", "localhost", "nats://user:pw@127.0.0.1:4222"],
)
def test_urls_nats_py_connects_with_are_accepted(url: str) -> None:
    assert check_servers(url) == [u.strip() for u in url.split(",")]


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://127.0.0.1:4222", r"^--nats: 'http://127.0.0.1:4222' is not a nats:// URL \(use nats://HOST:PORT\)$"),
        ("https://x:1", "is not a nats:// URL"),
        ("NATS://x:1", "is not a nats:// URL"),  # nats-py reads only the lower-case scheme
        ("nats://a:1,redis://b:2", "'redis://b:2' is not a nats:// URL"),
        ("nats://", "names no host"),
        ("nats://h:port", "not a valid URL"),
        ("nats://h:99999", "not a valid URL"),
        (" , ", "is empty"),
    ],
)
def test_urls_nats_py_cannot_use_are_usage_errors(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        check_servers(url, "--nats")


def test_websocket_urls_are_accepted_when_nats_py_can_use_them() -> None:
    import importlib.util

    if importlib.util.find_spec("aiohttp") is None:
        with pytest.raises(ConfigError, match=r"websocket URL.*pip install aiohttp"):
            check_servers("ws://127.0.0.1:8080")
    else:
        assert check_servers("ws://127.0.0.1:8080,wss://h") == ["ws://127.0.0.1:8080", "wss://h"]
        with pytest.raises(ConfigError, match="mixes websocket and nats:// URLs"):
            check_servers("ws://127.0.0.1:8080,nats://h:1")


def test_a_bar_source_checks_its_url_without_io() -> None:
    import vstream

    with pytest.raises(ConfigError, match="NatsBarSource: 'http://h:4222' is not a nats:// URL"):
        vstream.NatsBarSource("http://h:4222", [BTC])


def test_importing_the_cli_does_not_import_nats() -> None:
    code = "import sys, vstream.cli; sys.exit(1 if 'nats' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# -- leases -----------------------------------------------------------------------------------

INSTS = [f"I{i}-USDT-SWAP" for i in range(6)]


@pytest.mark.parametrize(
    ("held", "taken_by_others", "workers", "acquire", "release"),
    [
        (0, 0, 1, 6, 0),  # alone: take everything
        (0, 0, 2, 3, 0),  # two workers: half each
        (6, 0, 2, 0, 3),  # a second worker came: give half back
        (3, 3, 2, 0, 0),  # balanced
        (0, 6, 2, 0, 0),  # everything taken: nothing to do
        (2, 3, 2, 1, 0),  # one free: take it
        (0, 5, 3, 1, 0),
    ],
)
def test_lease_shares(held: int, taken_by_others: int, workers: int, acquire: int, release: int) -> None:
    book = LeaseBook("me", ttl=3.0)
    for inst in INSTS[:held]:
        book.acquired(inst, 1, 100.0)
    taken = set(INSTS[:held]) | set(INSTS[held : held + taken_by_others])
    plan = book.plan(100.5, INSTS, taken, workers)
    assert len(plan.acquire) == acquire
    assert len(plan.release) == release
    assert not set(plan.acquire) & taken
    assert plan.expired == []


@pytest.mark.parametrize(
    ("age", "renew", "expired"),
    [(0.0, False, False), (0.9, False, False), (1.0, True, False), (2.9, True, False), (3.0, False, True), (60, False, True)],
)
def test_lease_renewal_and_expiry(age: float, renew: bool, expired: bool) -> None:
    book = LeaseBook("me", ttl=3.0)
    book.acquired(BTC, 7, 1000.0)
    plan = book.plan(1000.0 + age, [BTC], {BTC}, 1)
    assert (BTC in plan.renew) is renew
    assert (BTC in plan.expired) is expired
    assert book.valid(BTC, 1000.0 + age) is not expired


def test_an_instrument_no_longer_listed_is_released() -> None:
    book = LeaseBook("me", ttl=3.0)
    book.acquired(BTC, 1, 0.0)
    assert book.plan(0.1, [], {BTC}, 1).release == [BTC]


def test_two_workers_prefer_different_instruments() -> None:
    a, b = LeaseBook("a", 3.0), LeaseBook("b", 3.0)
    pa = a.plan(0, INSTS, set(), 2).acquire
    pb = b.plan(0, INSTS, set(), 2).acquire
    assert pa != pb


def test_lease_ttl_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        LeaseBook("me", 0)


# -- the instrument core --------------------------------------------------------------------


def minute_trades(first_minute: int, minutes: int, per_minute: int = 2) -> list:
    out = []
    tid = 1
    for m in range(first_minute, first_minute + minutes):
        for k in range(per_minute):
            out.append(make_trade(tid, f"{100 + m % 5}.5", 1 + k, ts=T0 + m * MINUTE + k))
            tid += 1
    return out


def test_core_equals_the_assembler_and_resumes_from_any_checkpoint() -> None:
    settings = Settings(timeframes=("1m", "5m"))
    trades = minute_trades(0, 40)
    reference = BarAssembler(resolve(BTC), settings)
    want = reference.feed(trades) + reference.close()
    chunks = [trades[i : i + 7] for i in range(0, len(trades), 7)]
    for stop_after in range(len(chunks) + 1):
        core = InstrumentCore(resolve(BTC), settings, owner="a")
        got = []
        for seq, chunk in enumerate(chunks[:stop_after], 1):
            for step in core.feed(seq, chunk, end=seq == len(chunks)):
                got += step.bars
        # Another worker continues from the checkpoint (through its JSON form).
        ckpt = decode_checkpoint(msgspec.json.encode(core.checkpoint()), BTC)
        other = InstrumentCore(resolve(BTC), settings, ckpt, owner="b")
        for seq, chunk in enumerate(chunks, 1):
            steps = other.feed(seq, chunk, end=seq == len(chunks))
            if seq <= stop_after:
                assert steps == []  # already in
            for step in steps:
                got += step.bars
        assert [msgspec.json.encode(b) for b in got] == [msgspec.json.encode(b) for b in want]


def test_a_message_finishing_too_many_bars_is_published_in_parts_that_resume() -> None:
    settings = Settings(timeframes=("1m", "5m", "15m", "1h"))
    trades = minute_trades(0, 1500, per_minute=1)
    core = InstrumentCore(resolve(BTC), settings)
    steps = core.feed(1, trades, end=True)
    assert len(steps) > 1
    assert all(len(s.messages()) <= 1000 for s in steps)
    assert all(len(s.bars) <= MAX_BARS_PER_BATCH + 4 for s in steps)
    reference = BarAssembler(resolve(BTC), settings)
    want = reference.feed(trades) + reference.close()
    assert [b for s in steps for b in s.bars] == want
    # A worker that stops after the first part resumes inside the message.
    first = steps[0].checkpoint
    assert first.seq == 0 and first.part > 0
    other = InstrumentCore(resolve(BTC), settings, first)
    rest = other.feed(1, trades, end=True)
    assert steps[0].bars + [b for s in rest for b in s.bars] == want


def test_clock_ticks_close_minutes_and_the_end_marker_closes_the_last() -> None:
    core = InstrumentCore(resolve(BTC), Settings(grace=2.0))
    assert core.feed(1, [make_trade(1, "100", 1, ts=T0)])[-1].bars == []
    early = core.feed(2, [], now_ms=T0 + MINUTE + 1999)
    assert early[-1].bars == []
    due = core.feed(3, [], now_ms=T0 + MINUTE + 2000)
    assert len(due[-1].bars) == 1
    core.feed(4, [make_trade(2, "100", 1, ts=T0 + 5 * MINUTE)])
    assert len(core.feed(5, [], end=True)[-1].bars) == 1


def test_a_checkpoint_of_other_settings_is_refused() -> None:
    core = InstrumentCore(resolve(BTC), Settings())
    ckpt = core.checkpoint()
    with pytest.raises(ConfigError, match="same settings"):
        InstrumentCore(resolve(BTC), Settings(whale_usd=5), ckpt)


def test_bar_message_is_the_replay_line_with_a_bar_id() -> None:
    core = InstrumentCore(resolve(BTC), Settings())
    core.feed(1, [make_trade(1, "100", 1, ts=T0)])
    bar = core.feed(2, [], end=True)[-1].bars[0]
    message = bar_message(bar)
    assert message.body == msgspec.json.encode(bar)
    assert message.subject == f"vstream.bars.{BTC}.1m"
    assert message.headers["Nats-Msg-Id"] == f"{BTC}:1m:{T0 - T0 % MINUTE}"


@pytest.mark.parametrize(
    ("stamp", "ms"),
    [("1970-01-01T00:00:00Z", 0), ("2017-01-01T00:00:00Z", 1_483_228_800_000),
     ("2024-02-29T23:59:00Z", 1_709_251_140_000), ("2025-12-14T21:34:00Z", 1_765_748_040_000)],
)
def test_a_bar_id_holds_its_period_start_in_epoch_milliseconds(stamp: str, ms: int) -> None:
    core = InstrumentCore(resolve(BTC), Settings())
    core.feed(1, [make_trade(1, "100", 1, ts=T0)])
    bar = core.feed(2, [], end=True)[-1].bars[0].__replace__(timestamp_utc=stamp)
    assert bar_start_ms(bar) == ms


# -- publish plans --------------------------------------------------------------------------


def test_live_messages_leave_out_trades_already_on_the_subject() -> None:
    state = SubjectState(seq=4, last_id=102)
    trades = [make_trade(i, "1", 1) for i in (101, 102, 103, 104)]
    planned = live_message(state, BTC, trades)
    assert planned is not None
    message, top = planned
    assert top == 104
    assert [msgspec.json.decode(x)["tradeId"] for x in message.body.splitlines()] == ["103", "104"]
    assert message.headers["Nats-Msg-Id"] == f"{BTC}:103-104"
    assert message.headers[H_LAST_ID] == "104"
    assert live_message(state, BTC, trades[:2]) is None
    tick = live_message(state, BTC, trades[:2], now_ms=5)
    assert tick is not None and tick[0].body == b"" and tick[0].headers[H_NOW] == "5"


def test_vault_messages_follow_the_position() -> None:
    pos = VaultPos(day="2025-01-01", file=FilePos(name="2025-01-01.jsonl", offset=100))
    trades = [make_trade(7, "1", 1)]
    state = SubjectState()
    planned = vault_message(state, BTC, trades, pos)
    assert planned is not None
    state.pos = pos
    assert vault_message(state, BTC, trades, pos) is None  # already there
    end = VaultPos(day=pos.day, file=pos.file, end=1)
    marker = vault_message(state, BTC, [], end)
    assert marker is not None and marker[0].headers[H_END] == "1"
    assert SubjectState.of((9, marker[0].headers, b"")).pos == end


@pytest.mark.parametrize(
    ("code", "kind"),
    [(10071, "FencedError"), (10201, "FencedError"), (10210, "BatchBusyError"), (10077, "SinkError")],
)
def test_refusals_are_classified(code: int, kind: str) -> None:
    from vstream.nats.batch import check_ack, decode_ack

    ack = decode_ack(b'{"error":{"code":400,"err_code":%d,"description":"x"},"stream":"S","seq":0}' % code)
    with pytest.raises(Exception) as info:
        check_ack(ack, "bars")
    assert type(info.value).__name__ == kind
    assert check_ack(decode_ack(b'{"stream":"S","seq":5}'), "bars").seq == 5


async def test_an_ingester_failing_on_one_instrument_stops_without_hanging() -> None:
    from vstream.errors import SinkError
    from vstream.nats.ingest import TradeIngester
    from vstream.sources import Batch

    published: list[str] = []

    class Failing(TradeIngester):
        async def put(self, batch: Batch) -> None:
            if batch.inst_id == "ETH-USDT-SWAP":
                raise SinkError("refused")
            published.append(batch.inst_id)

    class Two:
        """Batches of two instruments, interleaved, far more than the backlog."""

        inst_ids = (BTC, "ETH-USDT-SWAP")

        def resume(self, positions: object) -> None:
            pass

        async def _gen(self):  # type: ignore[no-untyped-def]
            for k in range(200):
                for inst in self.inst_ids:
                    yield Batch(inst, [make_trade(k + 1, "1", 1, inst_id=inst)])

        def __aiter__(self):  # type: ignore[no-untyped-def]
            return self._gen()

    with pytest.raises(SinkError, match="refused"):
        await asyncio.wait_for(Failing(nc=None).run(Two(), backlog=2), 10)  # type: ignore[arg-type]


async def test_a_record_expiring_inside_the_clients_create_is_claimed_again() -> None:
    """nats-py's KeyValue.create, on finding the key, reads it to see whether it is a deleted
    one; a record that expires in between makes create raise KeyNotFoundError. That is a free
    id, not a failure."""
    pytest.importorskip("nats")
    from nats.js.errors import KeyNotFoundError

    from vstream.nats.worker import NatsWorker

    class Bucket:
        def __init__(self) -> None:
            self.creates = 0

        async def create(self, key: str, value: bytes) -> int:
            self.creates += 1
            if self.creates == 1:
                raise KeyNotFoundError
            return 7

    worker = NatsWorker(nc=None, settings=Settings(), worker_id="w1")  # type: ignore[arg-type]
    worker._workers = Bucket()  # type: ignore[assignment]
    await worker._claim()
    assert worker._record_rev == 7
