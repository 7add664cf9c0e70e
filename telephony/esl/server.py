"""Loopback ESL servers that speak FreeSWITCH's event socket over TCP (bind port 0), for tests and replay.

* :class:`ScriptedEslServer` -- a small scripted FreeSWITCH for tests: ``auth/request``,
  ``auth`` (``-ERR invalid`` and a close on a wrong password, ``text/rude-rejection``
  when its ACL says no), ``event plain ...`` (events are sent only as subscribed),
  ``api``/``bgapi`` answered from a :class:`FsStateModel` snapshot or fixed texts,
  ``HEARTBEAT`` every ``heartbeat_interval_s``, ``exit``; knobs to push events,
  drop links, refuse connections and stop the heartbeats.
* :class:`TraceEslServer` -- serves a recorded trace at recorded pace divided by
  ``speed``; the client's own commands are answered as FreeSWITCH would at that moment
  (snapshots from the state the events played so far describe, or the recorded reply
  to the same command when the recorder asked for it later on).

Both behave as recorded in ``tests/fixtures/esl/README.md`` (FreeSWITCH 1.10.12): no
banner, ``auth/request`` first, replies strictly in command order, ``+OK bye`` then a
``text/disconnect-notice`` on ``exit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid as uuidlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from config.schema import EslConfig
from telephony.esl.client import EslClient
from telephony.esl.codec import EVENT_PLAIN, EslEvent, encode_event, encode_frame, parse_event_headers
from telephony.esl.trace import EslTraceItem, frame_bytes, read_esl_trace
from telephony.esl.tracker import CC_SUBCLASS, FsChannelRules, FsTracker
from telephony.events import DomainEvent
from telephony.loopback import LoopbackServer, LoopbackSession

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
_DRAIN_ABOVE = 64 * 1024
DISCONNECT_TEXT = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"

Pairs = Sequence[tuple[str, str]]


def reply_frame(text: str, *more: tuple[str, str]) -> bytes:
    return encode_frame([("Content-Type", "command/reply"), ("Reply-Text", text), *more])


def api_frame(body: str) -> bytes:
    return encode_frame([("Content-Type", "api/response")], body)


AUTH_REQUEST = encode_frame([("Content-Type", "auth/request")])
DISCONNECT_NOTICE = encode_frame([("Content-Type", "text/disconnect-notice")], DISCONNECT_TEXT)
RUDE_REJECTION = encode_frame([("Content-Type", "text/rude-rejection")], "Access Denied, go away.\n")


def heartbeat(epoch_s: float, seq: int) -> bytes:
    return encode_event([("Event-Name", "HEARTBEAT"), ("Event-Date-Timestamp", str(int(epoch_s * 1e6))),
                         ("Event-Sequence", str(seq)), ("Event-Info", "System Ready"), ("Session-Count", "0")])


def split_commands(buf: bytearray) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """Complete commands in ``buf`` (removed from it): the command line and its header lines."""
    while True:
        end = buf.find(b"\n\n")
        if end < 0:
            return
        block = bytes(buf[:end]).decode("utf-8", "replace")
        del buf[: end + 2]
        lines = block.strip("\n").split("\n")
        if not lines or not lines[0]:
            continue
        headers = [(k, v) for k, _, v in (line.partition(": ") for line in lines[1:]) if k]
        yield lines[0].strip(), headers


# -- FreeSWITCH state, as events describe it -------------------------------------------------

_MEMBER_COLS = ("queue|instance_id|uuid|session_uuid|cid_number|cid_name|system_epoch|joined_epoch|rejoined_epoch|"
                "bridge_epoch|abandoned_epoch|base_score|skill_score|serving_agent|serving_system|state|score")
_AGENT_COLS = ("name|instance_id|uuid|type|contact|status|state|max_no_answer|wrap_up_time|reject_delay_time|"
               "busy_delay_time|no_answer_delay_time|last_bridge_start|last_bridge_end|last_offered_call|"
               "last_status_change|no_answer_count|calls_answered|talk_time|ready_time|external_calls_count")
_QUEUE_COLS = ("name|strategy|moh_sound|time_base_score|tier_rules_apply|tier_rule_wait_second|"
               "tier_rule_wait_multiply_level|tier_rule_no_agent_no_wait|discard_abandoned_after|"
               "abandoned_resume_allowed|max_wait_time|max_wait_time_with_no_agent|"
               "max_wait_time_with_no_agent_time_reached|record_template")
_TIER_COLS = "queue|agent|state|level|position"


def _table(cols: str, rows: Iterable[Mapping[str, str]]) -> str:
    names = cols.split("|")
    lines = ["|".join(str(r.get(n, "")) for n in names) for r in rows]
    if not lines:
        return "+OK\n"
    return "\n".join([cols, *lines, "+OK"]) + "\n"


class FsStateModel:
    """What ``show channels``, ``show calls`` and ``callcenter_config ... list`` would answer,
    kept from the events FreeSWITCH sent (every event, subscribed or not)."""

    def __init__(self) -> None:
        self.channels: dict[str, dict[str, str]] = {}
        self.bridges: dict[str, str] = {}
        self.members: dict[str, dict[str, str]] = {}
        self.agents: dict[str, dict[str, str]] = {}
        self.tiers: dict[tuple[str, str], dict[str, str]] = {}
        self.queues: set[str] = set()
        self.epoch: float = 0.0  # of the last event applied

    def apply(self, ev: EslEvent) -> None:
        ts = ev.get("Event-Date-Timestamp")
        if ts and ts.isdigit():
            self.epoch = int(ts) / 1e6
        name = ev.name
        uid = ev.get("Unique-ID") or ""
        if name == "CUSTOM":
            if ev.subclass == CC_SUBCLASS:
                self._cc(ev)
            return
        if not name.startswith("CHANNEL_") or not uid:
            return
        if name == "CHANNEL_CREATE":
            created = ev.get("Caller-Channel-Created-Time") or ""
            epoch = int(created) // 1_000_000 if created.isdigit() and int(created) else int(self.epoch)
            self.channels[uid] = {
                "uuid": uid, "direction": ev.get("Call-Direction") or "", "created_epoch": str(epoch),
                "name": ev.get("Channel-Name") or "", "state": ev.get("Channel-State") or "",
                "cid_name": ev.get("Caller-Caller-ID-Name") or "", "cid_num": ev.get("Caller-Caller-ID-Number") or "",
                "dest": ev.get("Caller-Destination-Number") or "", "callstate": ev.get("Channel-Call-State") or "",
                "call_uuid": ev.get("Channel-Call-UUID") or "", "context": ev.get("Caller-Context") or "",
            }
        elif name == "CHANNEL_DESTROY":
            self.channels.pop(uid, None)
            other = self.bridges.pop(uid, None)
            if other is not None and self.bridges.get(other) == uid:
                del self.bridges[other]
            return
        row = self.channels.get(uid)
        if row is None:
            return
        for key, header in (("callstate", "Channel-Call-State"), ("state", "Channel-State"),
                            ("application", "Application")):
            value = ev.get(header)
            if value:
                row[key] = value
        other = ev.get("Other-Leg-Unique-ID") or ""
        if name == "CHANNEL_BRIDGE" and other:
            self.bridges[uid] = other
            self.bridges[other] = uid
        elif name == "CHANNEL_UNBRIDGE":
            peer = self.bridges.pop(uid, None)
            if peer is not None and self.bridges.get(peer) == uid:
                del self.bridges[peer]

    def _agent(self, name: str) -> dict[str, str]:
        row = self.agents.get(name)
        if row is None:
            row = self.agents[name] = {"name": name, "instance_id": "single_box", "uuid": "", "type": "callback",
                                       "contact": "", "status": "Available", "state": "Waiting",
                                       "last_offered_call": "0", "last_bridge_start": "0", "last_bridge_end": "0"}
        return row

    def _cc(self, ev: EslEvent) -> None:
        action = ev.get("CC-Action") or ""
        member = ev.get("CC-Member-UUID") or ""
        agent = ev.get("CC-Agent") or ""
        now = str(int(self.epoch))
        if action == "member-queue-start":
            queue = ev.get("CC-Queue") or ""
            self.queues.add(queue)
            self.members[member] = {
                "queue": queue, "instance_id": "single_box", "uuid": member,
                "session_uuid": ev.get("CC-Member-Session-UUID") or "",
                "cid_number": ev.get("CC-Member-CID-Number") or "", "cid_name": ev.get("CC-Member-CID-Name") or "",
                "system_epoch": now, "joined_epoch": now, "rejoined_epoch": "0", "bridge_epoch": "0",
                "abandoned_epoch": "0", "base_score": "0", "skill_score": "0", "serving_agent": "",
                "serving_system": "", "state": "Waiting", "score": "0",
            }
        elif action == "member-queue-end":
            self.members.pop(member, None)
        elif action == "agent-offering" and member in self.members:
            self.members[member].update(state="Trying", serving_agent=agent, serving_system="single_box")
            self._agent(agent)["last_offered_call"] = now
            self.tiers.setdefault((ev.get("CC-Queue") or "", agent),
                                  {"queue": ev.get("CC-Queue") or "", "agent": agent, "state": "Ready",
                                   "level": "1", "position": "1"})
        elif action == "bridge-agent-start":
            if member in self.members:
                self.members[member].update(state="Answered", serving_agent=agent, bridge_epoch=now)
            self._agent(agent).update(uuid=ev.get("CC-Agent-UUID") or "", last_bridge_start=now)
        elif action == "bridge-agent-fail":
            row = self.members.get(member)
            if row is not None and row.get("serving_agent") == agent and row.get("state") == "Trying":
                row.update(state="Waiting", serving_agent="", serving_system="")
        elif action == "bridge-agent-end":
            self._agent(agent).update(uuid="", last_bridge_end=now)
        elif action == "agent-state-change" and agent:
            self._agent(agent)["state"] = ev.get("CC-Agent-State") or ""
        elif action == "agent-status-change" and agent:
            self._agent(agent)["status"] = ev.get("CC-Agent-Status") or ""

    def reply(self, command: str, epoch_now: float) -> str | None:
        """The body FreeSWITCH would answer ``api <command>`` with now, or None (not modelled)."""
        cmd = " ".join(command.split())
        if cmd == "strmicroepoch":
            return str(int(epoch_now * 1e6))
        if cmd == "show channels as json":
            rows = list(self.channels.values())
            return json.dumps({"row_count": len(rows), "rows": rows} if rows else {"row_count": 0},
                              ensure_ascii=False)
        if cmd == "show calls as json":
            seen: set[str] = set()
            calls = []
            for a, b in self.bridges.items():
                if a in seen or a not in self.channels or b not in self.channels:
                    continue
                seen.update((a, b))
                ra, rb = self.channels[a], self.channels[b]
                calls.append({**ra, **{f"b_{k}": v for k, v in rb.items()}})
            return json.dumps({"row_count": len(calls), "rows": calls} if calls else {"row_count": 0},
                              ensure_ascii=False)
        if cmd == "callcenter_config queue list":
            return _table(_QUEUE_COLS, ({"name": q, "strategy": "longest-idle-agent"} for q in sorted(self.queues)))
        if cmd.startswith("callcenter_config queue list members "):
            queue = cmd.rsplit(" ", 1)[1]
            return _table(_MEMBER_COLS, (r for r in self.members.values() if r["queue"] == queue))
        if cmd == "callcenter_config agent list":
            return _table(_AGENT_COLS, self.agents.values())
        if cmd == "callcenter_config tier list":
            return _table(_TIER_COLS, self.tiers.values())
        return None


def _event_of(item: EslTraceItem) -> EslEvent | None:
    if item.kind != "frame" or item.content_type != EVENT_PLAIN or item.body is None:
        return None
    head = item.body.split("\n\n", 1)[0]
    return EslEvent(parse_event_headers(head))


# -- the servers ------------------------------------------------------------------------


class _Session(LoopbackSession):
    def __init__(self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(number, reader, writer)
        self.authed = False
        self.events: set[str] = set()  # subscribed event names ("ALL" for everything)
        self.subclasses: set[str] = set()
        self.subscribed = asyncio.Event()

    def wants(self, name: str, subclass: str | None) -> bool:
        if "ALL" in self.events:
            return True
        if name == "CUSTOM":
            return subclass is not None and subclass in self.subclasses
        return name in self.events

    def subscribe(self, command: str) -> None:
        words = command.split()[2:]  # event plain ...
        custom = False
        for w in words:
            if w == "CUSTOM":
                custom = True
            elif custom:
                self.subclasses.add(w)
            else:
                self.events.add(w)
        self.subscribed.set()

    def send(self, data: bytes) -> None:
        self.send_raw(data)


class _EslServerBase(LoopbackServer[_Session]):
    """A loopback event socket: command counters, then the subclass's protocol."""

    kind = "esl"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.commands: Counter[str] = Counter()  # by command, "auth" without its password
        self.received: list[str] = []  # every command in order ("auth" without its password), api/bgapi in full

    def _new_session(self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _Session:
        return _Session(number, reader, writer)

    def _count(self, command: str) -> None:
        text = "auth" if command.startswith("auth ") else command
        self.commands[text] += 1
        self.received.append(text)


class ScriptedEslServer(_EslServerBase):
    """A scripted FreeSWITCH event socket for tests.

    ``model``: the state ``api show ...``/``callcenter_config`` answer from;
    ``responses``: fixed ``api`` answers (checked first); ``answer(command)``: an answer
    computed from the command (``originate ...`` carries fresh uuids), None to fall through;
    ``epoch()`` is the switch's clock (``strmicroepoch``, HEARTBEAT timestamps).  Counters:
    ``connections``, ``logins``, ``failed_logins``, ``commands``, ``received`` (every command in
    order, ``api``/``bgapi`` in full), ``subscriptions``, ``refused``.
    """

    def __init__(
        self,
        *,
        password: str = "ClueCon",
        model: FsStateModel | None = None,
        responses: Mapping[str, str] | None = None,
        answer: Callable[[str], str | None] | None = None,
        heartbeat_interval_s: float | None = None,
        acl_deny: bool = False,
        epoch: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port)
        self.password = password
        self.model = model or FsStateModel()
        self.responses = dict(responses or {})
        self.answer = answer
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heartbeats = True  # switch off to simulate a silent, half-dead link
        self.acl_deny = acl_deny
        self.epoch = epoch
        self.logins = 0
        self.failed_logins = 0
        self.refused = 0
        self.subscriptions: list[str] = []
        self._refuse: int | None = 0
        self._seq = 0

    # -- knobs -------------------------------------------------------------------

    def refuse(self, count: int | None = None) -> None:
        """Close the next ``count`` connections at once, before auth/request (None: until :meth:`allow`)."""
        self._refuse = count

    def allow(self) -> None:
        self._refuse = 0

    async def push(self, pairs: Pairs, body: str | None = None) -> int:
        """Send an event to every session subscribed to it (the model learns it too); returns how many got it."""
        d = dict(pairs)
        self.model.apply(EslEvent(pairs))
        self.changed()  # wait_until() may watch the model
        data = encode_event(pairs, body)
        sent = 0
        for s in list(self._sessions):
            if s.authed and s.wants(d.get("Event-Name", ""), d.get("Event-Subclass")):
                s.send(data)
                with contextlib.suppress(ConnectionError):
                    await s.flush()
                sent += 1
        return sent

    async def push_raw(self, data: bytes) -> int:
        """Send raw bytes to every logged-in session; returns how many got them."""
        sent = 0
        for s in list(self._sessions):
            if s.authed:
                s.send(data)
                with contextlib.suppress(ConnectionError):
                    await s.flush()
                sent += 1
        return sent

    async def drop(self) -> int:
        """Reset every connection (a crashed switch or a cut cable); returns how many."""
        sessions = list(self._sessions)
        for s in sessions:
            await s.end()
        return len(sessions)

    # -- protocol ------------------------------------------------------------------

    async def _serve(self, sess: _Session) -> None:
        if self._refuse is None or self._refuse > 0:
            if self._refuse is not None:
                self._refuse -= 1
            self.refused += 1
            return
        if self.acl_deny:
            sess.send(RUDE_REJECTION)
            await sess.flush()
            return
        sess.send(AUTH_REQUEST)
        beat = asyncio.create_task(self._heartbeats(sess), name="esl-server-heartbeat")
        try:
            buf = bytearray()
            while True:
                data = await sess.reader.read(READ_CHUNK)
                if not data:
                    return
                buf += data
                for command, headers in split_commands(buf):
                    keep = self._command(sess, command, headers)
                    self.changed()
                    if not keep:
                        await sess.flush()
                        return
                await sess.flush()
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)

    async def _heartbeats(self, sess: _Session) -> None:
        if self.heartbeat_interval_s is None:
            return
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            if self.heartbeats and sess.authed and sess.wants("HEARTBEAT", None):
                self._seq += 1
                sess.send(heartbeat(self.epoch(), self._seq))

    def _command(self, sess: _Session, command: str, headers: list[tuple[str, str]]) -> bool:
        self._count(command)
        if command.startswith("auth "):
            if command[5:] == self.password:
                sess.authed = True
                self.logins += 1
                sess.send(reply_frame("+OK accepted"))
                return True
            self.failed_logins += 1
            sess.send(reply_frame("-ERR invalid"))
            sess.send(DISCONNECT_NOTICE)
            return False
        if not sess.authed:
            sess.send(reply_frame("-ERR invalid"))
            return True
        if command.startswith("event "):
            self.subscriptions.append(command)
            sess.subscribe(command)
            sess.send(reply_frame("+OK event listener enabled plain"))
        elif command == "exit":
            sess.send(reply_frame("+OK bye"))
            sess.send(DISCONNECT_NOTICE)
            return False
        elif command.startswith("api "):
            sess.send(api_frame(self._api(command[4:].strip())))
        elif command.startswith("bgapi "):
            job = dict(headers).get("Job-UUID") or str(uuidlib.uuid4())
            sess.send(reply_frame(f"+OK Job-UUID: {job}", ("Job-UUID", job)))
            if sess.wants("BACKGROUND_JOB", None):
                sess.send(encode_event([("Event-Name", "BACKGROUND_JOB"), ("Job-UUID", job),
                                        ("Job-Command", command[6:].split(" ", 1)[0])],
                                       self._api(command[6:].strip())))
        else:
            sess.send(reply_frame("+OK"))
        return True

    def _api(self, command: str) -> str:
        if command in self.responses:
            return self.responses[command]
        if self.answer is not None:
            computed = self.answer(command)
            if computed is not None:
                return computed
        body = self.model.reply(command, self.epoch())
        if body is not None:
            return body
        return f"-ERR {command.split(' ', 1)[0]} Command not found!\n"


