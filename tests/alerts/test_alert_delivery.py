"""Alert delivery: the decisions (requests, answers, backoff, rate limit) as tables, then the
deliverer against the loopback fake (Discord, Telegram, webhook): each alert once, in order,
past the history, through 429s and 5xx, a destination down never holding up another."""

from __future__ import annotations

import email.utils
import json
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest

from vstream import ConfigError, Engine, Settings
from vstream.alerts import Alert, AlertRules
from vstream.alerts.config import Destination, parse_alerts
from vstream.alerts.deliver import (
    Deliverer,
    RateWindow,
    RetryPolicy,
    judge,
    load_cursor,
    request_of,
)
from vstream.instruments import VaultPaths
from vstream.state import read_state
from vstream.testing import FakeWebhookServer, ListSource, make_trade
from vstream.testing.fake_webhook import Reply

INST = "BTC-USDT-SWAP"
M0 = 1_765_748_040_000
NOW = 1_800_000_000.0
RULES = AlertRules(whale_trade_usd=1_000_000, burst_count=0, bars={"t34": "tier=T3,T4"})


# -- decisions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "headers", "body", "ok", "wait", "reason"),
    [
        ("discord", 204, {}, b"", True, None, ""),
        ("discord", 200, {}, b'{"id":"1"}', True, None, ""),
        ("telegram", 200, {}, b'{"ok":true,"result":{}}', True, None, ""),
        ("telegram", 200, {}, b'{"ok":false,"description":"odd"}', False, None, "HTTP 200: odd"),
        ("webhook", 202, {}, b"not json", True, None, ""),
        # 429: the body's retry_after (Discord, float seconds) wins over the header
        ("discord", 429, {"retry-after": "2"}, b'{"retry_after":1.5,"global":false}', False, 1.5, "rate limited"),
        ("discord", 429, {"retry-after": "2"}, b"{}", False, 2.0, "rate limited"),
        ("telegram", 429, {}, b'{"ok":false,"error_code":429,"parameters":{"retry_after":3}}', False, 3.0, "retry after 3.0s"),
        ("webhook", 429, {"retry-after": email.utils.formatdate(NOW + 7, usegmt=True)}, b"", False, 7.0, "rate limited"),
        ("webhook", 429, {"retry-after": "soon"}, b"", False, None, "retry after ?s"),
        ("webhook", 429, {"retry-after": "999999"}, b"", False, 3600.0, "rate limited"),
        ("discord", 429, {}, b'{"retry_after":-4}', False, 0.0, "rate limited"),
        # 5xx: retried; a 503's Retry-After is honoured
        ("webhook", 503, {"retry-after": "4"}, b"", False, 4.0, "HTTP 503"),
        ("webhook", 500, {"retry-after": "4"}, b"", False, None, "HTTP 500"),
        ("discord", 502, {}, b"<html>bad gateway</html>", False, None, "HTTP 502"),
        # other refusals: retried too (the alert waits; status tells it is failing)
        ("telegram", 400, {}, b'{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}', False, None,
         "HTTP 400: Bad Request: chat not found"),
        ("discord", 404, {}, b'{"message":"Unknown Webhook","code":10015}', False, None, "HTTP 404: Unknown Webhook"),
        ("webhook", 301, {"location": "http://elsewhere"}, b"", False, None, "HTTP 301"),
    ],
)  # fmt: skip
def test_answers_table(kind, status, headers, body, ok, wait, reason):
    outcome = judge(kind, status, headers, body, NOW)
    assert (outcome.ok, outcome.retry_after) == (ok, wait)
    assert reason in outcome.reason


