"""Reading the bars stream: :class:`NatsBarSource` for bots, and the pull reader under it.

A bar message's body is the exact JSON line ``replay`` writes (without its newline), on
``vstream.bars.<instId>.<tf>``. Messages are read with a JetStream pull consumer on
``VSTREAM_BARS``:

* **ephemeral** (no ``durable``): acknowledgements off, and ordered the way nats-py's ordered
  push consumer is — the reader remembers the stream sequence of the last message it handed
  out and the consumer sequence it expects next; a hole in the consumer sequence, a consumer
  the server dropped (restart, fail-over, idleness) or a failing fetch makes it create a new
  consumer from the next stream sequence. Each message is handed out once, in stream order.
* **durable** (``durable="name"``): a durable consumer with explicit acknowledgement, so a
  restarted program continues after the last message it acknowledged. When it opens a durable
  that has delivered messages nobody acknowledged (the program died holding them), it
  recreates the consumer at the acknowledgement floor, so those messages come again at once
  and in order instead of after the server's ack timeout, behind newer ones. One process per
  durable name.

``nats-py`` is imported only when a reader opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import msgspec

from ..assembler import Bar
from ..errors import ConfigError, SourceError, VStreamError
from ..settings import TIMEFRAMES
from .connect import (
    BARS_PREFIX,
    BARS_STREAM,
    bars_subject,
    check_inst_id,
    check_servers,
    connect,
    translate,
)

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.api import ConsumerConfig

log = logging.getLogger("vstream")

#: A bar of a period starting at or after the start time is published after that period
#: began, by the server's clock; reading from this much earlier covers servers whose clock
#: runs behind the exchange's.
START_MARGIN = timedelta(minutes=10)

_DURABLE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_bar_decoder = msgspec.json.Decoder(Bar)


def parse_start(start: str | datetime) -> tuple[str, datetime | None]:
    """``("new"|"all"|"time", moment)`` for a ``start`` argument, or :class:`ConfigError`."""
    if isinstance(start, datetime):
        moment = start
    elif isinstance(start, str):
        text = start.strip()
        if text.lower() in ("new", "all"):
            return text.lower(), None
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ConfigError(
                f"start {start!r} is not 'new', 'all' or an ISO time (2025-12-14T21:34Z)"
            ) from None
    else:
        raise ConfigError(f"start must be 'new', 'all', an ISO time or a datetime, not {type(start).__name__}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # no zone means UTC, as everywhere in vstream
    return "time", moment.astimezone(UTC)


def stamp(moment: datetime) -> str:
    """``moment`` in the form of ``timestamp_utc`` (so the two compare as text)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def split_bar_subject(subject: str) -> tuple[str, str] | None:
    """``(instId, tf)`` of ``vstream.bars.<instId>.<tf>``, or None for another subject."""
    if not subject.startswith(BARS_PREFIX):
        return None
    inst_id, dot, tf = subject[len(BARS_PREFIX):].rpartition(".")
    if not dot or not inst_id or "." in inst_id:
        return None
    return inst_id, tf


