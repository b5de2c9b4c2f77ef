"""A bot that reacts to heavy, absorbed volume (T4 + absorption) found in a vault replay.

    python examples/replay_signals_bot.py --vault Vault --instId BTC-USDT-SWAP
    python examples/replay_signals_bot.py --vault Vault --instId MATIC-USDT-SWAP --ct-val MATIC-USDT-SWAP=10

Without --vault it replays a sample vault made by vstream's own generator in a temporary
folder, removed afterwards. A swap outside vstream's built-in contract table needs its ctVal
(--ct-val, or [ct_val] in a --config file, as for `vstream replay`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import vstream
from vstream.generate import generate_vault
from vstream.settings import load_config, make_settings


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


async def run(vault: Path, inst_id: str, settings: vstream.Settings | None = None) -> AbsorptionBot:
    bot = AbsorptionBot()
    # No vault= here: the bot only reads; the analyzer's own files and state stay untouched.
    source = vstream.ReplaySource(vault, inst_id, final=True)
    async with vstream.Engine([source], sinks=[bot.on_bar], settings=settings) as engine:
        await engine.run()
    return bot


def _ct_val(text: str) -> tuple[str, float]:
    inst, _, value = text.partition("=")
    try:
        return inst, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected INST=VALUE, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vault", type=Path, help="vault to replay (default: a generated sample)")
    parser.add_argument("--instId", default="BTC-USDT-SWAP")
    parser.add_argument("--ct-val", type=_ct_val, action="append", default=[], metavar="INST=VALUE",
                        help="contract value of a swap vstream does not know (repeatable)")
    parser.add_argument("--config", type=Path, metavar="F", help="vstream TOML config file (settings, [ct_val])")
    args = parser.parse_args(argv)
    try:
        base = load_config(args.config) if args.config else {}
        settings = make_settings(base, ct_val=dict(args.ct_val) or None)
        if args.vault is not None:
            bot = asyncio.run(run(args.vault, args.instId, settings))
        else:
            with tempfile.TemporaryDirectory(prefix="vstream-example-") as folder:
                try:
                    generate_vault(Path(folder), instruments=[args.instId], hours=4, seed=11)
                except KeyError as exc:  # no generator preset for this instrument
                    raise vstream.ConfigError(f"{exc.args[0]}; give --vault to replay your own") from None
                bot = asyncio.run(run(Path(folder), args.instId, settings))
    except vstream.VStreamError as exc:  # a one-line reason, as the vstream command gives
        print(f"replay_signals_bot: {exc}", file=sys.stderr)
        return exc.exit_code
    for alert in bot.alerts:
        print(alert)
    print(f"{len(bot.alerts)} absorption alerts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
