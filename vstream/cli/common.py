"""What every command shares: the argument parser class, the vault and settings options,
the summary line, the checkpoint interval, error reporting and the event-loop runner.

Command modules (``replay``, ``live``, ...) import from here; nothing here imports a command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import math
import os
import re
import select
import shlex
import stat
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from ..assembler import Counters
from ..errors import ConfigError, InputRejectedError, VStreamError
from ..instruments import VaultPaths, kind_of
from ..query import parse_time
from ..settings import TIMEFRAMES, Settings, load_config, make_settings
from ..state import RunTally
from ..takeover import TakeOver

T = TypeVar("T")

_THRESHOLDS: list[tuple[str, str, type, str]] = [
    ("--whale-usd", "whale_usd", float, "notional of a whale trade in USD (100000)"),
    ("--median-window", "median_window", int, "bars in the rolling median (100)"),
    ("--min-history", "min_history", int, "bars needed before tiers are given (20)"),
    ("--absorption-volume-ratio", "absorption_volume_ratio", float, "volume ratio above which a flat bar is absorption (2.0)"),
    ("--absorption-max-price-pct", "absorption_max_price_pct", float, "price change %% below which a bar is flat (0.1)"),
    ("--divergence-min-price-pct", "divergence_min_price_pct", float, "price change %% needed for divergence (0.1)"),
    ("--divergence-min-delta-ratio", "divergence_min_delta_ratio", float, "|delta| / volume needed for divergence (0.1)"),
    ("--grace", "grace", float, "seconds after a minute ends before live mode closes it (2)"),
    ("--imbalance-ratio", "imbalance_ratio", float, "footprint: volume ratio of an imbalanced level (3)"),
    ("--stacked-levels", "stacked_levels", int, "footprint: adjacent imbalanced levels that make a stack (3)"),
    ("--value-area", "value_area", float, "footprint: share of the bar's volume in the value area (0.7)"),
    ("--poor-min-usd", "poor_min_usd", float, "footprint: least USD each side trades at a poor high/low (0: both > 0)"),
]


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr and exit 2.

    Options are never abbreviated (``--re`` once ran a full ``--rebuild``), and an option or
    argument the command does not take is named in the error, with the nearest real option,
    before any other complaint (a mistyped ``--instid`` must not read as "--instId is
    required").
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)  # every parser, subcommands included
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # One line on stderr and exit 2, as for every usage or configuration error.
        self.exit(2, f"vstream: {message} (see --help)\n")

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        argv = list(sys.argv[1:] if args is None else args)
        unknown = self._unknown_option(argv)
        if unknown:
            self.error(unknown)
        parsed, extras = self.parse_known_args(argv, namespace)
        if extras:
            command = getattr(parsed, "command", None)
            where = f"{command}: " if command else ""
            hint = ""
            if kind_like(extras[0]):
                hint = " (each instrument needs its own --instId)"
            self.error(f"{where}unexpected argument {extras[0]!r}{hint}")
        return parsed

    def _unknown_option(self, argv: list[str]) -> str | None:
        """The error for the first option in ``argv`` that this parser (or the subcommand
        named in ``argv``) does not have, else ``None``; the other errors are argparse's."""
        options = self._option_string_actions
        commands: dict[str, Parser] = {}
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                commands.update({k: v for k, v in action.choices.items() if isinstance(v, Parser)})
        index = 0
        while index < len(argv):
            token = argv[index]
            index += 1
            if token == "--":
                return None  # the rest is positional
            if token in commands:
                return commands[token]._unknown_option(argv[index:])
            if not token.startswith("-") or token == "-" or self._negative_number_matcher.match(token):
                continue
            long = token.startswith("--")
            name, eq, _ = token.partition("=") if long else (token[:2], "", "")
            known = options.get(name)
            if known is None:
                return f"unknown option {name}{_did_you_mean(name, options)}"
            if not eq and (long or len(token) == 2):  # not --opt=VALUE, not -oVALUE
                index += _values_taken(known, argv[index:])
        return None


