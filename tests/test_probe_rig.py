"""The real SIP rig: Kamailio (registrar/proxy, digest auth) and baresip (the auto-answering "hotline",
a 440 Hz tone), from Debian's packages (scripts/test.sh installs them), on loopback only.

Each test runs this file as a script (``python tests/test_probe_rig.py SCENARIO``) in its own network
namespace (``unshare -n``: its own loopback, no port clashes with anything else on the machine; plain
127.0.0.1 with free ports where namespaces are not allowed).  The script starts the rig, runs
ringwatch's real probe (:func:`monitor.probe.run_probe`: the pyVoIP worker process with its hard
deadline) and prints the result as JSON; the test asserts on it.  Real network timing is the point
here, so these tests take real (bounded) seconds; nothing else in the suite does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
BARESIP = shutil.which("baresip") or "/usr/bin/baresip"
KAMAILIO_MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"
PROBE_PW = "probe-secret"
HOTLINE_PW = "hotline-secret"
PROBE_TIMEOUT_S = 4.0  # the probe's own budget in these tests (the daemon's default is 20 s)


# -- the rig (runs inside the namespace, as a script) ------------------------------------------

KAMAILIO_CFG = """#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=1
auto_aliases=no
listen=udp:127.0.0.1:{kport}
mpath="{modules}"
loadmodule "kex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "auth.so"
modparam("tm", "fr_timer", 1000)
modparam("tm", "fr_inv_timer", 30000)
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    # pyVoIP's request URIs carry no port: "127.0.0.1" alone is this proxy too
    $var(ours) = 0;
    if ($rd == "127.0.0.1" && ($(ru{{uri.port}}) == "" || $rp == {kport})) {{ $var(ours) = 1; }}
    if (is_method("REGISTER")) {{
        if ($fU == "probe") {{ $var(pw) = "{probe_pw}"; }} else {{ $var(pw) = "{hotline_pw}"; }}
        if (!pv_www_authenticate("$td", "$var(pw)", "0")) {{ www_challenge("$td", "0"); exit; }}
        if (!save("location")) {{ sl_reply_error(); }}
        exit;
    }}
    if (has_totag()) {{
        # in-dialog (ACK for 2xx, BYE): to the remote target, else by location
        if ($var(ours) == 0) {{ t_relay(); exit; }}
        if (lookup("location")) {{ t_relay(); exit; }}
        if (!is_method("ACK")) {{ sl_send_reply("404", "Not here"); }}
        exit;
    }}
    if (is_method("CANCEL|ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
    t_relay();
}}
"""

BARESIP_CONFIG = """poll_method epoll
sip_listen 127.0.0.1:{bport}
audio_player aubridge,null
audio_source ausine,440
audio_alert aubridge,null
ausrc_srate 48000
ausrc_channels 2
net_interface 127.0.0.1
dns_server 127.0.0.1:53
module_path /usr/lib/baresip/modules
module g711.so
module ausine.so
module aubridge.so
module account.so
module menu.so
"""

BARESIP_ACCOUNT = "<sip:{user}@127.0.0.1:{kport};transport=udp>;auth_pass={pw};answermode={mode};regint=600;" \
                  "audio_codecs=PCMU\n"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Rig:
    def __init__(self, workdir: Path, in_namespace: bool) -> None:
        self.dir = workdir
        self.kport = 5060 if in_namespace else _free_udp_port()
        self.bport = 5070 if in_namespace else _free_udp_port()
        self.kamailio: subprocess.Popen[bytes] | None = None
        self.baresip: subprocess.Popen[bytes] | None = None
        self.baresip_log = workdir / "baresip.log"

    def start_kamailio(self) -> None:
        cfg = self.dir / "kamailio.cfg"
        cfg.write_text(KAMAILIO_CFG.format(kport=self.kport, modules=KAMAILIO_MODULES, probe_pw=PROBE_PW,
                                           hotline_pw=HOTLINE_PW))
        log = (self.dir / "kamailio.log").open("wb")
        self.kamailio = subprocess.Popen([KAMAILIO, "-f", str(cfg), "-DD", "-E", "-n", "1"], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        _wait_udp_bound(self.kport, 3.0)

    def start_baresip(self) -> None:
        conf = self.dir / "baresip"
        conf.mkdir(exist_ok=True)
        (conf / "config").write_text(BARESIP_CONFIG.format(bport=self.bport))
        (conf / "accounts").write_text(  # the auto-answering hotline, and a number that only rings
            BARESIP_ACCOUNT.format(user="hotline", kport=self.kport, pw=HOTLINE_PW, mode="auto")
            + BARESIP_ACCOUNT.format(user="ringing", kport=self.kport, pw=HOTLINE_PW, mode="manual"))
        (conf / "contacts").write_text("")
        log = self.baresip_log.open("wb")
        self.baresip = subprocess.Popen([BARESIP, "-f", str(conf)], stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + 3.0
        while self.baresip_log.read_text(errors="replace").count("200 OK") < 2:  # both accounts registered
            if time.monotonic() > end or self.baresip.poll() is not None:
                raise RuntimeError("baresip did not register: " + self.baresip_log.read_text(errors="replace")[-800:])
            time.sleep(0.02)

    def kill_baresip(self) -> None:
        """The hotline's phone dies without unregistering (Kamailio still routes to it)."""
        if self.baresip is not None:
            os.killpg(self.baresip.pid, signal.SIGKILL)
            self.baresip.wait()
            self.baresip = None

    def stop(self) -> None:
        # baresip first (it can take seconds after an unmatched ACK): bounded, then Kamailio
        for proc in (self.baresip, self.kamailio):
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_udp_bound(port: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return  # taken: Kamailio listens
        time.sleep(0.02)
    raise RuntimeError(f"Kamailio did not bind udp/{port}")


def rig_main(scenario: str, in_namespace: bool) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from monitor.probe import ProbeSpec, run_probe

    if in_namespace:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with tempfile.TemporaryDirectory(prefix="ringwatch-rig-") as tmp:
        rig = Rig(Path(tmp), in_namespace)
        try:
            t0 = time.monotonic()
            if scenario != "no_registrar":
                rig.start_kamailio()
            if scenario not in ("no_registrar", "hotline_absent"):
                rig.start_baresip()
            if scenario == "hotline_gone":
                rig.kill_baresip()
            rig_start_s = time.monotonic() - t0
            number = {"ringing": "ringing"}.get(scenario, "hotline")
            password = "wrong-secret" if scenario == "bad_password" else PROBE_PW
            spec = ProbeSpec("127.0.0.1", rig.kport, "127.0.0.1", "probe", password, number,
                             timeout_s=PROBE_TIMEOUT_S, register_timeout_s=1.0, listen_s=0.5, min_rtp_packets=10)
            t1 = time.monotonic()
            result = asyncio.run(run_probe(spec))
            elapsed = time.monotonic() - t1
        finally:
            rig.stop()
        out = result.to_json()
        out["elapsed_s"] = elapsed
        out["rig_start_s"] = rig_start_s
        out["ok_prop"] = result.ok
        return out


# -- the tests (pytest side) -------------------------------------------------------------------


def _namespace_ok() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None or shutil.which("ip") is None:
        return False
    try:
        return subprocess.run([unshare, "-n", "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _missing() -> str | None:
    if not (os.access(KAMAILIO, os.X_OK) and os.access(BARESIP, os.X_OK)):
        return "kamailio / baresip not installed (scripts/test.sh installs them as root: apt-get install kamailio " \
               "baresip-core)"
    return None


needs_rig = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


def run_scenario(scenario: str) -> dict[str, Any]:
    ns = _namespace_ok()
    cmd = [sys.executable, str(Path(__file__).resolve()), scenario] + ([] if ns else ["--no-namespace"])
    if ns:
        cmd = ["unshare", "-n", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _sip(result: dict[str, Any], direction: str, prefix: str) -> list[list[Any]]:
    return [e for e in result["trace"] if e[1] == direction and e[2].startswith(prefix)]


@needs_rig
@pytest.mark.timeout(25)
def test_probe_registers_calls_gets_answered_hears_audio_and_hangs_up() -> None:
    r = run_scenario("answered")
    assert r["outcome"] == "ok", r
    assert r["ok"] is True
    assert r["registered"] is True
    assert 0 < r["register_ms"] < 500  # REGISTER -> 401 -> REGISTER -> 200, on loopback
    assert r["answered"] is True
    assert r["final_status"] == 200
    assert 0 < r["post_dial_delay_ms"] <= r["answer_ms"] < 500  # 180 Ringing before the 200
    assert r["audio"] is True
    assert r["rtp_packets"] >= 15  # 0.5 s of 20 ms packets: ~25
    assert r["rtp_voiced"] >= 10  # the 440 Hz tone, not silence
    assert r["first_rtp_ms"] is not None
    assert r["first_rtp_ms"] < 200
    assert r["hangup"] == "confirmed"  # BYE -> 200 OK
    assert r["hangup_ms"] < 500
    # ringwatch's own ACK carries the 200's To-tag: baresip never had to resend its 200 OK (pyVoIP's
    # own ACK has a random tag, and baresip then resends for 32 s)
    assert r["ok_retransmissions"] == 0
    acks = _sip(r, "out", "ACK ")
    to_hotline = [a for a in acks if "@127.0.0.1:" in a[2]]  # to the hotline's Contact, not the proxy's AoR
    assert len(to_hotline) == 1, r["trace"]  # the 200's ACK, exactly once
    # any other ACK is the hop-by-hop one for a challenge of the INVITE (the proxy may ask again)
    invite_t = _sip(r, "out", "INVITE ")[0][0]
    challenges = [e for e in r["trace"] if e[1] == "in" and invite_t < e[0] < to_hotline[0][0]
                  and e[2].startswith(("SIP/2.0 401", "SIP/2.0 407"))]
    assert len(acks) - 1 == len(challenges), r["trace"]
    assert len(_sip(r, "out", "BYE ")) == 1
    assert r["killed"] is False
    assert r["elapsed_s"] < 3.0  # worker start, register, call, 0.5 s of audio, hang-up, deregister


@needs_rig
@pytest.mark.timeout(25)
def test_hotline_absent_fails_with_not_found_within_the_bound() -> None:
    r = run_scenario("hotline_absent")
    assert r["ok"] is False
    assert r["outcome"] == "not_found"
    assert r["final_status"] == 404
    assert r["registered"] is True  # the probe's own account is fine: it is the hotline that is missing
    assert r["answered"] is False
    assert r["reason"]["en"].startswith("the hotline number was not found")
    assert "404 Not Found" in r["reason"]["en"]
    assert len(_sip(r, "out", "ACK ")) >= 1  # the 404 is ACKed (pyVoIP raises before its own ACK)
    assert r["elapsed_s"] < PROBE_TIMEOUT_S


@needs_rig
@pytest.mark.timeout(25)
def test_hotline_ringing_but_never_answering_is_cancelled_at_the_deadline() -> None:
    r = run_scenario("ringing")
    assert r["outcome"] == "no_answer"
    assert r["post_dial_delay_ms"] is not None  # it did ring
    assert r["cancelled"] is True  # pyVoIP has no CANCEL: ringwatch sends one
    assert _sip(r, "in", "SIP/2.0 487")  # ... and the ringing stopped
    assert r["killed"] is False
    # the answer wait ends at timeout_s - (listen_s + 1.5 s) = 2 s; then CANCEL, 487, ACK, deregister
    assert 2.0 <= r["elapsed_s"] < PROBE_TIMEOUT_S + 0.5


@needs_rig
@pytest.mark.timeout(25)
def test_hotline_gone_after_registering_times_out_at_the_proxy() -> None:
    r = run_scenario("hotline_gone")
    assert r["outcome"] == "unavailable"  # Kamailio's fr_timer (1 s): 408 Request Timeout
    assert r["final_status"] == 408
    assert r["elapsed_s"] < PROBE_TIMEOUT_S


@needs_rig
@pytest.mark.timeout(25)
def test_wrong_password_is_a_refused_registration() -> None:
    r = run_scenario("bad_password")
    assert r["outcome"] == "register_rejected"
    assert r["registered"] is False
    assert not _sip(r, "out", "INVITE ")
    assert r["elapsed_s"] < PROBE_TIMEOUT_S


@needs_rig
@pytest.mark.timeout(25)
def test_registrar_down_is_a_registration_timeout_within_the_bound() -> None:
    r = run_scenario("no_registrar")
    assert r["outcome"] == "register_timeout"
    assert r["elapsed_s"] < 1.0 + 1.5  # register_timeout_s 1 s + worker start


# -- the parent side without SIP: the result from observations, the hard deadline -----------------


def _spec(**kw: Any) -> Any:
    from monitor.probe import ProbeSpec

    base: dict[str, Any] = {"registrar_host": "127.0.0.1", "registrar_port": 5060, "local_ip": "127.0.0.1",
                            "username": "probe", "password": "pw", "hotline": "95500", "timeout_s": 4.0}
    base.update(kw)
    return ProbeSpec(**base)


def _sip_ev(t: float, direction: str, line: str, method: str, code: int | None = None) -> dict[str, Any]:
    ev: dict[str, Any] = {"ev": "sip", "t": t, "dir": direction, "line": line, "method": method, "call_id": "c"}
    if code is not None:
        ev["code"] = code
    else:
        ev["request"] = line.split()[0]
    return ev


def test_a_worker_killed_while_the_hotline_rings_reports_how_far_it_got() -> None:
    from monitor.probe import derive_result

    events = [
        _sip_ev(1.0, "out", "REGISTER sip:pbx SIP/2.0", "REGISTER"),
        _sip_ev(2.0, "in", "SIP/2.0 401 Unauthorized", "REGISTER", 401),
        _sip_ev(2.5, "out", "REGISTER sip:pbx SIP/2.0", "REGISTER"),
        _sip_ev(4.0, "in", "SIP/2.0 200 OK", "REGISTER", 200),
        {"ev": "registered", "t": 4.1, "ok": True},
        _sip_ev(10.0, "out", "INVITE sip:95500@pbx SIP/2.0", "INVITE"),
        _sip_ev(11.0, "in", "SIP/2.0 100 Trying", "INVITE", 100),
        _sip_ev(250.0, "in", "SIP/2.0 183 Session Progress", "INVITE", 183),
    ]
    r = derive_result(events, _spec(), killed=True, exit_code=-9)
    assert r.outcome == "no_answer"
    assert r.killed is True
    assert r.register_ms == 3.0
    assert r.post_dial_delay_ms == 240.0
    assert r.detail == "last: 183 Session Progress"
    assert r.reason()["zh"] == "热线在时限内未接听(last: 183 Session Progress)"
    # killed before anything came back
    r = derive_result([_sip_ev(1.0, "out", "REGISTER sip:pbx SIP/2.0", "REGISTER")], _spec(), killed=True)
    assert r.outcome == "register_timeout"
    r = derive_result([], _spec(), killed=True)
    assert r.outcome == "timeout"


def test_a_worker_past_its_hard_deadline_is_killed_and_the_loop_never_waits(tmp_path: Path) -> None:
    from monitor.probe import KILL_GRACE_S, run_probe

    # a "python" that registers, sends its INVITE and then hangs, as pyVoIP can
    fake = tmp_path / "hanging-python"
    lines = [_sip_ev(1.0, "out", "REGISTER sip:pbx SIP/2.0", "REGISTER"),
             _sip_ev(2.0, "in", "SIP/2.0 200 OK", "REGISTER", 200), {"ev": "registered", "t": 2.1, "ok": True},
             _sip_ev(3.0, "out", "INVITE sip:95500@pbx SIP/2.0", "INVITE")]
    fake.write_text("#!/bin/sh\ncat > /dev/null &\n" + "".join(f"echo '{json.dumps(e)}'\n" for e in lines)
                    + "exec sleep 30\n")
    fake.chmod(0o755)

    async def main() -> tuple[Any, float, int]:
        loop = asyncio.get_running_loop()
        ticks = 0

        async def ticker() -> None:  # the event loop stays free while the probe runs
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        t = asyncio.create_task(ticker())
        t0 = loop.time()
        res = await run_probe(_spec(timeout_s=0.3), python=str(fake))
        elapsed = loop.time() - t0
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t
        return res, elapsed, ticks

    res, elapsed, ticks = asyncio.run(main())
    assert res.killed is True
    assert res.outcome == "no_response"  # how far it got: registered, INVITE sent, nothing back
    assert res.registered is True
    assert 0.3 + KILL_GRACE_S <= elapsed < 0.3 + KILL_GRACE_S + 1.0
    assert ticks >= 30


def test_no_password_means_not_configured_without_starting_a_worker() -> None:
    from monitor.probe import run_probe

    res = asyncio.run(run_probe(_spec(password=""), python="/nonexistent"))
    assert res.outcome == "not_configured"
    assert res.reason()["en"] == "the probe is not configured (no password for its account)"


if __name__ == "__main__":
    scenario_arg = sys.argv[1]
    outcome = rig_main(scenario_arg, in_namespace="--no-namespace" not in sys.argv)
    print(json.dumps(outcome, ensure_ascii=False))


def test_only_responses_to_the_invite_are_acknowledged() -> None:
    """Fact 14: under load pyVoIP may hand the BYE's 200 OK to its ACK builder; nothing goes out for it."""
    import io
    import socket

    from monitor.probe import _WireTap, _Worker

    spec = {"timeout_s": 5, "hotline": "hotline", "registrar_host": "127.0.0.1", "registrar_port": 5060,
            "local_ip": "127.0.0.1"}
    worker = _Worker(spec, io.StringIO())
    common = ("Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK1\r\nFrom: <sip:probe@127.0.0.1>;tag=a\r\n"
              "To: <sip:hotline@127.0.0.1>;tag=b\r\nCall-ID: c1\r\n")
    ok_invite = (f"SIP/2.0 200 OK\r\n{common}CSeq: 2 INVITE\r\nContact: <sip:hotline-1@127.0.0.1:5070>\r\n"
                 "Content-Length: 0\r\n\r\n").encode()
    ok_bye = f"SIP/2.0 200 OK\r\n{common}CSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n".encode()
    ack = worker.ack_for(ok_invite)
    assert ack.startswith("ACK sip:hotline-1@127.0.0.1:5070 SIP/2.0\r\n")
    assert "CSeq: 2 ACK" in ack
    assert worker.ack_for(ok_bye) == ""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        tap = _WireTap(s, worker)
        assert tap.sendto(b"", ("127.0.0.1", 9)) == 0  # pyVoIP's send of that empty "ACK": dropped
    assert worker._out.getvalue() == ""  # and not even traced as sent