class PullReader:
    """Messages of ``subjects`` in ``VSTREAM_BARS``, in stream order, each once per session.

    Args:
        nc: a connected client.
        subjects: filter subjects (wildcards allowed, not overlapping).
        deliver: where a new consumer starts: ``"all"``, ``"new"``, ``"seq"`` (``start_seq``)
            or ``"time"`` (``start_time``, server publish time).
        durable: a durable consumer's name (explicit acks), else an ephemeral, ordered one.
        batch: messages asked for per fetch.
        ack_wait: seconds a durable's delivered message may stay unacknowledged.
    """

    def __init__(
        self,
        nc: Client,
        subjects: list[str],
        *,
        deliver: str = "all",
        start_seq: int = 0,
        start_time: datetime | None = None,
        durable: str | None = None,
        batch: int = 256,
        ack_wait: float = 60.0,
        idle_check: float = 2.0,
    ) -> None:
        if not subjects:
            raise ConfigError("a bars reader needs at least one subject")
        if deliver not in ("all", "new", "seq", "time"):
            raise ValueError(f"unknown deliver policy {deliver!r}")
        self.nc = nc
        self.subjects = sorted(subjects)
        self.deliver = deliver
        self.start_seq = start_seq
        self.start_time = start_time
        self.durable = durable
        self.batch = batch
        self.ack_wait = ack_wait
        self.idle_check = idle_check
        self.last_seq = 0  # stream sequence of the last message handed out
        self.recreated = 0  # consumers created again after a loss
        self.closed = False
        self._name: str | None = None
        self._sub: Any = None
        self._expect = 1  # next consumer sequence (ephemeral)
        self._checked = time.monotonic()

    def _config(self, *, from_seq: int | None = None) -> ConsumerConfig:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        config = ConsumerConfig(filter_subjects=list(self.subjects), max_deliver=-1)
        if from_seq is not None:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = max(1, from_seq)
        elif self.deliver == "new":
            config.deliver_policy = DeliverPolicy.NEW
        elif self.deliver == "seq":
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = max(1, self.start_seq)
        elif self.deliver == "time":
            assert self.start_time is not None
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = self.start_time
        else:
            config.deliver_policy = DeliverPolicy.ALL
        if self.durable:
            config.durable_name = self.durable
            config.name = self.durable
            config.ack_policy = AckPolicy.EXPLICIT
            config.ack_wait = self.ack_wait
        else:
            config.name = "vstream-" + secrets.token_hex(8)
            config.ack_policy = AckPolicy.NONE
            config.mem_storage = True
            config.num_replicas = 1
            config.inactive_threshold = 60.0
        return config

    async def open(self) -> None:
        """Create (or, for a durable, find and check) the consumer and subscribe to it."""
        from nats.js.errors import NotFoundError

        js = self.nc.jetstream()
        try:
            if self.durable:
                try:
                    info = await js.consumer_info(BARS_STREAM, self.durable)
                except NotFoundError:
                    info = None
                if info is None:
                    await js.add_consumer(BARS_STREAM, self._config())
                else:
                    have = sorted(info.config.filter_subjects or ([info.config.filter_subject] if info.config.filter_subject else []))
                    if have != self.subjects:
                        raise ConfigError(
                            f"durable consumer {self.durable!r} on {BARS_STREAM} reads "
                            f"{', '.join(have) or 'everything'}, not {', '.join(self.subjects)}: "
                            f"use another name, or delete it (nats consumer rm {BARS_STREAM} {self.durable})"
                        )
                    if info.num_ack_pending:
                        # Delivered before, never acknowledged: start again at the floor now.
                        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
                        await js.delete_consumer(BARS_STREAM, self.durable)
                        config = self._config(from_seq=floor + 1) if floor else info.config
                        await js.add_consumer(BARS_STREAM, config)
                self._name = self.durable
            else:
                config = self._config(from_seq=self.last_seq + 1 if self.last_seq else None)
                await js.add_consumer(BARS_STREAM, config)
                self._name = config.name
                self._expect = 1
            self._sub = await js.pull_subscribe_bind(self._name, stream=BARS_STREAM)
        except VStreamError:
            raise
        except Exception as exc:
            raise translate(exc, f"opening a consumer on {BARS_STREAM}") from exc
        self._checked = time.monotonic()

    async def _reopen(self, why: str) -> None:
        if self.closed:
            return
        log.info("bars reader: %s; reading again from stream sequence %d", why, self.last_seq + 1)
        await self._drop(delete=not self.durable)
        if self.durable:
            # The durable itself is gone (deleted by hand, or a stream re-created).
            js = self.nc.jetstream()
            config = self._config(from_seq=self.last_seq + 1 if self.last_seq else None)
            with contextlib.suppress(Exception):
                await js.add_consumer(BARS_STREAM, config)
            self._sub = await js.pull_subscribe_bind(self.durable, stream=BARS_STREAM)
        else:
            await self.open()
        self.recreated += 1

    async def pending(self) -> int:
        """Messages of the filter not yet delivered (the server's count)."""
        try:
            info = await self._sub.consumer_info()
        except Exception as exc:
            raise translate(exc, "reading the consumer's position") from exc
        return int(info.num_pending or 0)

    async def fetch(self, wait: float) -> list[Msg]:
        """The next messages (none if none came within ``wait`` seconds)."""
        import nats.errors
        from nats.js.errors import NotFoundError

        if self.closed:
            return []
        if self._sub is None:
            await self.open()
        try:
            msgs = await self._sub.fetch(self.batch, timeout=wait)
        except nats.errors.TimeoutError:
            msgs = []
        except nats.errors.ConnectionClosedError as exc:
            raise SourceError("NATS: the connection is closed") from exc
        except Exception as exc:
            if self.closed:
                return []  # closed while this fetch waited
            if self.nc.is_closed:
                raise SourceError("NATS: the connection is closed") from exc
            await asyncio.sleep(min(1.0, wait))
            with contextlib.suppress(VStreamError):
                await self._reopen(f"fetching failed ({exc or type(exc).__name__})")
            return []
        if not msgs:
            if time.monotonic() - self._checked >= self.idle_check:
                self._checked = time.monotonic()
                try:
                    await self._sub.consumer_info()
                except NotFoundError:
                    with contextlib.suppress(VStreamError):
                        await self._reopen("the consumer is gone")
                except Exception:
                    pass  # the server may be failing over: look again later
            return []
        self._checked = time.monotonic()
        out: list[Msg] = []
        for msg in msgs:
            meta = msg.metadata
            seq = meta.sequence.stream
            if not self.durable:
                if meta.sequence.consumer != self._expect:
                    # Something was lost on the way: start over after what was handed out.
                    await self._reopen(f"consumer sequence {meta.sequence.consumer}, expected {self._expect}")
                    return out
                self._expect += 1
            if seq <= self.last_seq:
                continue  # a redelivery of what this session already has
            self.last_seq = seq
            out.append(msg)
        return out

    async def _drop(self, *, delete: bool) -> None:
        sub, name, self._sub = self._sub, self._name, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if delete and name is not None:
            with contextlib.suppress(Exception):
                await self.nc.jetstream().delete_consumer(BARS_STREAM, name)

    async def close(self) -> None:
        """Unsubscribe; an ephemeral consumer is deleted, a durable one kept."""
        self.closed = True
        await self._drop(delete=not self.durable)


