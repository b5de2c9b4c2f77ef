"""``run_volume.bat`` (SPEC §2, §8), checked without Windows.

The script is run by a small interpreter of the cmd.exe constructs it uses, with cmd's rules
where they matter here: each line is expanded (``%VAR%``, ``%VAR:"=%``, ``%~dp0``, ``%~f0``,
``%*``) before it runs; ``@echo off``, ``rem``, ``setlocal``, ``set "VAR=value"``, labels and
``goto``; ``if [/i] [not] defined VAR | exist "path" | errorlevel N | "a"=="b"`` (nestable);
``for %%A in (%*) do ...``; ``pushd``/``popd``; ``[>&2] echo``; ``echo(text| find.exe /i
"text" >nul`` pipelines; ``||``; ``where.exe /q``; ``pause``; ``exit /b N``; and running a
program by its (quoted) path, its arguments split as the C runtime splits them. Anything else
fails the test, so a new construct cannot slip past unchecked.

Windows is modelled by a folder map: the .bat's folder (with a space in its path, as the
trader's has) is a real temporary folder, so ``if exist`` and the vault vstream is given are
real; programs "on PATH" are a set. The ``vstream`` command it would run is parsed by
vstream's own parser, or run for real.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

import pytest
from support import windows_argv

from vstream.cli import build_parser, main
from vstream.cli.common import vault_of
from vstream.generate import generate_vault

ROOT = Path(__file__).resolve().parents[1]
BAT = ROOT / "run_volume.bat"
INSTS = ["BTC-USDT-SWAP", "ETH-USDT-SWAP"]
#: Where the trader keeps the checkout (a space in it, as in "M.R Bear").
HOME = "C:\\Users\\M.R Bear\\Documents\\RaveQuant\\vstream\\"
SCRIPT = HOME + "run_volume.bat"
SYSTEM32 = "C:\\WINDOWS\\system32"
VENV_EXE = HOME + ".venv\\Scripts\\vstream.exe"
SETX = 'setx VSTREAM_VAULT "C:\\Users\\M.R Bear\\Documents\\RaveQuant\\Rave_Quant_Vault"'

#: %CMDCMDLINE% as each way of starting the script leaves it.
EXPLORER = f'{SYSTEM32}\\cmd.exe /c ""{SCRIPT}" "'  # double-click: batfile's "%1" %*
TASK = f'{SYSTEM32}\\cmd.exe /c "{SCRIPT}"'
TASK_NO_PAUSE = f'cmd /d /c set VSTREAM_NO_PAUSE=1& "{SCRIPT}"'  # the task line README gives
PROMPT = f'"{SYSTEM32}\\cmd.exe" '  # typed in an open Command Prompt


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


@dataclass
class Windows:
    """What the script sees of the machine: environment, folders, programs on PATH."""

    home: Path  # the real folder standing for HOME
    env: dict[str, str] = field(default_factory=dict)
    on_path: set[str] = field(default_factory=set)
    cmdline: str = EXPLORER
    cwd: str = SYSTEM32
    script: str = SCRIPT  # where the .bat is, as Windows names it

    @property
    def folder(self) -> str:
        """``%~dp0``: the script's folder, with its trailing backslash."""
        return str(PureWindowsPath(self.script).parent) + "\\"

    def real(self, path: str) -> Path | None:
        """The real path of a Windows path under HOME (a relative one from ``cwd``), else None."""
        full = PureWindowsPath(self.cwd, path)  # an absolute ``path`` replaces ``cwd``
        base = PureWindowsPath(self.folder).parts
        if [p.lower() for p in full.parts[: len(base)]] != [p.lower() for p in base]:
            return None  # case-blind, as Windows is
        return self.home.joinpath(*full.parts[len(base) :])


@dataclass
class Run:
    status: int
    ran: list[tuple[str, list[str], Path | None]]  # (program, argv, real cwd)
    stdout: list[str]
    stderr: list[str]
    paused: bool


