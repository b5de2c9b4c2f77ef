"""Delivering alerts: new lines of the alerts files to Discord, Telegram and JSON webhooks.

The alerts files are the queue. Each destination keeps a cursor per instrument — the byte
offset after the last line it delivered, in ``state/alerts/deliveries/{name}.json``,
replaced atomically after every delivered line — so a deliverer killed at any instant sends
again at most the one alert it had in flight (each message carries its ``alert_id`` for the
receiver to drop a repeat). A destination that is down is retried with backoff for as long as
it takes: its alerts wait in the file, the bars never wait for it, and ``vstream status``
tells it is behind or failing.

The decisions are plain functions (:func:`request_of` builds a request, :func:`judge` reads
the answer, :class:`RetryPolicy` says how long to wait); :class:`Deliverer` is the asyncio
shell around ``httpx``, with the clock, the sleep and the random source injectable so tests
run deterministically. Only lines the state records as durable are delivered; lines a first
run or a rebuild made from history are skipped unless ``deliver_history``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock
import msgspec

from ..errors import ConfigError, DeliveryError, LockedError, StateError
from ..state import write_atomic
from .config import Destination, Redactor
from .detect import Alert
from .files import alert_file, alert_instruments, read_lines
from .message import text

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("vstream")

#: Longest message text each chat accepts.
_TEXT_LIMIT = {"discord": 2000, "telegram": 4096}
#: The longest wait a server's Retry-After is taken up to (a broken header must not park a
#: destination for days).
MAX_RETRY_AFTER = 3600.0
_decoder = msgspec.json.Decoder(Alert)


def deliveries_dir(vault: Path) -> Path:
    return vault / "state" / "alerts" / "deliveries"


def cursor_path(vault: Path, name: str) -> Path:
    return deliveries_dir(vault) / f"{name}.json"


# -- the decisions (no I/O) -----------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One HTTP POST to make."""

    url: str
    headers: dict[str, str]
    body: bytes


def _fit(message: str, limit: int) -> str:
    if len(message) <= limit:
        return message
    head, _, tail = message.rpartition("\n")  # keep the alert_id line whole
    room = limit - len(tail) - 2
    return head[: max(0, room)] + "…\n" + tail


def request_of(dest: Destination, line: bytes, alert: Alert) -> Request:
    """The request that delivers ``alert`` (its ``line`` in the file) to ``dest``."""
    json = {"Content-Type": "application/json"}
    if dest.type == "discord":
        assert dest.url is not None
        body = msgspec.json.encode({"content": _fit(text(alert), _TEXT_LIMIT["discord"])})
        return Request(dest.url, json, body)
    if dest.type == "telegram":
        url = f"{dest.api_url.rstrip('/')}/bot{dest.token}/sendMessage"
        payload = {"chat_id": dest.chat_id, "text": _fit(text(alert), _TEXT_LIMIT["telegram"])}
        return Request(url, json, msgspec.json.encode(payload))
    assert dest.url is not None
    return Request(dest.url, {**json, **dest.headers}, bytes(line))


@dataclass(frozen=True)
class Outcome:
    """What an answer (or a failure to get one) means."""

    ok: bool
    #: Seconds the server asked to wait before the next request (429, or 503 with the header).
    retry_after: float | None = None
    #: Why it failed, redacted (no URL, no token).
    reason: str = ""
    #: A 429 that said how long to wait: flow control, which counts as no failed attempt.
    throttled: bool = False


class _Answer(msgspec.Struct):
    ok: bool | None = None
    retry_after: float | None = None  # Discord
    message: str | None = None  # Discord
    description: str | None = None  # Telegram
    parameters: dict[str, Any] | None = None  # Telegram: {"retry_after": seconds}


