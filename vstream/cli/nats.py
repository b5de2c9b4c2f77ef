"""The command-line words of the distributed mode: ``ingest``, ``publish``, ``worker``,
``sink-jsonl`` and ``cluster-status``.

Each ``register_*`` adds its subcommand. ``nats-py`` is imported only when one of these
commands runs, so every other command starts without it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from ..errors import ConfigError, SourceError
from ..instruments import discover, kind_of
from .common import (
    add_instruments_option,
    add_settings_options,
    add_vault_option,
    checkpoint_interval,
    describe,
    settings_of,
    vault_of,
)
from .live import _install_signals

log = logging.getLogger("vstream")


def nats_url(text: str) -> str:
    """``--nats``: URLs nats-py can use, else a one-line usage error (before any work)."""
    from ..nats.connect import check_servers  # no nats-py import

    check_servers(text, "--nats")
    return text


def _add_nats_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nats", required=True, metavar="URL", type=nats_url,
        help="NATS server URL, comma-separated for a cluster (nats://127.0.0.1:4222)",
    )
    p.add_argument(
        "--replicas", type=int, default=1, metavar="N",
        help="replicas of the streams and buckets created if absent (3 on a 3-node cluster; 1)",
    )


def register_publish(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``vstream publish``: a vault's raw trade files into ``VSTREAM_TRADES`` (backfill)."""
    p = sub.add_parser(
        "publish",
        help="publish a vault's raw trade files to NATS JetStream (backfill)",
        description="Publish what the trades stream does not have yet of the instruments' raw "
        "files; running it again, or twice at once, publishes each trade once.",
    )
    add_instruments_option(p, "every instrument with trade files in the vault")
    add_vault_option(p)
    _add_nats_option(p)
    p.add_argument(
        "--final", action="store_true",
        help="the files are complete: end with a marker that makes the workers close the last minute",
    )
    p.set_defaults(handler=_publish)


async def _publish(args: argparse.Namespace) -> int:
    from ..nats.connect import check_inst_id, connect, ensure_streams
    from ..nats.ingest import publish_vault

    vault = vault_of(args)
    inst_ids: list[str] = list(dict.fromkeys(args.inst_ids or []))
    if args.all:
        inst_ids = discover(vault)
        if not inst_ids:
            raise ConfigError(f"no instruments with trade files under {vault / 'raw' / 'okx'}")
    for inst_id in inst_ids:
        kind_of(inst_id)
        check_inst_id(inst_id)
    nc = await connect(args.nats, name="vstream-publish")
    try:
        await ensure_streams(nc.jetstream(), replicas=args.replicas)
        for inst_id in inst_ids:
            summary = await publish_vault(nc, vault, inst_id, final=args.final)
            print(summary.line(), flush=True)
    finally:
        await nc.close()
    return 0


