"""vstream: OKX trades into one-minute order-flow bars (volume tiers, whales, absorption,
divergence), as a command-line tool and as an asyncio library.

The smallest embedding::

    import asyncio, vstream

    async def main() -> None:
        source = vstream.ReplaySource("Vault", "BTC-USDT-SWAP", final=True)
        async with vstream.Engine([source]) as engine:
            async for bar in engine.bars():
                if bar.volume_tier == "T4" and bar.absorption:
                    print(bar.timestamp_utc, bar.close)

    asyncio.run(main())
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .alerts.rules import AlertRules
    from .assembler import AssemblerState, Bar, BarAssembler, Counters
    from .engine import Engine, EngineStats, SinkStats
    from .errors import (
        ConfigError,
        LockedError,
        RejectError,
        SinkError,
        SourceError,
        StateError,
        VStreamError,
    )
    from .instruments import Instrument, Kind, VaultPaths, resolve
    from .nats.readers import NatsBarSource
    from .settings import Settings
    from .sinks import CallbackSink, Sink
    from .sinks.jsonl import JsonlSink
    from .sources import Batch, Source
    from .sources.okx import OkxSource
    from .sources.replay import ReplaySource
    from .state import InstrumentStore, State
    from .trades import LineDecoder, Reject, Trade

__version__ = "0.1.0"

#: The module each public name comes from. They load on first use, so ``import vstream``
#: costs next to nothing: the ``vstream`` command holds Ctrl-C back while it loads (see
#: ``vstream.__main__``) and imports this package before any of its own code runs. The
#: websocket source (websockets, httpx) and the NATS reader stay unloaded until asked for.
_WHERE = {
    "AlertRules": "alerts.rules",
    **dict.fromkeys(["AssemblerState", "Bar", "BarAssembler", "Counters"], "assembler"),
    **dict.fromkeys(["Engine", "EngineStats", "SinkStats"], "engine"),
    **dict.fromkeys(
        ["ConfigError", "LockedError", "RejectError", "SinkError", "SourceError", "StateError", "VStreamError"],
        "errors",
    ),
    **dict.fromkeys(["Instrument", "Kind", "VaultPaths", "resolve"], "instruments"),
    "NatsBarSource": "nats.readers",
    "Settings": "settings",
    **dict.fromkeys(["CallbackSink", "Sink"], "sinks"),
    "JsonlSink": "sinks.jsonl",
    **dict.fromkeys(["Batch", "Source"], "sources"),
    "OkxSource": "sources.okx",
    "ReplaySource": "sources.replay",
    **dict.fromkeys(["InstrumentStore", "State"], "state"),
    **dict.fromkeys(["LineDecoder", "Reject", "Trade"], "trades"),
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'vstream' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__all__ = [
    "AlertRules",
    "AssemblerState",
    "Bar",
    "BarAssembler",
    "Batch",
    "CallbackSink",
    "ConfigError",
    "Counters",
    "Engine",
    "EngineStats",
    "Instrument",
    "InstrumentStore",
    "JsonlSink",
    "Kind",
    "LineDecoder",
    "LockedError",
    "NatsBarSource",
    "OkxSource",
    "Reject",
    "RejectError",
    "ReplaySource",
    "Settings",
    "Sink",
    "SinkError",
    "SinkStats",
    "Source",
    "SourceError",
    "State",
    "StateError",
    "Trade",
    "VStreamError",
    "VaultPaths",
    "__version__",
    "resolve",
]