def _retry_after_header(value: str | None, now: float) -> float | None:
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        import email.utils  # an HTTP date: rare

        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = moment.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def judge(kind: str, status: int, headers: Mapping[str, str], body: bytes, now: float) -> Outcome:
    """Read a destination's answer.

    2xx is delivered (Telegram also needs ``"ok": true``). 429 is rate limiting: wait what
    the body says (Discord's ``retry_after``, Telegram's ``parameters.retry_after``), else the
    ``Retry-After`` header (seconds or an HTTP date). Anything else is a failure to retry;
    a 5xx's ``Retry-After`` is honoured too."""
    try:
        answer = msgspec.json.decode(body, type=_Answer) if body.strip() else _Answer()
    except (msgspec.DecodeError, msgspec.ValidationError):
        answer = _Answer()
    if 200 <= status < 300 and (kind != "telegram" or answer.ok is True):
        return Outcome(True)
    wait: float | None = None
    if status == 429:
        for value in (answer.retry_after, (answer.parameters or {}).get("retry_after")):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                wait = min(max(float(value), 0.0), MAX_RETRY_AFTER)
                break
    if wait is None and status in (429, 503):
        wait = _retry_after_header(headers.get("retry-after"), now)
    said = answer.description or answer.message or ""
    reason = f"HTTP {status}" + (f": {said[:200]}" if said else "")
    if status == 429:
        reason = f"rate limited (HTTP 429, retry after {wait if wait is not None else '?'}s)"
    return Outcome(False, wait, reason, throttled=status == 429 and wait is not None)


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait before trying a failed alert again.

    Attempt ``n`` (0 for the first retry) waits ``min(cap, base × factor**n)`` shortened by
    up to ``jitter`` of itself at random (``rng``), so many deliverers do not retry in step;
    a server's Retry-After is waited exactly instead.
    """

    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return retry_after
        raw = min(self.cap, self.base * self.factor ** min(attempt, 60))
        return raw * (1.0 - self.jitter * self.rng.random())


class RateWindow:
    """At most ``calls`` requests in any ``per`` seconds (a sliding window over send times),
    on an injectable clock and sleep."""

    def __init__(
        self,
        calls: int,
        per: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if calls < 1 or not per > 0:
            raise ConfigError("a rate limit needs calls >= 1 and per > 0")
        self.calls = calls
        self.per = per
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[float] = deque()

    def wait_time(self) -> float:
        """Seconds until one more request fits (0: now)."""
        now = self._clock()
        while self._sent and now - self._sent[0] >= self.per:
            self._sent.popleft()
        if len(self._sent) < self.calls:
            return 0.0
        return self.per - (now - self._sent[0])

    async def acquire(self) -> None:
        while (wait := self.wait_time()) > 0:
            await self._sleep(wait)
        self._sent.append(self._clock())


# -- the cursors ----------------------------------------------------------------------------


class Cursor(msgspec.Struct):
    """How far one destination got in one instrument's alerts file."""

    generation: str = ""
    offset: int = 0
    delivered: int = 0


class DestinationState(msgspec.Struct, kw_only=True):
    """``state/alerts/deliveries/{name}.json``: a destination's cursors and health."""

    destination: str
    type: str = ""
    instruments: dict[str, Cursor] = msgspec.field(default_factory=dict)
    delivered: int = 0
    #: When a deliverer last looked at the alerts files, and what waited then.
    checked_at: str = ""
    pending: int = 0
    last_ok_at: str = ""
    #: Set while the alert in hand keeps failing: since when, how often, why (redacted).
    failing_since: str = ""
    attempts: int = 0
    last_error: str = ""
    #: What the destination takes (for ``status`` to count what waits for it).
    kinds: list[str] | None = None
    instIds: list[str] | None = None
    rules: list[str] | None = None
    deliver_history: bool = False


def load_cursor(vault: Path, name: str) -> DestinationState | None:
    """A destination's cursor file (None if it has none); :class:`StateError` if unreadable."""
    path = cursor_path(vault, name)
    try:
        return msgspec.json.decode(path.read_bytes(), type=DestinationState)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError) as exc:
        raise StateError(f"delivery state {path} is unreadable ({exc}); delete it to start that destination over") from exc


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@dataclass(frozen=True)
class Pending:
    """One alert to deliver: its instrument, its bytes in the file, the alert."""

    inst_id: str
    generation: str
    start: int
    end: int
    line: bytes
    alert: Alert | None


def pending_alerts(
    vault: Path,
    state: DestinationState,
    *,
    deliver_history: bool = False,
    inst_ids: Iterable[str] | None = None,
    per_instrument: int = 100,
) -> list[Pending]:
    """The durable alerts past ``state``'s cursors (and past the history unless
    ``deliver_history``), at most ``per_instrument`` of each instrument, in file order.

    A cursor of another generation (the file started over) counts from the file's start."""
    wanted = set(inst_ids) if inst_ids is not None else None
    out: list[Pending] = []
    for inst in alert_instruments(vault):
        if wanted is not None and inst not in wanted:
            continue
        if state.instIds is not None and inst not in state.instIds:
            continue
        try:
            af = alert_file(vault, inst)
        except StateError as exc:
            log.warning("%s: alerts not read: %s", inst, exc)
            continue
        if af is None:
            continue
        cursor = state.instruments.get(inst)
        offset = cursor.offset if cursor is not None and cursor.generation == af.generation else 0
        start = offset if deliver_history else max(offset, af.history)
        try:
            lines = read_lines(af.path, start, af.length, per_instrument)
        except OSError as exc:
            log.warning("%s: cannot read alerts file %s: %s", inst, af.path, exc)
            continue
        for begin, end, line in lines:
            try:
                alert: Alert | None = _decoder.decode(line)
            except msgspec.DecodeError:
                alert = None
            out.append(Pending(inst, af.generation, begin, end, line, alert))
    return out


# -- the shell ------------------------------------------------------------------------------


