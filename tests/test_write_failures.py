"""Write failures (SPEC §7): a disk that fills up, an I/O error, a read-only folder.

Each fault is injected at the OS boundary, in-process: ``os.fsync``, ``os.replace``,
``tempfile.mkstemp`` or the append handle of an output file fails with a real ``errno`` for one
chosen file. Every case checks the same promise: the run ends with exit 1 and a one-line
reason, the state file still parses and is exactly the one the previous run left, and once the
fault is gone the next run ends byte-identical to one clean ``--final`` run.

Faults fire once (a transient error) or on every call (a full disk): after a transient one the
engine must not carry on and checkpoint a state that skips the bars that failed to write.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiofiles
import pytest

import vstream.state
from vstream.generate import generate_vault
from vstream.instruments import VaultPaths
from vstream.state import read_state

INST = "BTC-USDT-SWAP"
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="faults are matched via /proc/self/fd")


class Fault:
    """Fails matching calls with ``code``: the first one only (``once``) or all of them."""

    def __init__(self, match: str, code: int, *, once: bool) -> None:
        self.match = match
        self.code = code
        self.once = once
        self.fired = 0
        self.enabled = True

    def hits(self, path: str) -> bool:
        if not self.enabled or self.match not in os.path.basename(path):
            return False
        if self.once and self.fired:
            return False
        self.fired += 1
        return True

    def error(self, path: str) -> OSError:
        return OSError(self.code, os.strerror(self.code), path)


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


class _FailingHandle:
    """An aiofiles append handle whose write stores half the data, then fails (a full disk)."""

    def __init__(self, real: Any, fault: Fault, path: str) -> None:
        self._real = real
        self._fault = fault
        self._path = path

    async def write(self, data: bytes) -> int:
        if self._fault.hits(self._path):
            await self._real.write(data[: len(data) // 2])
            await self._real.flush()
            raise self._fault.error(self._path)
        result: int = await self._real.write(data)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def install(monkeypatch: pytest.MonkeyPatch, how: str, fault: Fault) -> None:
    """Make the OS call ``how`` fail for files whose name contains ``fault.match``."""
    if how == "fsync":
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            path = _fd_path(fd)
            if fault.hits(path):
                raise fault.error(path)
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    elif how == "replace":
        real_replace = os.replace

        def replace(src: Any, dst: Any, **kw: Any) -> None:
            if fault.hits(os.fspath(dst)):
                raise fault.error(os.fspath(dst))
            real_replace(src, dst, **kw)

        monkeypatch.setattr(os, "replace", replace)
    elif how == "mkstemp":
        real_mkstemp = tempfile.mkstemp

        def mkstemp(*args: Any, **kw: Any) -> tuple[int, str]:
            if fault.hits(str(kw.get("prefix", ""))):
                raise fault.error(str(kw.get("dir", "")))
            return real_mkstemp(*args, **kw)

        monkeypatch.setattr(vstream.state.tempfile, "mkstemp", mkstemp)
    elif how in ("write", "open"):
        real_open = aiofiles.open

        def open_(path: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
            name = os.fspath(path)
            if "a" not in mode or fault.match not in os.path.basename(name):
                return real_open(path, mode, *args, **kw)

            async def opened() -> Any:
                if how == "open" and fault.hits(name):
                    raise fault.error(name)
                return _FailingHandle(await real_open(path, mode, *args, **kw), fault, name)

            return opened()

        monkeypatch.setattr(aiofiles, "open", open_)
    else:
        raise AssertionError(how)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[bytes, bytes]]:
    """(first part, whole) of one day of generated trades, about 3 MB: several read chunks."""
    root = tmp_path_factory.mktemp("gen")
    report = generate_vault(root, instruments=[INST], hours=3, seed=11)
    whole = report.instruments[INST].files[0].read_bytes()
    cut = whole.index(b"\n", len(whole) // 3) + 1
    yield whole[:cut], whole
    shutil.rmtree(root)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, inputs: tuple[bytes, bytes]) -> dict[str, bytes]:
    """Output and rejects of one clean --final run over the whole input."""
    from vstream.cli import main

    vault = tmp_path_factory.mktemp("ref") / "Vault"
    paths = VaultPaths.of(vault, INST)
    paths.raw_dir.mkdir(parents=True)
    (paths.raw_dir / "2025-01-01.jsonl").write_bytes(inputs[1])
    assert main(["-q", "replay", "--instId", INST, "--vault", str(vault), "--final"]) == 0
    return {"output": paths.output("1m").read_bytes(), "rejects": paths.rejects.read_bytes()}


CASES = [
    # (file name part, OS call, errno, fires once?)
    ("volume_1m.jsonl", "write", errno.ENOSPC, True),
    ("volume_1m.jsonl", "write", errno.ENOSPC, False),
    ("volume_1m.jsonl", "fsync", errno.EIO, True),
    ("volume_1m.jsonl", "fsync", errno.EIO, False),
    ("volume_1m.jsonl", "open", errno.EROFS, False),
    ("rejects.jsonl", "write", errno.ENOSPC, True),
    ("rejects.jsonl", "fsync", errno.EIO, False),
    ("state.json", "mkstemp", errno.EROFS, False),
    ("state.json", "fsync", errno.ENOSPC, True),
    ("state.json", "fsync", errno.EIO, False),
    ("state.json", "replace", errno.EIO, True),
]


@pytest.mark.parametrize("interval", ["0", "5"])
@pytest.mark.parametrize(("match", "how", "code", "once"), CASES)
def test_write_failure_is_a_clean_exit_1_and_the_next_run_is_correct(
    match: str,
    how: str,
    code: int,
    once: bool,
    interval: str,
    inputs: tuple[bytes, bytes],
    reference: dict[str, bytes],
    vault: Path,
    run_cli: Callable[..., tuple[int, str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # interval 0: a checkpoint after every chunk, so a transient fault hits a run mid-way.
    monkeypatch.setenv("VSTREAM_CHECKPOINT_INTERVAL", interval)
    paths = VaultPaths.of(vault, INST)
    paths.raw_dir.mkdir(parents=True)
    day = paths.raw_dir / "2025-01-01.jsonl"
    day.write_bytes(inputs[0])
    args = ("replay", "--instId", INST, "--vault", str(vault))
    assert run_cli(*args)[0] == 0
    before = paths.state.read_bytes()

    day.write_bytes(inputs[1])  # the exporter appended the rest
    fault = Fault(match, code, once=once)
    with monkeypatch.context() as patch:
        install(patch, how, fault)
        status, out, err = run_cli(*args)
    assert fault.fired, "the fault was never reached"
    assert status == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vstream: {INST}: cannot "), err
    assert os.strerror(code) in lines[0]
    assert out == ""
    assert paths.state.read_bytes() == before, "the state moved although the run failed"
    read_state(paths.state)  # still valid
    assert not list(paths.state_dir.glob("*.tmp")), "a temporary state file was left behind"

    status, _, err = run_cli(*args, "--final")
    assert status == 0, err
    assert paths.output("1m").read_bytes() == reference["output"]
    assert paths.rejects.read_bytes() == reference["rejects"]


def test_failure_on_the_very_first_run_leaves_nothing_and_the_retry_is_correct(
    inputs: tuple[bytes, bytes],
    reference: dict[str, bytes],
    vault: Path,
    run_cli: Callable[..., tuple[int, str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    paths = VaultPaths.of(vault, INST)
    paths.raw_dir.mkdir(parents=True)
    (paths.raw_dir / "2025-01-01.jsonl").write_bytes(inputs[1])
    args = ("replay", "--instId", INST, "--vault", str(vault), "--final")
    fault = Fault("state.json", errno.ENOSPC, once=False)
    with monkeypatch.context() as patch:
        install(patch, "fsync", fault)
        status, _, err = run_cli(*args)
    assert status == 1 and "No space left on device" in err
    assert not paths.state.exists()
    # The first state is saved before any bar: no output may be left without a state (which
    # would need --rebuild); the retry simply works.
    output = paths.output("1m")
    assert not output.exists() or output.stat().st_size == 0
    status, _, err = run_cli(*args)
    assert status == 0, err
    assert paths.output("1m").read_bytes() == reference["output"]
    assert paths.rejects.read_bytes() == reference["rejects"]


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0,
    reason="root ignores folder permissions; the read-only cases above inject EROFS instead",
)
def test_read_only_output_folder(
    inputs: tuple[bytes, bytes],
    reference: dict[str, bytes],
    vault: Path,
    run_cli: Callable[..., tuple[int, str, str]],
) -> None:
    paths = VaultPaths.of(vault, INST)
    paths.raw_dir.mkdir(parents=True)
    day = paths.raw_dir / "2025-01-01.jsonl"
    day.write_bytes(inputs[0])
    args = ("replay", "--instId", INST, "--vault", str(vault))
    assert run_cli(*args)[0] == 0
    before = paths.state.read_bytes()
    day.write_bytes(inputs[1])
    for folder in (paths.derived_dir, paths.state_dir):
        folder.chmod(0o555)
        paths.output("1m").chmod(0o444)
        try:
            status, _, err = run_cli(*args)
        finally:
            folder.chmod(0o755)
            paths.output("1m").chmod(0o644)
        assert status == 1 and err.startswith("vstream: ") and len(err.strip().splitlines()) == 1
        assert paths.state.read_bytes() == before
    assert run_cli(*args, "--final")[0] == 0
    assert paths.output("1m").read_bytes() == reference["output"]
    assert paths.rejects.read_bytes() == reference["rejects"]


class _StepSource:
    """Yields the batches it is handed, one at a time, so a test can act between them."""

    live = False

    def __init__(self) -> None:
        import asyncio

        self.inbox: asyncio.Queue[Any] = asyncio.Queue()

    @property
    def inst_ids(self) -> tuple[str, ...]:
        return (INST,)

    def resume(self, positions: Any) -> None:
        pass

    def snapshot(self) -> dict[str, Any]:
        return {INST: None}

    async def aclose(self) -> None:
        pass

    def __aiter__(self) -> Any:
        return self._iterate()

    async def _iterate(self) -> Any:
        while (batch := await self.inbox.get()) is not None:
            yield batch


async def test_after_a_failed_checkpoint_no_later_checkpoint_records_a_wrong_length(
    vault: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An embedding bot's own checkpoint() fails half-way through writing bars, and the engine
    goes on receiving trades: no later state may describe an output that lost those bytes."""
    import asyncio

    from vstream.engine import Engine
    from vstream.errors import SinkError
    from vstream.sources import Batch
    from vstream.trades import Trade

    def trades(minutes: range) -> list[Trade]:
        base = 1_735_765_200_000
        return [
            Trade(instId=INST, tradeId=str(m * 10 + i), px="100.5", sz=1.0 + i, side="buy",
                  ts=base + m * 60_000 + i, count=1)
            for m in minutes for i in range(3)
        ]  # fmt: skip

    paths = VaultPaths.of(vault, INST)
    source = _StepSource()
    engine = Engine([source], vault=vault, checkpoint_interval=1e9)
    await engine.open()
    task = asyncio.create_task(engine.run())
    await source.inbox.put(Batch(INST, trades(range(0, 10))))
    for _ in range(1000):  # the batch is handled within a few loop turns
        if engine.stats.batches:
            break
        await asyncio.sleep(0.01)
    assert engine.stats.batches == 1
    fault = Fault("volume_1m.jsonl", errno.ENOSPC, once=True)
    with monkeypatch.context() as patch:
        install(patch, "write", fault)
        with pytest.raises(SinkError, match="No space left on device"):
            await engine.checkpoint()
    assert fault.fired
    await source.inbox.put(Batch(INST, trades(range(10, 20))))
    await source.inbox.put(None)
    with contextlib.suppress(SinkError):  # the run may end quietly or with the failure
        await asyncio.wait_for(task, 10)
    with pytest.raises(SinkError):  # never again: the output length is no longer known
        await engine.checkpoint()
    await engine.aclose()
    # Whatever was committed must agree with the output: resuming sees no torn line.
    if paths.state.exists():
        state = read_state(paths.state)
        data = paths.output("1m").read_bytes()[: state.output_length]
        assert data == b"" or data.endswith(b"\n")
        import msgspec

        for line in data.splitlines():
            msgspec.json.decode(line)