def _did_you_mean(name: str, options: Mapping[str, argparse.Action]) -> str:
    """`` (did you mean --instId?)`` for an unknown option, or nothing when none is near."""
    known = sorted(o for o in options if o.startswith("--"))
    same = [o for o in known if o.lower() == name.lower()]
    near = same or [o for o in known if o.startswith(name) and len(name) > 2]
    near = near or difflib.get_close_matches(name, known, n=1, cutoff=0.7)
    return f" (did you mean {' or '.join(near[:3])}?)" if near else ""


def _values_taken(action: argparse.Action, rest: list[str]) -> int:
    """How many of the tokens after an option are its values (its ``nargs``, as far as they
    are not options themselves): they are not checked as options."""
    nargs = action.nargs
    if nargs == 0:
        return 0
    if nargs is None or isinstance(nargs, int):
        return 1 if nargs is None else nargs
    if nargs == "?":
        return 1 if rest and not rest[0].startswith("-") else 0
    taken = 0  # "*", "+": up to the next option
    while taken < len(rest) and not rest[taken].startswith("-"):
        taken += 1
    return taken


def kind_like(text: str) -> bool:
    """Whether ``text`` looks like an instrument id (``BTC-USDT-SWAP``, ``eth-usdt``)."""
    return bool(re.fullmatch(r"[A-Za-z0-9]+-[A-Za-z0-9]+(-[A-Za-z0-9]+)?", text))


def positive_number(text: str) -> float:
    """A finite number > 0 (``--hours``, ``--gap-timeout``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def bar_count(text: str) -> int:
    """``--last N``: a whole number >= 1; more than any file can hold means every bar."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return min(value, sys.maxsize)


def _ct_val(text: str) -> tuple[str, float]:
    inst, sep, value = text.partition("=")
    if not sep or not inst:
        raise argparse.ArgumentTypeError(f"expected INST=VALUE, got {text!r}")
    try:
        return inst, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ctVal for {inst} is not a number: {value!r}") from None


def _footprint(text: str) -> tuple[str | None, float]:
    inst, sep, value = text.rpartition("=")
    if sep and not inst:
        raise argparse.ArgumentTypeError(f"expected TICK or INST=TICK, got {text!r}")
    try:
        return (inst if sep else None), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"footprint tick is not a number: {value!r}") from None


def _timeframes(text: str) -> tuple[str, ...]:
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    for tf in items:
        if tf not in TIMEFRAMES:
            raise argparse.ArgumentTypeError(f"unknown timeframe {tf!r}; choose from {','.join(TIMEFRAMES)}")
        if items.count(tf) > 1:
            raise argparse.ArgumentTypeError(f"timeframe {tf} is named more than once")
    return items


def instrument_id(text: str) -> str:
    """``--instId``: an OKX instrument id as it is (``BTC-USDT-SWAP``).

    Not upper-cased on the quiet: the id names the vault's folders and is matched against
    every trade line's ``instId``, and on a case-blind file system (Windows) ``btc-usdt-swap``
    would find the folder, then reject every line. Say what it should be instead.
    """
    try:
        kind_of(text)
    except ConfigError as exc:
        upper = text.strip().upper()
        if upper != text:
            with contextlib.suppress(ConfigError):
                kind_of(upper)
                raise argparse.ArgumentTypeError(
                    f"{text!r} is not an OKX instrument id: ids are upper case, did you mean {upper}?"
                ) from None
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_instruments_option(p: argparse.ArgumentParser, every: str, *, flag: str = "--all") -> None:
    """``--instId ID`` (repeatable) or ``flag`` (``every`` says which instruments it takes):
    one of the two is required."""
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--instId", dest="inst_ids", action="append", type=instrument_id, metavar="ID", help="instrument, repeatable"
    )
    group.add_argument(flag, action="store_true", help=every)