class _Redacting(logging.Filter):
    """On httpx's own loggers: a request line never shows a destination's URL."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        return True


@dataclass
class DeliveryReport:
    """What one :meth:`Deliverer.run` did, per destination."""

    delivered: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


class Deliverer:
    """Delivers the vault's new alerts to ``destinations``, each in its own task.

    Without ``follow`` it stops once every destination has caught up (for a scheduler), or
    gives a destination up after ``max_attempts`` failed tries at one alert (reported; the
    alert stays for the next run). With ``follow`` it waits for new alerts (``wake()``, or
    every ``poll`` seconds) and retries for ever, until :meth:`stop`.

    ``client`` (an ``httpx.AsyncClient``), ``policy``, ``clock`` (wall time, seconds) and
    ``sleep`` are injectable. The constructor does no I/O.
    """

    def __init__(
        self,
        vault: str | Path,
        destinations: Sequence[Destination],
        *,
        follow: bool = False,
        deliver_history: bool = False,
        inst_ids: Iterable[str] | None = None,
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        client: httpx.AsyncClient | None = None,
        poll: float = 1.0,
        max_attempts: int | None = None,
        batch: int = 100,
        heartbeat: float = 30.0,
    ) -> None:
        if not destinations:
            raise ConfigError("no alerts destinations: add [[alerts.destinations]] to the config file")
        names = [d.name for d in destinations]
        if len(set(names)) != len(names):
            raise ConfigError("two alerts destinations share a name")
        for dest in destinations:
            dest.validate()
        self.vault = Path(vault)
        self.destinations = list(destinations)
        self.follow = follow
        self.deliver_history = deliver_history
        self.inst_ids = list(inst_ids) if inst_ids is not None else None
        self.policy = policy if policy is not None else RetryPolicy()
        self._clock = clock
        self._sleep = sleep
        self._client = client
        self._owns_client = client is None
        self.poll = poll
        self.max_attempts = max_attempts if max_attempts is not None else (None if follow else 5)
        self.batch = batch
        self.heartbeat = heartbeat
        self.redact = Redactor(s for d in destinations for s in d.secrets())
        self._wakes = {d.name: asyncio.Event() for d in destinations}
        self._stopping = asyncio.Event()
        self.report = DeliveryReport()

    def wake(self) -> None:
        """New alerts may be durable: look now (called by the engine in ``live``)."""
        for event in self._wakes.values():
            event.set()

    def stop(self) -> None:
        """End :meth:`run` soon: the alert in flight may be sent again next time."""
        self._stopping.set()
        self.wake()

    async def run(self) -> DeliveryReport:
        """Deliver until caught up (or, with ``follow``, until :meth:`stop`)."""
        import httpx

        client = self._client
        if client is None:
            client = httpx.AsyncClient(follow_redirects=False, headers={"User-Agent": "vstream"})
        filters = _Redacting(self.redact)
        quiet = [logging.getLogger(n) for n in ("httpx", "httpcore")]
        for logger in quiet:
            logger.addFilter(filters)
        try:
            tasks = [asyncio.create_task(self._serve(d, client), name=f"vstream-deliver-{d.name}") for d in self.destinations]
            try:
                results = await asyncio.gather(*tasks, return_exceptions=True)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        finally:
            for logger in quiet:
                logger.removeFilter(filters)
            if self._owns_client:
                await client.aclose()
        for dest, result in zip(self.destinations, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BaseException):
                self.report.failed[dest.name] = self.redact(str(result))
        return self.report

    # -- one destination ----------------------------------------------------------------

    async def _serve(self, dest: Destination, client: httpx.AsyncClient) -> None:
        path = cursor_path(self.vault, dest.name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DeliveryError(f"{dest.name}: cannot create {path.parent}: {exc.strerror or exc}") from exc
        lock = filelock.FileLock(str(path.with_suffix(".lock")), timeout=0, thread_local=False)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise LockedError(f"alerts destination {dest.name}: another vstream process is delivering to it") from None
        try:
            await self._deliver(dest, client, path)
        finally:
            lock.release(force=True)

    async def _save(self, state: DestinationState, path: Path) -> None:
        data = msgspec.json.encode(state)
        await asyncio.to_thread(write_atomic, path, data)

    async def _deliver(self, dest: Destination, client: httpx.AsyncClient, path: Path) -> None:
        state = await asyncio.to_thread(load_cursor, self.vault, dest.name)
        if state is None:
            state = DestinationState(destination=dest.name)
        state.type = dest.type
        state.kinds, state.instIds, state.rules = dest.kinds, dest.instIds, dest.rules
        state.deliver_history = self.deliver_history
        calls, per = dest.rate_limit()
        window = RateWindow(calls, per, clock=self._clock, sleep=self._sleep)
        delivered = skipped = 0
        last_beat = -math.inf
        wake = self._wakes[dest.name]
        while not self._stopping.is_set():
            wake.clear()
            work = await asyncio.to_thread(
                pending_alerts, self.vault, state, deliver_history=self.deliver_history,
                inst_ids=self.inst_ids, per_instrument=self.batch,
            )  # fmt: skip
            now = self._clock()
            if not work:
                if state.pending or now - last_beat >= self.heartbeat or not self.follow:
                    state.pending = 0
                    state.checked_at = _iso(now)
                    await self._save(state, path)
                    last_beat = now
                if not self.follow:
                    break
                await self._idle(wake)
                continue
            state.pending = len(work)
            state.checked_at = _iso(now)
            for item in work:
                if self._stopping.is_set():
                    break
                alert = item.alert
                if alert is None or not dest.wants(alert.instId, alert.kind, alert.rule):
                    if alert is None:
                        log.warning("%s: skipping an unreadable alert line at byte %d", item.inst_id, item.start)
                    self._advance(state, item, sent=False)
                    skipped += 1
                    continue
                done = await self._send(dest, client, window, state, path, item, alert)
                if done == "gave up":
                    self.report.delivered[dest.name] = delivered
                    self.report.skipped[dest.name] = skipped
                    raise DeliveryError(
                        f"alerts destination {dest.name}: gave up after {state.attempts} attempts: {state.last_error}"
                    )
                if done == "stopped":
                    break
                delivered += 1
            # skipped lines move the cursors too: keep that
            await self._save(state, path)
            last_beat = self._clock()
        self.report.delivered[dest.name] = delivered
        self.report.skipped[dest.name] = skipped

    def _advance(self, state: DestinationState, item: Pending, sent: bool) -> None:
        cursor = state.instruments.get(item.inst_id)
        if cursor is None or cursor.generation != item.generation:
            cursor = state.instruments[item.inst_id] = Cursor(generation=item.generation)
        cursor.offset = item.end
        if sent:
            cursor.delivered += 1
            state.delivered += 1

    async def _send(
        self,
        dest: Destination,
        client: httpx.AsyncClient,
        window: RateWindow,
        state: DestinationState,
        path: Path,
        item: Pending,
        alert: Alert,
    ) -> str:
        """Deliver one alert, retrying as the policy says: ``sent``, ``gave up`` (after
        ``max_attempts``) or ``stopped`` (the alert stays for next time)."""
        import httpx

        request = request_of(dest, item.line, alert)
        failures = 0
        while True:
            await window.acquire()
            try:
                response = await client.post(
                    request.url, content=request.body, headers=request.headers, timeout=dest.timeout
                )
            except httpx.HTTPError as exc:
                outcome = Outcome(False, None, self.redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__))
            else:
                outcome = judge(dest.type, response.status_code, response.headers, response.content, self._clock())
            now = self._clock()
            if outcome.ok:
                self._advance(state, item, sent=True)
                state.pending = max(0, state.pending - 1)
                state.last_ok_at = _iso(now)
                state.failing_since, state.attempts, state.last_error = "", 0, ""
                await self._save(state, path)
                return "sent"
            reason = self.redact(outcome.reason)
            throttled = outcome.throttled
            if throttled:
                # Flow control, not a failure: wait what the server asked, then go on.
                delay = self.policy.delay(0, outcome.retry_after)
            else:
                if not state.failing_since:
                    state.failing_since = _iso(now)
                state.attempts += 1
                state.last_error = reason
                await self._save(state, path)
                delay = self.policy.delay(failures, outcome.retry_after)
                failures += 1
            log.warning(
                "alerts destination %s: %s could not be delivered (%s); %snext try in %gs",
                dest.name, alert.alert_id, reason, "" if throttled else f"attempt {state.attempts}, ", round(delay, 3),
            )  # fmt: skip
            if self.max_attempts is not None and failures >= self.max_attempts:
                return "gave up"
            if not await self._pause(delay):
                return "stopped"

    async def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` (injectable), cut short by :meth:`stop`; False if stopped."""
        if self._stopping.is_set():
            return False
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, stopper):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(sleeper, stopper, return_exceptions=True)
        return not self._stopping.is_set()

    async def _idle(self, wake: asyncio.Event) -> None:
        waker = asyncio.ensure_future(wake.wait())
        sleeper = asyncio.ensure_future(self._sleep(self.poll))
        try:
            await asyncio.wait({waker, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waker, sleeper):
                task.cancel()
            await asyncio.gather(waker, sleeper, return_exceptions=True)


__all__ = [
    "Cursor",
    "Deliverer",
    "DeliveryReport",
    "DestinationState",
    "Outcome",
    "Pending",
    "RateWindow",
    "Request",
    "RetryPolicy",
    "cursor_path",
    "deliveries_dir",
    "judge",
    "load_cursor",
    "pending_alerts",
    "request_of",
]
