"""A fake OKX public server for tests: the trades websocket channels and the REST endpoints.

One asyncio server on one loopback port serves

* the websockets ``/ws/v5/public`` (channel ``trades``) and ``/ws/v5/business``
  (channel ``trades-all``), with OKX's text ``ping``/``pong`` keepalive, subscribe /
  unsubscribe acks, OKX-shaped error events and the ``64008`` service-upgrade notice;
* ``GET /api/v5/market/history-trades`` (``after``/``before``/``limit`` paging, rate limit)
  and ``GET /api/v5/public/instruments``.

Trades are "executed" by the test: :meth:`FakeOkxServer.add_trades` records them in the
server's history, :meth:`FakeOkxServer.push` records them and pushes them to subscribers,
optionally withholding some from the websocket so that the client sees a gap that only
the REST history can fill.

Example::

    async with FakeOkxServer() as okx:
        async with websockets.connect(okx.ws_url) as ws:
            await ws.send('{"op":"subscribe","args":[{"channel":"trades","instId":"BTC-USDT-SWAP"}]}')
            ack = await ws.recv()
            await okx.push([{"instId": "BTC-USDT-SWAP", "tradeId": "1", "px": "42000.1",
                             "sz": "2", "side": "buy", "ts": "1700000000000"}])
            push = await ws.recv()

Only the stdlib, ``websockets`` and ``msgspec`` are used, so this module can ship with the
package and be imported by users' own tests.
"""

from __future__ import annotations

import asyncio
import bisect
import email.utils
import http
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, NamedTuple, Self
from urllib.parse import parse_qsl, urlsplit

import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = [
    "BUSINESS_PATH",
    "DEFAULT_INSTRUMENTS",
    "HISTORY_TRADES_PATH",
    "INSTRUMENTS_PATH",
    "MAX_REQUEST_BYTES",
    "NOTICE_64008_MSG",
    "PUBLIC_PATH",
    "FakeOkxServer",
    "RestCall",
]

PUBLIC_PATH: Final = "/ws/v5/public"
BUSINESS_PATH: Final = "/ws/v5/business"
HISTORY_TRADES_PATH: Final = "/api/v5/market/history-trades"
INSTRUMENTS_PATH: Final = "/api/v5/public/instruments"
#: OKX refuses a subscribe request whose total length exceeds 64 KB.
MAX_REQUEST_BYTES: Final = 64 * 1024
NOTICE_64008_MSG: Final = (
    "The connection will soon be closed for a service upgrade. Please reconnect."
)

# Which websocket path serves which channel: OKX answers a channel on the wrong path
# with an error event instead of data.
_CHANNEL_PATH: Final[Mapping[str, str]] = {"trades": PUBLIC_PATH, "trades-all": BUSINESS_PATH}
# REST history rows carry no websocket-only fields.
_WS_ONLY_FIELDS: Final = frozenset({"count", "seqId"})
_HISTORY_MAX_LIMIT: Final = 100


def _swap_row(inst_id: str, ct_val: str, tick_sz: str) -> dict[str, str]:
    base, quote, _ = inst_id.split("-")
    linear = quote in ("USDT", "USDC")
    return {
        "instType": "SWAP",
        "instId": inst_id,
        "uly": f"{base}-{quote}",
        "instFamily": f"{base}-{quote}",
        "ctVal": ct_val,
        "ctMult": "1",
        "ctValCcy": base if linear else quote,
        "ctType": "linear" if linear else "inverse",
        "settleCcy": quote if linear else base,
        "lotSz": "1",
        "minSz": "1",
        "tickSz": tick_sz,
        "state": "live",
        "listTime": "1611916828000",
        "expTime": "",
    }


#: Instruments served when none are given: the six swaps of vstream's built-in ctVal table,
#: with the values OKX reported for them (see the real instruments capture).
DEFAULT_INSTRUMENTS: Final[Mapping[str, Mapping[str, str]]] = {
    row["instId"]: row
    for row in (
        _swap_row("BTC-USDT-SWAP", "0.01", "0.1"),
        _swap_row("ETH-USDT-SWAP", "0.1", "0.01"),
        _swap_row("SOL-USDT-SWAP", "1", "0.001"),
        _swap_row("BTC-USD-SWAP", "100", "0.1"),
        _swap_row("ETH-USD-SWAP", "10", "0.01"),
        _swap_row("SOL-USD-SWAP", "10", "0.001"),
    )
}


