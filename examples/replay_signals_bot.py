"""A bot that reacts to heavy, absorbed volume (T4 + absorption) found in a vault replay.

    python examples/replay_signals_bot.py --vault Vault --instId BTC-USDT-SWAP

Without --vault it makes a sample vault with vstream's own generator first.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import vstream
from vstream.generate import generate_vault


class AbsorptionBot:
    """Collects 'someone is absorbing heavy flow' alerts; a real bot would place orders here."""

    def __init__(self) -> None:
        self.alerts: list[str] = []

    async def on_bar(self, bar: vstream.Bar) -> None:
        if bar.volume_tier == "T4" and bar.absorption:
            # Heavy taker flow that did not move price: a resting side is absorbing it.
            side = "buyers absorbed by sellers" if bar.delta.startswith("+") else "sellers absorbed by buyers"
            self.alerts.append(
                f"{bar.timestamp_utc} {bar.instId} close={bar.close} volume=${bar.total_volume} "
                f"x{bar.volume_ratio} delta={bar.delta}: {side}"
            )


async def run(vault: Path, inst_id: str) -> AbsorptionBot:
    bot = AbsorptionBot()
    # No vault= here: the bot only reads; the analyzer's own files and state stay untouched.
    source = vstream.ReplaySource(vault, inst_id, final=True)
    async with vstream.Engine([source], sinks=[bot.on_bar]) as engine:
        await engine.run()
    return bot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vault", type=Path)
    parser.add_argument("--instId", default="BTC-USDT-SWAP")
    args = parser.parse_args(argv)
    vault = args.vault
    if vault is None:
        vault = Path(tempfile.mkdtemp(prefix="vstream-example-"))
        generate_vault(vault, instruments=[args.instId], hours=4, seed=11)
    bot = asyncio.run(run(vault, args.instId))
    for alert in bot.alerts:
        print(alert)
    print(f"{len(bot.alerts)} absorption alerts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
