"""The web UI end to end in headless Chromium, against a running daemon fed over real AMI/TCP.

The daemon runs on a virtual clock that the test moves to each recorded message's time
before a scripted AMI server (``ScriptedAmiServer``) sends it; a Ping round trip after each
batch is the barrier (the client handles messages in order), so every wait, ring and
deadline is the recorded one and the wallboard's numbers are exact.

Chromium is driven over the DevTools protocol (``--remote-debugging-port``) with the
``websockets`` client: no Playwright download.  Two browser contexts are two supervisors
with separate cookie jars.  Screenshots go to the test's tmp dir (``RINGWATCH_SCREENSHOTS``
copies them elsewhere, e.g. ``docs/screenshots``).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect

from config.schema import Config
from monitor.auth import TokenStore, hash_password
from monitor.clock import VirtualClock
from monitor.daemon import Daemon
from telephony.ami.codec import Message
from telephony.ami.server import ScriptedAmiServer, response

pytestmark = [pytest.mark.usefixtures("no_leftover_tasks"), pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "ami"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--window-size=1600,1000",
         # several tabs at once: keep the hidden ones' timers running (the console polls calls every 1 s)
         "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
         "--disable-backgrounding-occluded-windows"]
WALLBOARD_TOKEN = "wallboard-token-0123456789"
ADMIN_TOKEN = "admin-token-0123456789"
PASSWORD = "correct horse battery"
TEAM_AGENTS = [f"Agent 700{i}" for i in range(1, 10)]

if CHROMIUM is None:  # scripts/test.sh installs Debian's chromium when it can
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)


# -- a tiny DevTools-protocol client ---------------------------------------------------------------


class Browser:
    """One headless Chromium; :meth:`page` opens a tab in a fresh browser context (own cookies)."""

    def __init__(self, proc: subprocess.Popen[bytes], ws: ClientConnection) -> None:
        self.proc, self.ws = proc, ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.console: list[str] = []
        self._reader = asyncio.create_task(self._read(), name="cdp-reader")

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            fut = self._waiting.pop(msg.get("id", -1), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            elif msg.get("method") in ("Runtime.exceptionThrown", "Runtime.consoleAPICalled"):
                self.console.append(json.dumps(msg.get("params"))[:500])

    async def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        cid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[cid] = fut
        msg: dict[str, Any] = {"id": cid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        await self.ws.send(json.dumps(msg))
        async with asyncio.timeout(15):
            reply = await fut
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def page(self) -> Page:
        ctx = (await self.send("Target.createBrowserContext"))["browserContextId"]
        target = (await self.send("Target.createTarget", {"url": "about:blank", "browserContextId": ctx}))["targetId"]
        session = (await self.send("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
        page = Page(self, session)
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        await page.send("Emulation.setDeviceMetricsOverride",
                        {"width": 1600, "height": 1000, "deviceScaleFactor": 1, "mobile": False})
        return page

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.ws.close()
        self.proc.terminate()
        await asyncio.to_thread(self.proc.wait, 10)


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser, self.session = browser, session

    async def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.browser.send(method, params, self.session)

    async def js(self, expression: str) -> Any:
        r = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                 "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}: {r['exceptionDetails'].get('text')}")
        return r["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float = 10.0) -> Any:
        """Poll a JS condition until it is truthy (the page updates on its own websocket/timers)."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    value = await self.js(f"!!({expression})")  # a DOM node comes back as {} by value
                    if value:
                        return value
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {expression}; console: {self.browser.console[-5:]}") from None

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})
        await self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    async def screenshot(self, path: Path) -> None:
        data = (await self.send("Page.captureScreenshot", {"format": "png"}))["data"]
        await asyncio.to_thread(path.write_bytes, base64.b64decode(data))


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    assert CHROMIUM is not None
    proc = await asyncio.to_thread(subprocess.Popen,
                                   [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'chromium'}", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None

    def devtools_url() -> str:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            if "DevTools listening on" in line:
                return line.split("DevTools listening on", 1)[1].strip()
        raise RuntimeError("chromium exited without a DevTools URL")

    try:
        async with asyncio.timeout(30):
            url = await asyncio.to_thread(devtools_url)
        ws = await connect(url, max_size=64 * 1024 * 1024, proxy=None)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    b = Browser(proc, ws)
    try:
        yield b
    finally:
        await b.close()
        proc.stderr.close()


# -- the PBX side -------------------------------------------------------------------------------------


class SpyPbx(ScriptedAmiServer):
    """The scripted Asterisk, recording every Originate (fields in order) and accepting it as Asterisk does."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.originates: list[list[tuple[str, str]]] = []

    async def _action(self, sess: Any, msg: Message) -> bool:
        if (msg.get("Action") or "").lower() == "originate" and sess.logged_in:
            self.actions["Originate"] += 1
            self.originates.append([(k, v) for k, v in msg.pairs if k not in ("Action", "ActionID")])
            sess.send(response(msg.action_id, "Success", ("Message", "Originate successfully queued")))
            self.changed()
            return True
        return await super()._action(sess, msg)


def trace(name: str) -> list[tuple[float, list[tuple[str, str]]]]:
    """The recorded events of a trace (responses to the recorder's own actions left out)."""
    out = []
    for line in (FIXTURES / f"{name}.jsonl").read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        pairs = [(k, v) for k, v in item.get("msg", [])]
        if pairs and any(k == "Event" for k, _ in pairs):
            out.append((float(item["t"]), pairs))
    return out


class Feeder:
    """Plays trace messages into the daemon at their recorded times on its virtual clock."""

    def __init__(self, server: SpyPbx, daemon: Daemon, clock: VirtualClock) -> None:
        self.server, self.daemon, self.clock = server, daemon, clock

    async def barrier(self) -> None:
        assert self.daemon.pbx is not None
        await self.daemon.pbx.client.action("Ping")  # replies after everything sent before it was handled

    async def play(self, items: list[tuple[float, list[tuple[str, str]]]], offset: float,
                   until: float | None = None) -> float:
        last = offset
        for t, group in itertools.groupby(items, key=lambda x: x[0]):
            if until is not None and t > until:
                break
            self.clock.advance_to(offset + t)
            for _, pairs in group:
                await self.server.push(pairs)
            await self.barrier()
            last = offset + t
        return last


def _cfg(tmp_path: Path) -> Config:
    h = hash_password(PASSWORD)
    return Config.model_validate({
        "http": {"port": 0}, "data_dir": str(tmp_path / "data"), "lines": {"store": "memory"},
        "ui": {"users": [
            {"name": "sup1", "role": "supervisor", "teams": ["team-a"], "phone": "PJSIP/8001", "password_hash": h},
            {"name": "sup2", "role": "supervisor", "teams": ["team-a"], "phone": "PJSIP/8002", "password_hash": h}],
            "teams": {"team-a": {"agents": TEAM_AGENTS, "queues": ["support"]}},
            "kpi_push_interval_s": 0.2},
    })


async def login(page: Page, base: str, name: str) -> None:
    await page.goto(f"{base}/login?next=/console")
    await page.js(f"document.querySelector('#name').value = {json.dumps(name)};"
                  f"document.querySelector('#password').value = {json.dumps(PASSWORD)};"
                  "document.querySelector('#login-btn').click(); true")
    await page.wait_for("location.pathname === '/console' && document.readyState === 'complete'")
    await page.wait_for("document.querySelector('#conn').classList.contains('on')")


def tile(name: str) -> str:
    return f"document.querySelector('#k-{name}')"


async def test_wallboard_console_spy_and_ack_in_chromium(tmp_path: Path, browser: Browser) -> None:
    t_start = time.monotonic()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    clock = VirtualClock(wall_origin=time.time())
    server = SpyPbx()
    await server.start()
    tokens = TokenStore([(WALLBOARD_TOKEN, "tv", "wallboard"), (ADMIN_TOKEN, "ops", "admin")])
    daemon = Daemon(_cfg(tmp_path), tokens, clock=clock, host=server.host, port=server.port, secret="secret",
                    sweep_interval_s=0)
    try:
        await daemon.start()
        assert daemon.pbx is not None
        assert daemon.hub is not None
        async with asyncio.timeout(10):
            await daemon.pbx.wait_connected()
        feed = Feeder(server, daemon, clock)
        base = f"http://127.0.0.1:{daemon.http_port}"

        # -- the wallboard (read-only token in the fragment), live while the burst is played --------
        wall = await browser.page()
        await wall.goto(f"{base}/wallboard#token={WALLBOARD_TOKEN}")
        await wall.wait_for("document.querySelector('#conn').classList.contains('on')")
        end = await feed.play(trace("S12_burst_20_calls"), offset=1.0)

        truth = json.loads((FIXTURES / "S12_burst_20_calls.truth.json").read_text(encoding="utf-8"))["expected"]
        waits = [c["wait_s"] for c in truth if c["answered"]]
        offered, abandoned = len(truth), sum(c["abandoned"] for c in truth)
        sl = sum(w <= 15.0 for w in waits) / offered
        asa = sum(waits) / len(waits)
        late = sum(v["rule"] == "IN-ANSWER" for c in truth for v in c["violations"])
        assert (offered, len(waits), abandoned) == (20, 14, 6)
        # the burst is over on the wallboard once every call has ended: 20 counted by the line monitor
        await wall.wait_for(f"{tile('in_answer_today')}.dataset.raw === '{late}' && "
                            f"{tile('abandon_rate')}.dataset.raw === '{round(abandoned / offered, 4)}' && "
                            "document.querySelector('#line-counts').textContent.includes('/20')")
        raw = await wall.js("Object.fromEntries([...document.querySelectorAll('.tile')]"
                            ".map(t => [t.id.slice(2), [t.dataset.raw, t.querySelector('.value').textContent,"
                            " t.className]]))")
        assert raw["service_level"][:2] == [str(round(sl, 4)), f"{sl * 100:.1f}%"]
        assert raw["service_level"][2] == "tile red"  # 5 % against red at 70 %
        assert float(raw["asa_s"][0]) == pytest.approx(asa, abs=0.06)
        talk = [c["first_hangup_t"] - c["answered_t"] for c in truth if c["answered"]]
        assert float(raw["aht_s"][0]) == pytest.approx(sum(talk) / len(talk), abs=0.06)  # 18.0 s
        # line connect rate (SYS-LINES 接通率): 14 of the 20 offered calls answered, none dialled out
        assert raw["line_connect_rate"][:2] == [str(round(14 / 20, 4)), "70.0%"]
        assert await wall.js("document.querySelector('#line-counts').textContent") == "呼入 14/20 · 呼出 0/0"
        assert raw["abandon_rate"][1] == "30.0%"
        assert raw["calls_waiting"][:2] == ["0", "0"]
        assert raw["in_answer_today"][1] == str(late)
        assert await wall.js("document.querySelector('#sl-formula').textContent.includes('15 秒内接起')")
        await wall.screenshot(shots / "wallboard.png")
        await wall.js("document.querySelector('#lang').click(); true")  # the English switch
        await wall.wait_for("document.querySelector('#k-service_level .label').textContent === 'Service level'")

        # -- two supervisors; an alert appears, an ack in one browser reaches the other ---------------
        p1, p2 = await browser.page(), await browser.page()
        await login(p1, base, "sup1")
        await login(p2, base, "sup2")
        cookie = await p1.send("Network.getCookies", {"urls": [base]})
        sess = next(c for c in cookie["cookies"] if c["name"] == "rw_session")
        assert (sess["httpOnly"], sess["secure"], sess["sameSite"]) == (True, True, "Strict")
        before = {a.id for a in daemon.hub.alerts()}
        off2 = end + 1.0
        s02 = trace("S02_slow_answer_20s")
        await feed.play(s02, offset=off2, until=16.0)  # rings from 0.5: IN-ANSWER at 15.5
        clock.advance_to(off2 + 16.0)
        new = [a for a in daemon.hub.alerts() if a.id not in before and a.rule == "IN-ANSWER"]
        assert len(new) == 1
        aid = new[0].id
        for p in (p1, p2):
            await p.wait_for(f"alerts.has({json.dumps(aid)})")
        await p1.js(f"document.querySelector('li[data-alert={json.dumps(aid)}] button.ack').click(); true")
        await p2.wait_for(f"document.querySelector('li[data-alert={json.dumps(aid)}]')?.dataset.state === 'acked'")
        acked = daemon.hub.get(aid)
        assert acked is not None
        assert acked.acked_by == "sup1"
        end = await feed.play([x for x in s02 if x[0] > 16.0], offset=off2)

        # -- a live call; listen: the PBX receives Originate(ChanSpy) on that agent's channel -----------
        s01 = trace("S01_answered_caller_hangs_up")
        connect_msg = next(dict(p) for _, p in s01 if dict(p).get("Event") == "AgentConnect")
        agent_channel, linkedid = connect_msg["DestChannel"], connect_msg["Linkedid"]
        offset = end + 1.0
        await feed.play(s01, offset=offset, until=8.0)  # answered at 5.51, caller hangs up at ~15.5
        await p1.wait_for(f"document.querySelector('tr[data-call=\"{linkedid}\"] button.spy-listen')")
        assert "Agent 7001" in await p1.js(f"document.querySelector('tr[data-call=\"{linkedid}\"]').textContent")
        await p1.js(f"document.querySelector('tr[data-call=\"{linkedid}\"] button.spy-listen').click(); true")
        await server.wait_until(lambda: len(server.originates) == 1)
        fields = dict(server.originates[0])
        assert fields["Channel"] == "PJSIP/8001"
        assert fields["Application"] == "ChanSpy"
        assert fields["Data"] == f"{agent_channel},qbES"  # listen = quiet, bridged, exit with the call; no w / B
        await p1.wait_for("document.querySelector('#spies [data-state=requested]')")
        # Asterisk reports the spy: the console shows it active
        spyer = [("Event", "ChanSpyStart"), ("Privilege", "call,all"), ("SpyerChannel", "PJSIP/8001-00000009"),
                 ("SpyerUniqueid", "9.9"), ("SpyerLinkedid", "9.9"), ("SpyeeChannel", agent_channel),
                 ("SpyeeUniqueid", "1795294870.3"), ("SpyeeLinkedid", linkedid)]
        clock.advance(0.5)
        await server.push(spyer)
        await feed.barrier()
        await p1.wait_for("document.querySelector('#spies [data-state=active]')")
        await p1.screenshot(shots / "console.png")
        stop = [("Event", "ChanSpyStop"), *spyer[1:]]
        clock.advance(2.0)
        await server.push(stop)
        await feed.barrier()

        # -- the audit trail (admin): the spy with who / whom / call / start / end, and the ack --------
        assert daemon.commitments is not None
        assert daemon.commitments.store is not None
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(10):
                while True:
                    r = await http.get(f"{base}/api/v1/audit?limit=50",
                                       headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
                    body = await r.json()
                    actions = [e["action"] for e in body["entries"]]
                    if "spy.end" in actions:
                        break
                    await asyncio.sleep(0.05)
            denied = await http.get(f"{base}/api/v1/audit", headers={"Authorization": f"Bearer {WALLBOARD_TOKEN}"})
            assert denied.status == 403
        by_action = {e["action"]: e for e in body["entries"]}
        assert {"spy.request", "spy.start", "spy.end", "alert.ack", "login"} <= set(by_action)
        end_entry = by_action["spy.end"]
        assert (end_entry["actor"], end_entry["target"]) == ("sup1", linkedid)
        assert (end_entry["details"]["agent"], end_entry["details"]["mode"]) == ("Agent 7001", "listen")
        assert end_entry["details"]["end"] - end_entry["details"]["start"] == pytest.approx(2.0, abs=0.01)
        assert by_action["alert.ack"]["target"] == aid
        # stored in Redis, not only in memory
        stored = await daemon.commitments.store.client.xrange("ringwatch:audit")
        assert any(f.get("action") == "spy.start" for _, f in stored)
    finally:
        await daemon.stop()
        await server.stop()
    copy_to = os.environ.get("RINGWATCH_SCREENSHOTS")
    if copy_to:
        await asyncio.to_thread(shutil.copytree, shots, copy_to, dirs_exist_ok=True)
    assert (shots / "wallboard.png").stat().st_size > 10_000
    assert (shots / "console.png").stat().st_size > 10_000
    assert time.monotonic() - t_start < 60
