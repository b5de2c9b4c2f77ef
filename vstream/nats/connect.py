"""Connecting to NATS JetStream, the names vstream uses there, and the streams and buckets.

``nats-py`` is imported only inside these functions, so the rest of vstream runs without the
``nats`` extra. Every exception of the client is translated here (or in the shells that call
the client) into a :mod:`vstream.errors` type, with the original as ``__cause__``.

Layout on the server:

* stream ``VSTREAM_TRADES``: subject ``vstream.trades.<instId>``, one message per batch of
  accepted trades (or a wall-clock tick / end-of-input marker);
* stream ``VSTREAM_BARS`` (atomic batches and roll-ups allowed): bars on
  ``vstream.bars.<instId>.<tf>`` and each instrument's worker checkpoint on
  ``vstream.ckpt.<instId>`` — one stream, so one atomic batch holds bars and checkpoint;
* key-value bucket ``VSTREAM_LEASES`` (key = instId): who works an instrument; a key expires
  ``lease_ttl`` after its last renewal (server time, so machines' clocks need not agree);
* key-value bucket ``VSTREAM_WORKERS`` (key = worker id): live workers and what they do;
* key-value bucket ``VSTREAM_INSTRUMENTS`` (key = instId): OKX's instrument rows (``ctVal``),
  written by ``ingest``, so workers on any machine know every contract size.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, SourceError, VStreamError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext
    from nats.js.kv import KeyValue

TRADES_STREAM = "VSTREAM_TRADES"
BARS_STREAM = "VSTREAM_BARS"
LEASES_BUCKET = "VSTREAM_LEASES"
WORKERS_BUCKET = "VSTREAM_WORKERS"
INSTRUMENTS_BUCKET = "VSTREAM_INSTRUMENTS"
TRADES_PREFIX = "vstream.trades."
BARS_PREFIX = "vstream.bars."
CKPT_PREFIX = "vstream.ckpt."

#: Atomic batch publish (ADR-50) arrived in nats-server 2.12.
MIN_SERVER_VERSION = (2, 12, 0)

# Error codes of the JetStream API this package reacts to.
ERR_WRONG_LAST_SEQUENCE = 10071
ERR_BATCH_DUPLICATE_MSG_ID = 10201
ERR_STREAM_NOT_FOUND = 10059

_INST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def check_inst_id(inst_id: str) -> str:
    """``inst_id`` if it can be one token of a subject, else :class:`ConfigError`."""
    if not _INST.match(inst_id):
        raise ConfigError(f"instrument id {inst_id!r} cannot be used in a NATS subject")
    return inst_id


def trades_subject(inst_id: str) -> str:
    return TRADES_PREFIX + inst_id


def bars_subject(inst_id: str, timeframe: str) -> str:
    return f"{BARS_PREFIX}{inst_id}.{timeframe}"


def ckpt_subject(inst_id: str) -> str:
    return CKPT_PREFIX + inst_id


def parse_version(text: str) -> tuple[int, int, int]:
    """``"2.12.1-beta"`` → ``(2, 12, 1)``; unreadable parts count as 0."""
    core = text.strip().lstrip("v").split("-", 1)[0].split("+", 1)[0]
    parts = [int(p) if p.isdigit() else 0 for p in core.split(".")[:3]]
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


def check_server_version(version: str, url: str = "") -> None:
    """Refuse a server older than 2.12 (no atomic batch publish) with a clear message."""
    if parse_version(version) < MIN_SERVER_VERSION:
        where = f" at {url}" if url else ""
        need = ".".join(map(str, MIN_SERVER_VERSION[:2]))
        raise ConfigError(
            f"nats-server {version}{where} is too old: vstream needs nats-server >= {need} "
            f"(atomic batch publish); upgrade the server"
        )


#: URL schemes nats-py connects with: plain TCP, TLS, and websockets (these need aiohttp).
NATS_SCHEMES = ("nats", "tls")
WEBSOCKET_SCHEMES = ("ws", "wss")
URL_HINT = "use nats://HOST:PORT"


def check_servers(url: str, what: str = "NATS server URL") -> list[str]:
    """The server URLs of ``url`` (comma-separated), each one nats-py can connect to.

    ``nats://`` and ``tls://`` are accepted, ``ws://`` and ``wss://`` when aiohttp (which
    nats-py needs for them) is installed, and a bare ``HOST[:PORT]``, which nats-py reads as
    ``nats://`` (port 4222 by default). Anything else — ``http://...``, a URL without a
    host, a port that is not a number, websockets mixed with the others — is a
    :class:`ConfigError` naming ``what`` (``--nats`` on the command line).
    """
    from urllib.parse import urlsplit

    servers = [u.strip() for u in url.split(",") if u.strip()]
    if not servers:
        raise ConfigError(f"{what} is empty ({URL_HINT})")
    kinds = set()
    for server in servers:
        scheme, sep, _ = server.partition("://")
        if not sep:
            scheme, server_url = "nats", f"nats://{server}"
        elif scheme in NATS_SCHEMES or scheme in WEBSOCKET_SCHEMES:
            server_url = server
        else:
            raise ConfigError(f"{what}: {server!r} is not a nats:// URL ({URL_HINT})")
        try:
            parts = urlsplit(server_url)
            host, _port = parts.hostname, parts.port
        except ValueError as exc:
            raise ConfigError(f"{what}: {server!r} is not a valid URL ({exc}; {URL_HINT})") from None
        if not host:
            raise ConfigError(f"{what}: {server!r} names no host ({URL_HINT})")
        if scheme in WEBSOCKET_SCHEMES:
            import importlib.util

            if importlib.util.find_spec("aiohttp") is None:
                raise ConfigError(
                    f"{what}: {server!r} is a websocket URL, which nats-py reaches through aiohttp: "
                    f"pip install aiohttp (or {URL_HINT})"
                )
        kinds.add(scheme in WEBSOCKET_SCHEMES)
    if len(kinds) > 1:
        raise ConfigError(f"{what}: {url!r} mixes websocket and nats:// URLs; nats-py takes one kind")
    return servers


def require_nats() -> Any:
    """The ``nats`` module, or :class:`ConfigError` naming the extra to install."""
    try:
        import nats
    except ImportError as exc:
        raise ConfigError(
            "the NATS mode needs nats-py: pip install 'vstream[nats]'"
        ) from exc
    return nats


def translate(exc: BaseException, doing: str) -> VStreamError:
    """A vstream error for a failure of the NATS client while ``doing`` something."""
    if isinstance(exc, VStreamError):
        return exc
    text = str(exc) or type(exc).__name__
    return SourceError(f"NATS: {doing}: {text}")


async def connect(url: str, *, name: str = "vstream", connect_wait: float = 5.0) -> Client:
    """Connect to ``url`` (comma-separated for a cluster), check the server, return the client.

    A URL nats-py cannot use (:func:`check_servers`), a server older than 2.12 or without
    JetStream is a :class:`ConfigError`; an unreachable one a :class:`SourceError`. The client
    reconnects by itself afterwards.
    """
    servers = check_servers(url)
    nats = require_nats()

    async def quiet(_exc: Exception) -> None:
        # Reconnects are the client's business; failures surface as errors of the calls.
        return None

    from nats.aio.client import Client as NatsClient

    nc: Client = NatsClient()
    try:
        # The client would retry an unreachable server for ever: the first connection has a
        # deadline (reconnects later are unbounded, as a long-running worker needs).
        async with asyncio.timeout(connect_wait + 1):
            # (nats-py annotates these waits as int; it takes seconds as float)
            options: dict[str, Any] = {"connect_timeout": connect_wait, "reconnect_time_wait": 0.2}
            await nc.connect(
                servers=servers,
                name=name,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                error_cb=quiet,
                **options,
            )
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        last = getattr(nc, "_err", None)
        with contextlib.suppress(Exception):
            await nc.close()
        if isinstance(exc, TimeoutError):
            why = f"no server answered within {connect_wait + 1:g} s"
            if last is not None:
                why += f" (last error: {str(last) or type(last).__name__})"
        else:
            why = str(exc) or type(exc).__name__
        raise SourceError(f"cannot connect to NATS at {url}: {why}") from exc
    try:
        info = getattr(nc, "_server_info", {}) or {}
        check_server_version(str(info.get("version", "0.0.0")), url)
        if not info.get("jetstream", False):
            raise ConfigError(f"JetStream is not enabled on the NATS server at {url}: start it with -js")
    except BaseException:
        await nc.close()
        raise
    return nc


async def ensure_streams(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create the trades and bars streams if they do not exist (an existing one is kept)."""
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    configs = [
        StreamConfig(
            name=TRADES_STREAM,
            subjects=[TRADES_PREFIX + ">"],
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=120.0,
        ),
        StreamConfig(
            name=BARS_STREAM,
            subjects=[BARS_PREFIX + ">", CKPT_PREFIX + ">"],
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=120.0,
            allow_atomic=True,
            allow_rollup_hdrs=True,
        ),
    ]
    for config in configs:
        assert config.name is not None
        try:
            try:
                info = await js.stream_info(config.name)
            except NotFoundError:
                await js.add_stream(config)
                continue
            if config.name == BARS_STREAM and not info.config.allow_atomic:
                raise ConfigError(
                    f"stream {BARS_STREAM} exists without atomic batch publish (allow_atomic); "
                    f"update or delete it"
                )
        except VStreamError:
            raise
        except Exception as exc:
            raise translate(exc, f"setting up stream {config.name}") from exc


