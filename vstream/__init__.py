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
from .settings import Settings
from .sinks import CallbackSink, Sink
from .sinks.jsonl import JsonlSink
from .sources import Batch, Source
from .sources.replay import ReplaySource
from .state import InstrumentStore, State
from .trades import LineDecoder, Reject, Trade

if TYPE_CHECKING:
    from .nats.readers import NatsBarSource
    from .sources.okx import OkxSource

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The websocket source (websockets, httpx) loads on first use: replay, status and the
    # other commands start without it.
    if name == "OkxSource":
        from .sources.okx import OkxSource

        return OkxSource
    if name == "NatsBarSource":
        # Its module imports nats-py only when a source opens; still, keep it off `import vstream`.
        from .nats.readers import NatsBarSource

        return NatsBarSource
    raise AttributeError(f"module 'vstream' has no attribute {name!r}")


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
