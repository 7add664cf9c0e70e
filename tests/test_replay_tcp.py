"""Recorded traces replayed over real loopback TCP: TraceAmiServer -> AmiClient ->
tracker -> rules on a LoopClock running ``SPEED`` times faster than real time.

The output must pass the acceptance judge and equal the speed-0 (virtual clock)
replay within 0.5 s: the network path changes nothing but latency.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest

from alerts.hub import AlertHub
from config.schema import Config, load_config
from monitor.clock import LoopClock
from monitor.engine import Monitor
from monitor.replay import JsonLinesOutput, replay_tcp
from telephony.ami.client import AmiClient
from telephony.ami.server import TraceAmiServer, replay_trace_tcp
from telephony.ami.trace import read_trace
from tests.replaytools import FIXTURES, TIME_TOLERANCE_S, differences, judge, replay_lines

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

SPEED = 10.0


def _wall(key: str) -> bool:
    return key == "opened_wall"  # wall-clock time live, trace time in a virtual replay

S13 = FIXTURES / "S13_resync_snapshot.jsonl"


async def replay_lines_tcp(path: Path, speed: float = SPEED, cfg: Config | None = None) -> list[dict[str, Any]]:
    buf = io.StringIO()
    await replay_tcp(path, cfg or load_config(env={}), JsonLinesOutput(buf), speed)
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def canonical(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Outputs in a stable order without alert ids: two deadlines a few ms apart (e.g. S01's
    SYS-REC at answer + 10 s and the call's end 11 ms later) may come out either way round
    over real TCP under load; what each output says must not change."""
    def key(o: dict[str, Any]) -> tuple[str, str, str, str]:
        return (o["type"], str(o.get("call") or o.get("id")), str(o.get("rule", "")), str(o.get("kind", "")))

    return sorted(({k: v for k, v in o.items() if not (k == "id" and o["type"] != "call")} for o in lines), key=key)


@pytest.mark.parametrize("name", ["S01_answered_caller_hangs_up", "S02_slow_answer_20s", "S03_abandoned_in_queue"])
async def test_tcp_replay_passes_the_judge_and_matches_speed_0(name: str, tmp_path: Path) -> None:
    lines = await replay_lines_tcp(FIXTURES / f"{name}.jsonl")
    res = judge(FIXTURES / f"{name}.truth.json", lines, tmp_path, "A")
    assert res.returncode == 0, res.stdout + res.stderr
    assert lines, "no output"
    assert differences(canonical(lines), canonical(replay_lines(FIXTURES / f"{name}.jsonl")), skip=_wall) == []


async def test_client_resync_gets_the_recorded_snapshot() -> None:
    # S13's recorder asked for CoreShowChannels/QueueStatus at 8.5 s: the client's own
    # resync is answered by those recorded lists (ActionID rewritten), so the tracker
    # sees exactly what the recorder saw
    lines = await replay_lines_tcp(S13)
    assert len([o for o in lines if o["type"] == "call"]) == 3
    assert differences(canonical(lines), canonical(replay_lines(S13)), skip=_wall) == []


def two_connections(tmp: Path) -> Path:
    """S13 with the link down from 6.0 s to 7.0 s: the second recorded connection
    logs in again and resyncs (the recorded snapshot at 8.52 s) while three calls are up."""
    items = [json.loads(line) for line in S13.read_text(encoding="utf-8").splitlines()]
    before = [o for o in items if o["t"] < 8.519 and "eof" not in o]
    after = [o for o in items if o["t"] >= 8.519]
    again = [
        {"t": 6.0, "eof": True},
        {"t": 7.0, "banner": "Asterisk Call Manager/11.0.0"},
        {"t": 7.001, "sent": [["Action", "Login"], ["Username", "monitor"], ["Secret", "monitor-secret"],
                              ["Events", "on"], ["ActionID", "mon-1b"]]},
        {"t": 7.002, "msg": [["Response", "Success"], ["ActionID", "mon-1b"],
                             ["Message", "Authentication accepted"]]},
        {"t": 7.002, "msg": [["Event", "FullyBooted"], ["Privilege", "system,all"], ["Uptime", "8"],
                             ["LastReload", "8"], ["Status", "Fully Booted"]]},
    ]
    out = tmp / "S13_two_connections.jsonl"
    out.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in [*before, *again, *after]),
                   encoding="utf-8")
    return out


