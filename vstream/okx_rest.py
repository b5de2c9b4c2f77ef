"""A small client for the two OKX public REST endpoints live mode needs.

* ``GET /api/v5/market/history-trades`` — pages of at most 100 fills, newest first, used to fill
  trade-id gaps of the websocket stream (:meth:`OkxRest.history_range`);
* ``GET /api/v5/public/instruments`` — contract values, cached in the vault as
  ``state/instruments/okx.json`` so that replay can use them offline later
  (:func:`refresh_instrument_cache`).

HTTP is done by ``httpx`` (TLS, redirects, chunked and compressed bodies). Calls are spaced by a
sliding-window :class:`RateLimiter` per endpoint, set to OKX's published limit (20 per 2 s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .errors import ConfigError, SourceError
from .instruments import CachedInstrument, InstrumentCache, Kind, cache_path, kind_of, load_cache
from .state import write_atomic

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("vstream")

DEFAULT_REST_URL: Final = "https://www.okx.com"
HISTORY_TRADES_PATH: Final = "/api/v5/market/history-trades"
INSTRUMENTS_PATH: Final = "/api/v5/public/instruments"
#: OKX returns at most this many rows per history call.
PAGE_LIMIT: Final = 100
#: OKX's limit for both endpoints: 20 requests per 2 seconds (per IP).
DEFAULT_RATE: Final = (20, 2.0)
# OKX answers "too many requests" with HTTP 429 and code 50011.
_RATE_LIMITED_CODES: Final = frozenset({"50011", "50061"})


class _Reply(msgspec.Struct):
    code: str | int = "0"
    msg: str = ""
    data: list[msgspec.Raw] = msgspec.field(default_factory=list)


class _Row(msgspec.Struct):
    tradeId: str = ""


_reply_decoder = msgspec.json.Decoder(_Reply)
_row_decoder = msgspec.json.Decoder(_Row, strict=False)


class RateLimiter:
    """At most ``calls`` requests in any window of ``per`` seconds, as the server counts them.

    A call holds its place from :meth:`acquire` until :meth:`release`, and its window starts
    at the release: the server saw the request at some instant between the two, so counting
    from the answer can never run ahead of the server's count, however late the loop or the
    network delivered the request. (Counting from the send, as a plain sliding window does,
    gets a 429 whenever an early request reached the server later than a later one.)

    ``clock`` is a monotonic clock in seconds (the event loop's by default).
    """

    def __init__(
        self, calls: int, per: float, *, clock: Callable[[], float] | None = None
    ) -> None:
        if calls < 1 or not per > 0:
            raise ConfigError("a rate limit needs calls >= 1 and per > 0")
        self.calls = calls
        self.per = per
        self._clock = clock
        self._times: deque[float] = deque()  # when the finished calls of the window ended
        self._in_flight = 0
        self._released = asyncio.Event()
        self._lock = asyncio.Lock()

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    async def acquire(self) -> None:
        """Wait until one more call fits in the window; it counts until :meth:`release`."""
        async with self._lock:
            while True:
                now = self._now()
                while self._times and now - self._times[0] >= self.per:
                    self._times.popleft()
                if len(self._times) + self._in_flight < self.calls:
                    self._in_flight += 1
                    return
                if self._times:
                    await asyncio.sleep(self.per - (now - self._times[0]) + 1e-3)
                else:  # every place is held by a call still under way
                    self._released.clear()
                    await self._released.wait()

    def release(self) -> None:
        """The call that :meth:`acquire` admitted has its answer (or failed): its window starts."""
        if self._in_flight < 1:
            raise RuntimeError("RateLimiter.release() without acquire()")
        self._in_flight -= 1
        self._times.append(self._now())
        self._released.set()

    def penalize(self) -> None:
        """The server said "too many requests": treat the window as full from now."""
        now = self._now()
        self._times.clear()
        self._times.extend([now] * self.calls)


class OkxRest:
    """OKX public REST calls over one ``httpx.AsyncClient``.

    The constructor does no I/O; call :meth:`aclose` (or use ``async with``) when done.
    ``base_url`` is e.g. ``https://www.okx.com`` (tests pass the fake server's loopback URL).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_REST_URL,
        *,
        timeout: float = 10.0,
        rate: tuple[int, float] = DEFAULT_RATE,
        retries: int = 3,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"REST URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self._client = client
        self._owns_client = client is None
        calls, per = rate
        self._limits = {
            HISTORY_TRADES_PATH: RateLimiter(calls, per),
            INSTRUMENTS_PATH: RateLimiter(calls, per),
        }
        self.calls = 0

    async def __aenter__(self) -> OkxRest:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client (if this object created it)."""
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            await client.aclose()

    def _http(self) -> httpx.AsyncClient:
        import httpx  # only live mode talks HTTP: the other commands start without it

        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout,
                follow_redirects=True,
                headers={"User-Agent": "vstream"},
            )
            self._owns_client = True
        return self._client

    async def get(self, path: str, params: Mapping[str, str]) -> list[msgspec.Raw]:
        """One GET; the ``data`` rows as raw JSON. Retries on rate limiting and 5xx.

        Raises :class:`SourceError` when OKX answers with an error code or the call fails.
        """
        import httpx

        limiter = self._limits.get(path)
        url = self.base_url + path
        last = ""
        for attempt in range(self.retries + 1):
            if limiter is not None:
                await limiter.acquire()
            self.calls += 1
            try:
                try:
                    resp = await self._http().get(url, params=dict(params))
                finally:  # answered, failed or cancelled: the place is given back
                    if limiter is not None:
                        limiter.release()
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
                continue
            try:
                reply = _reply_decoder.decode(resp.content)
            except msgspec.DecodeError:
                reply = None
            code = str(reply.code) if reply is not None else ""
            if resp.status_code == 429 or code in _RATE_LIMITED_CODES:
                if limiter is not None:
                    limiter.penalize()
                last = f"rate limited (HTTP {resp.status_code}, code {code})"
                continue
            if resp.status_code >= 500 or reply is None:
                last = f"HTTP {resp.status_code}" + ("" if reply else " with an unreadable body")
                await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
                continue
            if code != "0":
                raise SourceError(f"OKX {path} refused {dict(params)}: {reply.msg} (code {code})")
            return reply.data
        raise SourceError(f"OKX {path} failed after {self.retries + 1} attempts: {last}")

    async def history_trades(
        self,
        inst_id: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int = PAGE_LIMIT,
    ) -> list[msgspec.Raw]:
        """One page of fills (``type=1``: paging by trade id), newest first."""
        params = {"instId": inst_id, "type": "1", "limit": str(min(limit, PAGE_LIMIT))}
        if after is not None:
            params["after"] = str(after)
        if before is not None:
            params["before"] = str(before)
        return await self.get(HISTORY_TRADES_PATH, params)

    async def history_range(
        self, inst_id: str, lo: int, hi: int | None
    ) -> dict[int, msgspec.Raw]:
        """Fills with ``lo < tradeId <= hi`` (``hi=None``: up to the newest), by trade id.

        Pages downwards from ``hi`` (OKX answers ``before`` alone with the *newest* rows, so the
        only way through a range is from its top). What OKX does not have (yet) is simply
        missing from the result; the caller checks completeness.
        """
        out: dict[int, msgspec.Raw] = {}
        after = None if hi is None else hi + 1
        while True:
            page = await self.history_trades(inst_id, after=after, before=lo)
            ids: list[int] = []
            for raw in page:
                try:
                    tid = int(_row_decoder.decode(raw).tradeId)
                except (msgspec.DecodeError, ValueError):
                    continue
                ids.append(tid)
                if tid > lo and (hi is None or tid <= hi):
                    out[tid] = raw
            if len(page) < PAGE_LIMIT or not ids:
                return out
            lowest = min(ids)
            if lowest <= lo + 1 or (after is not None and lowest >= after):
                return out
            after = lowest

    async def instruments(self, inst_type: str, inst_id: str | None = None) -> list[dict[str, Any]]:
        """Every instrument row of ``inst_type`` (``SWAP``, ``FUTURES``, ``SPOT``), or only
        that of ``inst_id``."""
        params = {"instType": inst_type}
        if inst_id is not None:
            params["instId"] = inst_id
        rows = await self.get(INSTRUMENTS_PATH, params)
        out: list[dict[str, Any]] = []
        for raw in rows:
            try:
                row = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                continue
            if isinstance(row, dict):
                out.append(row)
        return out


_INST_TYPE = {Kind.SWAP: "SWAP", Kind.FUTURES: "FUTURES", Kind.SPOT: "SPOT"}


async def refresh_instrument_cache(
    vault: Path, inst_ids: Iterable[str], rest: OkxRest
) -> InstrumentCache:
    """Fetch the instrument rows of the kinds of ``inst_ids`` and merge them into the cache.

    The cache (``state/instruments/okx.json``) is rewritten atomically; rows of other
    instruments already in it are kept, and the whole OKX rows of ``inst_ids`` are kept too
    (``rows``: ``live --record`` writes the vault's instrument files from them). An instrument OKX does not list is a
    :class:`ConfigError` naming it. A failed fetch raises :class:`SourceError` and leaves the
    cache as it was.
    """
    wanted = list(dict.fromkeys(inst_ids))
    kinds = {kind_of(i) for i in wanted} - {Kind.SPOT}
    cache = await asyncio.to_thread(load_cache, vault)
    merged = dict(cache.instruments)
    rows = dict(cache.rows)
    listed: set[str] = set()
    for kind in sorted(kinds, key=lambda k: k.name):
        for row in await rest.instruments(_INST_TYPE[kind]):
            inst = row.get("instId")
            if not isinstance(inst, str):
                continue
            listed.add(inst)
            if inst in wanted:
                rows[inst] = row
            merged[inst] = CachedInstrument(
                instId=inst,
                ctVal=str(row.get("ctVal") or ""),
                ctType=str(row.get("ctType") or ""),
                instType=str(row.get("instType") or ""),
                settleCcy=str(row.get("settleCcy") or ""),
            )
    missing = [i for i in wanted if kind_of(i) is not Kind.SPOT and i not in listed]
    if missing:
        raise ConfigError(
            f"OKX does not list {', '.join(missing)} (GET {INSTRUMENTS_PATH}); check the instrument id"
        )
    fresh = InstrumentCache(
        fetched_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), instruments=merged, rows=rows
    )
    data = msgspec.json.encode(fresh)
    await asyncio.to_thread(write_atomic, cache_path(vault), data)
    return fresh


__all__ = [
    "DEFAULT_REST_URL",
    "HISTORY_TRADES_PATH",
    "INSTRUMENTS_PATH",
    "PAGE_LIMIT",
    "OkxRest",
    "RateLimiter",
    "refresh_instrument_cache",
]