def run_bat(
    text: str, win: Windows, args: str, program: Callable[[str, list[str], Path | None], int]
) -> Run:
    """Interpret ``text`` started with the argument text ``args`` (as typed, quotes and all)."""
    env = {k.upper(): v for k, v in win.env.items()}
    env.setdefault("SYSTEMROOT", "C:\\WINDOWS")
    lines = text.splitlines()
    labels = {ln.strip()[1:].lower(): i for i, ln in enumerate(lines) if ln.strip().startswith(":")}
    result = Run(0, [], [], [], False)
    errorlevel = 0
    stack: list[str] = []

    def var(name: str) -> str:
        if name.upper() == "CMDCMDLINE":
            return win.cmdline
        if name.upper() == "ERRORLEVEL":
            return str(errorlevel)
        return env.get(name.upper(), "")

    def expand(s: str) -> str:
        # One pass, as cmd.exe's: what a value holds (a "%" in a folder name) is not expanded.
        def one(m: re.Match[str]) -> str:
            token, name, search, repl = m.group(0), m.group(1), m.group(2), m.group(3)
            if token in ("%~dp0", "%~f0", "%*"):
                return {"%~dp0": win.folder, "%~f0": win.script, "%*": args}[token]
            value = var(name)
            if search is not None:
                value = re.sub(re.escape(search), lambda _: repl, value, flags=re.I)
            return value

        return re.sub(r"%~dp0|%~f0|%\*|%([A-Za-z_][A-Za-z0-9_]*)(?::([^=%]+)=([^%]*))?%", one, s)

    def set_errorlevel(code: int) -> None:
        nonlocal errorlevel
        errorlevel = code

    def run_program(exe: str, rest: str) -> None:
        argv = windows_argv(rest)
        name = PureWindowsPath(exe).name.lower()
        if name == "where.exe":
            assert argv[0] == "/q", argv
            set_errorlevel(0 if argv[1].lower() in win.on_path else 1)
            return
        found = win.real(exe)
        if PureWindowsPath(exe).is_absolute() or "\\" in exe:
            assert found is not None and found.is_file(), f"no program {exe}"
        else:
            assert exe.lower() in win.on_path, f"{exe} is not on PATH"
        result.ran.append((exe, argv, win.real(win.cwd)))
        set_errorlevel(program(exe, argv, win.real(win.cwd)))

    def pipeline(stmt: str) -> None:
        # echo(TEXT| "...\find.exe" /i "S" >nul
        parts = [p.strip() for p in stmt.split("|")]
        assert parts[0].lower().startswith("echo("), stmt
        data = [parts[0][5:]]
        for part in parts[1:]:
            m = re.fullmatch(r'"?([^"]*\\find\.exe)"? /i "([^"]*)"(\s*>nul)?', part, re.I)
            assert m and m.group(1).lower() == env["SYSTEMROOT"].lower() + "\\system32\\find.exe", part
            data = [line for line in data if m.group(2).lower() in line.lower()]
        set_errorlevel(0 if data else 1)

    def execute(stmt: str) -> str | None:
        """Run one expanded statement; a label name to go to, or None."""
        stmt = stmt.strip()
        low = stmt.lower()
        if "||" in stmt and not low.startswith("if "):
            first, _, alternative = stmt.partition("||")
            jump = execute(first)
            if jump is None and errorlevel != 0:
                return execute(alternative)
            return jump
        if low in ("@echo off", "setlocal") or low.startswith("rem ") or low == "rem" or low.startswith(":"):
            return None
        if "|" in stmt:
            pipeline(stmt)
            return None
        m = re.fullmatch(r'set "([A-Za-z_]+)=(.*)"', stmt)
        if m:
            if m.group(2):
                env[m.group(1).upper()] = m.group(2)
            else:
                env.pop(m.group(1).upper(), None)
            return None
        m = re.fullmatch(r"goto :?(\w+)", stmt, re.I)
        if m:
            return m.group(1).lower()
        m = re.fullmatch(r"if (/i )?(not )?(.*)", stmt, re.I | re.S)
        if m:
            fold, negate, rest = bool(m.group(1)), bool(m.group(2)), m.group(3)
            cond = re.match(r'defined (\w+) (.*)', rest, re.S)
            if cond:
                truth, body = bool(env.get(cond.group(1).upper())), cond.group(2)
            elif cond := re.match(r'exist "([^"]*)" (.*)', rest, re.S):
                real = win.real(cond.group(1))
                truth, body = real is not None and real.exists(), cond.group(2)
            elif cond := re.match(r"errorlevel (\d+) (.*)", rest, re.S):
                truth, body = errorlevel >= int(cond.group(1)), cond.group(2)
            elif cond := re.match(r'"([^"]*)"=="([^"]*)" (.*)', rest, re.S):
                a, b = cond.group(1), cond.group(2)
                truth, body = (a.lower() == b.lower()) if fold else (a == b), cond.group(3)
            else:
                raise AssertionError(f"if the test does not know: {stmt!r}")
            return execute(body) if truth != negate else None
        m = re.fullmatch(r"for %%(\w) in \((.*)\) do (.*)", stmt, re.I)
        if m:
            letter, items, body = m.groups()
            for item in re.findall(r'"[^"]*"|[^\s,;=]+', items):
                jump = execute(body.replace(f"%%~{letter}", item.strip('"')).replace(f"%%{letter}", item))
                assert jump is None, "goto inside for"
            return None
        m = re.fullmatch(r'pushd "([^"]*)"', stmt, re.I)
        if m:
            assert win.real(m.group(1)) is not None, m.group(1)
            stack.append(win.cwd)
            win.cwd = m.group(1)
            set_errorlevel(0)
            return None
        if low == "popd":
            win.cwd = stack.pop()
            return None
        m = re.fullmatch(r"(>&2 )?echo[ (](.*)", stmt, re.I | re.S)
        if m:
            (result.stderr if m.group(1) else result.stdout).append(m.group(2))
            return None
        if low == "pause":
            result.paused = True
            return None
        m = re.fullmatch(r"exit /b (\d+)", stmt, re.I)
        if m:
            raise _Exit(int(m.group(1)))
        m = re.fullmatch(r'"([^"]+)"(.*)', stmt, re.S)
        if m:
            run_program(m.group(1), m.group(2))
            return None
        raise AssertionError(f"run_volume.bat: a construct the test does not know: {stmt!r}")

    def specials(s: str) -> list[str]:
        # What cmd.exe acts on outside double quotes: command separators, pipes, redirection,
        # escapes, blocks. Expanding a line must add none (a value with "&" or ")" in it,
        # unquoted, would split the line or close a block): cmd expands before it parses.
        outside = "".join(part for n, part in enumerate(s.split('"')) if n % 2 == 0)
        return re.findall(r"[&|<>^()]", outside)

    i = 0
    steps = 0
    try:
        while i < len(lines):
            steps += 1
            assert steps < 1000, "the script loops"
            line = lines[i]
            expanded = expand(line)
            assert specials(expanded) == specials(line), f"cmd.exe would misparse {expanded!r}"
            jump = execute(expanded) if line.strip() else None
            i = labels[jump] + 1 if jump is not None else i + 1
    except _Exit as done:
        result.status = done.code
        assert not stack, "pushd without popd"
        return result
    raise AssertionError("the script does not end with exit /b")


