"""Fixtures and session-wide clean-up shared by the test modules.

``upstream`` is a fake upstream on loopback (every wire format, no scenarios: an echo
unless a test installs one with ``set_scenario``); ``client`` an ``httpx.AsyncClient``
to talk to it; ``redis_server`` a real ``redis-server`` on its own loopback port
(tests/_redis.py; skipped when it is not installed).  A module that needs the upstream's random streams seeded otherwise
overrides ``upstream_seed``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from providers.testing import FakeUpstream, open_fake_upstream
from tests import _cli_runner
from tests._redis import RedisServer, require_redis_server


@pytest.fixture
def upstream_seed() -> int:
    """The seed of the ``upstream`` fixture's random streams (faults, latency)."""
    return 0


@pytest.fixture
async def upstream(upstream_seed: int) -> AsyncIterator[FakeUpstream]:
    """A fake upstream for one test, stopped (every connection closed) after it."""
    async with open_fake_upstream(seed=upstream_seed) as up:
        yield up


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """An ``httpx.AsyncClient`` (5 s timeouts, httpx's default) for one test."""
    async with httpx.AsyncClient(timeout=5) as c:
        yield c


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real ``redis-server`` for one test: a free loopback port, a temporary
    directory, no persistence; stopped after it (``kill``/``restart``/``pause`` too)."""
    server = RedisServer(require_redis_server(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    """Without pytest-xdist (``-p no:xdist``, or not installed) pyproject's
    ``--numprocesses=2 --dist=loadfile`` are accepted and mean nothing: the tests run in
    this process."""
    if not pluginmanager.has_plugin("xdist"):
        for option in ("--numprocesses", "--dist"):
            parser.addoption(option, help="pytest-xdist's, ignored: xdist is not loaded")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The warm CLI runner (started by the first CLI test, if any) exits with the session."""
    _cli_runner.close()
