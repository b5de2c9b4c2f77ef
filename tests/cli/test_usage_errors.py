"""Usage errors exit 2 with one line on stderr, whatever the option value (SPEC §8).

Every option that takes a value is fed odd values (explicit ones that once crashed, then
random strings and number- and date-shaped text): the command either runs (exit 0, or 1 for
``status`` finding a problem) or refuses with exit 2 and one ``vstream: ...`` line, never an
"unexpected" error or a traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vstream.cli import build_parser, main
from vstream.cli.common import settings_of
from vstream.generate import generate_vault
from vstream.instruments import CachedInstrument, InstrumentCache, resolve
from vstream.query import parse_time
from vstream.settings import Settings

BTC = "BTC-USDT-SWAP"
RunCli = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    vault = tmp_path_factory.mktemp("usage") / "Vault"
    generate_vault(vault, instruments=(BTC,), hours=0.5, seed=5)
    assert main(["-q", "replay", "--all", "--vault", str(vault), "--final"]) == 0
    return vault


def assert_usage_error(status: int, err: str, *needles: str) -> None:
    assert status == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vstream: "), err
    assert "unexpected" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def assert_clean(status: int, err: str, allowed: tuple[int, ...] = (0,)) -> None:
    assert "unexpected" not in err and "Traceback" not in err, err
    if status == 2:
        assert_usage_error(status, err)
    else:
        assert status in allowed, (status, err)


@pytest.mark.parametrize(
    "value, needles",
    [
        ("10", ["no unit", "10s", "10m"]),
        ("bogus", ["cannot read duration 'bogus'"]),
        ("0", ["no unit"]),
        ("0s", ["must be > 0"]),
        ("9" * 400 + "s", ["too large"]),
    ],
)
def test_status_max_lag_refusals_are_usage_errors(replayed: Path, run_cli: RunCli, value: str, needles: list[str]) -> None:
    status, _, err = run_cli("status", "--vault", str(replayed), "--no-remember", "--max-lag", value)
    assert_usage_error(status, err, "--max-lag", *needles)


@pytest.mark.parametrize("command", ["signals", "chart"])
@pytest.mark.parametrize("option", ["--since", "--until"])
@pytest.mark.parametrize(
    "value",
    ["99999999d", "9" * 30 + "w", "9999-12-31T23:59-01:00", "0001-01-01T00:00+01:00", "2025-02-30"],
)
def test_times_out_of_range_are_usage_errors(
    replayed: Path, run_cli: RunCli, tmp_path: Path, command: str, option: str, value: str
) -> None:
    extra = ["-o", str(tmp_path / "c.svg")] if command == "chart" else []
    status, _, err = run_cli(command, "--vault", str(replayed), "--instId", BTC, option, value, *extra)
    assert_usage_error(status, err, repr(value))


@pytest.mark.parametrize("command", ["signals", "chart"])
@pytest.mark.parametrize(
    "since, until",
    [("2025-01-01T01:00Z", "2025-01-01T00:30Z"), ("1h", "2h"), ("2025-01-01T00:30:10Z", "2025-01-01T00:30:50Z")],
    ids=["iso", "relative", "same-minute"],
)
def test_since_not_before_until_is_a_usage_error(
    replayed: Path, run_cli: RunCli, tmp_path: Path, command: str, since: str, until: str
) -> None:
    # Not "no matching bars" (exit 0): a range that cannot hold a bar is a mistake to point at.
    chart = tmp_path / "c.svg"
    extra = ["-o", str(chart)] if command == "chart" else []
    status, out, err = run_cli(command, "--vault", str(replayed), "--instId", BTC, "--since", since, "--until", until, *extra)
    assert_usage_error(status, err, f"--since {since}", f"--until {until}", "is not before")
    assert out == "" and not chart.exists()
    # the right way round the same range is fine
    if command == "signals" and since != "2025-01-01T00:30:10Z":
        status, _, err = run_cli(command, "--vault", str(replayed), "--instId", BTC, "--since", until, "--until", since, *extra)
        assert status == 0, err


@pytest.mark.parametrize("command", ["signals", "chart"])
def test_a_huge_last_means_every_bar(replayed: Path, run_cli: RunCli, tmp_path: Path, command: str) -> None:
    extra = ["-o", str(tmp_path / "c.svg")] if command == "chart" else []
    status, out, err = run_cli(command, "--vault", str(replayed), "--instId", BTC, "--last", "9" * 30, *extra)
    assert status == 0, err
    assert out


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["demo", "--hours", "nan"], ["--hours"]),
        (["demo", "--hours", "inf"], ["--hours"]),
        (["demo", "--hours", "-1"], ["--hours"]),
        (["replay", "--instId", BTC, "--median-window", "9" * 30], ["median_window"]),
        # loopback URLs: refused or not, it must never reach OKX
        (["live", "--instId", BTC, "--gap-timeout", "nan", "--rest-url", "http://127.0.0.1:9",
          "--ws-url", "ws://127.0.0.1:9"], ["--gap-timeout"]),
        (["replay", "--instId", BTC, "--ct-val", f"{BTC}=1e300"], ["ct_val for BTC-USDT-SWAP"]),
        (["signals", "--instId", BTC, "--last", "0"], ["--last"]),
        (["chart", "--instId", BTC, "--last", "-3", "-o", "x.svg"], ["--last"]),
    ],
)
def test_numbers_out_of_range_are_usage_errors(run_cli: RunCli, tmp_path: Path, argv: list[str], needles: list[str]) -> None:
    status, _, err = run_cli(*argv, "--vault", str(tmp_path / "none"))
    assert_usage_error(status, err, *needles)
    assert not (tmp_path / "none").exists()  # refused before doing anything


def test_times_before_year_1000_keep_their_order() -> None:
    # strftime("%Y") writes year 500 as "500", which sorts after "2025-..." and would hide
    # every bar from --since 0500-01-01.
    assert parse_time("0500-01-01", 0.0) == "0500-01-01T00:00:00Z"
    assert parse_time("0500-01-01", 0.0) < "2025-01-01T00:00:00Z"


def test_an_absurd_cached_contract_value_is_not_used() -> None:
    # 1e300 contracts would overflow the notional mid-replay; the built-in value is used.
    cache = InstrumentCache(instruments={BTC: CachedInstrument(instId=BTC, ctVal="1e300")})
    assert resolve(BTC, None, cache).ct_val == 0.01


# -- the net: random values ---------------------------------------------------------------

_numbers = st.from_regex(r"\A[-+]?(\d{1,30}(\.\d{0,6})?|\.\d{1,4}|nan|inf|1e\d{1,4})\s?[smhdwSM]?\Z")
_dates = st.builds(
    lambda y, mo, d, h, mi, tz: f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}{tz}",
    st.integers(0, 10_000), st.integers(0, 13), st.integers(0, 32), st.integers(0, 25), st.integers(0, 61),
    st.sampled_from(["", "Z", "+00:00", "-01:00", "+14:00", "+23:59", "-23:59", "z"]),
)
VALUES = st.one_of(st.text(max_size=40), _numbers, _dates)

QUERY_OPTIONS = [
    ("status", "--max-lag"),
    ("signals", "--since"),
    ("signals", "--until"),
    ("signals", "--last"),
    ("signals", "--tier"),
    ("chart", "--since"),
    ("chart", "--until"),
    ("chart", "--last"),
]


@pytest.mark.parametrize("command, option", QUERY_OPTIONS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=VALUES)
def test_any_query_option_value_runs_or_is_a_usage_error(
    replayed: Path, run_cli: RunCli, tmp_path: Path, command: str, option: str, value: str
) -> None:
    argv = [command, "--vault", str(replayed), f"{option}={value}"]
    if command == "status":
        argv.append("--no-remember")
    else:
        argv += ["--instId", BTC]
    if command == "chart":
        argv += ["-o", str(tmp_path / "c.svg")]
    status, _, err = run_cli(*argv)
    assert_clean(status, err, allowed=(0, 1) if command == "status" else (0,))


SETTINGS_OPTIONS = [
    "--whale-usd", "--median-window", "--min-history", "--absorption-volume-ratio",
    "--absorption-max-price-pct", "--divergence-min-price-pct", "--divergence-min-delta-ratio",
    "--grace", "--ct-val", "--timeframes",
]  # fmt: skip


@pytest.mark.parametrize("command", ["replay", "live"])
@pytest.mark.parametrize("option", SETTINGS_OPTIONS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(VALUES, VALUES.map(lambda v: f"{BTC}={v}")))
def test_any_settings_option_value_gives_settings_or_a_usage_error(
    capsys: pytest.CaptureFixture[str], command: str, option: str, value: str
) -> None:
    # Parsing and building the settings is all a command does with these before it starts.
    capsys.readouterr()
    try:
        args = build_parser().parse_args([command, "--instId", BTC, f"{option}={value}"])
        result: Settings | None = settings_of(args)[0]
    except SystemExit as exc:
        assert exc.code == 2
        assert_usage_error(2, capsys.readouterr().err)
        return
    except Exception as exc:  # must be a ConfigError, which main reports as exit 2
        from vstream.errors import ConfigError

        assert isinstance(exc, ConfigError), repr(exc)
        assert "\n" not in str(exc)
        return
    assert isinstance(result, Settings)
    assert isinstance(args, argparse.Namespace)