async def lease_buckets(
    js: JetStreamContext, *, ttl: float, replicas: int = 1
) -> tuple[KeyValue, KeyValue]:
    """The leases and workers buckets (created with ``ttl`` if absent; another TTL is an error)."""
    from nats.js.api import KeyValueConfig, StorageType
    from nats.js.errors import BucketNotFoundError, NotFoundError

    out = []
    for bucket in (LEASES_BUCKET, WORKERS_BUCKET):
        try:
            try:
                kv = await js.key_value(bucket)
            except (BucketNotFoundError, NotFoundError):
                kv = await js.create_key_value(
                    KeyValueConfig(
                        bucket=bucket, ttl=ttl, history=1, storage=StorageType.FILE, replicas=replicas
                    )
                )
            status = await kv.status()
            have = status.ttl
            if have is not None and abs(have - ttl) > 1e-3:
                raise ConfigError(
                    f"bucket {bucket} has a lease TTL of {have:g} s, not {ttl:g} s: every worker "
                    f"must use the same --lease-ttl (or delete the bucket)"
                )
        except VStreamError:
            raise
        except Exception as exc:
            raise translate(exc, f"opening bucket {bucket}") from exc
        out.append(kv)
    return out[0], out[1]


async def instruments_bucket(js: JetStreamContext, *, replicas: int = 1) -> KeyValue:
    """The bucket of instrument rows (created if absent)."""
    from nats.js.api import KeyValueConfig, StorageType
    from nats.js.errors import BucketNotFoundError, NotFoundError

    try:
        try:
            return await js.key_value(INSTRUMENTS_BUCKET)
        except (BucketNotFoundError, NotFoundError):
            return await js.create_key_value(
                KeyValueConfig(bucket=INSTRUMENTS_BUCKET, history=1, storage=StorageType.FILE, replicas=replicas)
            )
    except Exception as exc:
        raise translate(exc, f"opening bucket {INSTRUMENTS_BUCKET}") from exc


