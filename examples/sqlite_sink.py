"""A custom sink: store every bar in SQLite (one row per bar, upserted, so replays are idempotent).

    python examples/sqlite_sink.py --vault Vault --instId BTC-USDT-SWAP --db bars.sqlite

Without --vault it replays a sample vault made by vstream's own generator in a temporary
folder, removed afterwards. A swap outside vstream's built-in contract table needs its ctVal
(--ct-val, or [ct_val] in a --config file, as for `vstream replay`).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
from pathlib import Path

import vstream
from vstream.generate import generate_vault
from vstream.settings import load_config, make_settings

# The keys every bar has (SPEC §5), up to fill_count; the optional ones after it (gap,
# timeframe, the order-flow keys) are left out of this table.
_FIELDS = vstream.Bar.__struct_fields__
COLUMNS = list(_FIELDS[: _FIELDS.index("fill_count") + 1])


def open_db(path: Path) -> sqlite3.Connection:
    """Open (or create) the database and its table; :class:`vstream.ConfigError` if it cannot
    be used (a missing folder, a folder, a file that is not SQLite)."""
    db: sqlite3.Connection | None = None
    try:
        db = sqlite3.connect(path, check_same_thread=False)
        cols = ", ".join(f'"{c}"' for c in COLUMNS)
        db.execute(f"CREATE TABLE IF NOT EXISTS bars ({cols}, PRIMARY KEY (instId, timestamp_utc))")
    except sqlite3.Error as exc:
        if db is not None:
            db.close()
        raise vstream.ConfigError(f"cannot use --db {path}: {exc}") from exc
    return db


class SqliteSink:
    """A vstream sink: ``write`` stores a bar, ``aclose`` commits and closes.

    sqlite3 blocks, so each write runs in a worker thread and the event loop stays free;
    the engine feeds this sink from its own buffer, so a slow disk never stalls the source.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def _insert(self, bar: vstream.Bar) -> None:
        if self._db is None:
            self._db = open_db(self.path)
        values = [getattr(bar, c) for c in COLUMNS]
        marks = ", ".join("?" for _ in COLUMNS)
        self._db.execute(f"INSERT OR REPLACE INTO bars VALUES ({marks})", values)

    async def write(self, bar: vstream.Bar) -> None:
        await asyncio.to_thread(self._insert, bar)

    async def aclose(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(db.commit)
            db.close()


async def run(vault: Path, inst_id: str, db: Path, settings: vstream.Settings | None = None) -> None:
    source = vstream.ReplaySource(vault, inst_id, final=True)
    async with vstream.Engine([source], sinks=[SqliteSink(db)], settings=settings) as engine:
        await engine.run()


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
    parser.add_argument("--db", type=Path, default=Path("bars.sqlite"))
    parser.add_argument("--ct-val", type=_ct_val, action="append", default=[], metavar="INST=VALUE",
                        help="contract value of a swap vstream does not know (repeatable)")
    parser.add_argument("--config", type=Path, metavar="F", help="vstream TOML config file (settings, [ct_val])")
    args = parser.parse_args(argv)
    try:
        open_db(args.db).close()  # before replaying: a bad --db would otherwise fail every bar
        base = load_config(args.config) if args.config else {}
        settings = make_settings(base, ct_val=dict(args.ct_val) or None)
        if args.vault is not None:
            asyncio.run(run(args.vault, args.instId, args.db, settings))
        else:
            with tempfile.TemporaryDirectory(prefix="vstream-example-") as folder:
                try:
                    generate_vault(Path(folder), instruments=[args.instId], hours=2, seed=5)
                except KeyError as exc:  # no generator preset for this instrument
                    raise vstream.ConfigError(f"{exc.args[0]}; give --vault to replay your own") from None
                asyncio.run(run(Path(folder), args.instId, args.db, settings))
    except vstream.VStreamError as exc:  # a one-line reason, as the vstream command gives
        print(f"sqlite_sink: {exc}", file=sys.stderr)
        return exc.exit_code
    with sqlite3.connect(args.db) as db:
        count, t4 = db.execute("SELECT COUNT(*), SUM(volume_tier = 'T4') FROM bars").fetchone()
    print(f"{count} bars in {args.db} ({t4 or 0} of them T4)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
