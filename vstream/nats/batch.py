"""Publishing to JetStream: atomic batches (ADR-50) and fenced single messages.

nats-py knows the batch headers but has no batch publisher, so a batch is sent the way ADR-50
describes it: every message carries ``Nats-Batch-Id`` and ``Nats-Batch-Sequence`` (1, 2, ...),
all but the last are plain publishes on the one connection (kept in order), and the last adds
``Nats-Batch-Commit: 1`` and is a request whose reply is the batch's PubAck. The server stores
the whole batch or nothing, and checks expectations such as
``Nats-Expected-Last-Subject-Sequence`` against the stream as it was before the batch, at
commit. Server limits: at most 1000 messages per batch, 50 open batches per stream.
"""

from __future__ import annotations

import asyncio
import secrets
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from ..errors import SinkError, VStreamError
from .connect import ERR_BATCH_DUPLICATE_MSG_ID, ERR_WRONG_LAST_SEQUENCE, translate

if TYPE_CHECKING:
    from nats.aio.client import Client

#: The server refuses larger atomic batches.
MAX_BATCH_MESSAGES = 1000

H_BATCH_ID = "Nats-Batch-Id"
H_BATCH_SEQ = "Nats-Batch-Sequence"
H_BATCH_COMMIT = "Nats-Batch-Commit"
H_MSG_ID = "Nats-Msg-Id"
H_EXPECT_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
H_EXPECT_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
H_ROLLUP = "Nats-Rollup"


@dataclass(slots=True)
class Message:
    """One message to publish."""

    subject: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAck(msgspec.Struct):
    """The server's answer to a publish (``error`` set when it refused)."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    batch: str = ""
    count: int = 0
    error: _ApiError | None = None


class FencedError(VStreamError):
    """The stream's last sequence on the fenced subject is not the one expected."""


class BatchBusyError(SinkError):
    """The server has too many atomic batches open (it allows 50 per stream): try again."""


#: Error code of "atomic publish too many inflight" (HTTP-like 429).
ERR_TOO_MANY_INFLIGHT = 10210
#: Atomic batches one client keeps open at once (the server allows 50 per stream, shared by
#: every worker writing to it).
MAX_OPEN_BATCHES = 8
_slots: weakref.WeakKeyDictionary[object, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _slots_of(nc: object) -> asyncio.Semaphore:
    slots = _slots.get(nc)
    if slots is None:
        slots = _slots[nc] = asyncio.Semaphore(MAX_OPEN_BATCHES)
    return slots


_ack_decoder = msgspec.json.Decoder(PubAck)


def decode_ack(data: bytes) -> PubAck:
    """A PubAck from a reply body (an unreadable reply is a :class:`SinkError`)."""
    try:
        return _ack_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise SinkError(f"NATS: unreadable publish acknowledgement: {data[:200]!r}") from exc


def check_ack(ack: PubAck, what: str) -> PubAck:
    """``ack`` if the server stored the message(s); :class:`FencedError` or :class:`SinkError`."""
    if ack.error is None:
        return ack
    # A bar id already stored means another worker wrote it: the server checks ids before
    # the fence, so this is the fence failing too.
    if ack.error.err_code in (ERR_WRONG_LAST_SEQUENCE, ERR_BATCH_DUPLICATE_MSG_ID):
        raise FencedError(f"{what}: {ack.error.description}")
    if ack.error.err_code == ERR_TOO_MANY_INFLIGHT:
        raise BatchBusyError(f"NATS is busy with {what}: {ack.error.description}")
    raise SinkError(f"NATS refused {what}: {ack.error.description} (code {ack.error.err_code})")


async def publish_batch(
    nc: Client,
    messages: list[Message],
    *,
    fence: tuple[str, int] | None = None,
    ack_wait: float = 5.0,
    what: str = "batch",
) -> PubAck:
    """Publish ``messages`` as one atomic batch; return the commit's PubAck.

    ``fence`` = ``(subject, seq)``: the batch is stored only if the last message on
    ``subject`` in the stream is still ``seq`` (0: none), else :class:`FencedError`.
    """
    if not messages:
        raise ValueError("an atomic batch needs at least one message")
    if len(messages) > MAX_BATCH_MESSAGES:
        raise ValueError(f"an atomic batch holds at most {MAX_BATCH_MESSAGES} messages")
    delay = 0.01
    for attempt in range(8):
        try:
            async with _slots_of(nc):
                return await _send_batch(nc, messages, fence, ack_wait, what)
        except BatchBusyError:
            if attempt == 7:
                raise
            # Nothing of a refused batch is stored: the same messages go again, new batch id.
            await asyncio.sleep(delay)
            delay = min(0.5, delay * 2)
    raise AssertionError("unreachable")


async def _send_batch(
    nc: Client, messages: list[Message], fence: tuple[str, int] | None, ack_wait: float, what: str
) -> PubAck:
    batch_id = secrets.token_hex(11)
    last = len(messages)
    try:
        for number, message in enumerate(messages, 1):
            headers = dict(message.headers)
            headers[H_BATCH_ID] = batch_id
            headers[H_BATCH_SEQ] = str(number)
            if number == 1 and fence is not None:
                headers[H_EXPECT_SUBJECT] = fence[0]
                headers[H_EXPECT_SUBJECT_SEQ] = str(fence[1])
            if number < last:
                await nc.publish(message.subject, message.body, headers=headers)
                continue
            headers[H_BATCH_COMMIT] = "1"
            reply = await nc.request(message.subject, message.body, timeout=ack_wait, headers=headers)
    except VStreamError:
        raise
    except Exception as exc:
        raise translate(exc, f"publishing {what}") from exc
    return check_ack(decode_ack(reply.data), what)


async def publish_one(
    nc: Client,
    message: Message,
    *,
    expect_subject_seq: int | None = None,
    ack_wait: float = 5.0,
    what: str = "message",
) -> PubAck:
    """Publish one message and wait for its PubAck (optionally fenced on its own subject)."""
    headers = dict(message.headers)
    if expect_subject_seq is not None:
        headers[H_EXPECT_SUBJECT_SEQ] = str(expect_subject_seq)
    try:
        reply = await nc.request(message.subject, message.body, timeout=ack_wait, headers=headers)
    except Exception as exc:
        raise translate(exc, f"publishing {what}") from exc
    return check_ack(decode_ack(reply.data), what)


async def last_message(nc: Client, stream: str, subject: str) -> tuple[int, dict[str, str], bytes] | None:
    """``(seq, headers, body)`` of the last message on ``subject``, or None when there is none."""
    from nats.js.errors import NotFoundError

    js = nc.jetstream()
    try:
        raw = await js.get_last_msg(stream, subject)
    except NotFoundError:
        return None
    except Exception as exc:
        raise translate(exc, f"reading the last message on {subject}") from exc
    return raw.seq or 0, dict(raw.headers or {}), raw.data or b""