def add_vault_option(p: argparse.ArgumentParser) -> None:
    """``--vault P``."""
    p.add_argument("--vault", metavar="P", help="vault folder (default: $VSTREAM_VAULT, else ./Vault)")


def add_settings_options(p: argparse.ArgumentParser) -> None:
    """``--config``, ``--ct-val``, ``--timeframes`` and one flag per threshold."""
    p.add_argument("--config", metavar="F", help="TOML file with settings (keys as in README)")
    p.add_argument(
        "--ct-val", metavar="INST=VALUE", type=_ct_val, action="append", default=[],
        help="contract value override, repeatable",
    )
    p.add_argument("--timeframes", type=_timeframes, metavar="1m,5m,15m,1h", help="bar timeframes to write (1m)")
    p.add_argument(
        "--footprint", metavar="[INST=]TICK", type=_footprint, action="append", default=[],
        help="add a footprint with this price step (every instrument, or INST=TICK), repeatable",
    )
    p.add_argument(
        "--no-footprint", action="store_true",
        help="no footprint (an instrument built with one then needs --rebuild)",
    )
    p.add_argument(
        "--cvd", action="store_const", const=True, default=None,
        help="add delta_min/delta_max (running delta extremes) and cvd (the UTC day's delta)",
    )
    p.add_argument(
        "--no-cvd", dest="cvd", action="store_const", const=False,
        help="no delta extremes and cvd (an instrument built with them then needs --rebuild)",
    )
    for flag, dest, kind, text in _THRESHOLDS:
        p.add_argument(flag, dest=dest, type=kind, metavar="N", help=text)


def package_version() -> str:
    """The installed distribution's version, else the package's ``__version__``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vstream")
    except PackageNotFoundError:  # run from a checkout that was never installed
        from .. import __version__

        return __version__


def vault_of(args: argparse.Namespace) -> Path:
    """``--vault``, else ``$VSTREAM_VAULT``, else ``./Vault`` (SPEC §2).

    :class:`ConfigError` when that path, or a folder it would be made in, is something other
    than a folder (a regular file): caught here, every command refuses it the same way."""
    value = args.vault or os.environ.get("VSTREAM_VAULT") or "Vault"
    vault = Path(value)
    for path in (vault, *vault.parents):
        try:
            mode = path.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue  # not there (yet): the nearest existing one decides
        except OSError:
            break  # unreadable: the command reports it where it fails
        if stat.S_ISDIR(mode):
            break
        if path == vault:
            raise ConfigError(f"vault {vault} is not a folder")
        raise ConfigError(f"vault {vault} cannot be made: {path} is not a folder")
    return vault


#: Whether printed commands and paths are quoted for cmd.exe / PowerShell (else a POSIX shell).
ON_WINDOWS = sys.platform == "win32"
#: What makes cmd.exe (or PowerShell) split or reinterpret an unquoted word.
_CMD_SPECIAL = re.compile(r"""[\s"&|<>^()%!,;=`'$@{}\[\]]""")


def shell_quote(text: str, *, windows: bool | None = None) -> str:
    """``text`` as one word of a command line a user will paste into their shell.

    POSIX: :func:`shlex.quote`. Windows: as it is when nothing in it is special to cmd.exe or
    PowerShell, else in double quotes (both shells take those; a path cannot hold one), with
    backslashes before the closing quote doubled, so the C runtime does not read ``\"`` as a
    quote inside the word. ``windows`` defaults to the platform this runs on.
    """
    if not (ON_WINDOWS if windows is None else windows):
        return shlex.quote(text)
    if text and not _CMD_SPECIAL.search(text):
        return text
    trailing = len(text) - len(text.rstrip("\\"))
    return '"' + text + "\\" * trailing + '"'


def existing_vault(args: argparse.Namespace) -> Path:
    """:func:`vault_of`, for the commands that only read a vault: one that is not there is a
    :class:`ConfigError` saying so (not "no 1m bars in" a folder deep inside it)."""
    vault = vault_of(args)
    if not vault.is_dir():
        raise ConfigError(f"vault {vault} does not exist")
    return vault