class RestCall(NamedTuple):
    """One REST request the server answered (``status`` is the HTTP status, ``code`` OKX's)."""

    path: str
    params: dict[str, str]
    status: int
    code: str


@dataclass(eq=False)
class _Client:
    conn: ServerConnection
    path: str
    conn_id: str
    subs: set[tuple[str, str]] = field(default_factory=set)


@dataclass
class _History:
    ids: list[int] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


def _encode(obj: object) -> str:
    # Text frames, not binary: OKX sends JSON as websocket text.
    return msgspec.json.encode(obj).decode()


def _inst_type(inst_id: str, row: Mapping[str, Any]) -> str:
    if "instType" in row:
        return str(row["instType"])
    parts = inst_id.split("-")
    if parts[-1] == "SWAP":
        return "SWAP"
    return "SPOT" if len(parts) == 2 else "FUTURES"


def _aggregate(fills: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge runs of fills the way the OKX ``trades`` channel does.

    Consecutive trade ids with the same side, price and timestamp (one taker order
    sweeping one price level) become one record: ``tradeId`` is the last id, ``count`` the
    number of fills and ``sz`` their sum, so the record covers ``tradeId - count + 1 ..
    tradeId``.
    """
    out: list[dict[str, Any]] = []
    sizes: list[Decimal] = []
    for fill in fills:
        prev = out[-1] if out else None
        if (
            prev is not None
            and prev["instId"] == fill["instId"]
            and all(prev.get(k) == fill.get(k) for k in ("side", "px", "ts"))
            and int(fill["tradeId"]) == int(prev["tradeId"]) + 1
        ):
            sizes[-1] += Decimal(str(fill["sz"]))
            prev["tradeId"] = fill["tradeId"]
            prev["sz"] = format(sizes[-1], "f")
            prev["count"] = str(int(prev["count"]) + 1)
            if "seqId" in fill:
                prev["seqId"] = fill["seqId"]
        else:
            out.append({**fill, "count": "1"})
            sizes.append(Decimal(str(fill["sz"])))
    return out


class FakeOkxServer:
    """A fake OKX public server (websocket trades channels + REST) on one loopback port.

    Args:
        instruments: instId -> instrument row as ``GET /api/v5/public/instruments``
            returns it. ``None`` serves :data:`DEFAULT_INSTRUMENTS`.
        host: interface to listen on; keep a literal address (``127.0.0.1``) so that
            ``port=0`` yields one port.
        port: 0 picks a free port, kept across :meth:`restart`.
        rest_rate_limit: ``(requests, seconds)`` allowed per REST endpoint in any sliding
            window (OKX: 20 per 2 s); ``None`` disables it. Only answered requests count,
            refused ones do not.
        clock: monotonic seconds for the rate limit; pass a fake to control time in tests.
        error_for_unknown: answer a subscription to (or a history request for) an
            instrument missing from ``instruments`` with OKX's error; if ``False``, any
            instId is accepted.

    Use it as ``async with FakeOkxServer() as srv:`` or call :meth:`start` / :meth:`stop`.

    Attributes a test may flip or read at any time:

    * ``answer_pings`` (default ``True``): reply ``pong`` to the text ``ping``.
    * ``error_for_unknown``: see above.
    * ``connections``: websocket connections accepted so far (all paths, all restarts).
    * ``subscriptions``: ``(channel, instId)`` of every acknowledged subscribe, in order,
      repeats included (a client resubscribing after a reconnect appears twice).
    * ``pings_received``: text ``ping`` frames received.
    * ``received``: every text frame received from clients, in order (pings included).
    * ``rest_calls``: :class:`RestCall` for every REST request, rate-limited ones included.

    The server does not send protocol-level (RFC 6455) pings, like OKX; the websockets
    library still answers a client's protocol pings, whatever ``answer_pings`` says.
    """

    def __init__(
        self,
        instruments: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rest_rate_limit: tuple[int, float] | None = (20, 2.0),
        clock: Callable[[], float] = time.monotonic,
        error_for_unknown: bool = True,
    ) -> None:
        self.instruments: dict[str, dict[str, Any]] = {
            k: dict(v)
            for k, v in (DEFAULT_INSTRUMENTS if instruments is None else instruments).items()
        }
        self.host = host
        self.rest_rate_limit = rest_rate_limit
        self.clock = clock
        self.error_for_unknown = error_for_unknown
        self.answer_pings = True
        self.connections = 0
        self.subscriptions: list[tuple[str, str]] = []
        self.pings_received = 0
        self.received: list[str] = []
        self.rest_calls: list[RestCall] = []
        self._port = port
        self._server: Server | None = None
        self._clients: set[_Client] = set()
        self._history: dict[str, _History] = {}
        self._rest_times: dict[str, list[float]] = {}
        self._changed = asyncio.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen (again) on ``host``:``port``; after the first start the port is fixed."""
        if self._server is not None:
            raise RuntimeError("FakeOkxServer is already running")
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # asyncio primitives bind to the first loop that uses them; a server object
            # reused across tests that each run their own loop needs a fresh one.
            self._changed = asyncio.Condition()
            self._loop = loop
        self._server = await serve(
            self._handle,
            self.host,
            self._port,
            process_request=self._process_request,
            ping_interval=None,
            # Bounded so that stop() cannot hang on a client that never answers a close.
            close_timeout=2.0,
        )
        if self._port == 0:
            self._port = int(next(iter(self._server.sockets)).getsockname()[1])

    async def stop(self, code: int | None = 1001, reason: str = "") -> None:
        """Stop listening and close every connection.

        ``code`` is the websocket close code sent to clients (default 1001 "going away");
        ``None`` aborts the TCP connections instead, so clients see 1006.
        """
        server, self._server = self._server, None
        if server is None:
            return
        if code is None:
            for client in list(self._clients):
                client.conn.transport.abort()
            server.close()
        else:
            server.close(code=code, reason=reason)
        await server.wait_closed()

    async def restart(self, code: int | None = 1001, *, downtime: float = 0.0) -> None:
        """Close every connection (as :meth:`stop`), stay down ``downtime`` s, listen again.

        The port stays the same, so clients can reconnect to the same URLs.
        """
        await self.stop(code)
        if downtime > 0:
            await asyncio.sleep(downtime)
        await self.start()

    @property
    def port(self) -> int:
        """The listening port (0 until the first :meth:`start` when constructed with 0)."""
        return self._port

    @property
    def ws_base_url(self) -> str:
        """``ws://HOST:PORT``, for clients that append ``/ws/v5/public`` themselves."""
        return f"ws://{self.host}:{self._port}"

    @property
    def ws_url(self) -> str:
        """Full URL of the public websocket (channel ``trades``)."""
        return self.ws_base_url + PUBLIC_PATH

    @property
    def ws_business_url(self) -> str:
        """Full URL of the business websocket (channel ``trades-all``)."""
        return self.ws_base_url + BUSINESS_PATH

    @property
    def rest_url(self) -> str:
        """``http://HOST:PORT``, the base the REST paths are appended to."""
        return f"http://{self.host}:{self._port}"

    @property
    def open_connections(self) -> int:
        """Websocket connections currently open."""
        return len(self._clients)

    @property
    def active_subscriptions(self) -> set[tuple[str, str]]:
        """``(channel, instId)`` subscribed on at least one open connection."""
        return {sub for client in self._clients for sub in client.subs}

    # A built-in bound on purpose: a test waiting for a client that never comes must fail,
    # not hang, even when the caller forgot its own asyncio.timeout.
    async def wait_until(
        self,
        predicate: Callable[[], bool],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> None:
        """Wait until ``predicate()`` holds; it is re-checked whenever the server's state
        changes (connection, subscription, frame or REST call). Raises ``TimeoutError``
        after ``timeout`` seconds."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def wait_subscribed(
        self,
        inst_id: str,
        channel: str = "trades",
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> None:
        """Wait until an open connection is subscribed to ``channel`` for ``inst_id``,
        so that a following :meth:`push` reaches it."""
        await self.wait_until(
            lambda: (channel, inst_id) in self.active_subscriptions, timeout=timeout
        )

    # ------------------------------------------------------------------- trades

    def add_trades(self, trades: Iterable[Mapping[str, Any]]) -> None:
        """Record trades in the history served by REST, without pushing them.

        Each trade is one fill as OKX's REST history returns it (``instId``, ``tradeId``,
        ``px``, ``sz``, ``side``, ``ts``, optionally ``source``/``seqId``); ``count``, if
        present, must be 1 (use ``push(..., aggregate=True)`` for merged records).
        History is kept in tradeId order whatever the order given; a tradeId already
        recorded for the instrument keeps its first record.
        """
        for trade in trades:
            row = dict(trade)
            try:
                inst_id = str(row["instId"])
                trade_id = int(str(row["tradeId"]))
            except (KeyError, ValueError) as exc:
                raise ValueError(f"a trade needs instId and an integer tradeId: {row!r}") from exc
            if str(row.get("count", "1")) != "1":
                raise ValueError(
                    f"history holds single fills, got count={row['count']!r}; "
                    "push fills with aggregate=True to send merged records"
                )
            hist = self._history.setdefault(inst_id, _History())
            i = bisect.bisect_left(hist.ids, trade_id)
            if i < len(hist.ids) and hist.ids[i] == trade_id:
                continue
            hist.ids.insert(i, trade_id)
            hist.rows.insert(i, row)

    def history(self, inst_id: str) -> list[dict[str, Any]]:
        """A copy of the recorded trades of ``inst_id``, oldest first."""
        hist = self._history.get(inst_id)
        return [dict(row) for row in hist.rows] if hist else []

    async def push(
        self,
        trades: Iterable[Mapping[str, Any]],
        *,
        channel: str = "trades",
        skip_ids: Iterable[str | int] = (),
        aggregate: bool = False,
        per_message: int | None = None,
    ) -> int:
        """Record ``trades`` (as :meth:`add_trades`) and push them to the subscribers of
        ``channel`` for their instrument. Returns the number of frames sent, summed over
        connections (0 when nobody is subscribed).

        Args:
            trades: fills, pushed in the order given, each dict sent as given.
            channel: ``"trades"`` (public path) or ``"trades-all"`` (business path).
            skip_ids: tradeIds recorded in the history but not pushed: the client
                sees a gap that only REST can fill.
            aggregate: ``trades`` only: merge runs of consecutive tradeIds with the same
                side, px and ts into one record (last tradeId, summed sz, ``count`` set),
                as OKX does for one taker order; every record then carries ``count``.
            per_message: at most this many records per push frame; ``None`` puts all
                records of one instrument in one frame (OKX batches the same way,
                one instrument per frame).
        """
        if channel not in _CHANNEL_PATH:
            raise ValueError(f"channel must be 'trades' or 'trades-all', not {channel!r}")
        if aggregate and channel != "trades":
            raise ValueError("aggregate=True only applies to the 'trades' channel")
        if per_message is not None and per_message < 1:
            raise ValueError("per_message must be >= 1")
        fills = [dict(t) for t in trades]
        self.add_trades(fills)
        skipped = {str(i) for i in skip_ids}
        by_inst: dict[str, list[dict[str, Any]]] = {}
        for fill in fills:
            if str(fill["tradeId"]) not in skipped:
                by_inst.setdefault(str(fill["instId"]), []).append(fill)
        sent = 0
        for inst_id, records in by_inst.items():
            if aggregate:
                records = _aggregate(records)
            step = per_message or len(records)
            targets = [c for c in self._clients if (channel, inst_id) in c.subs]
            for start in range(0, len(records), step):
                frame = _encode(
                    {
                        "arg": {"channel": channel, "instId": inst_id},
                        "data": records[start : start + step],
                    }
                )
                for client in targets:
                    sent += await self._send(client, frame)
        return sent

    # ------------------------------------------------------------------- faults

    async def drop(self, code: int | None = None, reason: str = "") -> int:
        """Close every open websocket connection; the server keeps listening.

        ``None`` aborts the TCP connection (the client sees close code 1006, no close
        frame); otherwise a close frame with ``code`` (e.g. 4004) is sent. Returns how
        many connections were closed, once their handlers have finished.
        """
        clients = list(self._clients)
        if code is None:
            for client in clients:
                client.conn.transport.abort()
        else:
            await asyncio.gather(*(c.conn.close(code, reason) for c in clients))
        await self.wait_until(lambda: self._clients.isdisjoint(clients))
        return len(clients)

    async def send_notice_64008(self) -> int:
        """Send OKX's service-upgrade notice to every open connection (returns how many).

        OKX closes the connection some time after this notice; follow with :meth:`drop`
        to model that.
        """
        sent = 0
        for client in list(self._clients):
            sent += await self._send(
                client,
                _encode(
                    {
                        "event": "notice",
                        "msg": NOTICE_64008_MSG,
                        "code": "64008",
                        "connId": client.conn_id,
                    }
                ),
            )
        return sent

    async def send_raw(self, text: str) -> int:
        """Send ``text`` as-is (e.g. a malformed frame) to every open connection."""
        sent = 0
        for client in list(self._clients):
            sent += await self._send(client, text)
        return sent

    # --------------------------------------------------------------- websocket

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _send(self, client: _Client, text: str) -> int:
        try:
            await client.conn.send(text)
        except ConnectionClosed:
            return 0
        return 1

    async def _handle(self, conn: ServerConnection) -> None:
        assert conn.request is not None
        client = _Client(conn, urlsplit(conn.request.path).path, secrets.token_hex(4))
        self._clients.add(client)
        self.connections += 1
        await self._notify()
        try:
            async for message in conn:
                if isinstance(message, str):
                    self.received.append(message)
                    await self._on_text(client, message)
                else:
                    await self._error(client, "60012", "Invalid request: binary frame")
                await self._notify()
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(client)
            await self._notify()

    async def _error(self, client: _Client, code: str, msg: str, req_id: object = None) -> None:
        event: dict[str, object] = {
            "event": "error",
            "code": code,
            "msg": msg,
            "connId": client.conn_id,
        }
        if req_id is not None:
            event = {"id": req_id, **event}
        await self._send(client, _encode(event))

    async def _on_text(self, client: _Client, text: str) -> None:
        if text == "ping":
            self.pings_received += 1
            if self.answer_pings:
                await self._send(client, "pong")
            return
        if len(text.encode()) > MAX_REQUEST_BYTES:
            # The exact code OKX uses for this is undocumented; 60012 is its generic refusal.
            await self._error(
                client, "60012", f"Invalid request: request exceeds {MAX_REQUEST_BYTES} bytes"
            )
            return
        try:
            request = msgspec.json.decode(text)
        except msgspec.DecodeError:
            request = None
        if not isinstance(request, dict):
            await self._error(client, "60012", f"Invalid request: {text[:500]}")
            return
        req_id = request.get("id")
        op, args = request.get("op"), request.get("args")
        if op not in ("subscribe", "unsubscribe"):
            await self._error(client, "60019", f"Invalid op: {op}", req_id)
            return
        if not isinstance(args, list) or not args:
            await self._error(client, "60012", f"Invalid request: {text[:500]}", req_id)
            return
        for arg in args:
            channel = arg.get("channel") if isinstance(arg, dict) else None
            inst_id = arg.get("instId") if isinstance(arg, dict) else None
            if not isinstance(channel, str) or not isinstance(inst_id, str):
                await self._error(client, "60012", f"Invalid request: {text[:500]}", req_id)
                continue
            unknown = self.error_for_unknown and inst_id not in self.instruments
            if _CHANNEL_PATH.get(channel) != client.path or unknown:
                await self._error(
                    client,
                    "60018",
                    f"Wrong URL or channel:{channel},instId:{inst_id} doesn't exist",
                    req_id,
                )
                continue
            if op == "subscribe":
                client.subs.add((channel, inst_id))
                self.subscriptions.append((channel, inst_id))
            else:
                client.subs.discard((channel, inst_id))
            ack: dict[str, object] = {
                "event": op,
                "arg": {"channel": channel, "instId": inst_id},
                "connId": client.conn_id,
            }
            if req_id is not None:
                ack = {"id": req_id, **ack}
            await self._send(client, _encode(ack))

    # -------------------------------------------------------------------- REST

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path in (PUBLIC_PATH, BUSINESS_PATH):
            return None  # websocket handshake
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        if url.path == HISTORY_TRADES_PATH:
            status, body = self._rate_limited(url.path) or self._history_trades(params)
        elif url.path == INSTRUMENTS_PATH:
            status, body = self._rate_limited(url.path) or self._instruments(params)
        else:
            status, body = 404, {"code": "404", "msg": "Not Found", "data": []}
        self.rest_calls.append(RestCall(url.path, params, status, str(body["code"])))
        await self._notify()
        payload = msgspec.json.encode(body)
        headers = Headers(
            [
                ("Date", email.utils.formatdate(usegmt=True)),
                ("Connection", "close"),
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload))),
            ]
        )
        return Response(status, http.HTTPStatus(status).phrase, headers, payload)

    def _rate_limited(self, path: str) -> tuple[int, dict[str, Any]] | None:
        if self.rest_rate_limit is None:
            return None
        limit, window = self.rest_rate_limit
        now = self.clock()
        times = [t for t in self._rest_times.get(path, []) if now - t < window]
        self._rest_times[path] = times
        if len(times) >= limit:
            return 429, {"code": "50011", "msg": "Too Many Requests", "data": []}
        times.append(now)
        return None

    def _history_trades(self, params: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        inst_id = params.get("instId", "")
        if not inst_id:
            return _rest_error(400, "50014", "Parameter instId can not be empty.")
        hist = self._history.get(inst_id)
        if hist is None and self.error_for_unknown and inst_id not in self.instruments:
            return _rest_error(200, "51001", "Instrument ID does not exist.")
        kind = params.get("type") or "1"
        if kind not in ("1", "2"):
            return _rest_error(400, "51000", "Parameter type error")
        bounds: dict[str, int | None] = {}
        for name in ("after", "before", "limit"):
            raw = params.get(name) or None
            try:
                bounds[name] = None if raw is None else int(raw)
            except ValueError:
                return _rest_error(400, "51000", f"Parameter {name} error")
        after, before, limit = bounds["after"], bounds["before"], bounds["limit"]
        if kind == "2" and before is not None:
            # OKX documents `before` as tradeId-only; refuse rather than guess.
            return _rest_error(400, "51000", "Parameter before error")
        if limit is not None and limit < 1:
            return _rest_error(400, "51000", "Parameter limit error")
        # OKX caps limit at 100 silently.
        limit = min(limit or _HISTORY_MAX_LIMIT, _HISTORY_MAX_LIMIT)
        rows: list[dict[str, Any]] = []
        if hist is not None:
            if kind == "1":
                hi = len(hist.ids) if after is None else bisect.bisect_left(hist.ids, after)
                lo = 0 if before is None else bisect.bisect_right(hist.ids, before)
                candidates = hist.rows[lo:hi]
            else:
                candidates = [r for r in hist.rows if after is None or int(r["ts"]) < after]
            # Always newest first and cut at limit from the newest end: with `before`
            # alone OKX returns the latest records, not the ones just above `before`.
            rows = [
                {k: v for k, v in r.items() if k not in _WS_ONLY_FIELDS}
                for r in reversed(candidates[-limit:])
            ]
        return 200, {"code": "0", "msg": "", "data": rows}

    def _instruments(self, params: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        inst_type = params.get("instType", "")
        if not inst_type:
            return _rest_error(400, "50014", "Parameter instType can not be empty.")
        rows = [
            row
            for inst_id, row in self.instruments.items()
            if _inst_type(inst_id, row) == inst_type and params.get("instId") in (None, "", inst_id)
        ]
        if params.get("instId") and not rows:
            return _rest_error(200, "51001", "Instrument ID does not exist.")
        return 200, {"code": "0", "msg": "", "data": rows}


def _rest_error(status: int, code: str, msg: str) -> tuple[int, dict[str, Any]]:
    return status, {"code": code, "msg": msg, "data": []}