class NatsBarSource:
    """Bars from the cluster's bars stream, as an async iterator of :class:`vstream.Bar`.

    Args:
        nats: a server URL (comma-separated for a cluster; the source connects and closes the
            connection itself) or a connected ``nats.aio.client.Client`` (left open).
        inst_ids: instruments to read; None: every instrument.
        timeframes: which bar timeframes (``"1m"``, ``"5m"``, ``"15m"``, ``"1h"``).
        start: ``"new"`` (bars published from now on), ``"all"`` (everything the stream
            holds), or an ISO time / ``datetime`` (bars whose period starts at or after it; no
            zone means UTC). With a durable that exists already, it continues where it was and
            ``start`` is not used.
        durable: a consumer name: bars are acknowledged and a restarted program continues
            after the last bar it acknowledged. None: an ephemeral consumer, nothing kept.
        batch: bars fetched per request.
        ack_wait: seconds a durable's bar may stay unacknowledged before the server sends it
            again (this source drops such repeats within one session).

    A durable's bar is acknowledged when the next one is asked for, by :meth:`ack`, or when the
    source is closed normally (:meth:`aclose`, or ``async with`` left without an exception:
    with an exception the bar in hand stays unacknowledged and comes again next time). The
    constructor checks its arguments and does no I/O; the connection and the consumer are made
    by the first ``__anext__`` (or ``__aenter__``). Bars come in the stream's order, which per
    instrument and timeframe is time order. A message that is not a bar is skipped, logged and
    counted in :attr:`skipped`.

    Example::

        async with vstream.NatsBarSource("nats://127.0.0.1:4222", ["BTC-USDT-SWAP"],
                                         start="2025-12-14T00:00Z", durable="my-bot") as bars:
            async for bar in bars:
                if bar.volume_tier == "T4" and bar.absorption:
                    ...
    """

    def __init__(
        self,
        nats: str | Client,
        inst_ids: list[str] | tuple[str, ...] | None = None,
        timeframes: list[str] | tuple[str, ...] = ("1m",),
        start: str | datetime = "new",
        durable: str | None = None,
        *,
        batch: int = 64,
        ack_wait: float = 60.0,
    ) -> None:
        if isinstance(nats, str):
            if not nats.strip():
                raise ConfigError("NatsBarSource needs a server URL, e.g. nats://127.0.0.1:4222")
            check_servers(nats, "NatsBarSource")
            self._url: str | None = nats
            self._nc: Any = None
        else:
            self._url = None
            self._nc = nats
        if isinstance(inst_ids, str):
            raise ConfigError("inst_ids must be a list of instrument ids, not one string")
        self.inst_ids = list(dict.fromkeys(check_inst_id(i) for i in inst_ids)) if inst_ids is not None else None
        if self.inst_ids == []:
            raise ConfigError("inst_ids is empty (None reads every instrument)")
        if isinstance(timeframes, str):
            timeframes = (timeframes,)
        self.timeframes = list(dict.fromkeys(timeframes))
        if not self.timeframes:
            raise ConfigError("timeframes is empty")
        for tf in self.timeframes:
            if tf not in TIMEFRAMES:
                raise ConfigError(f"unknown timeframe {tf!r}; choose from {', '.join(TIMEFRAMES)}")
        self._policy, self._moment = parse_start(start)
        self._since = stamp(self._moment) if self._moment is not None else None
        if durable is not None and not _DURABLE.match(durable):
            raise ConfigError(f"durable name {durable!r} must be letters, digits, '-' or '_'")
        self.durable = durable
        if batch < 1:
            raise ConfigError("batch must be >= 1")
        if not ack_wait > 0:
            raise ConfigError("ack_wait must be > 0 seconds")
        self._batch = batch
        self._ack_wait = ack_wait
        self._reader: PullReader | None = None
        self._buffer: deque[Msg] = deque()
        self._held: Msg | None = None  # the last bar handed out, not yet acknowledged
        self._closed = False
        self._finished = False
        self._opening: asyncio.Lock | None = None
        #: Messages that were not bars (logged and skipped).
        self.skipped = 0
        #: Stream sequence of the last bar returned.
        self.last_sequence = 0

    def subjects(self) -> list[str]:
        """The filter subjects this source reads."""
        if self.inst_ids is None:
            return [bars_subject("*", tf) for tf in self.timeframes]
        return [bars_subject(i, tf) for i in self.inst_ids for tf in self.timeframes]

    async def _open(self) -> PullReader:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._reader is not None:
                return self._reader
            if self._closed:
                raise SourceError("the NatsBarSource is closed")
            if self._nc is None:
                assert self._url is not None
                self._nc = await connect(self._url, name="vstream-bars")
            deliver, start_time = self._policy, None
            if self._moment is not None:
                deliver, start_time = "time", self._moment - START_MARGIN
            reader = PullReader(
                self._nc, self.subjects(), deliver=deliver, start_time=start_time,
                durable=self.durable, batch=self._batch, ack_wait=self._ack_wait,
            )
            await reader.open()
            self._reader = reader
            return reader

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Bar:
        if self._closed:
            raise StopAsyncIteration
        reader = self._reader or await self._open()
        await self.ack()
        while True:
            if self._closed:
                raise StopAsyncIteration
            if not self._buffer:
                self._buffer.extend(await reader.fetch(1.0))
                continue
            msg = self._buffer.popleft()
            bar = self._decode(msg)
            if bar is None or (self._since is not None and bar.timestamp_utc < self._since):
                if self.durable:
                    await self._ack_msg(msg)  # nothing for the program: do not keep it
                continue
            self._held = msg if self.durable else None
            self.last_sequence = msg.metadata.sequence.stream
            return bar

    def _decode(self, msg: Msg) -> Bar | None:
        try:
            return _bar_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            self.skipped += 1
            log.warning("%s: skipped a message that is not a bar (stream sequence %d): %s",
                        msg.subject, msg.metadata.sequence.stream, exc)
            return None

    async def _ack_msg(self, msg: Msg) -> None:
        try:
            await msg.ack()
        except Exception as exc:
            # Not acknowledged means delivered again later: at least once, never lost.
            log.info("%s: acknowledging failed: %s", msg.subject, exc)

    async def ack(self) -> None:
        """Acknowledge the bar last returned (durable only; no-op otherwise or if done)."""
        held, self._held = self._held, None
        if held is not None:
            await self._ack_msg(held)

    async def aclose(self) -> None:
        """Acknowledge the bar in hand, stop reading, close a connection this source made."""
        await self._close(ack=True)

    async def _close(self, *, ack: bool) -> None:
        if self._finished:
            return
        self._closed = self._finished = True
        try:
            if ack:
                await self.ack()
            self._held = None
            if self._reader is not None:
                await self._reader.close()
                self._reader = None
            if self._nc is not None and not self._nc.is_closed:
                with contextlib.suppress(Exception):
                    await self._nc.flush(2)  # acknowledgements on their way out
        finally:
            if self._url is not None and self._nc is not None:
                with contextlib.suppress(Exception):
                    await self._nc.close()
                self._nc = None

    async def __aenter__(self) -> Self:
        await self._open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close(ack=exc_type is None)


__all__ = ["START_MARGIN", "NatsBarSource", "PullReader", "parse_start", "split_bar_subject", "stamp"]