#: What a vault holds, one at least (SPEC §2): trades, bars or replay states.
VAULT_PARTS = ("raw/okx/trades_*", "derived/volume", "state/volume")


def is_vault(folder: Path) -> bool:
    """Whether ``folder`` holds one of :data:`VAULT_PARTS` (blocking I/O)."""
    try:
        return any(path.is_dir() for part in VAULT_PARTS for path in folder.glob(part))
    except OSError:
        return False


def require_vault(vault: Path) -> None:
    """:class:`ConfigError` unless ``vault`` is a vault: a folder that does not exist, or holds
    none of :data:`VAULT_PARTS` (its parent, or its ``derived/`` folder, given by mistake),
    is named as such, with the vault nearby if there is one."""
    if not vault.is_dir():
        raise ConfigError(f"vault {vault} does not exist")
    if is_vault(vault):
        return
    near: Path | None = next((p for p in list(vault.parents)[:3] if is_vault(p)), None)
    if near is None:
        with contextlib.suppress(OSError):
            near = next((c for c in sorted(vault.iterdir()) if c.is_dir() and is_vault(c)), None)
    hint = f"; did you mean {shell_quote(str(near))}?" if near is not None else ""
    raise ConfigError(
        f"{vault} is not a vault: it holds none of {', '.join(VAULT_PARTS)}{hint}"
    )


def settings_of(args: argparse.Namespace) -> tuple[Settings, frozenset[str]]:
    """The settings of a command (defaults, then ``--config``, then the flags) and the names
    of those the user gave, in the file or as flags: the others a resuming instrument takes
    from its state."""
    base = load_config(args.config) if getattr(args, "config", None) else {}
    overrides: dict[str, Any] = {dest: getattr(args, dest, None) for _, dest, _, _ in _THRESHOLDS}
    overrides["ct_val"] = dict(args.ct_val) if getattr(args, "ct_val", None) else None
    overrides["timeframes"] = getattr(args, "timeframes", None)
    ticks: list[tuple[str | None, float]] = getattr(args, "footprint", None) or []
    overrides["footprint_tick"] = next((t for inst, t in reversed(ticks) if inst is None), None)
    overrides["footprint"] = {inst: t for inst, t in ticks if inst is not None} or None
    overrides["cvd"] = getattr(args, "cvd", None)
    given = frozenset(base) | {k for k, v in overrides.items() if v is not None}
    if getattr(args, "no_footprint", False):
        if ticks:
            raise ConfigError("--footprint and --no-footprint contradict each other")
        # Chosen, and chosen to be off: a stored footprint is then a difference.
        base = {k: v for k, v in base.items() if k not in ("footprint_tick", "footprint")}
        given |= {"footprint_tick", "footprint"}
    return make_settings(base, **overrides), given


def time_range(args: argparse.Namespace, now: float) -> tuple[str | None, str | None]:
    """``--since``/``--until`` as ``timestamp_utc`` strings (``None`` when not given)."""
    found: list[str | None] = []
    for option in ("since", "until"):
        text = getattr(args, option, None)
        try:
            found.append(parse_time(text, now) if text else None)
        except ConfigError as exc:
            raise ConfigError(f"--{option}: {exc}") from None
    since, until = found
    if since is not None and until is not None and since >= until:
        # Both to the minute: --since is the first minute taken, --until the first one not.
        raise ConfigError(
            f"--since {args.since} ({since}) is not before --until {args.until} ({until}): "
            f"no bar can match; swap them?"
        )
    return since, until


def summary_line(inst_id: str, before: Counters, after: Counters, seconds: float) -> str:
    """One line per instrument: this run's counts, time and rate."""
    diff = {f: getattr(after, f) - getattr(before, f) for f in Counters.__struct_fields__}
    rate = diff["trades"] / seconds if seconds > 0 else 0.0
    fields = " ".join(f"{k}={v}" for k, v in diff.items())
    return f"{inst_id} {fields} seconds={seconds:.2f} trades/s={rate:.0f}"


