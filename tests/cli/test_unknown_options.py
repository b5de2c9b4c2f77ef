"""Options are taken as written, and what a command does not take is named (SPEC §8).

argparse would complete ``--re`` to ``--rebuild`` (a whole instrument recomputed from a typo)
and report a mistyped ``--instid`` as "one of --instId --all is required". Every parser here
refuses abbreviations, names the option or argument it does not know, and says which real
option is near: one line, exit 2, nothing done.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from vstream.cli import build_parser
from vstream.generate import generate_vault
from vstream.instruments import VaultPaths

BTC = "BTC-USDT-SWAP"
RunCli = Callable[..., tuple[int, str, str]]


def _parsers() -> dict[str, argparse.ArgumentParser]:
    top = build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return {"vstream": top, **sub.choices}


def assert_usage_error(status: int, err: str, *needles: str) -> None:
    assert status == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vstream: "), err
    assert "Traceback" not in err and not re.search(r"unexpected [A-Z]\w*:", err), err  # no crash
    for needle in needles:
        assert needle in err, err


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vstream.cli import main

    vault = tmp_path_factory.mktemp("opts") / "Vault"
    generate_vault(vault, instruments=(BTC,), hours=0.5, seed=5)
    assert main(["-q", "replay", "--all", "--vault", str(vault), "--final"]) == 0
    return vault


def _snapshot(vault: Path) -> dict[str, tuple[int, int]]:
    paths = VaultPaths.of(vault, BTC)
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in (paths.output(), paths.state)}


@pytest.mark.parametrize("name", sorted(_parsers()))
def test_no_parser_completes_abbreviations(name: str) -> None:
    parser = _parsers()[name]
    assert parser.allow_abbrev is False
    longs = [o for a in parser._actions for o in a.option_strings if o.startswith("--") and len(o) > 4]
    for option in longs:
        prefix = option[:-1]
        if any(o == prefix for o in parser._option_string_actions):
            continue  # a real option of its own
        argv = [prefix] if name == "vstream" else [name, prefix]
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(argv)
        assert exc.value.code == 2, (name, prefix)


def test_re_is_refused_and_nothing_is_rebuilt(replayed: Path, run_cli: RunCli) -> None:
    before = _snapshot(replayed)
    status, out, err = run_cli("replay", "--all", "--vault", str(replayed), "--re")
    assert_usage_error(status, err, "unknown option --re", "--rebuild")
    assert out == ""
    assert _snapshot(replayed) == before


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["replay", "--instid", BTC], ["unknown option --instid (did you mean --instId?)"]),
        (["replay", "--instid=" + BTC], ["unknown option --instid (did you mean --instId?)"]),
        (["replay", "--all", "--finall"], ["unknown option --finall (did you mean --final?)"]),
        (["status", "--jsn"], ["unknown option --jsn (did you mean --json?)"]),
        (["signals", "--all", "--tire", "T4"], ["unknown option --tire (did you mean --tier?)"]),
        (["--quite", "status"], ["unknown option --quite (did you mean --quiet?)"]),
        (["replay", "--all", "--zzz"], ["unknown option --zzz"]),
        (["replay", "--all", "stray"], ["replay: unexpected argument 'stray'"]),
        (["replay", "--instId", BTC, "ETH-USDT-SWAP"], ["'ETH-USDT-SWAP'", "its own --instId"]),
    ],
)
def test_unknown_options_and_stray_arguments_are_named(
    replayed: Path, run_cli: RunCli, argv: list[str], needles: list[str]
) -> None:
    before = _snapshot(replayed)
    status, out, err = run_cli(*argv, "--vault", str(replayed))
    assert_usage_error(status, err, *needles)
    assert out == ""
    assert _snapshot(replayed) == before


def test_an_option_value_is_not_taken_for_an_option(replayed: Path, run_cli: RunCli) -> None:
    # "-5" after --seed, "bearish" after --divergence are values: no "unknown option" for them.
    status, _, err = run_cli("signals", "--all", "--vault", str(replayed), "--divergence", "bearish", "--json")
    assert status == 0, err
    status, _, err = run_cli("demo", "--vault", str(replayed / "d"), "--seed", "-5", "--hours", "0.1")
    assert status == 0, err


def test_a_lower_case_instrument_id_is_refused_naming_the_real_one(
    tmp_path: Path, run_cli: RunCli
) -> None:
    # Upper-casing it quietly is no kindness: on a case-blind disk (Windows) the lower-case id
    # finds the instrument's folder, then every trade line's "BTC-USDT-SWAP" is a reject.
    vault = tmp_path / "Vault"
    generate_vault(vault, instruments=(BTC,), hours=0.1, seed=1)
    for argv in (["replay", "--instId", "btc-usdt-swap"], ["status", "--instId", "btc-usdt-swap"],
                 ["signals", "--instId", "Btc-Usdt-Swap"]):  # fmt: skip
        status, _, err = run_cli(*argv, "--vault", str(vault))
        assert_usage_error(status, err, "did you mean BTC-USDT-SWAP?")
    assert not (vault / "state").exists() and not (vault / "derived").exists()
