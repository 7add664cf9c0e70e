"""The synthetic test call of SYS-LINES: register a SIP account, call the hotline, check audio, hang up.

pyVoIP 1.6.8 does the SIP and RTP, in a **worker process** (``python -m
monitor.probe``) that the daemon starts per probe and kills at a hard deadline
(``timeout_s`` + 2 s): pyVoIP is blocking, its timers are non-daemon threads
and some of its paths block forever, so only a process boundary bounds it.  The
daemon's loop never waits on it except through asyncio pipes.

The worker reports raw observations, one JSON object per line on its own copy
of stdout (pyVoIP's stray prints are moved to stderr): every SIP datagram sent
and received (first line, CSeq, time), milestones, RTP packets counted.  The
parent turns them into a :class:`ProbeResult` (:func:`derive_result`) — the same
code whether the worker finished or was killed mid-way, so a killed probe
still says how far it got.  All timings are ringwatch's own, taken at the
socket: registration (first REGISTER -> 200), post-dial delay (INVITE -> first
180/183), time to answer (INVITE -> 200), first RTP after the answer, BYE -> 200.

pyVoIP's sharp edges (``shared/notes/pyvoip-facts.md``) and what the worker
does about them, in its own code (pyVoIP itself is not patched on disk):

1. ``pyVoIP.VoIP`` is imported before ``pyVoIP.SIP`` (circular import).
2. ``start()`` never raises on a failed registration and retries in timers:
   ``REGISTER_FAILURE_THRESHOLD = 1`` (one failure is final, no retry timer),
   ``register_timeout`` from the config, and the outcome is read from the wire.
3. The receive thread starts 1 s late and polls every 10 ms: the worker starts
   its own receive loop at once, waking on ``select`` (timings to the ms).
4. ``call()`` blocks on the socket, holding a lock, until a 100/180/401 arrives
   (forever after a bare final error): the socket is wrapped, and its blocking
   ``recv`` gives up at the probe's deadline or as soon as a final error for the
   INVITE was seen, so ``call()`` returns by raising.
5. Final responses other than 200/404/503 leave the call DIALING and are never
   ACKed; there is no CANCEL: the worker ACKs every final >= 300 response to
   its INVITE itself, ends the wait on it, and CANCELs a call still ringing at
   its deadline.
6. The ACK for a 200 OK carries a random To-tag (the callee resends its 200 OK
   for 32 s): the ACK is built by ringwatch (the 200's To-tag, a new branch,
   the remote Contact as request URI, the Record-Route as Route).
7. Call-ID and branch counters start equal in every process: randomised per run.
8. The BYE reuses the INVITE's Via branch: a fresh branch is put in.
9. ``read_audio(blocking=True)`` waits forever on a silent line: audio is
   judged from RTP packets counted at the socket, never read blocking.
10. Non-daemon threads and a slow ``stop()``: ``stop()`` (deregistration) runs
    in a daemon thread with a bounded wait, then the worker ends with
    ``os._exit``; the parent kills it at the hard deadline anyway.
11. The stray "TODO: Add 500 Error ..." print: stdout is handed to pyVoIP as
    stderr; the protocol uses a duplicate of the original stdout.
12. pyVoIP imports ``audioop`` (gone in Python 3.13): only the worker imports
    pyVoIP, so the daemon and the tests never do.
14. Under load pyVoIP can take the BYE's 200 OK for the INVITE's and "ACK" it (an ACK to the
    AoR with the BYE's CSeq): only responses to an INVITE are ACKed; pyVoIP's send of the
    empty ACK that ringwatch returns for anything else is dropped at the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:  # the worker process starts faster without pydantic
    from config.schema import ProbeConfig

log = logging.getLogger(__name__)

#: the parent kills the worker this long after the probe's own timeout
KILL_GRACE_S: Final = 2.0
MAX_TRACE: Final = 60
_STDERR_TAIL: Final = 4000
_ROOT: Final = Path(__file__).resolve().parents[1]  # so that the worker finds ``monitor`` without an install

Outcome = Literal["ok", "not_configured", "register_timeout", "register_rejected", "no_response", "not_found",
                  "busy", "unavailable", "rejected", "no_answer", "no_audio", "timeout", "error"]

_REASONS: Final[dict[str, tuple[str, str]]] = {
    "ok": ("测试呼叫正常:已注册、已接通、有语音、已挂机", "test call fine: registered, answered, audio, hung up"),
    "not_configured": ("拨测未配置(缺少账号密码)", "the probe is not configured (no password for its account)"),
    "register_timeout": ("注册服务器无响应", "the registrar did not answer the REGISTER"),
    "register_rejected": ("注册被拒绝(账号或密码错误?)", "the registration was refused (account or password?)"),
    "no_response": ("呼叫无任何响应", "the call got no response at all"),
    "not_found": ("热线号码不存在或未注册", "the hotline number was not found (not registered?)"),
    "busy": ("热线忙", "the hotline is busy"),
    "unavailable": ("热线暂时不可用", "the hotline is unavailable"),
    "rejected": ("呼叫被拒绝", "the call was refused"),
    "no_answer": ("热线在时限内未接听", "the hotline did not answer in time"),
    "no_audio": ("已接通但没有收到语音(RTP)", "answered, but no audio (RTP) arrived"),
    "timeout": ("拨测进程超时被终止", "the probe worker ran past its hard deadline and was killed"),
    "error": ("拨测进程出错", "the probe worker failed"),
}


# -- what the worker is told ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    registrar_host: str
    registrar_port: int
    local_ip: str
    username: str
    password: str = field(repr=False)  # sent to the worker on its stdin only; never logged
    hotline: str
    timeout_s: float = 20.0
    register_timeout_s: float = 3.0
    listen_s: float = 2.0
    min_rtp_packets: int = 10

    @classmethod
    def from_config(cls, cfg: ProbeConfig) -> ProbeSpec:
        return cls(cfg.registrar_host, cfg.registrar_port, cfg.local_ip, cfg.username, cfg.password(), cfg.hotline,
                   cfg.timeout_s, cfg.register_timeout_s, cfg.listen_s, cfg.min_rtp_packets)

    def to_json(self) -> dict[str, Any]:
        return {"registrar_host": self.registrar_host, "registrar_port": self.registrar_port,
                "local_ip": self.local_ip, "username": self.username, "password": self.password,
                "hotline": self.hotline, "timeout_s": self.timeout_s, "register_timeout_s": self.register_timeout_s,
                "listen_s": self.listen_s, "min_rtp_packets": self.min_rtp_packets}


# -- the result ---------------------------------------------------------------------------


@dataclass(slots=True)
class ProbeResult:
    outcome: Outcome
    detail: str = ""  # e.g. the final SIP status line
    started_wall: float = 0.0
    duration_s: float = 0.0
    registered: bool = False
    register_ms: float | None = None
    post_dial_delay_ms: float | None = None  # INVITE -> first 180/183
    answer_ms: float | None = None  # INVITE -> 200 OK
    answered: bool = False
    final_status: int | None = None
    rtp_packets: int = 0
    rtp_voiced: int = 0  # packets carrying sound (not silence)
    first_rtp_ms: float | None = None  # after the 200 OK
    audio: bool = False
    hangup: Literal["confirmed", "unconfirmed", "none"] = "none"
    hangup_ms: float | None = None  # BYE -> 200 OK
    cancelled: bool = False
    ok_retransmissions: int = 0  # 200 OKs for the INVITE received beyond the first (an unmatched ACK)
    killed: bool = False
    trace: list[list[Any]] = field(default_factory=list)  # [t ms, "in"|"out", SIP first line]

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def reason(self) -> dict[str, str]:
        zh, en = _REASONS[self.outcome]
        if self.detail:
            zh, en = f"{zh}({self.detail})", f"{en} ({self.detail})"
        return {"zh": zh, "en": en}

    def to_json(self, tz: dt.tzinfo | None = None) -> dict[str, Any]:
        started = dt.datetime.fromtimestamp(self.started_wall, tz).isoformat(timespec="seconds") \
            if self.started_wall else None
        return {
            "ok": self.ok, "outcome": self.outcome, "reason": self.reason(), "started": started,
            "started_wall": round(self.started_wall, 3), "duration_s": round(self.duration_s, 3),
            "registered": self.registered, "register_ms": self.register_ms,
            "post_dial_delay_ms": self.post_dial_delay_ms, "answer_ms": self.answer_ms, "answered": self.answered,
            "final_status": self.final_status, "rtp_packets": self.rtp_packets, "rtp_voiced": self.rtp_voiced,
            "first_rtp_ms": self.first_rtp_ms, "audio": self.audio, "hangup": self.hangup,
            "hangup_ms": self.hangup_ms, "cancelled": self.cancelled, "ok_retransmissions": self.ok_retransmissions,
            "killed": self.killed, "trace": self.trace,
        }


def _ms(x: float) -> float:
    return round(x, 3)


def _outcome_of(code: int) -> Outcome:
    if code in (404, 484, 604):
        return "not_found"
    if code in (486, 600):
        return "busy"
    if code in (408, 480, 503):
        return "unavailable"
    return "rejected"


def derive_result(events: list[dict[str, Any]], spec: ProbeSpec, *, killed: bool = False,
                  exit_code: int | None = 0) -> ProbeResult:
    """The probe's result from the worker's observations (complete or cut short by the kill)."""
    res = ProbeResult("error", killed=killed)
    sip = [e for e in events if e.get("ev") == "sip"]
    res.trace = [[e["t"], e["dir"], e["line"]] for e in sip[:MAX_TRACE]]
    registered_at = next((e["t"] for e in events if e.get("ev") == "registered"), None)
    reg_done = next((e for e in events if e.get("ev") == "registered"), None)
    # registration: the REGISTERs before the "registered" milestone (later ones are the deregistration)
    regs = [e for e in sip if e.get("method") == "REGISTER" and (registered_at is None or e["t"] <= registered_at)]
    reg_out = [e for e in regs if e["dir"] == "out"]
    reg_in = [e for e in regs if e["dir"] == "in" and e.get("code")]
    ok_reg = next((e for e in reg_in if e["code"] == 200), None)
    if ok_reg is not None and reg_out:
        res.registered = True
        res.register_ms = _ms(ok_reg["t"] - reg_out[0]["t"])
    invites_out = [e for e in sip if e["dir"] == "out" and e.get("request") == "INVITE"]
    inv_in = [e for e in sip if e["dir"] == "in" and e.get("method") == "INVITE" and e.get("code")]
    t_inv = invites_out[0]["t"] if invites_out else None
    if t_inv is not None:
        ringing = next((e for e in inv_in if e["code"] in (180, 183)), None)
        if ringing is not None:
            res.post_dial_delay_ms = _ms(ringing["t"] - t_inv)
        oks = [e for e in inv_in if e["code"] == 200]
        if oks:
            res.answered = True
            res.answer_ms = _ms(oks[0]["t"] - t_inv)
            res.ok_retransmissions = len(oks) - 1
            res.final_status = 200
        cancelled = any(e["dir"] == "out" and e.get("request") == "CANCEL" for e in sip)
        # a 487 after our own CANCEL is the end of a call nobody answered, not a refusal
        finals = [e for e in inv_in if e["code"] >= 300 and e["code"] not in (401, 407)
                  and not (cancelled and e["code"] == 487)]
        if finals and not oks:
            res.final_status = finals[0]["code"]
            res.detail = finals[0]["line"].removeprefix("SIP/2.0 ")
    res.cancelled = any(e["dir"] == "out" and e.get("request") == "CANCEL" for e in sip)
    rtp = next((e for e in reversed(events) if e.get("ev") == "rtp"), None)
    if rtp is not None:
        res.rtp_packets = int(rtp.get("packets", 0))
        res.rtp_voiced = int(rtp.get("voiced", 0))
        first = rtp.get("first_t")
        ok_t = res.answer_ms + t_inv if res.answer_ms is not None and t_inv is not None else None
        if first is not None and ok_t is not None:
            res.first_rtp_ms = _ms(max(first - ok_t, 0.0))
    res.audio = res.rtp_packets >= spec.min_rtp_packets and res.rtp_voiced > 0
    byes = [e for e in sip if e["dir"] == "out" and e.get("request") == "BYE"]
    if byes:
        bye_ok = next((e for e in sip if e["dir"] == "in" and e.get("method") == "BYE" and e.get("code") == 200), None)
        res.hangup = "confirmed" if bye_ok is not None else "unconfirmed"
        if bye_ok is not None:
            res.hangup_ms = _ms(bye_ok["t"] - byes[0]["t"])
    errors = [e for e in events if e.get("ev") == "error"]
    # the outcome, from the furthest stage reached
    if any(e.get("ev") == "not_configured" for e in events):
        res.outcome = "not_configured"
    elif not res.registered:
        rejected = next((e for e in reg_in if e["code"] >= 300 and e["code"] != 401), None)
        challenged = sum(1 for e in reg_in if e["code"] == 401)
        if rejected is not None or challenged >= 2 or (reg_done is not None and reg_in):
            res.outcome = "register_rejected"
            last = rejected or reg_in[-1]
            res.detail = last["line"].removeprefix("SIP/2.0 ")
        elif reg_out:
            res.outcome = "register_timeout"
            res.detail = f"{spec.registrar_host}:{spec.registrar_port}"
        else:
            res.outcome = "timeout" if killed else "error"
    elif res.answered:
        res.outcome = "ok" if res.audio else "no_audio"
        if not res.audio:
            res.detail = f"{res.rtp_packets} RTP packets, {res.rtp_voiced} with sound"
    elif res.final_status is not None:
        res.outcome = _outcome_of(res.final_status)
    elif t_inv is not None and inv_in:
        res.outcome = "no_answer"
        res.detail = "last: " + inv_in[-1]["line"].removeprefix("SIP/2.0 ")
    elif t_inv is not None:
        res.outcome = "no_response"
    else:
        res.outcome = "timeout" if killed else "error"
    if res.outcome in ("timeout", "error") and not res.detail:
        if errors:
            res.detail = str(errors[-1].get("error", ""))[:200]
        elif exit_code:
            res.detail = f"worker exit code {exit_code}"
    return res


# -- the parent side ------------------------------------------------------------------------


async def run_probe(spec: ProbeSpec, *, now_wall: Callable[[], float] = time.time,
                    python: str = sys.executable) -> ProbeResult:
    """Run one probe in a fresh worker process; never longer than ``timeout_s`` + 2 s."""
    started = now_wall()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    if not spec.password:
        res = derive_result([{"ev": "not_configured"}], spec)
        res.started_wall = started
        return res
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGWATCH_")}  # no secrets it does not need
    root = str(_ROOT)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    proc = await asyncio.create_subprocess_exec(
        python, "-m", "monitor.probe", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True, env=env,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    events: list[dict[str, Any]] = []
    stderr_tail = bytearray()

    async def read_stdout(stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if isinstance(obj, dict):
                events.append(obj)

    async def read_stderr(stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(4096):
            stderr_tail.extend(chunk)
            del stderr_tail[:-_STDERR_TAIL]

    readers = [asyncio.create_task(read_stdout(proc.stdout), name="probe-stdout"),
               asyncio.create_task(read_stderr(proc.stderr), name="probe-stderr")]
    killed = False
    try:
        proc.stdin.write((json.dumps(spec.to_json()) + "\n").encode())
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        proc.stdin.close()
        try:
            async with asyncio.timeout(spec.timeout_s + KILL_GRACE_S):
                await asyncio.gather(*readers)
                await proc.wait()
        except TimeoutError:
            killed = True
            log.warning("probe: worker pid %d ran past %.1f s; killing it", proc.pid, spec.timeout_s + KILL_GRACE_S)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    res = derive_result(events, spec, killed=killed, exit_code=proc.returncode)
    res.started_wall = started
    res.duration_s = loop.time() - t0
    if res.outcome == "error":
        log.warning("probe: worker failed (exit %s): %s", proc.returncode,
                    stderr_tail.decode("utf-8", "replace")[-500:].strip())
    log.info("probe.done outcome=%s detail=%s register_ms=%s pdd_ms=%s answer_ms=%s rtp=%d duration=%.3fs",
             res.outcome, res.detail, res.register_ms, res.post_dial_delay_ms, res.answer_ms, res.rtp_packets,
             res.duration_s)
    return res


class ProbeRunner:
    """One probe at a time (a second request waits for the running one), the last result kept.

    ``probe`` defaults to :func:`run_probe` (tests inject a fake); the spec is built from the
    configuration at each run, so a password changed in its file is picked up."""

    def __init__(self, cfg: ProbeConfig, probe: Callable[[ProbeSpec], Any] | None = None) -> None:
        self.cfg = cfg
        self._probe = probe or run_probe
        self._lock = asyncio.Lock()
        self.last: ProbeResult | None = None
        self.runs = 0
        self.by_outcome: dict[str, int] = {}

    @property
    def running(self) -> bool:
        return self._lock.locked()

    async def run(self) -> ProbeResult:
        async with self._lock:
            result: ProbeResult = await self._probe(ProbeSpec.from_config(self.cfg))
            self.last = result
            self.runs += 1
            self.by_outcome[result.outcome] = self.by_outcome.get(result.outcome, 0) + 1
            return result


# -- the worker (runs in its own process; the only code that imports pyVoIP) -----------------


def _headers(data: bytes) -> tuple[str, dict[str, list[str]]]:
    text = data.decode("utf-8", "replace")
    head = text.split("\r\n\r\n", 1)[0]
    lines = head.split("\r\n")
    hdrs: dict[str, list[str]] = {}
    compact = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length"}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            hdrs.setdefault(compact.get(key, key), []).append(value.strip())
    return lines[0], hdrs


def _summary(data: bytes, direction: str) -> dict[str, Any]:
    first, hdrs = _headers(data)
    cseq = (hdrs.get("cseq") or [""])[0].split()
    out: dict[str, Any] = {"ev": "sip", "dir": direction, "line": first[:120],
                           "method": cseq[1] if len(cseq) > 1 else None,
                           "call_id": (hdrs.get("call-id") or [""])[0]}
    if first.startswith("SIP/2.0 "):
        try:
            out["code"] = int(first.split()[1])
        except (IndexError, ValueError):
            out["code"] = None
    else:
        out["request"] = first.split(" ", 1)[0]
    return out


def _uri(value: str) -> str:
    """The URI of a name-addr (``"x" <sip:a@b>;tag=1`` -> ``sip:a@b``)."""
    if "<" in value and ">" in value:
        return value[value.index("<") + 1:value.index(">")]
    return value.split(";", 1)[0].strip()


def _branch() -> str:
    return "z9hG4bK" + secrets.token_hex(12)


class _Worker:
    """One probe: pyVoIP driven with the workarounds of the module docstring."""

    def __init__(self, spec: dict[str, Any], out: Any) -> None:
        self.spec = spec
        self._out = out
        self._lock = threading.Lock()
        self.t0 = time.monotonic()
        self.deadline = self.t0 + float(spec["timeout_s"])
        self.call_id: str | None = None  # our INVITE's
        self.invite_raw: bytes | None = None
        self.final_failure: int | None = None  # a final >= 300 to our INVITE (not 401/407)
        self.abort = threading.Event()  # stop a blocking recv (our INVITE failed)
        self.route: list[str] = []  # route set from the 200 OK's Record-Route (reversed)
        self.bye_ok = threading.Event()
        self.rtp_packets = 0
        self.rtp_voiced = 0
        self.rtp_first: float | None = None
        self.sock: socket.socket | None = None

    # -- reporting -------------------------------------------------------------------

    def t(self) -> float:
        return round((time.monotonic() - self.t0) * 1000, 3)

    def emit(self, ev: str, **kw: Any) -> None:
        line = json.dumps({"ev": ev, "t": self.t(), **kw})
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()

    # -- the wire ----------------------------------------------------------------------

    def on_send(self, data: bytes) -> None:
        info = _summary(data, "out")
        info["t"] = self.t()
        if info.get("request") == "INVITE" and self.call_id is None:
            self.call_id = info["call_id"]
        if info.get("request") == "INVITE" and info["call_id"] == self.call_id:
            self.invite_raw = data
        self.emit_obj(info)

    def on_recv(self, data: bytes) -> None:
        info = _summary(data, "in")
        info["t"] = self.t()
        self.emit_obj(info)
        code = info.get("code")
        if code is None or info["call_id"] != self.call_id:
            return
        if info["method"] == "INVITE":
            if code >= 300 and code not in (401, 407):
                self.final_failure = code
                self.abort.set()
                self.send_ack(data)  # pyVoIP ACKs only 404/503, and those not always (fact 5)
            elif 200 <= code < 300:
                _, hdrs = _headers(data)
                self.route = list(reversed(hdrs.get("record-route", [])))
        elif info["method"] == "BYE" and code == 200:
            self.bye_ok.set()

    def emit_obj(self, obj: dict[str, Any]) -> None:
        with self._lock:
            self._out.write(json.dumps(obj) + "\n")
            self._out.flush()

    def send(self, text: str) -> None:
        if self.sock is None:
            return
        data = text.encode()
        self.on_send(data)
        with contextlib.suppress(OSError):
            self.sock.sendto(data, (self.spec["registrar_host"], int(self.spec["registrar_port"])))

    def ack_for(self, response: bytes) -> str:
        """An ACK: for a 2xx a new transaction to the remote target (fact 6); else the INVITE's own."""
        first, hdrs = _headers(response)
        code = int(first.split()[1])
        cseq_parts = (hdrs.get("cseq") or ["1 INVITE"])[0].split()
        if cseq_parts[1:2] != ["INVITE"]:
            return ""  # fact 14: not a response to our INVITE (the BYE's 200): nothing to acknowledge
        cseq = cseq_parts[0]
        frm, to, call_id = hdrs["from"][0], hdrs["to"][0], hdrs["call-id"][0]
        if 200 <= code < 300:
            target = _uri((hdrs.get("contact") or [f"<sip:{self.spec['hotline']}@{self.spec['registrar_host']}>"])[0])
            via = f"SIP/2.0/UDP {self.spec['local_ip']}:{self.port};branch={_branch()};rport"
            routes = "".join(f"Route: {r}\r\n" for r in self.route)
        else:
            target = f"sip:{self.spec['hotline']}@{self.spec['registrar_host']}"
            via = hdrs["via"][0]
            routes = ""
        return (f"ACK {target} SIP/2.0\r\nVia: {via}\r\n{routes}Max-Forwards: 70\r\nFrom: {frm}\r\nTo: {to}\r\n"
                f"Call-ID: {call_id}\r\nCSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n")

    def send_ack(self, response: bytes) -> None:
        ack = self.ack_for(response)
        if ack:
            self.send(ack)

    def send_cancel(self) -> None:
        """pyVoIP has no CANCEL (fact 5): the INVITE's request line, Via, From, To, Call-ID, CSeq number."""
        if self.invite_raw is None:
            return
        first, hdrs = _headers(self.invite_raw)
        uri = first.split()[1]
        cseq = (hdrs.get("cseq") or ["1 INVITE"])[0].split()[0]
        self.send(f"CANCEL {uri} SIP/2.0\r\nVia: {hdrs['via'][0]}\r\nMax-Forwards: 70\r\nFrom: {hdrs['from'][0]}\r\n"
                  f"To: {hdrs['to'][0]}\r\nCall-ID: {hdrs['call-id'][0]}\r\nCSeq: {cseq} CANCEL\r\n"
                  "Content-Length: 0\r\n\r\n")

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1]) if self.sock is not None else 0

    # -- the probe -----------------------------------------------------------------------

    def run(self) -> None:
        import importlib

        voip: Any = importlib.import_module("pyVoIP.VoIP")  # fact 1: VoIP before SIP
        sipmod: Any = importlib.import_module("pyVoIP.SIP")
        rtpmod: Any = importlib.import_module("pyVoIP.RTP")
        pyvoip: Any = importlib.import_module("pyVoIP")
        util: Any = importlib.import_module("pyVoIP.util")
        audioop: Any = importlib.import_module("audioop")
        spec = self.spec
        pyvoip.REGISTER_FAILURE_THRESHOLD = 1  # fact 2: one failure is final, no retry timers

        worker = self
        original_parse = rtpmod.RTPClient.parse_packet

        def counting_parse(client: Any, packet: bytes) -> Any:  # fact 9: audio judged at the socket
            if worker.rtp_first is None:
                worker.rtp_first = time.monotonic()
            worker.rtp_packets += 1
            payload = packet[12:]
            if payload and (packet[1] & 0x7F) in (0, 8):
                lin = audioop.ulaw2lin(payload, 2) if packet[1] & 0x7F == 0 else audioop.alaw2lin(payload, 2)
                if audioop.rms(lin, 2) > 64:
                    worker.rtp_voiced += 1
            return original_parse(client, packet)

        rtpmod.RTPClient.parse_packet = counting_parse
        rtp_port = _free_udp_port(spec["local_ip"])
        phone = voip.VoIPPhone(spec["registrar_host"], int(spec["registrar_port"]), spec["username"],
                               spec["password"], myIP=spec["local_ip"], sipPort=0,
                               rtpPortLow=rtp_port, rtpPortHigh=rtp_port)
        sip = phone.sip
        sip.register_timeout = float(spec["register_timeout_s"])
        sip.callID = sipmod.Counter(secrets.randbelow(2**40) + 1)  # fact 7
        sip.sessID = sipmod.Counter(secrets.randbelow(2**20) + 1)
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw.bind((spec["local_ip"], 0))
        self.sock = raw
        tap = _WireTap(raw, self)

        def receive_loop() -> None:  # fact 3: at once, woken by select
            import select

            while sip.NSD:
                try:
                    ready, _, _ = select.select([raw], [], [], 0.05)
                except (OSError, ValueError):
                    return
                if not ready:
                    continue
                try:
                    with util.acquired_lock_and_unblocked_socket(sip.recvLock, tap):
                        sip.recv()
                except BlockingIOError:
                    continue
                except OSError:
                    return

        def start() -> None:
            sip.NSD = True
            sip.myPort = self.port
            sip.s = sip.out = tap
            sip.register()
            if not sip.NSD:  # the registration failed: pyVoIP stopped and closed the socket
                return
            tap.setblocking(True)
            threading.Thread(target=receive_loop, name="probe-sip-recv", daemon=True).start()

        sip.start = start
        original_bye = sip.gen_bye

        def gen_bye(request: Any) -> str:  # fact 8: a fresh branch; the route set as Route
            text: str = original_bye(request)
            head, sep, rest = text.partition("\r\n")
            lines = rest.split("\r\n")
            for i, line in enumerate(lines):
                if line.startswith("Via:") and "branch=" in line:
                    lines[i] = line.split("branch=")[0] + "branch=" + _branch() + ";rport"
                    break
            routes = [f"Route: {r}" for r in self.route]
            return head + sep + "\r\n".join(lines[:1] + routes + lines[1:])

        sip.gen_bye = gen_bye
        sip.gen_ack = lambda response: self.ack_for(bytes(response.raw))  # fact 6

        self.emit("register_start")
        try:
            phone.start()
        except Exception as e:
            self.emit("error", where="register", error=f"{type(e).__name__}: {e}")
        status = str(phone.get_status())
        self.emit("registered", ok=status.endswith("REGISTERED"), status=status)
        if not status.endswith("REGISTERED"):
            return self.stop(phone)
        reserve = float(spec["listen_s"]) + 1.5
        answer_by = max(self.deadline - reserve, time.monotonic() + 0.5)
        tap.deadline = answer_by
        call = None
        try:
            call = phone.call(spec["hotline"])
        except Exception as e:
            self.emit("error", where="call", error=f"{type(e).__name__}: {e}")
        answered = voip.CallState.ANSWERED
        while call is not None and call.state != answered and self.final_failure is None \
                and time.monotonic() < answer_by:
            time.sleep(0.002)
        if call is not None and call.state == answered:
            self.emit("answered")
            listen_until = time.monotonic() + float(spec["listen_s"])
            while time.monotonic() < min(listen_until, self.deadline - 1.0):
                time.sleep(0.01)
            self.emit("rtp", packets=self.rtp_packets, voiced=self.rtp_voiced,
                      first_t=None if self.rtp_first is None else round((self.rtp_first - self.t0) * 1000, 3))
            try:
                call.hangup()
            except Exception as e:
                self.emit("error", where="hangup", error=f"{type(e).__name__}: {e}")
            self.bye_ok.wait(timeout=max(min(1.0, self.deadline - time.monotonic()), 0.0))
        elif self.final_failure is None and self.invite_raw is not None:
            self.send_cancel()  # still ringing (or trying): stop it
            self.abort.wait(timeout=max(min(0.5, self.deadline - time.monotonic()), 0.0))  # the 487, ACKed
        return self.stop(phone)

    def stop(self, phone: Any) -> None:
        """Deregister and close, bounded (fact 10): the process ends right after anyway."""
        stopper = threading.Thread(target=_quiet(phone.stop), name="probe-stop", daemon=True)
        stopper.start()
        stopper.join(timeout=max(min(1.5, self.deadline - time.monotonic()), 0.1))
        self.emit("stopped", clean=not stopper.is_alive())