def takeover_notice(paths: VaultPaths, took: TakeOver) -> str:
    """The one line of a run that took the instrument over from ``volume_analyzer.py``."""
    moved = " and ".join(str(p) for p in took.paths(paths))
    return (
        f"{paths.inst_id}: took over from volume_analyzer.py: its files were moved aside, unchanged, "
        f"to {moved}; rebuilding {paths.inst_id} from the first raw byte"
    )


def rejects_verdict(paths: VaultPaths, tally: RunTally) -> str | None:
    """"Nothing silent" (SPEC §7): the one line of a run that rejected more than half of the
    lines it read (``None`` for a run that did not); :class:`InputRejectedError` (exit 1) for
    one that rejected them all — how many, the first error, where the rejects file is."""
    if not tally.most_rejected:
        return None
    where = f"(first: {tally.first_error}); see {paths.rejects}"
    if tally.all_rejected:
        lines = "the 1 line read was" if tally.lines == 1 else f"all {tally.lines} lines read were"
        raise InputRejectedError(f"{paths.inst_id}: {lines} rejected {where}")
    return f"{paths.inst_id}: {tally.rejected} of the {tally.lines} lines read were rejected {where}"


def checkpoint_interval() -> float:
    """Seconds between checkpoints: 5, or ``VSTREAM_CHECKPOINT_INTERVAL`` (undocumented in
    ``--help``; the crash tests set it tiny so kills land between many checkpoints)."""
    text = os.environ.get("VSTREAM_CHECKPOINT_INTERVAL", "")
    if not text:
        return 5.0
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"VSTREAM_CHECKPOINT_INTERVAL is not a number: {text!r}") from None
    if not value >= 0:
        raise ConfigError(f"VSTREAM_CHECKPOINT_INTERVAL must be >= 0, got {text!r}")
    return value


def describe(exc: BaseException, inst_id: str | None = None) -> tuple[str, int]:
    """The one-line message and exit code of a failure."""
    if isinstance(exc, VStreamError):
        message, code = str(exc), exc.exit_code
    elif isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
        message, code = "interrupted", 1
    else:
        message, code = f"unexpected {type(exc).__name__}: {exc}", 1
    if inst_id and not message.startswith(inst_id):
        message = f"{inst_id}: {message}"
    return message, code


def report(exc: BaseException, inst_id: str | None = None) -> int:
    """Print a failure as one line on stderr; return its exit code."""
    message, code = describe(exc, inst_id)
    print(f"vstream: {message}", file=sys.stderr, flush=True)
    return code


#: Exit status when stdout's reader went away early (``vstream signals ... | head -1``): the
#: reader had what it wanted, so it is not a failure.
PIPE_CLOSED_EXIT = 0


def stdout_closed(exc: BaseException) -> bool:
    """Whether ``exc`` is stdout's reader having gone away (``| head``), not another pipe's.

    If so, stdout is pointed at the null device: what is still written (Python flushes stdout at
    exit) then goes nowhere instead of raising again or printing "Exception ignored ...".
    """
    if not isinstance(exc, BrokenPipeError):
        return False
    try:
        fd = sys.stdout.fileno()
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(fd, 0)
            # A pipe whose reader closed reports POLLERR on its write end (a socket POLLHUP).
            if not any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0)):
                return False
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)
    except (OSError, ValueError):  # no usable stdout at all: nothing left to protect
        pass
    return True


def print_out(text: str) -> None:
    """Print a line on stdout; once stdout's reader has gone away, print nothing more.

    For commands whose exit status says more than their output (``status``' verdict, a failed
    instrument of ``replay``): they go on to finish and report on stderr as usual.
    """
    try:
        print(text, flush=True)
    except BrokenPipeError as exc:
        if not stdout_closed(exc):
            raise


def run_async(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main`` on uvloop where it is installed (not on Windows), else on asyncio's loop."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if sys.platform != "win32":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())
