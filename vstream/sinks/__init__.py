"""Sinks: where finished bars go.

A sink is any object with ``async write(bar)`` and ``async aclose()``; a plain function or
coroutine function taking a bar works too (see :func:`as_sink`). Constructors do no I/O.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from ..assembler import Bar


@runtime_checkable
class Sink(Protocol):
    """What the engine needs of a sink."""

    async def write(self, bar: Bar) -> None: ...

    async def aclose(self) -> None: ...


class CallbackSink:
    """Wraps a sync or async callable taking a bar as a :class:`Sink`."""

    def __init__(self, callback: Callable[[Bar], Any]) -> None:
        if not callable(callback):
            raise TypeError("a sink must have write()/aclose() or be callable")
        self.callback = callback
        self._is_async = inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(
            getattr(callback, "__call__", None)  # noqa: B004 - async __call__ objects
        )

    async def write(self, bar: Bar) -> None:
        result = self.callback(bar)
        if self._is_async or inspect.isawaitable(result):
            await result

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"CallbackSink({getattr(self.callback, '__qualname__', self.callback)!r})"


SinkLike = Sink | Callable[[Bar], None] | Callable[[Bar], Awaitable[None]]


def as_sink(obj: SinkLike) -> Sink:
    """Return ``obj`` if it is a sink, else wrap a callable in :class:`CallbackSink`."""
    if isinstance(obj, Sink):
        return obj
    return CallbackSink(obj)


__all__ = ["CallbackSink", "Sink", "SinkLike", "as_sink"]