def _quiet(fn: Callable[[], Any]) -> Callable[[], None]:
    def run() -> None:
        with contextlib.suppress(Exception):
            fn()
    return run


class _WireTap:
    """The SIP socket as pyVoIP sees it: every datagram observed; a blocking ``recv`` bounded (fact 4)."""

    def __init__(self, sock: socket.socket, worker: _Worker) -> None:
        self._s = sock
        self._w = worker
        self._blocking = True
        self.deadline = worker.deadline

    def fileno(self) -> int:
        return self._s.fileno()

    def setblocking(self, flag: bool) -> None:
        self._blocking = flag
        self._s.setblocking(flag)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        if not data:
            return 0  # fact 14: the "ACK" pyVoIP would send for a response that is not to the INVITE
        self._w.on_send(data)
        return self._s.sendto(data, addr)

    def recv(self, n: int) -> bytes:
        if self._blocking:
            import select

            while True:
                if self._w.abort.is_set():
                    raise ConnectionAbortedError(f"the INVITE failed with {self._w.final_failure}")
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no answer to the INVITE before the probe's deadline")
                ready, _, _ = select.select([self._s], [], [], min(remaining, 0.05))
                if ready:
                    break
        data = self._s.recv(n)
        self._w.on_recv(data)
        return data

    def close(self) -> None:
        self._s.close()


def _free_udp_port(ip: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def worker_main() -> int:
    """``python -m monitor.probe``: one probe, spec (JSON) on stdin, observations (JSON lines) on stdout."""
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # fact 11: pyVoIP prints to stdout; ours is the duplicate
    w: _Worker | None = None
    try:
        spec = json.loads(sys.stdin.readline())
        w = _Worker(spec, out)
        w.run()
    except BaseException as e:
        (w or _Worker({"timeout_s": 0}, out)).emit("error", where="worker", error=f"{type(e).__name__}: {e}")
    finally:
        with contextlib.suppress(Exception):
            (w or _Worker({"timeout_s": 0}, out)).emit("done")
            out.flush()
        os._exit(0)  # fact 10: pyVoIP's non-daemon timers die with the process


if __name__ == "__main__":  # pragma: no cover - the worker process
    worker_main()