async def test_a_trace_with_two_connections_reconnects_and_matches_speed_0(tmp_path: Path) -> None:
    path = two_connections(tmp_path)
    lines = await replay_lines_tcp(path)
    calls = [o for o in lines if o["type"] == "call"]
    assert len(calls) == 3
    assert not any(c["lost"] for c in calls)  # the reconnect's resync found them all still up
    assert differences(canonical(lines), canonical(replay_lines(path)), skip=_wall) == []


async def test_recorded_failed_login_is_served_as_a_failed_login() -> None:
    items = list(read_trace(FIXTURES / "S14_failed_login.jsonl"))
    errors: asyncio.Queue[str] = asyncio.Queue()
    async with TraceAmiServer(items, SPEED) as server:
        client = AmiClient(host=server.host, port=server.port, username="monitor", secret="whatever",
                           auth="plain", auth_retry_min_s=60.0, on_error=errors.put_nowait)
        async with client, asyncio.timeout(3):
            await server.finished()
            assert "Authentication failed" in await errors.get()
        assert server.logins == 0
        assert client.stats.auth_failures == 1
        assert client.stats.connects == 0
        assert "Authentication failed" in (client.last_error or "")


async def test_trace_server_checks_a_configured_secret() -> None:
    items = list(read_trace(FIXTURES / "S01_answered_caller_hangs_up.jsonl"))
    errors: asyncio.Queue[str] = asyncio.Queue()
    async with TraceAmiServer(items, SPEED, secret="right") as server:
        client = AmiClient(host=server.host, port=server.port, username="monitor", secret="wrong",
                           auth="md5", auth_retry_min_s=60.0, on_error=errors.put_nowait)
        async with client, asyncio.timeout(3):
            assert "Authentication failed" in await errors.get()
        assert server.failed_logins == 1
        assert client.stats.auth_failures == 1
        assert server.logins == 0
        assert not server.is_finished  # nothing was played to a client that failed to log in


async def test_trace_server_stops_while_waiting_to_serve_a_banner() -> None:
    items = list(read_trace(FIXTURES / "S01_answered_caller_hangs_up.jsonl"))
    server = TraceAmiServer(items, speed=1.0, origin=asyncio.get_running_loop().time() + 3600.0)
    await server.start()
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        await server.wait_until(lambda: server.sessions == 1)
        async with asyncio.timeout(1.0):
            await server.stop()
            assert await reader.read() == b""  # closed without a banner
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_client_that_logs_in_after_the_first_events_keeps_the_calls_it_was_shown() -> None:
    # the trace's clock started 1.5 s of trace time before the client could connect: S02's caller
    # joined at 0.505 s, so the join is already due when the login is accepted.  The replay PBX has
    # no recorded snapshot for that moment; it must not answer the client's resync with an empty
    # channel list (that would close the call as lost) — it refuses it instead
    items = list(read_trace(FIXTURES / "S02_slow_answer_20s.jsonl"))
    loop = asyncio.get_running_loop()
    clock = LoopClock(loop, scale=SPEED)
    monitor = Monitor(load_config(env={}), clock, AlertHub(clock.now))
    records: list[dict[str, Any]] = []
    monitor.on_record(lambda _c, rec: records.append(rec))
    origin = loop.time() - clock.now() / SPEED - 1.5 / SPEED
    await replay_trace_tcp(items, SPEED, monitor.handle, lambda: clock.now() + 1.5, origin)
    (rec,) = records
    assert (rec["lost"], rec["abandoned"]) == (False, False)
    assert rec["answered_at"] == pytest.approx(20.52, abs=TIME_TOLERANCE_S)
    assert rec["first_hangup"] == "customer"
    monitor.close()
