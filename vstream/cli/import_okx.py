"""``vstream import-okx``: OKX daily trade archives into the vault's raw trade files."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from ..archive import ARCHIVE_COLUMNS, import_archives
from ..formats import FORMATS
from ..progress import Progress
from .common import add_vault_option, instrument_id, print_out, vault_of


def register_import_okx(sub: Any) -> None:
    """``vstream import-okx``: OKX daily trade archives into the vault's raw trade files."""
    p = sub.add_parser(
        "import-okx",
        help="import OKX daily trade archives (.zip or .csv) into the vault's trade files",
        description="Turn OKX daily trade archives (.zip, or the .csv inside) into the vault's raw "
        "trade files, so replay can backfill history. Trades already there are skipped.",
    )
    p.add_argument("archives", nargs="+", metavar="FILE", help="archive .zip or .csv files")
    add_vault_option(p)
    p.add_argument("--instId", dest="inst_ids", action="append", type=instrument_id, metavar="ID",
                   help="only rows of this instrument (repeatable; default: every instrument in the files)")
    p.add_argument("--columns", metavar="A,B,...",
                   help=f"column order of files without a header (default {','.join(ARCHIVE_COLUMNS)})")
    p.add_argument("--format", dest="line_format", choices=FORMATS, metavar="okx|exporter",
                   help="write OKX objects or the vault exporter's lines (default: the format the "
                   "instrument's files hold; a new instrument gets exporter lines when the vault's "
                   "other instruments hold them, else OKX objects)")
    p.add_argument("--allow-stale", action="store_true",
                   help="import even trades that fall before what replay already processed "
                   "(then run replay --rebuild for those instruments)")

    async def handler(args: Any) -> int:
        return await asyncio.to_thread(_import_cli, args)

    p.set_defaults(handler=handler)


def _import_cli(args: Any) -> int:
    vault = vault_of(args)
    progress = Progress("import-okx", items="rows", enabled=None if not args.quiet else False)
    columns = args.columns.split(",") if args.columns else None
    try:
        reports = import_archives(
            vault, args.archives, inst_ids=args.inst_ids, columns=columns,
            allow_stale=args.allow_stale, progress=progress, line_format=args.line_format,
        )  # fmt: skip
    finally:
        progress.close()
    for report in reports:
        print_out(report.summary())
        for error in report.errors:
            print(f"vstream: bad row: {error}", file=sys.stderr)
        if report.bad > len(report.errors):
            print(f"vstream: ... and {report.bad - len(report.errors)} more bad rows", file=sys.stderr)
        for target in report.merged:
            print(f"vstream: merged into {target} (rows were older than its last trade)", file=sys.stderr)
    stale = sorted({inst for r in reports for inst in r.stale})
    for inst in stale:
        print(f"vstream: {inst}: bars are now stale; run `vstream replay --rebuild --instId {inst}`",
              file=sys.stderr)
    return 0