# -- trace replay over TCP ------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Segment:
    """One recorded connection: its auth/request, then items up to (and including) its eof."""

    auth: EslTraceItem
    items: list[EslTraceItem] = field(default_factory=list)
    replies: list[tuple[str, int]] = field(default_factory=list)  # (recorded command, index of its api reply)
    claimed: set[int] = field(default_factory=set)
    pos: int = 0  # next item to play (kept across client reconnects)

    @property
    def has_eof(self) -> bool:
        return bool(self.items) and self.items[-1].kind == "eof"


def split_connections(items: Iterable[EslTraceItem]) -> list[_Segment]:
    segments: list[_Segment] = []
    seg: _Segment | None = None
    sent: deque[str] = deque()
    for item in items:
        if item.kind == "frame" and item.content_type == "auth/request":
            seg = _Segment(item)
            segments.append(seg)
            sent.clear()
            continue
        if seg is None:  # a trace picked up mid-stream: serve an auth/request anyway
            seg = _Segment(EslTraceItem(item.t, "frame", (("Content-Type", "auth/request"),)))
            segments.append(seg)
        seg.items.append(item)
        if item.kind == "sent":
            sent.append(item.text)
        elif item.kind == "frame" and item.content_type in ("command/reply", "api/response"):
            command = sent.popleft() if sent else ""
            if item.content_type == "api/response" and command.startswith("api "):
                seg.replies.append((" ".join(command[4:].split()), len(seg.items) - 1))
        elif item.kind == "eof":
            seg = None
    return segments


