"""The fake Discord/Telegram/webhook server answers as those services do, faults included."""

from __future__ import annotations

import asyncio
import json

import httpx

from vstream.testing import FakeWebhookServer
from vstream.testing.fake_webhook import Reply


async def test_each_flavour_answers_as_its_service():
    async with FakeWebhookServer() as hooks, httpx.AsyncClient() as client:
        assert hooks.url.startswith("http://127.0.0.1:")
        r = await client.post(hooks.discord_url(), json={"content": "hello\nalert_id: A1"})
        assert (r.status_code, r.content) == (204, b"")
        r = await client.post(f"{hooks.url}/bot12:tok/sendMessage", json={"chat_id": "7", "text": "hi\nalert_id: A2"})
        answer = r.json()
        assert r.status_code == 200 and answer["ok"] is True and answer["result"]["chat"] == {"id": "7"}
        r = await client.post(hooks.webhook_url("x"), content=b'{"alert_id":"A3","kind":"whale"}')
        assert r.status_code == 200
        assert [q.flavour for q in hooks.requests] == ["discord", "telegram", "webhook"]
        assert hooks.alert_ids() == ["A1", "A2", "A3"] == hooks.alert_ids(delivered=True)
        assert hooks.requests[1].text == "hi\nalert_id: A2"


async def test_rate_limits_and_failures_in_each_services_shape():
    async with FakeWebhookServer() as hooks, httpx.AsyncClient() as client:
        hooks.rate_limit(2, retry_after=1.5)
        r = await client.post(hooks.discord_url(), json={"content": "x"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1.5"
        assert r.json() == {"message": "You are being rate limited.", "global": False, "retry_after": 1.5}
        r = await client.post(f"{hooks.url}/bot1:t/sendMessage", json={"chat_id": 1, "text": "x"})
        assert r.status_code == 429 and r.json()["parameters"] == {"retry_after": 1.5}
        hooks.fail(1, status=502, retry_after=3)
        r = await client.post(f"{hooks.url}/bot1:t/sendMessage", json={"chat_id": 1, "text": "x"})
        assert r.status_code == 502 and r.json()["ok"] is False and r.headers["retry-after"] == "3"
        hooks.plan(Reply(418, b'{"message":"teapot"}'))
        r = await client.post(hooks.webhook_url(), content=b"{}")
        assert r.status_code == 418
        assert hooks.delivered == []


async def test_a_held_request_counts_as_received_and_waits_for_release():
    async with FakeWebhookServer() as hooks, httpx.AsyncClient() as client:
        hooks.hold()
        sending = asyncio.create_task(client.post(hooks.webhook_url(), content=json.dumps({"alert_id": "H"})))
        await hooks.wait_for(1)
        assert hooks.requests[0].status is None and not sending.done()
        hooks.release()
        r = await sending
        assert r.status_code == 200 and hooks.alert_ids(delivered=True) == ["H"]