def _parsed(argv: list[str], env: dict[str, str], cwd: Path | None, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The vault vstream would use for ``argv`` in ``cwd`` with ``env``."""
    monkeypatch.delenv("VSTREAM_VAULT", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if cwd is not None:
        monkeypatch.chdir(cwd)
    args = build_parser().parse_args(argv)
    assert args.command == "replay" and args.inst_ids == INSTS
    return vault_of(args)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """The checkout beside the .bat, with its venv's vstream.exe."""
    home = tmp_path / "M.R Bear" / "vstream"
    (home / ".venv" / "Scripts").mkdir(parents=True)
    (home / ".venv" / "Scripts" / "vstream.exe").write_bytes(b"MZ")
    return home


def _fake(status: int) -> Callable[[str, list[str], Path | None], int]:
    return lambda exe, argv, cwd: status


@pytest.mark.parametrize("status", [0, 1, 2])
@pytest.mark.parametrize("extra", ["", "--final", '--final --vault "D:\\Vault (main)"'])
def test_it_runs_the_venvs_vstream_for_both_instruments_and_passes_its_status_on(
    home: Path, status: int, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"VSTREAM_VAULT": "D:\\My Vault (2)"}
    run = run_bat(BAT.read_text(), Windows(home, env, cmdline=TASK), extra, _fake(status))
    assert len(run.ran) == 1, run
    exe, argv, cwd = run.ran[0]
    assert exe == VENV_EXE and cwd == home  # the venv beside it, run from its folder
    assert argv[:5] == ["replay", "--instId", INSTS[0], "--instId", INSTS[1]]
    assert argv[5:] == windows_argv(extra)  # extra arguments passed on, quoting kept
    expected = "D:\\Vault (main)" if "--vault" in extra else env["VSTREAM_VAULT"]
    assert str(_parsed(argv, env, cwd, monkeypatch)) == expected
    assert run.status == status and run.stderr == [] and not run.paused


def test_without_a_venv_it_runs_vstream_from_path(home: Path) -> None:
    shutil.rmtree(home / ".venv")
    win = Windows(home, {"VSTREAM_VAULT": "D:\\Vault"}, on_path={"vstream.exe"}, cmdline=TASK)
    run = run_bat(BAT.read_text(), win, "", _fake(0))
    assert [exe for exe, _, _ in run.ran] == ["vstream.exe"] and run.status == 0


def test_without_any_vstream_it_says_what_to_do_and_exits_1(home: Path) -> None:
    shutil.rmtree(home / ".venv")
    run = run_bat(BAT.read_text(), Windows(home, {"VSTREAM_VAULT": "D:\\Vault"}, cmdline=TASK), "", _fake(0))
    assert run.ran == [] and run.status == 1
    assert len(run.stderr) == 1
    message = run.stderr[0]
    assert message.startswith("run_volume.bat: vstream is not installed")
    assert "python -m venv .venv" in message and ".venv\\Scripts\\pip install -e ." in message
    assert f'"{HOME}"' in message  # where, quoted: the path has a space


@pytest.mark.parametrize("cmdline", [TASK, EXPLORER], ids=["task-scheduler", "double-click"])
def test_without_vstream_vault_it_replays_the_vault_beside_it(
    home: Path, cmdline: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Task Scheduler starts it in C:\Windows\System32: .\Vault must still be the one beside it.
    generate_vault(home / "Vault", instruments=INSTS, hours=1, seed=3)
    monkeypatch.delenv("VSTREAM_VAULT", raising=False)

    def vstream(exe: str, argv: list[str], cwd: Path | None) -> int:
        assert cwd is not None
        monkeypatch.chdir(cwd)
        return main(["-q", *argv])

    win = Windows(home, {"SESSIONNAME": "Console"}, cmdline=cmdline, cwd=SYSTEM32)
    run = run_bat(BAT.read_text(), win, "--final", vstream)
    assert run.status == 0 and len(run.ran) == 1, run
    for inst in INSTS:
        assert (home / "Vault/derived/volume/okx/perps" / inst / "volume_1m.jsonl").stat().st_size > 0
    assert win.cwd == SYSTEM32  # popd: an open Command Prompt is left where it was


def test_without_a_vault_it_says_how_to_set_one_and_exits_2(home: Path) -> None:
    run = run_bat(BAT.read_text(), Windows(home, {}, cmdline=TASK), "", _fake(0))
    assert run.ran == [] and run.status == 2
    assert len(run.stderr) == 1 and run.stderr[0].startswith("run_volume.bat: no vault: VSTREAM_VAULT is not set")
    assert run.stderr[0].endswith(SETX)  # quoted: the path has a space
    # with --vault given there is nothing to set
    run = run_bat(BAT.read_text(), Windows(home, {}, cmdline=TASK), '--vault "D:\\Other Vault"', _fake(0))
    assert run.status == 0 and run.ran[0][1][-2:] == ["--vault", "D:\\Other Vault"]


@pytest.mark.parametrize(
    "cmdline, env, pauses",
    [
        (EXPLORER, {"SESSIONNAME": "Console"}, True),  # a double-click: wait, so it can be read
        (EXPLORER, {"SESSIONNAME": "Console", "VSTREAM_NO_PAUSE": "1"}, False),  # told not to
        (EXPLORER, {"SESSIONNAME": "Console", "VSTREAM_NO_PAUSE": "0"}, True),
        (PROMPT, {"SESSIONNAME": "Console"}, False),  # an open Command Prompt stays open anyway
        (f'{SYSTEM32}\\cmd.exe /c "D:\\other.bat"', {"SESSIONNAME": "Console"}, False),  # called by another script
        (TASK, {}, False),  # a scheduled task: no desktop session
        (TASK_NO_PAUSE, {"SESSIONNAME": "Console", "VSTREAM_NO_PAUSE": "1"}, False),  # README's task line
    ],
    ids=["double-click", "no-pause", "no-pause-0", "prompt", "other-script", "task", "task-line"],
)
@pytest.mark.parametrize("status", [0, 1])
def test_it_waits_for_a_key_only_when_double_clicked(
    home: Path, cmdline: str, env: dict[str, str], pauses: bool, status: int
) -> None:
    win = Windows(home, {"VSTREAM_VAULT": "D:\\Vault", **env}, cmdline=cmdline)
    run = run_bat(BAT.read_text(), win, "", _fake(status))
    assert run.paused is pauses
    assert run.status == status  # the pause keeps vstream's status


@pytest.mark.parametrize(
    "script",
    ["C:\\Program Files (x86)\\R&D; 100%\\vstream\\run_volume.bat", "\\\\nas\\trading\\vstream\\run_volume.bat"],
    ids=["specials", "unc"],
)
def test_a_folder_name_cmd_treats_specially_changes_nothing(home: Path, script: str) -> None:
    win = Windows(home, {"SESSIONNAME": "Console", "VSTREAM_VAULT": "D:\\A&B (1)"}, script=script)
    win.cmdline = f'{SYSTEM32}\\cmd.exe /c ""{script}" "'
    run = run_bat(BAT.read_text(), win, '--vault "E:\\x&y (2)"', _fake(0))
    assert run.status == 0 and run.paused
    assert run.ran[0][0] == str(PureWindowsPath(script).parent / ".venv" / "Scripts" / "vstream.exe")
    assert run.ran[0][1][-2:] == ["--vault", "E:\\x&y (2)"]
    shutil.rmtree(home / ".venv")  # ... and the messages quote the folder
    run = run_bat(BAT.read_text(), win, "", _fake(0))
    assert run.status == 1 and f'"{win.folder}"' in run.stderr[0]


def test_a_failure_before_vstream_also_waits_when_double_clicked(home: Path) -> None:
    run = run_bat(BAT.read_text(), Windows(home, {"SESSIONNAME": "Console"}, cmdline=EXPLORER), "", _fake(0))
    assert run.status == 2 and run.paused and run.stderr


def test_every_line_ends_in_crlf() -> None:
    # cmd.exe reads a LF-only batch file in blocks that can split a line: labels and goto
    # then misbehave. .gitattributes keeps the CRLF through git.
    data = BAT.read_bytes()
    assert data.endswith(b"\r\n")
    assert all(line.endswith(b"\r") for line in data.split(b"\n")[:-1])
    assert data.count(b"\r") == data.count(b"\n")
    assert data.isascii()


def test_git_keeps_its_crlf() -> None:
    try:
        done = subprocess.run(
            ["git", "check-attr", "text", "eol", "--", "run_volume.bat"],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except OSError:
        pytest.skip("no git")
    if done.returncode != 0:
        pytest.skip("not a git checkout")
    attrs = dict(re.findall(r"^run_volume\.bat: (\w+): (\S+)$", done.stdout, re.M))
    assert attrs.get("eol") == "crlf" or attrs.get("text") == "unset", done.stdout


@pytest.mark.parametrize(
    "script, why",
    [
        ("@echo off\r\necho %X%\r\nexit /b 0\r\n", "would misparse"),  # X holds "&": unquoted
        ("@echo off\r\nif defined X (echo yes)\r\nexit /b 0\r\n", "does not know"),  # no blocks
        ("@echo off\r\nvstream replay --all\r\nexit /b %ERRORLEVEL%\r\n", "does not know"),  # bare vstream
        ("@echo off\r\npushd \"%~dp0\"\r\nexit /b 0\r\n", "pushd without popd"),
    ],
)
def test_the_interpreter_refuses_what_cmd_would_get_wrong(home: Path, script: str, why: str) -> None:
    # The checks above can fail: an unquoted "&" from a value, a construct it does not model.
    with pytest.raises(AssertionError, match=why):
        run_bat(script, Windows(home, {"X": "R&D"}), "", _fake(0))