#: Seconds a key-listing consumer outlives a lister that died before deleting it.
_LISTING_LINGER = 10.0


async def live_keys(js: JetStreamContext, bucket: str) -> list[str]:
    """The keys of key-value bucket ``bucket`` that hold a value (not deleted or purged).

    nats-py's ``KeyValue.keys()`` lists through a watcher whose consumer stays on the server
    for five minutes after use: a worker listing its buckets every round piled up hundreds of
    them, until the server refused more ("maximum consumers limit reached") and the worker's
    rounds, renewals included, failed. This reads the last message of each key (headers only)
    with a pull consumer deleted right after (and dropped by the server within
    ``_LISTING_LINGER`` seconds should this process die first).
    """
    import nats.errors
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
    from nats.js.errors import NotFoundError

    stream = f"KV_{bucket}"
    prefix = f"$KV.{bucket}."
    name = "vstream-keys-" + secrets.token_hex(6)
    config = ConsumerConfig(
        name=name, filter_subject=prefix + ">", deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=AckPolicy.NONE, headers_only=True, mem_storage=True, num_replicas=1,
        inactive_threshold=_LISTING_LINGER,
    )
    try:
        info = await js.add_consumer(stream, config)
    except NotFoundError:
        return []  # no bucket, no keys
    keys: list[str] = []
    try:
        pending = int(info.num_pending or 0)
        if pending == 0:
            return keys
        sub = await js.pull_subscribe_bind(name, stream=stream)
        try:
            seen = 0
            while seen < pending:
                try:
                    msgs = await sub.fetch(min(pending - seen, 256), timeout=2.0)
                except nats.errors.TimeoutError:
                    break  # the rest expired since the consumer was made
                for msg in msgs:
                    headers = msg.headers or {}
                    # A delete or purge, or the server's marker of a key that expired (a
                    # bucket made with limit markers): no value.
                    gone = headers.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers
                    if not gone and msg.subject.startswith(prefix):
                        keys.append(msg.subject[len(prefix):])
                seen += len(msgs)
                if msgs and msgs[-1].metadata.num_pending == 0:
                    break
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
    finally:
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, name)
    return keys
