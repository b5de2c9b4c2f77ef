"""A fake Discord / Telegram / webhook server on loopback, for testing alert delivery.

One asyncio HTTP/1.1 server on ``127.0.0.1`` (a free port) answers like

* a Discord webhook, ``POST /api/webhooks/{id}/{token}`` (:meth:`FakeWebhookServer.discord_url`):
  ``204``; rate limited: ``429`` with ``Retry-After`` and ``{"retry_after": s, "global": false}``;
* the Telegram Bot API, ``POST /bot{token}/sendMessage`` (``api_url`` =
  :attr:`FakeWebhookServer.url`): ``{"ok": true, "result": {...}}``; rate limited: ``429``
  with ``{"ok": false, "error_code": 429, "parameters": {"retry_after": s}}``;
* any other path as a JSON webhook (:meth:`FakeWebhookServer.webhook_url`): ``200``.

Faults are planned by the test: :meth:`~FakeWebhookServer.fail` (next requests get a 5xx or
any status), :meth:`~FakeWebhookServer.rate_limit` (429 in the flavour's shape),
:meth:`~FakeWebhookServer.hold` (the next request is received — it counts — but not answered
until :meth:`~FakeWebhookServer.release`: a client killed meanwhile had it in flight).
Every request is kept in :attr:`~FakeWebhookServer.requests`; :meth:`~FakeWebhookServer.wait_for`
waits for a number of them (no sleeps needed), :meth:`~FakeWebhookServer.alert_ids` reads
the ``alert_id`` each message carried.

Example::

    async with FakeWebhookServer() as hooks:
        url = hooks.discord_url()          # put it in [[alerts.destinations]]
        ...                                # run the deliverer
        await hooks.wait_for(3)
        assert hooks.alert_ids() == [...]

Only the standard library is used, so bots can test their own alert handling with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

__all__ = ["FakeWebhookServer", "Received", "Reply"]

_ALERT_ID = re.compile(r"alert_id: (\S+)")
_MAX_BODY = 8 * 1024 * 1024


@dataclass
class Received:
    """One request the server read (answered or not)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    #: ``time.monotonic()`` when it was read.
    at: float
    #: The HTTP status it was answered with (None: held, or not answered yet).
    status: int | None = None

    @property
    def flavour(self) -> str:
        """``discord``, ``telegram`` or ``webhook``, from the path."""
        if self.path.startswith("/api/webhooks/"):
            return "discord"
        if re.match(r"^/bot[^/]+/sendMessage$", urlsplit(self.path).path):
            return "telegram"
        return "webhook"

    def json(self) -> Any:
        """The body as JSON (a Telegram form body as a dict too); None if it is neither."""
        if self.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return dict(parse_qsl(self.body.decode("utf-8", "replace")))
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def text(self) -> str | None:
        """The message text (Discord ``content``, Telegram ``text``)."""
        body = self.json()
        if not isinstance(body, dict):
            return None
        value = body.get("content" if self.flavour == "discord" else "text")
        return value if isinstance(value, str) else None

    @property
    def alert_id(self) -> str | None:
        """The ``alert_id`` the message carried: a webhook's JSON key, a chat text's line."""
        if self.flavour == "webhook":
            body = self.json()
            value = body.get("alert_id") if isinstance(body, dict) else None
            return value if isinstance(value, str) else None
        found = _ALERT_ID.search(self.text or "")
        return found.group(1) if found else None


