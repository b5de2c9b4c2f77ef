"""``run_volume.bat`` (SPEC §2, §8), checked without Windows.

The script is run by a small interpreter of the few cmd.exe constructs it may use (``@echo
off``, ``rem``, ``setlocal``, ``echo``, ``if [not] defined VAR`` / ``if "%VAR%"==""`` with
one-line or parenthesised bodies and ``else``, ``exit /b N``, ``%VAR%``/``%*`` expansion and
the ``vstream`` command). Anything else fails the test, so a new construct cannot slip past
unchecked. The ``vstream`` command it would run is then parsed by vstream's own parser and
run for real, with the same environment.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from vstream.cli import build_parser, main
from vstream.cli.common import vault_of
from vstream.generate import generate_vault

BAT = Path(__file__).resolve().parents[1] / "run_volume.bat"
INSTS = ["BTC-USDT-SWAP", "ETH-USDT-SWAP"]


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _statements(text: str) -> list[str]:
    """Logical statements: a parenthesised block becomes one statement, as cmd parses it."""
    out: list[str] = []
    pending = ""
    depth = 0
    for line in text.splitlines():
        if depth == 0 and not line.strip():
            continue
        if depth == 0 and re.match(r"(?i)\s*rem(\s|$)", line):
            out.append(line.strip())  # a comment: its brackets open no block
            continue
        unquoted = re.sub(r'"[^"]*"', "", line)
        pending = f"{pending}\n{line}" if pending else line
        depth += unquoted.count("(") - unquoted.count(")")
        assert depth >= 0, f"unbalanced ')' in {line!r}"
        if depth == 0:
            out.append(pending.strip())
            pending = ""
    assert depth == 0 and not pending, "unclosed '(' block"
    return out


def run_bat(
    text: str, env: dict[str, str], args: list[str], vstream: Callable[[list[str]], int]
) -> tuple[int, list[list[str]], list[str]]:
    """Interpret ``text``: (exit status, vstream argument lists run, lines echoed)."""
    ran: list[list[str]] = []
    echoed: list[str] = []
    errorlevel = 0

    def expand(s: str) -> str:
        s = s.replace("%*", " ".join(args))
        s = s.replace("%ERRORLEVEL%", str(errorlevel))
        return re.sub(r"%([A-Za-z_][A-Za-z0-9_]*)%", lambda m: env.get(m.group(1), ""), s)

    def block(body: str) -> list[str]:
        body = body.strip()
        if body.startswith("("):
            assert body.endswith(")"), body
            return _statements(body[1:-1])
        return [body]

    def execute(statement: str) -> None:
        nonlocal errorlevel
        low = statement.lower()
        if low in ("@echo off", "setlocal") or low.startswith("rem ") or low == "rem":
            return
        cond = re.match(
            r'(?is)if\s+(not\s+)?(?:defined\s+(\w+)|"%(\w+)%"\s*==\s*"")\s+(\(.*?\)|[^(].*?)(?:\s+else\s+(\(.*\)|.*))?$',
            statement,
        )
        if cond:
            negate, defined_var, empty_var, then, otherwise = cond.groups()
            truth = bool(env.get(defined_var)) if defined_var else not env.get(empty_var)
            if negate:
                truth = not truth
            for s in block(then) if truth else (block(otherwise) if otherwise else []):
                execute(s)
            return
        if low.startswith("echo "):
            echoed.append(expand(statement[5:]))
            return
        code = re.fullmatch(r"(?i)exit\s+/b\s+(\S+)", statement)
        if code:
            raise _Exit(int(expand(code.group(1))))
        if low.startswith("vstream "):
            argv = shlex.split(expand(statement[len("vstream ") :]))
            ran.append(argv)
            errorlevel = vstream(argv)
            return
        raise AssertionError(f"run_volume.bat: construct the test does not know: {statement!r}")

    try:
        for statement in _statements(text):
            execute(statement)
    except _Exit as done:
        return done.code, ran, echoed
    return errorlevel, ran, echoed


def _vault_it_would_use(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("VSTREAM_VAULT", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = build_parser().parse_args(argv)
    assert args.command == "replay" and args.inst_ids == INSTS
    return vault_of(args)


@pytest.mark.parametrize("env", [{}, {"VSTREAM_VAULT": r"D:\Vault (main)"}], ids=["unset", "set"])
@pytest.mark.parametrize("status", [0, 1, 2])
def test_the_script_runs_replay_of_both_instruments_and_passes_on_its_status(
    env: dict[str, str], status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, ran, echoed = run_bat(BAT.read_text(), env, ["--final"], lambda argv: status)
    assert len(ran) == 1, f"expected one vstream command, got {ran} (echoed {echoed})"
    argv = ran[0]
    assert argv[0] == "replay" and "--final" in argv
    # --vault only ever with the variable's value; unset, vstream's own default applies
    if "--vault" in argv:
        assert env and argv[argv.index("--vault") + 1] == env["VSTREAM_VAULT"]
    expected = Path(env.get("VSTREAM_VAULT", "Vault"))
    assert _vault_it_would_use(argv, env, monkeypatch) == expected
    # the script's status is vstream's: it never fails (exit 2) on its own
    assert code == status


def test_without_vstream_vault_the_script_replays_dot_vault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SPEC §2: no --vault and no VSTREAM_VAULT means ./Vault.
    generate_vault(tmp_path / "Vault", instruments=INSTS, hours=1, seed=3)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VSTREAM_VAULT", raising=False)
    code, ran, _ = run_bat(BAT.read_text(), {}, ["--final"], lambda argv: main(["-q", *argv]))
    assert code == 0 and len(ran) == 1
    for inst in INSTS:
        assert (tmp_path / "Vault/derived/volume/okx/perps" / inst / "volume_1m.jsonl").stat().st_size > 0


def test_line_endings_are_not_mixed() -> None:
    data = BAT.read_bytes()
    assert data.count(b"\r\n") in (0, data.count(b"\n"))