def test_backoff_grows_to_its_cap_with_jitter_below_and_honours_retry_after():
    policy = RetryPolicy(base=1.0, factor=2.0, cap=10.0, jitter=0.5, rng=random.Random(7))
    delays = [policy.delay(n) for n in range(6)]
    raw = [1, 2, 4, 8, 10, 10]
    assert all(r * 0.5 <= d <= r for d, r in zip(delays, raw, strict=True))
    again = RetryPolicy(base=1.0, factor=2.0, cap=10.0, jitter=0.5, rng=random.Random(7))
    assert [again.delay(n) for n in range(6)] == delays  # the rng decides: reproducible
    assert policy.delay(3, retry_after=0.25) == 0.25
    assert RetryPolicy(jitter=0.0).delay(100) == 300.0


async def test_the_rate_window_spaces_requests_on_its_clock():
    t = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        t[0] += seconds

    window = RateWindow(2, 1.0, clock=lambda: t[0], sleep=sleep)
    times = []
    for _ in range(5):
        await window.acquire()
        times.append(round(t[0], 6))
    assert times == [0.0, 0.0, 1.0, 1.0, 2.0]
    assert slept == [1.0, 1.0]
    with pytest.raises(ConfigError):
        RateWindow(0, 1.0)


def _alert(**kw: Any) -> Alert:
    base: dict[str, Any] = dict(alert_id="BTC-USDT-SWAP:whale:7", kind="whale", instId=INST,
                                time="2025-12-14T21:34:00.000Z", side="buy", tradeId="7", px="100000",
                                sz="1000", notional_usd="1000000", threshold_usd="1000000")  # fmt: skip
    base.update(kw)
    return Alert(**base)