def register_ingest(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``vstream ingest``: OKX's live trades into ``VSTREAM_TRADES``."""
    from ..trades import TRADE_CHANNELS

    p = sub.add_parser(
        "ingest",
        help="publish OKX's live trades to NATS JetStream (run two for a hot standby)",
        description="Subscribe to OKX's public trades (gap filling as in live mode) and publish "
        "every accepted trade to the trades stream, one message per batch; several ingesters "
        "for the same instruments leave each trade once in the stream.",
    )
    add_instruments_option(p, "every live OKX swap", flag="--all-swaps")
    _add_nats_option(p)
    add_vault_option(p)
    p.add_argument("--channel", choices=TRADE_CHANNELS, default="trades", help="trades or trades-all")
    p.add_argument("--ws-url", metavar="U", help="websocket URL (default: OKX's for --channel)")
    p.add_argument("--rest-url", metavar="U", help="REST base URL (default: OKX's)")
    p.add_argument(
        "--gap-timeout", type=float, default=60.0, metavar="S",
        help="seconds a trade-id gap may stay unfilled before it is given up (60)",
    )
    add_settings_options(p)
    p.set_defaults(handler=_ingest)


async def _ingest(args: argparse.Namespace) -> int:
    from ..nats.connect import check_inst_id, connect, ensure_streams
    from ..nats.ingest import TradeIngester
    from ..okx_rest import DEFAULT_REST_URL, OkxRest
    from ..sources.okx import OkxSource

    settings, _ = settings_of(args)
    rest = OkxRest(args.rest_url or DEFAULT_REST_URL)
    try:
        if args.all_swaps:
            rows = await rest.instruments("SWAP")
            inst_ids = sorted(
                str(r["instId"]) for r in rows if r.get("instId") and r.get("state", "live") == "live"
            )
            if not inst_ids:
                raise SourceError("OKX listed no live swaps")
        else:
            inst_ids = list(dict.fromkeys(args.inst_ids))
        for inst_id in inst_ids:
            kind_of(inst_id)
            check_inst_id(inst_id)
        nc = await connect(args.nats, name="vstream-ingest")
        try:
            await ensure_streams(nc.jetstream(), replicas=args.replicas)
            await _share_instruments(nc, rest, inst_ids, args.replicas)
            source = OkxSource(
                inst_ids, channel=args.channel, ws_url=args.ws_url, rest=rest,
                grace=settings.grace, gap_timeout=args.gap_timeout,
            )
            ingester = TradeIngester(nc, channel=args.channel)
            undo = _install_signals(asyncio.get_running_loop(), source.stop)
            try:
                await ingester.run(source)
            finally:
                undo()
                await source.aclose()
            print(
                f"ingest messages={ingester.published} trades={ingester.trades} "
                f"already_published={ingester.dropped} gaps={ingester.gaps}",
                file=sys.stderr, flush=True,
            )
        finally:
            await nc.close()
    finally:
        await rest.aclose()
    return 0


async def _share_instruments(nc: Any, rest: Any, inst_ids: list[str], replicas: int) -> None:
    """Put OKX's rows of ``inst_ids`` (``ctVal``) in ``VSTREAM_INSTRUMENTS`` for the workers."""
    import msgspec

    from ..instruments import CachedInstrument, Kind
    from ..nats.connect import instruments_bucket

    kinds = {kind_of(i) for i in inst_ids} - {Kind.SPOT}
    names = {Kind.SWAP: "SWAP", Kind.FUTURES: "FUTURES"}
    wanted = set(inst_ids)
    rows: list[CachedInstrument] = []
    try:
        for kind in sorted(kinds, key=lambda k: k.name):
            for row in await rest.instruments(names[kind]):
                inst = row.get("instId")
                if inst in wanted:
                    rows.append(CachedInstrument(
                        instId=inst, ctVal=str(row.get("ctVal") or ""), ctType=str(row.get("ctType") or ""),
                        instType=str(row.get("instType") or ""), settleCcy=str(row.get("settleCcy") or ""),
                    ))
    except SourceError as exc:
        log.warning("could not fetch OKX's instrument list (%s); workers use their own ctVal", exc)
        return
    bucket = await instruments_bucket(nc.jetstream(), replicas=replicas)
    for row in rows:
        await bucket.put(row.instId, msgspec.json.encode(row))


def register_worker(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``vstream worker``: trades stream → bars stream, instruments shared by leases."""
    p = sub.add_parser(
        "worker",
        help="turn the NATS trades stream into bars, sharing instruments with other workers",
        description="Take instruments through leases (one owner each, taken over when it "
        "expires), resume each from its checkpoint and publish every finished bar with the new "
        "checkpoint as one atomic batch. Stop with SIGINT/SIGTERM.",
    )
    _add_nats_option(p)
    p.add_argument("--instId", dest="inst_ids", action="append", metavar="ID", help="only these instruments (default: all in the stream)")
    p.add_argument("--worker-id", metavar="NAME", help="name in leases and checkpoints (default: host-pid)")
    p.add_argument(
        "--lease-ttl", type=float, default=10.0, metavar="S",
        help="seconds a lease lives without renewal; the same for every worker (10)",
    )
    add_vault_option(p)
    add_settings_options(p)
    p.set_defaults(handler=_worker)


async def _worker(args: argparse.Namespace) -> int:
    from ..nats.connect import check_inst_id, connect
    from ..nats.worker import NatsWorker, load_cache_if

    settings, _ = settings_of(args)
    if not args.lease_ttl > 0:
        raise ConfigError("--lease-ttl must be > 0")
    inst_ids = list(dict.fromkeys(args.inst_ids)) if args.inst_ids else None
    for inst_id in inst_ids or []:
        kind_of(inst_id)
        check_inst_id(inst_id)
    cache = load_cache_if(args.vault)
    nc = await connect(args.nats, name="vstream-worker")
    stop = asyncio.Event()
    undo = _install_signals(asyncio.get_running_loop(), stop.set)
    try:
        worker = NatsWorker(
            nc, settings, worker_id=args.worker_id, lease_ttl=args.lease_ttl,
            inst_ids=inst_ids, cache=cache, checkpoint_interval=checkpoint_interval(),
            replicas=args.replicas,
        )
        await worker.run(stop)
    finally:
        undo()
        await nc.close()
    return 0


def register_sink_jsonl(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``vstream sink-jsonl``: the bars stream into a vault's output files."""
    p = sub.add_parser(
        "sink-jsonl",
        help="write the NATS bars stream into a vault's bar files (resumable)",
        description="Append the bars of the bars stream that the vault does not have yet to "
        "derived/volume/okx/{market}/{INSTID}/volume_{tf}.jsonl, the files replay writes, and "
        "keep the position in state/volume/okx/{market}/{INSTID}.nats-sink.json. Without "
        "--follow it stops once it has caught up with the stream; with --follow it keeps "
        "writing new bars until SIGINT/SIGTERM.",
    )
    add_instruments_option(p, "every instrument with bars in the stream (while following, new ones too)")
    _add_nats_option(p)
    add_vault_option(p)
    p.add_argument("--follow", action="store_true", help="keep writing new bars until SIGINT/SIGTERM")
    p.add_argument("--rebuild", action="store_true", help="remove the instruments' bar files and sink state, start from the stream's first bar")
    p.add_argument("--batch", type=int, default=1000, metavar="N", help="bars per fetch and per durable write (1000)")
    p.set_defaults(handler=_sink_jsonl)


async def _sink_jsonl(args: argparse.Namespace) -> int:
    from ..nats.connect import check_inst_id, connect
    from ..nats.sink import SinkSummary, run_sinks

    vault = vault_of(args)
    if args.batch < 1:
        raise ConfigError("--batch must be >= 1")
    inst_ids: list[str] | None = None
    if not args.all:
        inst_ids = list(dict.fromkeys(args.inst_ids))
        for inst_id in inst_ids:
            kind_of(inst_id)
            check_inst_id(inst_id)
    nc = await connect(args.nats, name="vstream-sink-jsonl")
    stop = asyncio.Event()
    undo = _install_signals(asyncio.get_running_loop(), stop.set)
    worst = 0

    def report(inst_id: str, result: SinkSummary | BaseException) -> None:
        nonlocal worst
        if isinstance(result, SinkSummary):
            print(result.line(), flush=True)
            return
        message, code = describe(result, inst_id)
        print(f"vstream: {message}", file=sys.stderr, flush=True)
        worst = max(worst, code)

    try:
        await run_sinks(
            nc, vault, inst_ids, follow=args.follow, stop=stop, rebuild=args.rebuild,
            batch=args.batch, report=report,
        )
    finally:
        undo()
        await nc.close()
    return worst


def register_cluster_status(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``vstream cluster-status``: owners, lag and workers of the cluster."""
    p = sub.add_parser(
        "cluster-status",
        help="per instrument: owner, lease, lag in trades and seconds; per worker: what it works",
        description="Read the leases, checkpoints, worker records and streams of the cluster. "
        "Exit 0 when every instrument is healthy, 1 when any has a problem (no owner, an owner "
        "that stopped announcing itself, lag over --max-lag), 2 for usage errors.",
    )
    p.add_argument("--nats", required=True, metavar="URL", type=nats_url, help="NATS server URL, comma-separated for a cluster")
    p.add_argument("--instId", dest="inst_ids", action="append", metavar="ID", help="only these instruments (default: all)")
    p.add_argument(
        "--max-lag", default="2m", metavar="D",
        help="trades this far behind the stream's newest are a problem (90s, 2m, 1h; default 2m)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(handler=_cluster_status)


async def _cluster_status(args: argparse.Namespace) -> int:
    import msgspec

    from ..nats.connect import check_inst_id, connect
    from ..nats.status import check_max_lag, cluster_status, format_status
    from ..query import parse_duration

    max_lag = check_max_lag(parse_duration(args.max_lag))
    inst_ids = list(dict.fromkeys(args.inst_ids)) if args.inst_ids else None
    for inst_id in inst_ids or []:
        check_inst_id(inst_id)
    nc = await connect(args.nats, name="vstream-cluster-status")
    try:
        status = await cluster_status(nc, inst_ids, max_lag=max_lag)
    finally:
        await nc.close()
    if args.json:
        print(msgspec.json.encode(status.to_dict()).decode(), flush=True)
    else:
        print("\n".join(format_status(status)), flush=True)
    return 0 if status.ok else 1


__all__ = ["register_cluster_status", "register_ingest", "register_publish", "register_sink_jsonl", "register_worker"]