class TraceEslServer(_EslServerBase):
    """Serves a recorded ESL trace over TCP at recorded pace divided by ``speed``.

    Item ``t`` is sent at ``origin + t / speed`` (loop time; ``origin`` defaults to
    :meth:`start`), never before the client has subscribed.  Each recorded connection
    (``auth/request`` ... ``eof``) is served on one client connection; a connection the
    client drops resumes where it stopped on its next connect.  The client's commands
    are answered in order: ``auth`` (checked against ``password`` when one is set),
    ``event plain ...`` (events are sent as subscribed), ``exit``, and ``api``: the
    recorded reply to the same command when the recorder sent it later on this
    connection (played at its recorded time), else what :class:`FsStateModel` says
    after the events played so far.  Replies to the recorder's own commands are not played.
    """

    def __init__(self, items: Iterable[EslTraceItem], speed: float = 1.0, *, origin: float | None = None,
                 password: str | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        if speed <= 0:
            raise ValueError("trace speed must be > 0")
        self.speed = speed
        self.origin = origin
        self.password = password
        self.segments = split_connections(items)
        self.model = FsStateModel()
        self._epoch_offset: float | None = None  # FreeSWITCH epoch - trace t
        for seg in self.segments:
            for item in seg.items:
                ev = _event_of(item)
                ts = ev.get("Event-Date-Timestamp") if ev is not None else None
                if ts and ts.isdigit():
                    self._epoch_offset = int(ts) / 1e6 - item.t
                    break
            if self._epoch_offset is not None:
                break
        self.logins = 0
        self.failed_logins = 0
        self.played = 0  # events sent
        self._index = 0
        self._finished = asyncio.Event()
        if not self.segments:
            self._finished.set()

    async def start(self) -> None:
        if self.origin is None:
            self.origin = asyncio.get_running_loop().time()
        await super().start()

    @property
    def ended_with_eof(self) -> bool:
        return bool(self.segments) and self.segments[-1].has_eof

    @property
    def is_finished(self) -> bool:
        return self._finished.is_set()

    async def finished(self) -> None:
        await self._finished.wait()

    def at(self, t: float) -> float:
        """Loop time at which trace time ``t`` is served."""
        assert self.origin is not None
        return self.origin + t / self.speed

    def trace_now(self) -> float:
        assert self.origin is not None
        return (asyncio.get_running_loop().time() - self.origin) * self.speed

    def epoch_now(self) -> float:
        """FreeSWITCH's clock at this moment of the replay (from the trace's event timestamps)."""
        if self._epoch_offset is None:
            return time.time()
        return self._epoch_offset + self.trace_now()

    async def _sleep_until(self, t: float, sess: _Session) -> None:
        delay = self.at(t) - asyncio.get_running_loop().time()
        if delay > 0:
            await sess.flush()
            await asyncio.sleep(delay)
        elif sess.writer.transport.get_write_buffer_size() > _DRAIN_ABOVE:
            await sess.flush()

    def _segment_done(self, seg: _Segment) -> None:
        if self._index < len(self.segments) and self.segments[self._index] is seg:
            self._index += 1
            if self._index >= len(self.segments):
                self._finished.set()
            self.changed()

    async def _serve(self, sess: _Session) -> None:
        for other in list(self._sessions):  # one client at a time: a new connect replaces the old
            if other is not sess:
                await other.end()
        if self._index >= len(self.segments):
            return  # the trace is over: close at once
        seg = self.segments[self._index]
        await self._sleep_until(seg.auth.t, sess)
        sess.send(frame_bytes(seg.auth))
        replies: asyncio.Queue[tuple[float | None, Callable[[], bytes] | None]] = asyncio.Queue()
        player = asyncio.create_task(self._play(seg, sess), name="esl-trace-player")
        replier = asyncio.create_task(self._replier(sess, replies), name="esl-trace-replier")
        try:
            buf = bytearray()
            while True:
                data = await sess.reader.read(READ_CHUNK)
                if not data:
                    return
                buf += data
                for command, _ in split_commands(buf):
                    self._count(command)
                    if not self._command(seg, sess, command, replies):
                        await replies.put((None, None))
                        await asyncio.wait([replier], timeout=5.0)
                        return
        finally:
            for task in (player, replier):
                task.cancel()
            await asyncio.gather(player, replier, return_exceptions=True)
            if seg.pos < len(seg.items) and all(_event_of(i) is None for i in seg.items[seg.pos:]):
                seg.pos = len(seg.items)  # the client left first; only the recorded close was to come
                self._segment_done(seg)

    def _command(self, seg: _Segment, sess: _Session, command: str,
                 replies: asyncio.Queue[tuple[float | None, Callable[[], bytes] | None]]) -> bool:
        def now(data: bytes) -> tuple[float | None, Callable[[], bytes]]:
            return None, lambda: data

        if command.startswith("auth "):
            if self.password is not None and command[5:] != self.password:
                self.failed_logins += 1
                self.changed()
                replies.put_nowait(now(reply_frame("-ERR invalid") + DISCONNECT_NOTICE))
                return False
            sess.authed = True
            self.logins += 1
            self.changed()
            replies.put_nowait(now(reply_frame("+OK accepted")))
        elif not sess.authed:
            replies.put_nowait(now(reply_frame("-ERR invalid")))
        elif command.startswith("event "):
            sess.subscribe(command)
            replies.put_nowait(now(reply_frame("+OK event listener enabled plain")))
        elif command == "exit":
            replies.put_nowait(now(reply_frame("+OK bye") + DISCONNECT_NOTICE))
            return False
        elif command.startswith("api "):
            cmd = " ".join(command[4:].split())
            recorded = self._claim(seg, cmd)
            if recorded is not None:
                item = seg.items[recorded]
                body = item.body or ""
                replies.put_nowait((item.t, lambda: api_frame(body)))
            else:
                replies.put_nowait((None, lambda: api_frame(self.model.reply(cmd, self.epoch_now())
                                                             or f"-ERR {cmd.split(' ', 1)[0]} Command not found!\n")))
        else:
            replies.put_nowait(now(reply_frame("+OK")))
        return True

    def _claim(self, seg: _Segment, command: str) -> int | None:
        """The first recorded reply to ``command`` not claimed yet and not yet due."""
        t = self.trace_now()
        for cmd, index in seg.replies:
            if cmd == command and index not in seg.claimed and seg.items[index].t >= t:
                seg.claimed.add(index)
                return index
        return None

    async def _replier(self, sess: _Session,
                       replies: asyncio.Queue[tuple[float | None, Callable[[], bytes] | None]]) -> None:
        """Writes the replies in command order, each no sooner than its recorded time."""
        while True:
            due, make = await replies.get()
            if make is None:
                await sess.flush()
                sess.close()
                return
            if due is not None:
                await self._sleep_until(due, sess)
            sess.send(make())
            await sess.flush()

    async def _play(self, seg: _Segment, sess: _Session) -> None:
        await sess.subscribed.wait()
        try:
            while seg.pos < len(seg.items):
                item = seg.items[seg.pos]
                if item.kind == "sent" or item.content_type in ("command/reply", "api/response"):
                    seg.pos += 1
                    continue
                await self._sleep_until(item.t, sess)
                if item.kind == "eof":
                    seg.pos += 1
                    await sess.flush()
                    sess.close()
                    self._segment_done(seg)
                    return
                ev = _event_of(item)
                if ev is not None:
                    self.model.apply(ev)
                    if sess.wants(ev.name, ev.subclass):
                        sess.send(frame_bytes(item))
                        self.played += 1
                elif item.kind == "frame":
                    sess.send(frame_bytes(item))  # disconnect-notice
                seg.pos += 1
            await sess.flush()
            self._segment_done(seg)  # the trace ends without eof: keep the link open
        except ConnectionError:
            pass


async def replay_esl_trace_tcp(
    path: str | Path | Sequence[EslTraceItem],
    speed: float,
    emit: Callable[[DomainEvent], None],
    now: Callable[[], float],
    origin: float,
    esl: EslConfig | None = None,
    rules: FsChannelRules | None = None,
) -> FsTracker:
    """Play a recorded ESL trace over loopback TCP through the real client and tracker.

    A :class:`TraceEslServer` on 127.0.0.1 (port 0) serves ``path`` (or its items, read
    beforehand so that reading a large trace does not eat into its first seconds) with
    trace t = 0 at loop time ``origin``; an :class:`EslClient` (timeouts from ``esl``; any password is
    accepted, the real one is never read) logs in, subscribes narrowly, resyncs and
    feeds an :class:`FsTracker` whose domain events go to ``emit``, stamped with
    ``now()`` at receipt.  Returns once every item was served and the client saw the
    final close; the client and server are stopped by then.
    """
    esl = esl or EslConfig()
    items = list(read_esl_trace(path)) if isinstance(path, str | Path) else list(path)
    name = str(path) if isinstance(path, str | Path) else "the trace"
    tracker = FsTracker(emit, rules)
    link_down = asyncio.Event()

    def on_connected() -> None:
        link_down.clear()
        tracker.link_up(now())

    def on_disconnected(reason: str) -> None:
        tracker.link_down(now(), reason)
        link_down.set()

    def on_event(ev: EslEvent, received_at: float) -> None:
        tracker.handle(ev, received_at)

    server = TraceEslServer(items, speed, origin=origin)

    def delays() -> Iterator[float]:
        # reconnect at once while the trace runs; once it is over, wait quietly until stopped
        yield 0.0
        while True:
            yield 3600.0 if server.is_finished else 0.02

    budget = (items[-1].t / speed if items else 0.0) + esl.connect_timeout_s + esl.login_timeout_s + 5.0
    async with server:
        client = EslClient.from_config(
            esl,
            host=server.host,
            port=server.port,
            password="replay",
            on_event=on_event,
            on_connected=on_connected,
            on_disconnected=on_disconnected,
            on_resync_reply=tracker.resync_reply,
            on_resync_done=tracker.resync_done,
            delays=delays,
            now=now,
            name="esl-replay",
        )
        async with client:
            try:
                async with asyncio.timeout(budget):
                    await server.finished()
                    if server.ended_with_eof and client.connected:
                        await link_down.wait()  # the final close reaches the tracker
            except TimeoutError:
                raise TimeoutError(f"replay of {name} over TCP did not finish within {budget:.1f}s") from None
    return tracker


