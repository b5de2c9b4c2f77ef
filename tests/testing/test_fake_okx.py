"""Tests of the fake OKX server shipped in vstream.testing."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from vstream.testing.fake_okx import (
    HISTORY_TRADES_PATH,
    INSTRUMENTS_PATH,
    MAX_REQUEST_BYTES,
    FakeOkxServer,
    RestCall,
)

BTC = "BTC-USDT-SWAP"
LIMIT = 10.0  # seconds any test may take; nothing may hang


def trade(
    trade_id: int,
    *,
    inst: str = BTC,
    px: str = "42000.1",
    sz: str = "1",
    side: str = "buy",
    ts: int | None = None,
) -> dict[str, Any]:
    return {
        "instId": inst,
        "tradeId": str(trade_id),
        "px": px,
        "sz": sz,
        "side": side,
        "ts": str(1_700_000_000_000 + trade_id if ts is None else ts),
        "source": "0",
    }


def sub(channel: str = "trades", inst: str = BTC, op: str = "subscribe") -> str:
    return json.dumps({"op": op, "args": [{"channel": channel, "instId": inst}]})


async def recv_json(ws: ClientConnection) -> Any:
    async with asyncio.timeout(2):
        return json.loads(await ws.recv())


async def nothing_within(ws: ClientConnection, seconds: float = 0.3) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await ws.recv()
    except TimeoutError:
        return True
    return False


async def get(url: str) -> tuple[int, Any]:
    def call() -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    return await asyncio.to_thread(call)


def history_url(srv: FakeOkxServer, **params: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"instId": BTC, **params}.items())
    return f"{srv.rest_url}{HISTORY_TRADES_PATH}?{query}"


def ids(body: Any) -> list[int]:
    return [int(row["tradeId"]) for row in body["data"]]


async def test_urls() -> None:
    async with asyncio.timeout(LIMIT), FakeOkxServer() as srv:
        assert srv.port > 0
        assert srv.ws_url == f"ws://127.0.0.1:{srv.port}/ws/v5/public"
        assert srv.ws_business_url == f"ws://127.0.0.1:{srv.port}/ws/v5/business"
        assert srv.ws_base_url == f"ws://127.0.0.1:{srv.port}"
        assert srv.rest_url == f"http://127.0.0.1:{srv.port}"


async def test_subscribe_ack_and_push() -> None:
    async with asyncio.timeout(LIMIT), FakeOkxServer() as srv, websockets.connect(srv.ws_url) as ws:
        await ws.send(sub())
        ack = await recv_json(ws)
        assert ack["event"] == "subscribe"
        assert ack["arg"] == {"channel": "trades", "instId": BTC}
        assert isinstance(ack["connId"], str) and ack["connId"]
        assert srv.connections == 1
        assert srv.subscriptions == [("trades", BTC)]
        assert srv.active_subscriptions == {("trades", BTC)}

        trades = [trade(1), trade(2), trade(3, side="sell")]
        assert await srv.push(trades) == 1
        msg = await recv_json(ws)
        assert msg == {"arg": {"channel": "trades", "instId": BTC}, "data": trades}
        # Another instrument's trades do not reach this subscriber.
        assert await srv.push([trade(1, inst="ETH-USDT-SWAP")]) == 0
        assert await nothing_within(ws)


async def test_request_id_is_echoed_and_acks_are_per_arg() -> None:
    async with asyncio.timeout(LIMIT), FakeOkxServer() as srv, websockets.connect(srv.ws_url) as ws:
        await ws.send(
            json.dumps(
                {
                    "id": "7",
                    "op": "subscribe",
                    "args": [
                        {"channel": "trades", "instId": BTC},
                        {"channel": "trades", "instId": "FOO-SWAP"},
                        {"channel": "trades", "instId": "ETH-USDT-SWAP"},
                    ],
                }
            )
        )
        first, second, third = [await recv_json(ws) for _ in range(3)]
        assert (
            first["id"] == "7" and first["event"] == "subscribe" and first["arg"]["instId"] == BTC
        )
        assert second["event"] == "error" and second["code"] == "60018"
        assert third["event"] == "subscribe" and third["arg"]["instId"] == "ETH-USDT-SWAP"
        assert srv.active_subscriptions == {("trades", BTC), ("trades", "ETH-USDT-SWAP")}


async def test_wait_subscribed_and_wait_until_timeout() -> None:
    async with asyncio.timeout(LIMIT), FakeOkxServer() as srv:

        async def late_client() -> None:
            await asyncio.sleep(0.1)
            async with websockets.connect(srv.ws_url) as ws:
                await ws.send(sub())
                await recv_json(ws)
                await recv_json(ws)  # the push below

        task = asyncio.create_task(late_client())
        await srv.wait_subscribed(BTC)
        assert await srv.push([trade(1)]) == 1
        await task
        with pytest.raises(TimeoutError):
            await srv.wait_until(lambda: srv.connections == 5, timeout=0.2)


async def test_push_skip_ids_and_per_message() -> None:
    async with asyncio.timeout(LIMIT), FakeOkxServer() as srv, websockets.connect(srv.ws_url) as ws:
        await ws.send(sub())
        await recv_json(ws)
        trades = [trade(i) for i in range(1, 7)]
        assert await srv.push(trades, skip_ids=["3", 4], per_message=2) == 2
        assert ids(await recv_json(ws)) == [1, 2]
        assert ids(await recv_json(ws)) == [5, 6]
        assert await nothing_within(ws)
        # The history holds every trade, the skipped ones included.
        assert [int(t["tradeId"]) for t in srv.history(BTC)] == [1, 2, 3, 4, 5, 6]


async def test_aggregate_merges_fills_like_the_trades_channel() -> None:
    async with asyncio.timeout(LIMIT), FakeOkxServer() as srv, websockets.connect(srv.ws_url) as ws:
        await ws.send(sub())
        await recv_json(ws)
        fills = [
            trade(10, sz="1.5", ts=5),
            trade(11, sz="2", ts=5),
            trade(12, sz="0.5", ts=5),
            trade(13, sz="1", ts=6),
            trade(14, sz="1", side="sell", ts=6),
        ]
        await srv.push(fills, aggregate=True)
        data = (await recv_json(ws))["data"]
        assert [(d["tradeId"], d["count"], d["sz"]) for d in data] == [
            ("12", "3", "4.0"),
            ("13", "1", "1"),
            ("14", "1", "1"),
        ]
        # REST returns single fills, without the websocket-only count.
        status, body = await get(history_url(srv))
        assert status == 200 and ids(body) == [14, 13, 12, 11, 10]
        assert all("count" not in row for row in body["data"])


async def test_history_refuses_merged_records() -> None:
    srv = FakeOkxServer()
    with pytest.raises(ValueError, match="count"):
        srv.add_trades([{**trade(5), "count": "3"}])
    with pytest.raises(ValueError, match="tradeId"):
        srv.add_trades([{"instId": BTC, "tradeId": "x"}])


async def test_ping_pong_and_switch_off() -> None:
    async with asyncio.timeout(LIMIT), FakeOkxServer() as srv, websockets.connect(srv.ws_url) as ws:
        await ws.send("ping")
        async with asyncio.timeout(2):
            assert await ws.recv() == "pong"
        srv.answer_pings = False
        await ws.send("ping")
        assert await nothing_within(ws)
        assert srv.pings_received == 2
        assert srv.received == ["ping", "ping"]


async def test_unknown_instrument_error_shape() -> None:
    async with asyncio.timeout(LIMIT), FakeOkxServer() as srv, websockets.connect(srv.ws_url) as ws:
        await ws.send(sub(inst="FOO-SWAP"))
        err = await recv_json(ws)
        assert set(err) == {"event", "code", "msg", "connId"}
        assert err["event"] == "error" and err["code"] == "60018"
        assert err["msg"] == "Wrong URL or channel:trades,instId:FOO-SWAP doesn't exist"
        assert srv.subscriptions == []
        srv.error_for_unknown = False
        await ws.send(sub(inst="FOO-SWAP"))
        assert (await recv_json(ws))["event"] == "subscribe"


async def test_trades_all_only_on_business_path() -> None:
    async with asyncio.timeout(LIMIT), FakeOkxServer() as srv:
        async with websockets.connect(srv.ws_url) as pub:
            await pub.send(sub("trades-all"))
            err = await recv_json(pub)
            assert err["event"] == "error" and err["code"] == "60018"
        async with websockets.connect(srv.ws_business_url) as biz:
            await biz.send(sub("trades"))
            assert (await recv_json(biz))["event"] == "error"
            await biz.send(sub("trades-all"))
            assert (await recv_json(biz))["arg"] == {"channel": "trades-all", "instId": BTC}
            assert await srv.push([trade(1)]) == 0  # channel "trades": nobody listens
            assert await srv.push([trade(2)], channel="trades-all") == 1
            msg = await recv_json(biz)
            assert msg["arg"]["channel"] == "trades-all" and ids(msg) == [2]


async def test_unsubscribe_stops_pushes() -> None:
    async with asyncio.timeout(LIMIT), FakeOkxServer() as srv, websockets.connect(srv.ws_url) as ws:
        await ws.send(sub())
        await recv_json(ws)
        await ws.send(sub(op="unsubscribe"))
        ack = await recv_json(ws)
        assert ack["event"] == "unsubscribe" and ack["arg"]["instId"] == BTC
        assert srv.active_subscriptions == set()
        assert await srv.push([trade(1)]) == 0


async def test_oversized_and_invalid_requests_get_error_events() -> None:
    async with asyncio.timeout(LIMIT), FakeOkxServer() as srv, websockets.connect(srv.ws_url) as ws:
        args = [{"channel": "trades", "instId": BTC}] * (MAX_REQUEST_BYTES // 30)
        big = json.dumps({"op": "subscribe", "args": args})
        assert len(big) > MAX_REQUEST_BYTES
        await ws.send(big)
        err = await recv_json(ws)
        assert err["event"] == "error" and err["code"] == "60012"
        assert srv.subscriptions == []
        await ws.send("{not json")
        assert (await recv_json(ws))["code"] == "60012"
        await ws.send(json.dumps({"op": "login", "args": []}))
        assert (await recv_json(ws))["code"] == "60019"
        # The connection survives all of it.
        await ws.send("ping")
        async with asyncio.timeout(2):
            assert await ws.recv() == "pong"


async def test_drop_abrupt_gives_1006() -> None:
    async with asyncio.timeout(LIMIT), FakeOkxServer() as srv:
        async with websockets.connect(srv.ws_url) as ws:
            await srv.wait_until(lambda: srv.open_connections == 1)
            assert await srv.drop() == 1
            with pytest.raises(ConnectionClosed) as info:
                async with asyncio.timeout(2):
                    await ws.recv()
            assert info.value.rcvd is None
            assert ws.close_code == 1006
        assert srv.open_connections == 0
        # The server still listens.
        async with websockets.connect(srv.ws_url):
            await srv.wait_until(lambda: srv.connections == 2)


async def test_drop_with_code() -> None:
    async with asyncio.timeout(LIMIT), FakeOkxServer() as srv, websockets.connect(srv.ws_url) as ws:
        await srv.wait_until(lambda: srv.open_connections == 1)
        assert await srv.drop(4004, "bye") == 1
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(2):
                await ws.recv()
        assert ws.close_code == 4004
        assert ws.close_reason == "bye"


async def test_notice_64008_and_send_raw() -> None:
    async with asyncio.timeout(LIMIT), FakeOkxServer() as srv, websockets.connect(srv.ws_url) as ws:
        await ws.send(sub())
        ack = await recv_json(ws)
        assert await srv.send_notice_64008() == 1
        notice = await recv_json(ws)
        assert notice == {
            "event": "notice",
            "msg": "The connection will soon be closed for a service upgrade. Please reconnect.",
            "code": "64008",
            "connId": ack["connId"],
        }
        assert await srv.send_raw('{"arg":{"channel":"trades"},"data":[{') == 1
        async with asyncio.timeout(2):
            assert await ws.recv() == '{"arg":{"channel":"trades"},"data":[{'


async def test_rest_history_paging() -> None:
    async with asyncio.timeout(LIMIT), FakeOkxServer() as srv:
        # Added out of order on purpose: history is kept in tradeId order.
        srv.add_trades([trade(i) for i in range(1250, 1000, -1)])
        status, body = await get(history_url(srv))
        assert status == 200 and body["code"] == "0" and body["msg"] == ""
        assert ids(body) == list(range(1250, 1150, -1))
        row = body["data"][0]
        assert row == {
            "instId": BTC,
            "tradeId": "1250",
            "px": "42000.1",
            "sz": "1",
            "side": "buy",
            "ts": "1700000001250",
            "source": "0",
        }

        _, body = await get(history_url(srv, type=1, after=1151))
        assert ids(body) == list(range(1150, 1050, -1))
        _, body = await get(history_url(srv, type=1, after=1051, limit=100))
        assert ids(body) == list(range(1050, 1000, -1))
        _, body = await get(history_url(srv, after=1001))
        assert ids(body) == []
        _, body = await get(history_url(srv, after=1200, limit=3))
        assert ids(body) == [1199, 1198, 1197]
        # after and before together: strictly between, newest first.
        _, body = await get(history_url(srv, after=1110, before=1100))
        assert ids(body) == list(range(1109, 1100, -1))
        _, body = await get(history_url(srv, after=1110, before=1100, limit=4))
        assert ids(body) == [1109, 1108, 1107, 1106]
        # before alone: newer than before, but the latest records, as OKX documents.
        _, body = await get(history_url(srv, before=1240))
        assert ids(body) == list(range(1250, 1240, -1))
        _, body = await get(history_url(srv, before=1100, limit=5))
        assert ids(body) == [1250, 1249, 1248, 1247, 1246]
        # limit above 100 is capped.
        _, body = await get(history_url(srv, limit=500))
        assert len(body["data"]) == 100
        # type=2 pages by timestamp.
        _, body = await get(history_url(srv, type=2, after=1_700_000_001_003))
        assert ids(body) == [1002, 1001]


async def test_rest_history_errors() -> None:
    async with asyncio.timeout(LIMIT), FakeOkxServer() as srv:
        status, body = await get(f"{srv.rest_url}{HISTORY_TRADES_PATH}")
        assert (status, body["code"]) == (400, "50014")
        status, body = await get(history_url(srv, limit=0))
        assert (status, body["code"]) == (400, "51000")
        status, body = await get(history_url(srv, type=2, before=5))
        assert (status, body["code"]) == (400, "51000")
        _, body = await get(f"{srv.rest_url}{HISTORY_TRADES_PATH}?instId=FOO-SWAP")
        assert body["code"] == "51001"
        status, body = await get(history_url(srv))  # known instrument, no trades yet
        assert (status, body) == (200, {"code": "0", "msg": "", "data": []})
        status, _ = await get(f"{srv.rest_url}/api/v5/market/nothing")
        assert status == 404


async def test_rest_rate_limit() -> None:
    now = [100.0]
    async with asyncio.timeout(LIMIT), FakeOkxServer(clock=lambda: now[0]) as srv:
        srv.add_trades([trade(1)])
        for _ in range(20):
            status, body = await get(history_url(srv))
            assert (status, body["code"]) == (200, "0")
        status, body = await get(history_url(srv))
        assert status == 429
        assert body == {"code": "50011", "msg": "Too Many Requests", "data": []}
        # Endpoints are limited separately.
        status, _ = await get(f"{srv.rest_url}{INSTRUMENTS_PATH}?instType=SWAP")
        assert status == 200
        now[0] += 1.9
        status, _ = await get(history_url(srv))
        assert status == 429
        now[0] += 0.2
        status, body = await get(history_url(srv))
        assert (status, ids(body)) == (200, [1])
        assert len(srv.rest_calls) == 24
        assert srv.rest_calls[20] == RestCall(HISTORY_TRADES_PATH, {"instId": BTC}, 429, "50011")


async def test_instruments_endpoint() -> None:
    rows = {
        BTC: {"instType": "SWAP", "instId": BTC, "ctVal": "0.01", "ctType": "linear"},
        "BTC-USDT": {"instType": "SPOT", "instId": "BTC-USDT"},
    }
    async with asyncio.timeout(LIMIT), FakeOkxServer(rows) as srv:
        status, body = await get(f"{srv.rest_url}{INSTRUMENTS_PATH}?instType=SWAP")
        assert (status, body["code"], body["data"]) == (200, "0", [rows[BTC]])
        _, body = await get(f"{srv.rest_url}{INSTRUMENTS_PATH}?instType=SPOT&instId=BTC-USDT")
        assert body["data"] == [rows["BTC-USDT"]]
        status, body = await get(f"{srv.rest_url}{INSTRUMENTS_PATH}")
        assert (status, body["code"]) == (400, "50014")
    async with asyncio.timeout(LIMIT), FakeOkxServer() as srv:
        _, body = await get(f"{srv.rest_url}{INSTRUMENTS_PATH}?instType=SWAP")
        by_id = {row["instId"]: row for row in body["data"]}
        assert {k: by_id[k]["ctVal"] for k in by_id} == {
            "BTC-USDT-SWAP": "0.01",
            "ETH-USDT-SWAP": "0.1",
            "SOL-USDT-SWAP": "1",
            "BTC-USD-SWAP": "100",
            "ETH-USD-SWAP": "10",
            "SOL-USD-SWAP": "10",
        }
        assert by_id["BTC-USD-SWAP"]["ctType"] == "inverse"
        assert by_id["BTC-USD-SWAP"]["settleCcy"] == "BTC"
        assert by_id["ETH-USDT-SWAP"]["ctValCcy"] == "ETH"


async def test_restart_on_same_port() -> None:
    async with asyncio.timeout(LIMIT), FakeOkxServer() as srv:
        port, url = srv.port, srv.ws_url
        srv.add_trades([trade(1)])
        async with websockets.connect(url) as ws:
            await ws.send(sub())
            await recv_json(ws)
            await srv.restart()
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(2):
                    await ws.recv()
            assert ws.close_code == 1001
        assert srv.port == port
        async with websockets.connect(url) as ws:
            await ws.send(sub())
            await recv_json(ws)
            assert srv.connections == 2
            assert srv.subscriptions == [("trades", BTC), ("trades", BTC)]
        # History survives a restart.
        _, body = await get(history_url(srv))
        assert ids(body) == [1]


async def test_stop_refuses_connections_until_started_again() -> None:
    async with asyncio.timeout(LIMIT), FakeOkxServer() as srv:
        async with websockets.connect(srv.ws_url) as ws:
            await srv.stop(code=None)
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(2):
                    await ws.recv()
            assert ws.close_code == 1006
        with pytest.raises(OSError):
            async with websockets.connect(srv.ws_url, open_timeout=2):
                pass
        await srv.start()
        async with websockets.connect(srv.ws_url):
            await srv.wait_until(lambda: srv.open_connections == 1)