def test_requests_table():
    alert = _alert()
    line = msgspec.json.encode(alert)
    discord = Destination(name="d", type="discord", url="https://discord.com/api/webhooks/1/tok")
    req = request_of(discord, line, alert)
    assert req.url == discord.url and req.headers == {"Content-Type": "application/json"}
    assert json.loads(req.body) == {
        "content": "BTC-USDT-SWAP whale BUY $1,000,000 at 100000 (sz 1000) 2025-12-14T21:34:00.000Z\n"
        "alert_id: BTC-USDT-SWAP:whale:7"
    }
    telegram = Destination(name="t", type="telegram", token="123:abc", chat_id=-100, api_url="https://api.telegram.org/")
    req = request_of(telegram, line, alert)
    assert req.url == "https://api.telegram.org/bot123:abc/sendMessage"
    assert json.loads(req.body)["chat_id"] == -100
    assert json.loads(req.body)["text"].endswith("alert_id: BTC-USDT-SWAP:whale:7")
    hook = Destination(name="w", type="webhook", url="http://127.0.0.1:1/x", headers={"Authorization": "Bearer s"})
    req = request_of(hook, line, alert)
    assert req.body == line  # the alert line itself
    assert req.headers == {"Content-Type": "application/json", "Authorization": "Bearer s"}
    # a long text is cut, never its alert_id line
    long = _alert(kind="bar", rule="r" * 5000, filter="whale", timeframe="1m", close="1",
                  price_change_pct="+0.00", total_volume="1", delta="+0")  # fmt: skip
    content = json.loads(request_of(discord, b"", long).body)["content"]
    assert len(content) <= 2000 and content.endswith("\nalert_id: BTC-USDT-SWAP:whale:7")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "x", "type": "discord"}, "discord needs url"),
        ({"name": "x", "type": "discord", "url": "ftp://h/x"}, "must be an http:// or https:// URL"),
        ({"name": "x", "type": "telegram", "token": "t"}, "telegram needs token and chat_id"),
        ({"name": "x y", "type": "webhook", "url": "http://h/"}, "a name is 1 to 64"),
        ({"name": "x", "type": "sms", "url": "http://h/"}, "Invalid enum value 'sms'"),
        ({"name": "x", "type": "webhook", "url": "http://h/", "kinds": ["whales"]}, "unknown kind 'whales'"),
        ({"name": "x", "type": "webhook", "url": "http://h/", "rate": "fast"}, "write CALLS/DURATION"),
        ({"name": "x", "type": "webhook", "url": "http://h/", "colour": 1}, "unknown field"),
        ({"name": "x", "type": "discord", "url": "${NOPE}"}, "environment variable NOPE is not set"),
    ],
)
def test_destinations_table(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_alerts({"destinations": [entry]}, env={})
    assert message in str(info.value)


def test_env_references_are_read_and_rates_have_defaults():
    config = parse_alerts(
        {"whale_trade_usd": 5e5, "destinations": [
            {"name": "d", "type": "discord", "url": "https://discord.com/api/webhooks/${ID}/${TOKEN}"},
            {"name": "t", "type": "telegram", "token": "${TG}", "chat_id": "${CHAT}", "rate": "20/1m"},
        ]},
        env={"ID": "1", "TOKEN": "tok", "TG": "9:x", "CHAT": "42"},
    )  # fmt: skip
    d, t = config.destinations
    assert d.url == "https://discord.com/api/webhooks/1/tok" and (t.token, t.chat_id) == ("9:x", "42")
    assert (d.rate_limit(), t.rate_limit()) == ((5, 2.0), (20, 60.0))
    assert config.rules == {"whale_trade_usd": 5e5}


# -- the deliverer against the fake -------------------------------------------------------


def trades(n: int) -> list:
    """A whale every 4th trade, every 30 s: a few minutes of bars, some tiers T3/T4."""
    return [make_trade(i, "100000", 1000 if i % 4 == 0 else 1 + i % 7, "buy" if i % 3 else "sell", M0 + i * 30_000)
            for i in range(1, n + 1)]  # fmt: skip


async def replay(vault: Path, items: list, final: bool = False, rebuild: bool = False) -> None:
    engine = Engine([ListSource(INST, items, final=final)], settings=Settings(min_history=2), vault=vault,
                    alerts=RULES, rebuild=rebuild)  # fmt: skip
    async with engine:
        await engine.run()


def file_ids(vault: Path, start: int = 0) -> list[str]:
    data = VaultPaths.of(vault, INST).alerts.read_bytes()[start:]
    return [json.loads(line)["alert_id"] for line in data.splitlines()]


def history_end(vault: Path) -> int:
    state = read_state(VaultPaths.of(vault, INST).state)
    assert state.alerts is not None
    return state.alerts.history


def destinations(hooks: FakeWebhookServer, **extra: Any) -> list[Destination]:
    fast = {"rate": "1000/1s", **extra}
    return [
        Destination(name="desk", type="discord", url=hooks.discord_url(), **fast),
        Destination(name="phone", type="telegram", token="123:tg-secret", chat_id="42", api_url=hooks.url, **fast),
        Destination(name="bot", type="webhook", url=hooks.webhook_url(), **fast),
    ]


class FakeTime:
    """A wall clock that moves only when the deliverer sleeps; the sleeps are kept."""

    def __init__(self) -> None:
        self.t = NOW
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.t += seconds


@pytest.fixture
async def hooks():
    async with FakeWebhookServer() as server:
        yield server


async def test_new_alerts_reach_every_destination_once_in_order_and_history_never(tmp_path, hooks):
    items = trades(80)
    await replay(tmp_path, items[:40])  # a first run: history
    await replay(tmp_path, items, final=True)  # new input
    new = file_ids(tmp_path, history_end(tmp_path))
    assert new and len(file_ids(tmp_path)) > len(new)
    report = await Deliverer(tmp_path, destinations(hooks)).run()
    assert report.failed == {}
    for flavour in ("discord", "telegram", "webhook"):
        assert hooks.alert_ids(flavour=flavour, delivered=True) == new
    assert len(hooks.requests) == 3 * len(new)
    # caught up: a second run sends nothing
    await Deliverer(tmp_path, destinations(hooks)).run()
    assert len(hooks.requests) == 3 * len(new)
    # the cursors say where each destination stands
    cursor = load_cursor(tmp_path, "desk")
    assert cursor is not None and cursor.delivered == len(new) and cursor.pending == 0
    assert cursor.instruments[INST].offset == VaultPaths.of(tmp_path, INST).alerts.stat().st_size


async def test_history_is_delivered_only_when_asked(tmp_path, hooks):
    await replay(tmp_path, trades(40), final=True)
    assert history_end(tmp_path) == VaultPaths.of(tmp_path, INST).alerts.stat().st_size
    await Deliverer(tmp_path, destinations(hooks)[:1]).run()
    assert hooks.requests == []
    await Deliverer(tmp_path, destinations(hooks)[:1], deliver_history=True).run()
    assert hooks.alert_ids(delivered=True) == file_ids(tmp_path)


async def test_429_and_5xx_are_retried_as_the_server_says_and_each_alert_arrives_once(tmp_path, hooks):
    await replay(tmp_path, trades(20), final=True)
    expected = file_ids(tmp_path)
    hooks.rate_limit(1, retry_after=0.25)  # Discord: body and header
    hooks.rate_limit(1, retry_after=4, body=False)  # header only
    hooks.fail(2, status=503)
    hooks.fail(1, status=503, retry_after=9)
    clock = FakeTime()
    policy = RetryPolicy(base=1.0, factor=2.0, jitter=0.0)
    deliverer = Deliverer(tmp_path, destinations(hooks)[:1], deliver_history=True, policy=policy,
                          clock=clock, sleep=clock.sleep)  # fmt: skip
    report = await deliverer.run()
    assert report.failed == {}
    assert hooks.alert_ids(delivered=True) == expected
    assert [r.status for r in hooks.requests[:6]] == [429, 429, 503, 503, 503, 204]
    # retry-after exactly (no failed attempt); the backoff of two failures; the 9 s a 503 asked
    assert clock.slept == [0.25, 4.0, 1.0, 2.0, 9.0]


async def test_telegram_429_retry_after_in_its_parameters_is_honoured(tmp_path, hooks):
    await replay(tmp_path, trades(8), final=True)
    hooks.rate_limit(1, retry_after=3, header=False)
    clock = FakeTime()
    await Deliverer(tmp_path, destinations(hooks)[1:2], deliver_history=True, clock=clock, sleep=clock.sleep).run()
    assert clock.slept[0] == 3.0
    assert hooks.alert_ids(delivered=True) == file_ids(tmp_path)


async def test_a_destination_held_to_its_rate(tmp_path, hooks):
    await replay(tmp_path, trades(40), final=True)
    clock = FakeTime()
    dest = destinations(hooks, rate="3/2s")[2]
    await Deliverer(tmp_path, [dest], deliver_history=True, clock=clock, sleep=clock.sleep).run()
    n = len(file_ids(tmp_path))
    assert n > 6 and hooks.alert_ids(delivered=True) == file_ids(tmp_path)
    # three, then wait for the window: (n - 1) // 3 waits of 2 s on the fake clock
    assert clock.slept == [2.0] * ((n - 1) // 3)


async def test_a_destination_that_is_down_holds_up_no_other_and_loses_nothing(tmp_path, hooks):
    await replay(tmp_path, trades(20), final=True)
    expected = file_ids(tmp_path)
    down = Destination(name="down", type="webhook", url=f"{hooks.url}/dead", rate="1000/1s")
    for _ in range(len(expected) * 10):  # /dead fails, the others are answered as usual
        hooks.plan(lambda r: Reply(503) if r.path == "/dead" else Reply(204))
    clock = FakeTime()
    deliverer = Deliverer(tmp_path, [down, destinations(hooks)[0]], deliver_history=True, clock=clock,
                          sleep=clock.sleep, max_attempts=3)  # fmt: skip
    report = await deliverer.run()
    assert hooks.alert_ids(flavour="discord", delivered=True) == expected
    assert "down" in report.failed and "gave up after 3 attempts: HTTP 503" in report.failed["down"]
    state = load_cursor(tmp_path, "down")
    assert state is not None and state.failing_since and state.attempts == 3
    assert state.delivered == 0 and state.instruments == {}  # its alerts wait in the file


async def test_filters_skip_alerts_and_move_on(tmp_path, hooks):
    await replay(tmp_path, trades(40), final=True)
    lines = [json.loads(x) for x in VaultPaths.of(tmp_path, INST).alerts.read_bytes().splitlines()]
    only = Destination(name="w", type="webhook", url=hooks.webhook_url(), kinds=["bar"], rate="1000/1s")
    report = await Deliverer(tmp_path, [only], deliver_history=True).run()
    bars = [a["alert_id"] for a in lines if a["kind"] == "bar"]
    assert bars and hooks.alert_ids() == bars
    assert report.skipped["w"] == len(lines) - len(bars)
    state = load_cursor(tmp_path, "w")
    assert state is not None and state.instruments[INST].offset == VaultPaths.of(tmp_path, INST).alerts.stat().st_size


async def test_a_rebuilt_alerts_file_starts_its_cursors_over_after_its_history(tmp_path, hooks):
    items = trades(60)
    await replay(tmp_path, items[:20])
    await replay(tmp_path, items[:40])
    await Deliverer(tmp_path, destinations(hooks)[2:]).run()
    sent = hooks.alert_ids()
    assert sent
    await replay(tmp_path, items[:40], rebuild=True)  # the same alerts, all history now
    await replay(tmp_path, items)  # and new ones
    await Deliverer(tmp_path, destinations(hooks)[2:]).run()
    again = hooks.alert_ids()[len(sent):]
    assert again == file_ids(tmp_path, history_end(tmp_path))
    assert not set(again) & set(sent)


async def test_only_durable_alerts_are_delivered(tmp_path, hooks):
    await replay(tmp_path, trades(20), final=True)
    path = VaultPaths.of(tmp_path, INST).alerts
    path.write_bytes(path.read_bytes() + b'{"alert_id":"not durable","kind":"whale","instId":"BTC-USDT-SWAP","time":"x"}\n')
    await Deliverer(tmp_path, destinations(hooks)[2:], deliver_history=True).run()
    assert "not durable" not in hooks.alert_ids()


async def test_two_deliverers_for_one_destination_are_refused(tmp_path, hooks):
    import filelock

    await replay(tmp_path, trades(8), final=True)
    dest = destinations(hooks)[2]
    lock = filelock.FileLock(str(tmp_path / "state/alerts/deliveries/bot.lock"), timeout=0)
    (tmp_path / "state/alerts/deliveries").mkdir(parents=True)
    with lock:
        report = await Deliverer(tmp_path, [dest], deliver_history=True).run()
    assert "another vstream process is delivering to it" in report.failed["bot"]
    assert hooks.requests == []


def test_the_redactor_hides_secrets_and_urls_but_keeps_the_words():
    from urllib.parse import quote

    from vstream.alerts.config import Redactor

    token = "MTIzNDU2Nzg5MDEyMzQ1Njc4.secret-part"
    dest = Destination(name="d", type="discord", url=f"https://discord.com/api/webhooks/1234567890123456789/{token}")
    redact = Redactor(dest.secrets())
    assert redact(f"POST {dest.url} failed") == "POST *** failed"
    assert redact(f"server said: bad token {token}") == "server said: bad token ***"
    assert redact(f"encoded {quote(token, safe='')}") == "encoded ***"
    assert redact("Unknown Webhook at https://discord.com/api/webhooks/other") == "Unknown Webhook at https://discord.com/***"
    assert redact("HTTP 404: webhooks are gone") == "HTTP 404: webhooks are gone"
    telegram = Destination(name="t", type="telegram", token="12345:ABCdef-ghi", chat_id=1)
    assert Redactor(telegram.secrets())("ConnectError: https://api.telegram.org/bot12345:ABCdef-ghi/sendMessage") == (
        "ConnectError: https://api.telegram.org/***"
    )
