"""Alerts from the command line: rules from the config file and options (stored with the
instrument), ``alerts list``, ``alerts deliver`` (a real process killed mid-batch),
``status`` telling a destination failing or behind, and secrets never shown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from vstream.alerts.status import delivery_status
from vstream.cli import main
from vstream.generate import generate_vault
from vstream.instruments import VaultPaths
from vstream.state import read_state
from vstream.testing import FakeWebhookServer
from vstream.testing.fake_webhook import Reply

BTC, ETH = "BTC-USDT-SWAP", "ETH-USDT-SWAP"
REPO = Path(__file__).resolve().parents[2]
RunCli = Callable[..., tuple[int, str, str]]

RULES_TOML = """
[alerts]
whale_trade_usd = 250000
burst_count = 3
burst_seconds = 30
burst_usd = 100000

[alerts.bars]
t4-absorption = "tier=T4 and absorption"
"""


def destinations_toml(hooks: FakeWebhookServer, *, rate: str = "1000/1s") -> str:
    return f"""
[[alerts.destinations]]
name = "desk"
type = "discord"
url = "${{TEST_DISCORD_WEBHOOK}}"
rate = "{rate}"

[[alerts.destinations]]
name = "phone"
type = "telegram"
token = "${{TEST_TELEGRAM_TOKEN}}"
chat_id = "42"
api_url = "{hooks.url}"
rate = "{rate}"