@dataclass
class Reply:
    """An answer to give: status, body, extra headers; ``hold`` keeps the request unanswered
    until :meth:`FakeWebhookServer.release`."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    hold: bool = False


class FakeWebhookServer:
    """Loopback Discord/Telegram/webhook server (see the module documentation)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.requests: list[Received] = []
        self._plan: deque[Callable[[Received], Reply]] = deque()
        self._server: asyncio.Server | None = None
        self._released = asyncio.Event()
        self._changed = asyncio.Event()
        self._connections: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._messages = 0

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._released.set()
        server, self._server = self._server, None
        if server is not None:
            server.close()
            for writer in list(self._connections):
                writer.close()
            # Let each connection's handler see its end (not be cancelled by a closing loop).
            if self._handlers:
                await asyncio.wait(self._handlers, timeout=5)
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- addresses --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (also a Telegram destination's ``api_url``)."""
        return f"http://{self.host}:{self.port}"

    def discord_url(self, webhook_id: str = "1234567890", token: str = "discord-webhook-token") -> str:
        return f"{self.url}/api/webhooks/{webhook_id}/{token}"

    def webhook_url(self, name: str = "alerts") -> str:
        return f"{self.url}/hooks/{name}"

    # -- faults -----------------------------------------------------------------------------

    def fail(self, n: int = 1, status: int = 503, retry_after: float | None = None) -> None:
        """Answer the next ``n`` requests with ``status`` (and a ``Retry-After`` header)."""
        headers = {"Retry-After": _seconds(retry_after)} if retry_after is not None else {}
        body = json.dumps({"message": HTTPStatus(status).phrase}).encode()
        for _ in range(n):
            self._plan.append(lambda r: _flavoured_failure(r, status, body, headers))

    def rate_limit(self, n: int = 1, retry_after: float = 0.05, *, header: bool = True, body: bool = True) -> None:
        """Answer the next ``n`` requests with 429 as the flavour does (``retry_after`` in
        the JSON body and/or the ``Retry-After`` header)."""
        for _ in range(n):
            self._plan.append(lambda r: _rate_limited(r, retry_after, header, body))

    def hold(self, n: int = 1, *, after: int = 0) -> None:
        """Answer ``after`` requests as usual, then read the next ``n`` but answer none until
        :meth:`release` (then as usual)."""
        self._released.clear()
        for _ in range(after):
            self._plan.append(lambda r: _success(r, self._next()))
        for _ in range(n):
            self._plan.append(lambda r: Reply(hold=True))

    def release(self) -> None:
        """Answer the held requests (a client gone meanwhile never reads the answer)."""
        self._released.set()

    def plan(self, reply: Reply | Callable[[Received], Reply]) -> None:
        """Answer the next request with ``reply`` (or what it returns for the request)."""
        self._plan.append(reply if callable(reply) else (lambda r: reply))

    # -- observing --------------------------------------------------------------------------

    @property
    def delivered(self) -> list[Received]:
        """The requests answered with a 2xx (Telegram: its ``ok`` answer)."""
        return [r for r in self.requests if r.status is not None and 200 <= r.status < 300]

    def alert_ids(self, *, flavour: str | None = None, delivered: bool = False) -> list[str]:
        """The ``alert_id`` of each request (of one flavour; only answered 2xx ones), in order."""
        chosen = self.delivered if delivered else self.requests
        return [r.alert_id for r in chosen if r.alert_id is not None and flavour in (None, r.flavour)]

    async def wait_for(self, count: int, limit: float = 30.0, *, flavour: str | None = None) -> None:
        """Wait (at most ``limit`` seconds) until ``count`` requests (of ``flavour``) were read."""
        await self.wait_until(
            lambda: sum(1 for r in self.requests if flavour in (None, r.flavour)) >= count, limit
        )

    async def wait_until(self, predicate: Callable[[], bool], limit: float = 30.0) -> None:
        """Wait (at most ``limit`` seconds) until ``predicate()`` holds, checked on each
        request and answer."""
        async with asyncio.timeout(limit):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    # -- serving ----------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                self.requests.append(request)
                self._changed.set()
                reply = self._plan.popleft()(request) if self._plan else _success(request, self._next())
                if reply.hold:
                    await self._released.wait()
                    reply = _success(request, self._next())
                request.status = reply.status
                writer.write(_response(reply))
                await writer.drain()
                self._changed.set()
                if request.headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            self._connections.discard(writer)
            self._changed.set()
            with contextlib.suppress(Exception):
                writer.close()

    def _next(self) -> int:
        self._messages += 1
        return self._messages


async def _read_request(reader: asyncio.StreamReader) -> Received | None:
    line = await reader.readline()
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    if length > _MAX_BODY:
        raise ValueError("body too large")
    body = await reader.readexactly(length) if length else b""
    return Received(method, target, headers, body, time.monotonic())


def _response(reply: Reply) -> bytes:
    try:
        phrase = HTTPStatus(reply.status).phrase
    except ValueError:
        phrase = "Status"
    head = [f"HTTP/1.1 {reply.status} {phrase}", f"Content-Length: {len(reply.body)}"]
    if reply.body:
        head.append("Content-Type: application/json")
    head += [f"{k}: {v}" for k, v in reply.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body


def _success(request: Received, number: int) -> Reply:
    if request.flavour == "discord":
        return Reply(204)
    if request.flavour == "telegram":
        body = request.json() if isinstance(request.json(), dict) else {}
        result = {"message_id": number, "chat": {"id": body.get("chat_id")}, "date": int(time.time()), "text": body.get("text")}
        return Reply(200, json.dumps({"ok": True, "result": result}).encode())
    return Reply(200, b'{"ok":true}')


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _rate_limited(request: Received, retry_after: float, header: bool, body: bool) -> Reply:
    headers = {"Retry-After": _seconds(retry_after)} if header else {}
    if request.flavour == "telegram":
        payload: dict[str, Any] = {"ok": False, "error_code": 429, "description": f"Too Many Requests: retry after {retry_after}"}
        if body:
            payload["parameters"] = {"retry_after": retry_after}
    elif request.flavour == "discord":
        payload = {"message": "You are being rate limited.", "global": False}
        if body:
            payload["retry_after"] = retry_after
    else:
        payload = {"message": "Too Many Requests"}
    return Reply(429, json.dumps(payload).encode(), headers)


def _flavoured_failure(request: Received, status: int, body: bytes, headers: dict[str, str]) -> Reply:
    if request.flavour == "telegram":
        phrase = HTTPStatus(status).phrase
        body = json.dumps({"ok": False, "error_code": status, "description": phrase}).encode()
    return Reply(status, body, dict(headers))