[[alerts.destinations]]
name = "bot"
type = "webhook"
url = "{hooks.webhook_url()}"
rate = "{rate}"
"""


DISCORD_TOKEN = "Zm9vYmFyLXNlY3JldC1kaXNjb3JkLXRva2Vu"
TELEGRAM_TOKEN = "7777777:AAE-secret-telegram-token"


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[FakeWebhookServer], dict[str, str]]:
    def setup(hooks: FakeWebhookServer) -> dict[str, str]:
        env = {
            "TEST_DISCORD_WEBHOOK": hooks.discord_url("987654321", DISCORD_TOKEN),
            "TEST_TELEGRAM_TOKEN": TELEGRAM_TOKEN,
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return env

    return setup


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("alerts-cli") / "Vault"
    generate_vault(source, instruments=(BTC, ETH), hours=2, seed=3)
    return source


def copy_of(sample: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "Vault"
    shutil.copytree(sample, target)
    return target


def half_of_the_input(vault: Path) -> Callable[[], None]:
    """Cut each raw file to its first half (whole lines); returns what puts the rest back,
    as a recorder appending to the files would."""
    whole = {}
    for inst in (BTC, ETH):
        for path in VaultPaths.of(vault, inst).raw_dir.glob("*.jsonl"):
            data = whole[path] = path.read_bytes()
            path.write_bytes(data[: data.rfind(b"\n", 0, len(data) // 2) + 1])

    def grow() -> None:
        for path, data in whole.items():
            path.write_bytes(data)

    return grow


def alert_ids(vault: Path, inst: str, start: int = 0) -> list[str]:
    data = VaultPaths.of(vault, inst).alerts.read_bytes()[start:]
    return [json.loads(line)["alert_id"] for line in data.splitlines()]


def every_alert(vault: Path) -> list[str]:
    return alert_ids(vault, BTC) + alert_ids(vault, ETH)


def test_replay_makes_alerts_from_the_config_and_keeps_the_rules(sample, tmp_path, run_cli: RunCli):
    vault = copy_of(sample, tmp_path)
    config = tmp_path / "v.toml"
    config.write_text("whale_usd = 100000\n" + RULES_TOML)
    status, out, err = run_cli("replay", "--all", "--vault", str(vault), "--config", str(config), "--final")
    assert status == 0, err
    kinds = Counter(json.loads(x)["kind"] for x in VaultPaths.of(vault, BTC).alerts.read_bytes().splitlines())
    assert set(kinds) == {"whale", "burst", "bar"}
    status, out, _ = run_cli("alerts", "list", "--all", "--vault", str(vault), "--kind", "burst", "--last", "1")
    assert status == 0 and out.count("\n") == 1 and "burst: 3" in out
    status, out, _ = run_cli("alerts", "list", "--instId", BTC, "--vault", str(vault), "--json")
    assert out.encode() == VaultPaths.of(vault, BTC).alerts.read_bytes()
    state = read_state(VaultPaths.of(vault, BTC).state)
    assert state.alerts is not None and state.alerts.rules["whale_trade_usd"] == 250000


def test_options_give_rules_and_a_plain_run_keeps_them(sample, tmp_path, run_cli: RunCli):
    vault = copy_of(sample, tmp_path)
    status, _, err = run_cli("replay", "--instId", BTC, "--vault", str(vault), "--whale-trade-usd", "300000",
                             "--burst-count", "0", "--alert-bar", "tier = t4 and (absorption or divergence)")  # fmt: skip
    assert status == 0, err
    ids = alert_ids(vault, BTC)
    assert ids and all(":burst:" not in i for i in ids)
    assert any(i.startswith("BTC-USDT-SWAP:bar:tier=T4 and (absorption or divergence):1m:") for i in ids)
    state = read_state(VaultPaths.of(vault, BTC).state)
    assert state.alerts is not None and state.alerts.rules["burst_count"] == 0
    # the plain run of a scheduler (run_volume.bat) goes on with the stored rules
    status, _, err = run_cli("replay", "--instId", BTC, "--vault", str(vault), "--final")
    assert status == 0, err
    assert read_state(VaultPaths.of(vault, BTC).state).alerts.rules["whale_trade_usd"] == 300000
    # --no-alerts is stored too: no more alerts from here on
    status, _, err = run_cli("replay", "--instId", BTC, "--vault", str(vault), "--no-alerts", "--rebuild", "--final")
    assert status == 0, err
    assert not VaultPaths.of(vault, BTC).alerts.exists()
    assert read_state(VaultPaths.of(vault, BTC).state).alerts.rules["enabled"] is False


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--alert-bar", "tier=T9"], "filter 'tier=T9': tier=T9: unknown tier 'T9'"),
        (["--burst-count", "1"], "burst_count must be 0 (off) or 2 to 10000"),
        (["--whale-trade-usd", "-5"], "--whale-trade-usd"),
        (["--alert-bar", "whale", "--no-alerts"], "contradict"),
    ],
)
def test_bad_rules_are_usage_errors(sample, tmp_path, run_cli: RunCli, argv: list[str], needle: str):
    status, _, err = run_cli("replay", "--instId", BTC, "--vault", str(tmp_path / "none"), *argv)
    assert status == 2 and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "none").exists()


def test_a_missing_secret_is_a_usage_error_naming_the_variable(tmp_path, run_cli: RunCli, monkeypatch):
    monkeypatch.delenv("TEST_DISCORD_WEBHOOK", raising=False)
    config = tmp_path / "v.toml"
    config.write_text('[[alerts.destinations]]\nname = "desk"\ntype = "discord"\nurl = "${TEST_DISCORD_WEBHOOK}"\n')
    (tmp_path / "Vault").mkdir()
    status, _, err = run_cli("alerts", "deliver", "--vault", str(tmp_path / "Vault"), "--config", str(config))
    assert status == 2 and "environment variable TEST_DISCORD_WEBHOOK is not set" in err


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vstream", *args, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=str(REPO),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def start_deliverer(vault: Path, config: Path, *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vstream", "alerts", "deliver", "--vault", str(vault), "--config", str(config),
        *extra, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=str(REPO),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
async def test_a_deliverer_killed_mid_batch_sends_each_alert_once_but_the_one_in_flight(sample, tmp_path, secrets_env):
    vault = copy_of(sample, tmp_path)
    async with FakeWebhookServer() as hooks:
        secrets_env(hooks)
        config = tmp_path / "v.toml"
        config.write_text(RULES_TOML + destinations_toml(hooks))
        assert (await cli("-q", "replay", "--all", "--vault", str(vault), "--config", str(config), "--final"))[0] == 0
        expected = every_alert(vault)
        assert len(expected) >= 25
        kills = 0
        # 1: a request in flight (received, never answered) when the process dies
        hooks.hold(after=10)
        proc = await start_deliverer(vault, config, "--follow", "--deliver-history")
        await hooks.wait_for(11)
        proc.kill()
        assert await proc.wait() == -signal.SIGKILL
        kills += 1
        hooks.release()
        # 2, 3: killed as soon as a number of requests came in, wherever each task stands
        for more in (17, 23):
            seen = len(hooks.requests)
            proc = await start_deliverer(vault, config, "--follow", "--deliver-history")
            await hooks.wait_for(seen + more)
            proc.kill()
            assert await proc.wait() == -signal.SIGKILL
            kills += 1
        # the rest, without --follow: it stops once caught up
        status, out, err = await cli("alerts", "deliver", "--vault", str(vault), "--config", str(config), "--deliver-history")
        assert status == 0, err
        assert len(out.splitlines()) == 3  # one summary line per destination
        for flavour in ("discord", "telegram", "webhook"):
            got = hooks.alert_ids(flavour=flavour)
            counts = Counter(got)
            assert set(counts) == set(expected), flavour
            assert max(counts.values()) <= 2
            assert sum(1 for c in counts.values() if c == 2) <= kills, (flavour, counts)
            # in order, first arrivals: per instrument as in the files
            for inst in (BTC, ETH):
                mine = [i for i in dict.fromkeys(got) if i.startswith(inst)]
                assert mine == alert_ids(vault, inst), flavour
        # nothing left: another run sends nothing
        before = len(hooks.requests)
        assert (await cli("-q", "alerts", "deliver", "--vault", str(vault), "--config", str(config)))[0] == 0
        assert len(hooks.requests) == before


async def test_deliver_reports_each_destination_and_status_tells_a_failing_one(sample, tmp_path, secrets_env):
    vault = copy_of(sample, tmp_path)
    async with FakeWebhookServer() as hooks:
        env = secrets_env(hooks)
        config = tmp_path / "v.toml"
        config.write_text(RULES_TOML + destinations_toml(hooks))
        grow = half_of_the_input(vault)
        assert (await cli("-q", "replay", "--all", "--vault", str(vault), "--config", str(config)))[0] == 0
        # a first run is history: nothing to deliver
        status, out, err = await cli("alerts", "deliver", "--vault", str(vault), "--config", str(config))
        assert status == 0, err
        assert out.splitlines() == ["desk delivered=0 skipped=0", "phone delivered=0 skipped=0", "bot delivered=0 skipped=0"]
        assert hooks.requests == []
        # the desk is down (a 404 that echoes the path, token included), the others are fine
        for _ in range(100):
            hooks.plan(lambda r: Reply(404, json.dumps({"message": f"Unknown Webhook {r.path}"}).encode())
                       if r.flavour == "discord" else Reply(200, b'{"ok":true}'))  # fmt: skip
        state = read_state(VaultPaths.of(vault, BTC).state)
        history = state.alerts.history if state.alerts else 0
        grow()
        assert (await cli("-q", "replay", "--all", "--vault", str(vault), "--config", str(config), "--final"))[0] == 0
        new = alert_ids(vault, BTC, history)
        assert new
        status, out, err = await cli("alerts", "deliver", "--vault", str(vault), "--config", str(config),
                                     "--max-attempts", "2")  # fmt: skip
        assert status == 1
        assert "alerts destination desk: gave up after 2 attempts: HTTP 404: Unknown Webhook" in err
        status, table, _ = await cli("status", "--vault", str(vault), "--no-remember")
        assert status == 1
        assert "alerts desk (discord): delivered 0, waiting" in table and ", PROBLEM" in table
        assert "alerts desk: PROBLEM: failing since" in table
        assert "alerts bot (webhook): delivered" in table and "alerts bot: PROBLEM" not in table
        assert set(new) <= set(hooks.alert_ids(flavour="webhook"))
        status, js, _ = await cli("status", "--vault", str(vault), "--no-remember", "--json")
        desk = next(json.loads(x) for x in js.splitlines() if json.loads(x).get("destination") == "desk")
        assert desk["ok"] is False and desk["waiting"] > 0
        # nothing anywhere shows a secret
        shown = err + table + js
        for path in (vault / "state" / "alerts").rglob("*"):
            if path.is_file():
                shown += path.read_text(errors="replace")
        for path in (vault / "derived" / "alerts").rglob("*.jsonl"):
            shown += path.read_text()
        for secret in (DISCORD_TOKEN, TELEGRAM_TOKEN, env["TEST_DISCORD_WEBHOOK"]):
            assert secret not in shown
        assert "/***" in err


async def test_status_tells_a_destination_behind_when_no_deliverer_looks(sample, tmp_path, secrets_env):
    vault = copy_of(sample, tmp_path)
    async with FakeWebhookServer() as hooks:
        secrets_env(hooks)
        config = tmp_path / "v.toml"
        config.write_text(RULES_TOML + destinations_toml(hooks))
        grow = half_of_the_input(vault)
        replay = ["-q", "replay", "--instId", BTC, "--vault", str(vault)]
        assert await asyncio.to_thread(main, [*replay, "--config", str(config)]) == 0
        assert (await cli("-q", "alerts", "deliver", "--vault", str(vault), "--config", str(config)))[0] == 0
        grow()
        assert await asyncio.to_thread(main, [*replay, "--final"]) == 0
        now = time.time()
        found = {d.destination: d for d in delivery_status(vault, now)}
        assert set(found) == {"desk", "phone", "bot"}
        assert found["bot"].waiting > 0 and found["bot"].ok  # looked just now: at work
        assert found["bot"].notes == [f"{found['bot'].waiting} alerts waiting (a deliverer is at work)"]
        later = {d.destination: d for d in delivery_status(vault, now + 600)}
        assert not later["bot"].ok and later["bot"].problems[0].startswith(
            f"behind: {found['bot'].waiting} alerts waiting, no deliverer has looked since"
        )
        assert (await cli("-q", "alerts", "deliver", "--vault", str(vault), "--config", str(config)))[0] == 0
        done = {d.destination: d for d in delivery_status(vault, now + 600)}
        assert done["bot"].waiting == 0 and done["bot"].ok


async def test_httpx_logs_and_errors_never_show_a_secret(tmp_path, caplog):
    import logging

    from vstream import Engine, Settings
    from vstream.alerts import AlertRules
    from vstream.alerts.config import Destination
    from vstream.alerts.deliver import Deliverer
    from vstream.testing import ListSource, make_trade

    trades = [make_trade(i, "100000", 1000, ts=1_765_748_040_000 + i * 1000) for i in range(1, 4)]
    async with Engine([ListSource(BTC, trades)], settings=Settings(), vault=tmp_path,
                      alerts=AlertRules(burst_count=0)) as engine:  # fmt: skip
        await engine.run()
    async with FakeWebhookServer() as hooks:
        hooks.fail(3, status=500)
        for _ in range(3):
            hooks.plan(lambda r: Reply(401, json.dumps({"message": f"bad token in {r.path}"}).encode()))
        dests = [
            Destination(name="up", type="discord", url=hooks.discord_url("1", DISCORD_TOKEN), rate="100/1s"),
            Destination(name="gone", type="telegram", token=TELEGRAM_TOKEN, chat_id="1",
                        api_url="http://127.0.0.1:9", rate="100/1s"),
        ]
        with caplog.at_level(logging.DEBUG):
            report = await Deliverer(tmp_path, dests, deliver_history=True, max_attempts=3).run()
    assert set(report.failed) == {"up", "gone"}
    text = caplog.text + " ".join(report.failed.values())
    assert 'HTTP Request: POST *** "HTTP/1.1 500' in caplog.text  # httpx did log its requests ...
    for secret in (DISCORD_TOKEN, TELEGRAM_TOKEN, TELEGRAM_TOKEN.split(":")[1]):
        assert secret not in text  # ... with the path redacted
    assert "ConnectError" in report.failed["gone"]


def test_replay_needs_no_secret_of_the_destinations(sample, tmp_path, run_cli: RunCli, monkeypatch):
    # One config for the scheduled replay and the deliverer: only the deliverer reads the
    # destinations (and their ${ENV} secrets).
    monkeypatch.delenv("TEST_DISCORD_WEBHOOK", raising=False)
    vault = copy_of(sample, tmp_path)
    config = tmp_path / "v.toml"
    config.write_text(RULES_TOML + '[[alerts.destinations]]\nname = "desk"\ntype = "discord"\nurl = "${TEST_DISCORD_WEBHOOK}"\n')
    status, _, err = run_cli("replay", "--instId", BTC, "--vault", str(vault), "--config", str(config))
    assert status == 0, err
    status, _, err = run_cli("alerts", "deliver", "--vault", str(vault), "--config", str(config))
    assert status == 2 and "TEST_DISCORD_WEBHOOK is not set" in err


def test_a_poor_high_rule_fires_on_the_footprint_bars_that_have_one(sample, tmp_path, run_cli: RunCli):
    # The poor-high word reads the poor_high key footprint bars carry: an alert for exactly
    # the bars whose line says "poor_high":true.
    vault = copy_of(sample, tmp_path)
    status, _, err = run_cli("replay", "--instId", BTC, "--vault", str(vault), "--final", "--footprint", "10",
                             "--burst-count", "0", "--whale-trade-usd", "1e12", "--alert-bar", "poor-high")  # fmt: skip
    assert status == 0, err
    bars = [json.loads(x) for x in VaultPaths.of(vault, BTC).output().read_bytes().splitlines()]
    poor = [b["timestamp_utc"] for b in bars if b.get("poor_high") is True]
    assert poor and len(poor) < len(bars)
    assert alert_ids(vault, BTC) == [f"{BTC}:bar:poor-high:1m:{t}" for t in poor]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM")
async def test_follow_delivers_what_comes_and_stops_cleanly_on_sigterm(sample, tmp_path, secrets_env):
    vault = copy_of(sample, tmp_path)
    async with FakeWebhookServer() as hooks:
        secrets_env(hooks)
        config = tmp_path / "v.toml"
        config.write_text(RULES_TOML + destinations_toml(hooks))
        grow = half_of_the_input(vault)
        assert (await cli("-q", "replay", "--all", "--vault", str(vault), "--config", str(config)))[0] == 0
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vstream", "alerts", "deliver", "--follow", "--vault", str(vault),
            "--config", str(config), "--destination", "bot",
            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=str(REPO),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        # it is running (its delivery state is written) before the new input comes
        cursor = vault / "state/alerts/deliveries/bot.json"
        async with asyncio.timeout(30):
            while not cursor.exists():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        history = {i: len(VaultPaths.of(vault, i).alerts.read_bytes()) for i in (BTC, ETH)}
        grow()
        assert (await cli("-q", "replay", "--all", "--vault", str(vault), "--final"))[0] == 0
        new = alert_ids(vault, BTC, history[BTC]) + alert_ids(vault, ETH, history[ETH])
        assert new
        await hooks.wait_until(lambda: set(hooks.alert_ids()) >= set(new))
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert out.decode() == f"bot delivered={len(new)} skipped=0\n"
        assert sorted(hooks.alert_ids()) == sorted(new)
