"""Loopback AMI servers that speak real AMI over TCP (bind port 0), for tests and replay.

* :class:`ScriptedAmiServer` -- a small scripted Asterisk for tests: banner, Login
  (plain and MD5 challenge), Ping, QueueStatus / CoreShowChannels from a
  configurable snapshot, and knobs to push events, drop links, refuse
  connections and ignore pings.
* :class:`TraceAmiServer` -- serves a recorded trace (``telephony.ami.trace``)
  at recorded pace divided by ``speed``; one connection per recorded connection.

Both behave like Asterisk 22 as recorded in ``tests/fixtures/ami/README.md``:
the banner is one ``\\r\\n``-terminated line, a failed login answers
``Response: Error`` / ``Message: Authentication failed`` and closes, list actions
answer ``EventList: start`` ... ``<Action>Complete`` with ``EventList: Complete``
and ``ListItems``, and nothing but the banner is sent before a good login.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from config.schema import AmiConfig
from telephony.ami.client import AmiClient, AmiConnection
from telephony.ami.codec import AmiDecoder, Message, encode_message
from telephony.ami.trace import TraceItem, read_trace
from telephony.ami.tracker import AmiTracker, ChannelRules
from telephony.events import DomainEvent
from telephony.loopback import LoopbackServer, LoopbackSession

log = logging.getLogger(__name__)

BANNER = "Asterisk Call Manager/11.0.0"
READ_CHUNK = 64 * 1024
_DRAIN_ABOVE = 64 * 1024

Pairs = Sequence[tuple[str, str]]

#: List actions the servers can answer, with Asterisk's start message.
LIST_ACTIONS: dict[str, str] = {
    "QueueStatus": "Queue status will follow",
    "CoreShowChannels": "Channels will follow",
    "QueueSummary": "Queue summary will follow",
    "Status": "Channel status will follow",
}
#: Which snapshot events answer which list action (ScriptedAmiServer).
SNAPSHOT_EVENTS: dict[str, frozenset[str]] = {
    "QueueStatus": frozenset({"QueueParams", "QueueMember", "QueueEntry"}),
    "CoreShowChannels": frozenset({"CoreShowChannel"}),
    "QueueSummary": frozenset({"QueueSummary"}),
    "Status": frozenset({"Status"}),
}


def with_action_id(pairs: Pairs, action_id: str | None) -> list[tuple[str, str]]:
    """``pairs`` with its ActionID set to ``action_id`` (placed second, as Asterisk does), or removed."""
    out = [(k, v) for k, v in pairs if k != "ActionID"]
    if action_id is not None:
        out.insert(1 if out else 0, ("ActionID", action_id))
    return out


def response(action_id: str | None, status: str = "Success", *more: tuple[str, str]) -> list[tuple[str, str]]:
    pairs = [("Response", status)]
    if action_id is not None:
        pairs.append(("ActionID", action_id))
    pairs.extend(more)
    return pairs


def list_reply(action: str, action_id: str | None, items: Iterable[Pairs]) -> list[list[tuple[str, str]]]:
    """The messages Asterisk sends for a list action: start response, items, ``...Complete``."""
    out = [response(action_id, "Success", ("EventList", "start"),
                    ("Message", LIST_ACTIONS.get(action, "Events will follow")))]
    out.extend(with_action_id(p, action_id) for p in items)
    complete = [("Event", f"{action}Complete")]
    if action_id is not None:
        complete.append(("ActionID", action_id))
    complete += [("EventList", "Complete"), ("ListItems", str(len(out) - 1))]
    out.append(complete)
    return out


def _pong(action_id: str | None) -> list[tuple[str, str]]:
    return response(action_id, "Success", ("Ping", "Pong"), ("Timestamp", "1795294870.000000"))


def _md5(challenge: str, secret: str) -> str:
    return hashlib.md5((challenge + secret).encode("utf-8"), usedforsecurity=False).hexdigest()


class _Session(LoopbackSession):
    def __init__(self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(number, reader, writer)
        self.logged_in = False
        self.challenge: str | None = None

    def send(self, pairs: Pairs) -> None:
        self.send_raw(encode_message(pairs))


class _AmiServerBase(LoopbackServer[_Session]):
    """A loopback AMI server: the banner, then the subclass's protocol."""

    kind = "ami"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, banner: str = BANNER) -> None:
        super().__init__(host, port)
        self.banner = banner

    def _new_session(self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _Session:
        return _Session(number, reader, writer)


class ScriptedAmiServer(_AmiServerBase):
    """A scripted Asterisk manager for tests.

    ``snapshot``: the PBX state as event pair lists (``CoreShowChannel``,
    ``QueueParams``, ``QueueMember``, ``QueueEntry``); QueueStatus and
    CoreShowChannels answer from it with the client's ActionID.  Counters:
    ``connections``, ``logins``, ``failed_logins``, ``login_kinds``, ``actions``,
    ``refused``; ``connect_times`` and ``login_times`` are loop times.
    """

    def __init__(
        self,
        *,
        username: str = "ringwatch",
        secret: str = "secret",
        snapshot: Iterable[Pairs] = (),
        answer_pings: bool = True,
        auth_fail_delay_s: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        banner: str = BANNER,
    ) -> None:
        super().__init__(host, port, banner)
        self.username = username
        self.secret = secret
        self.snapshot: list[tuple[tuple[str, str], ...]] = [tuple(p) for p in snapshot]
        self.answer_pings = answer_pings
        self.auth_fail_delay_s = auth_fail_delay_s
        self.logins = 0
        self.failed_logins = 0
        self.login_kinds: list[str] = []
        self.login_times: list[float] = []
        self.actions: Counter[str] = Counter()
        self.refused = 0
        self._refuse: int | None = 0  # None: refuse until allow()

    # -- knobs -------------------------------------------------------------------

    def set_snapshot(self, events: Iterable[Pairs]) -> None:
        self.snapshot = [tuple(p) for p in events]

    def refuse(self, count: int | None = None) -> None:
        """Close the next ``count`` connections at once, without a banner (None: until :meth:`allow`)."""
        self._refuse = count

    def allow(self) -> None:
        self._refuse = 0

    async def push(self, pairs: Pairs) -> int:
        """Send an event to every logged-in session; returns how many got it."""
        sent = 0
        for s in list(self._sessions):
            if s.logged_in:
                s.send(pairs)
                with contextlib.suppress(ConnectionError):
                    await s.flush()
                sent += 1
        return sent

    async def push_raw(self, data: bytes) -> int:
        """Send raw bytes (e.g. half a message) to every logged-in session; returns how many got them."""
        sent = 0
        for s in list(self._sessions):
            if s.logged_in:
                s.send_raw(data)
                with contextlib.suppress(ConnectionError):
                    await s.flush()
                sent += 1
        return sent

    async def drop(self) -> int:
        """Reset every connection (as a crashed PBX or a cut cable would); returns how many."""
        sessions = list(self._sessions)
        for s in sessions:
            await s.end()
        return len(sessions)

    async def shutdown(self, restart: bool = True) -> None:
        """Send ``Event: Shutdown`` to every logged-in session, then close them."""
        await self.push([("Event", "Shutdown"), ("Privilege", "system,all"), ("Shutdown", "Cleanly"),
                         ("Restart", "True" if restart else "False")])
        sessions = list(self._sessions)
        for s in sessions:
            s.close()
        for s in sessions:
            await s.done.wait()

    # -- protocol ------------------------------------------------------------------

    async def _serve(self, sess: _Session) -> None:
        if self._refuse is None or self._refuse > 0:
            if self._refuse is not None:
                self._refuse -= 1
            self.refused += 1
            return
        sess.send_raw(self.banner.encode() + b"\r\n")
        decoder = AmiDecoder(expect_banner=False)
        while True:
            data = await sess.reader.read(READ_CHUNK)
            if not data:
                return
            for msg in decoder.feed(data):
                if not isinstance(msg, Message):
                    continue
                keep = await self._action(sess, msg)
                self.changed()
                if not keep:
                    await sess.flush()
                    return
            await sess.flush()

    async def _action(self, sess: _Session, msg: Message) -> bool:
        name = msg.get("Action") or ""
        aid = msg.action_id
        self.actions[name] += 1
        lname = name.lower()
        if lname == "challenge":
            sess.challenge = str(random.randrange(10**8, 10**9))
            sess.send(response(aid, "Success", ("Challenge", sess.challenge)))
        elif lname == "login":
            return await self._login(sess, msg)
        elif not sess.logged_in:
            sess.send(response(aid, "Error", ("Message", "Permission denied")))
        elif lname == "ping":
            if self.answer_pings:
                sess.send(_pong(aid))
        elif lname == "logoff":
            sess.send(response(aid, "Goodbye", ("Message", "Thanks for all the fish.")))
            return False
        elif name in SNAPSHOT_EVENTS:
            wanted = SNAPSHOT_EVENTS[name]
            for pairs in list_reply(name, aid, [p for p in self.snapshot if dict(p).get("Event") in wanted]):
                sess.send(pairs)
        else:
            sess.send(response(aid, "Error", ("Message", "Invalid/unknown command")))
        return True

    async def _login(self, sess: _Session, msg: Message) -> bool:
        aid = msg.action_id
        if (msg.get("AuthType") or "").lower() == "md5":
            kind = "md5"
            ok = sess.challenge is not None and msg.get("Key") == _md5(sess.challenge, self.secret)
        else:
            kind = "plain"
            ok = msg.get("Secret") == self.secret
        ok = ok and msg.get("Username") == self.username
        if not ok:
            self.failed_logins += 1
            if self.auth_fail_delay_s > 0:
                await asyncio.sleep(self.auth_fail_delay_s)
            sess.send(response(aid, "Error", ("Message", "Authentication failed")))
            return False
        sess.logged_in = True
        self.logins += 1
        self.login_kinds.append(kind)
        self.login_times.append(asyncio.get_running_loop().time())
        sess.send(response(aid, "Success", ("Message", "Authentication accepted")))
        sess.send([("Event", "FullyBooted"), ("Privilege", "system,all"), ("Uptime", "1"), ("LastReload", "1"),
                   ("Status", "Fully Booted")])
        return True


# -- trace replay over TCP ------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Segment:
    """One recorded connection: banner, then items up to (and including) its ``eof``."""

    banner: TraceItem
    items: list[TraceItem] = field(default_factory=list)
    login_id: str | None = None  # the recorded Login's ActionID
    challenge_ids: set[str] = field(default_factory=set)
    login_reply: int | None = None  # index of the recorded Login response in items
    pos: int = 0  # next item to play (kept across client reconnects)
    played_ids: set[str] = field(default_factory=set)  # recorded ActionIDs whose replies began

    @property
    def has_eof(self) -> bool:
        return bool(self.items) and self.items[-1].kind == "eof"


def _first(pairs: Pairs, key: str) -> str | None:
    return next((v for k, v in pairs if k == key), None)


def _is_response(pairs: Pairs) -> bool:
    return bool(pairs) and pairs[0][0] == "Response"


def split_connections(items: Iterable[TraceItem]) -> list[_Segment]:
    segments: list[_Segment] = []
    seg: _Segment | None = None
    for item in items:
        if item.kind == "banner":
            seg = _Segment(item)
            segments.append(seg)
            continue
        if seg is None:  # a trace picked up mid-stream: serve a banner anyway
            seg = _Segment(TraceItem(item.t, "banner", text=BANNER))
            segments.append(seg)
        seg.items.append(item)
        if item.kind == "sent":
            action = (_first(item.pairs, "Action") or "").lower()
            aid = _first(item.pairs, "ActionID")
            if action == "login" and seg.login_id is None:
                seg.login_id = aid
            elif action == "challenge" and aid is not None:
                seg.challenge_ids.add(aid)
        elif (item.kind == "msg" and seg.login_reply is None and seg.login_id is not None
              and _is_response(item.pairs) and _first(item.pairs, "ActionID") == seg.login_id):
            seg.login_reply = len(seg.items) - 1
        elif item.kind == "eof":
            seg = None
    return segments


class _Play:
    """Per-connection state of a trace replay."""

    def __init__(self, seg: _Segment, sess: _Session) -> None:
        self.seg = seg
        self.sess = sess
        self.login_id: str | None = None  # the client's Login ActionID, once it came
        self.login_seen = asyncio.Event()
        self.logged_in = asyncio.Event()
        self.id_map: dict[str, str] = {}  # recorded ActionID -> the client's
        self.claimed: set[int] = set()
        self.events_sent = 0  # recorded channel events already played on this connection


class TraceAmiServer(_AmiServerBase):
    """Serves a recorded trace over TCP at recorded pace divided by ``speed``.

    Item ``t`` is sent at ``origin + t / speed`` (loop time; ``origin`` defaults to
    :meth:`start`), never before the client has logged in.  Each recorded
    connection (``banner`` ... ``eof``) is served on one client connection; at
    ``eof`` the server closes it and the next recorded connection waits for the
    client's next connect.  A connection dropped by the client mid-way resumes
    where it stopped on the next connect.

    The client's own actions get the client's ActionID:

    * ``Login`` -- answered like the recorded Login (its Response replaces the
      recorded one, at the recorded time), or ``Success`` at once when the
      recorded one was already played; with ``secret``/``username`` set, a
      mismatch answers ``Authentication failed`` and closes.  ``Challenge`` is
      answered at once; recorded Challenge responses are not replayed.
    * ``Ping`` -> Pong at once; ``Logoff`` -> Goodbye and close.
    * any other action that the recorder also sent on this connection, and whose
      recorded reply has not been played yet, is mapped to that recording: the
      reply is played at its recorded time with the ActionID rewritten (so a
      reconnect's resync gets the recorded snapshot, as in a speed-0 replay);
      otherwise a list action gets an empty but valid list at once, and other
      actions an error.

    Other recorded responses (to the recorder's own actions) are played as recorded.
    """

    def __init__(
        self,
        items: Iterable[TraceItem],
        speed: float = 1.0,
        *,
        origin: float | None = None,
        username: str | None = None,
        secret: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port, BANNER)
        if speed <= 0:
            raise ValueError("trace speed must be > 0")
        self.speed = speed
        self.origin = origin
        self.username = username
        self.secret = secret
        self.segments = split_connections(items)
        self.logins = 0
        self.failed_logins = 0
        self.played = 0  # msg items sent
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
        """The trace's last recorded connection ends with the server closing it."""
        return bool(self.segments) and self.segments[-1].has_eof

    @property
    def is_finished(self) -> bool:
        return self._finished.is_set()

    async def finished(self) -> None:
        """Return when every item has been played (the last ``eof`` closed its connection)."""
        await self._finished.wait()

    def at(self, t: float) -> float:
        """Loop time at which trace time ``t`` is served."""
        assert self.origin is not None
        return self.origin + t / self.speed

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

    # -- a connection ----------------------------------------------------------------

    async def _serve(self, sess: _Session) -> None:
        for other in list(self._sessions):  # one client at a time: a new connect replaces the old
            if other is not sess:
                await other.end()
        if self._index >= len(self.segments):
            return  # the trace is over: close at once
        seg = self.segments[self._index]
        await self._sleep_until(seg.banner.t, sess)
        sess.send_raw(seg.banner.text.encode("utf-8") + b"\r\n")
        play = _Play(seg, sess)
        player = asyncio.create_task(self._play(play), name="ami-trace-player")
        try:
            decoder = AmiDecoder(expect_banner=False)
            while True:
                data = await sess.reader.read(READ_CHUNK)
                if not data:
                    return
                for msg in decoder.feed(data):
                    if isinstance(msg, Message) and not self._client_action(play, msg):
                        await sess.flush()
                        sess.close()
                        return
                await sess.flush()
        finally:
            player.cancel()
            await asyncio.gather(player, return_exceptions=True)
            if seg.pos < len(seg.items) and all(i.kind != "msg" for i in seg.items[seg.pos:]):
                # the client left first; only the recorded close was still to come
                seg.pos = len(seg.items)
                self._segment_done(seg)

    def _client_action(self, play: _Play, msg: Message) -> bool:
        sess, seg = play.sess, play.seg
        name = msg.get("Action") or ""
        aid = msg.action_id
        lname = name.lower()
        if lname == "challenge":
            sess.challenge = str(random.randrange(10**8, 10**9))
            sess.send(response(aid, "Success", ("Challenge", sess.challenge)))
        elif lname == "login":
            if not self._credentials_ok(sess, msg):
                self.failed_logins += 1
                self.changed()
                sess.send(response(aid, "Error", ("Message", "Authentication failed")))
                return False
            play.login_id = aid
            play.login_seen.set()
            if seg.login_reply is None or seg.login_reply < seg.pos:
                sess.send(response(aid, "Success", ("Message", "Authentication accepted")))
                self._logged_in(play)
        elif not play.logged_in.is_set():
            sess.send(response(aid, "Error", ("Message", "Permission denied")))
        elif lname == "ping":
            sess.send(_pong(aid))
        elif lname == "logoff":
            sess.send(response(aid, "Goodbye", ("Message", "Thanks for all the fish.")))
            return False
        else:
            recorded = self._claim(play, lname)
            if recorded is not None and aid is not None:
                play.id_map[recorded] = aid
            elif name in LIST_ACTIONS and play.events_sent == 0:
                for pairs in list_reply(name, aid, ()):  # nothing happened yet on this link: empty is true
                    sess.send(pairs)
            elif name in LIST_ACTIONS:
                # calls may be up already (the client logged in after events were due): an empty list
                # would say they are gone; a PBX's snapshot would list them — say it cannot be had
                sess.send(response(aid, "Error", ("Message", "No recorded snapshot at this point of the trace")))
            else:
                sess.send(response(aid, "Error", ("Message", "Not available in a trace replay")))
        return True

    def _credentials_ok(self, sess: _Session, msg: Message) -> bool:
        if self.username is not None and msg.get("Username") != self.username:
            return False
        if self.secret is None:
            return True
        if (msg.get("AuthType") or "").lower() == "md5":
            return sess.challenge is not None and msg.get("Key") == _md5(sess.challenge, self.secret)
        return msg.get("Secret") == self.secret

    def _claim(self, play: _Play, lname: str) -> str | None:
        """The ActionID of the first recorded action of this name in this connection
        that is not claimed yet and whose reply has not begun to play."""
        seg = play.seg
        for i, item in enumerate(seg.items):
            if item.kind != "sent" or i in play.claimed or (_first(item.pairs, "Action") or "").lower() != lname:
                continue
            recorded = _first(item.pairs, "ActionID")
            if recorded is not None and recorded not in seg.played_ids:
                play.claimed.add(i)
                return recorded
        return None

    def _logged_in(self, play: _Play) -> None:
        play.sess.logged_in = True
        play.logged_in.set()
        self.logins += 1
        self.changed()

    async def _play(self, play: _Play) -> None:
        seg, sess = play.seg, play.sess
        try:
            while seg.pos < len(seg.items):
                item = seg.items[seg.pos]
                if item.kind == "sent" or item.kind == "banner":
                    seg.pos += 1
                    continue
                await self._sleep_until(item.t, sess)
                if item.kind == "eof":
                    seg.pos += 1
                    await sess.flush()
                    sess.close()
                    self._segment_done(seg)
                    return
                pairs: Pairs = item.pairs
                aid = _first(pairs, "ActionID")
                if _is_response(pairs) and aid is not None and aid in seg.challenge_ids:
                    pass  # the client got its own challenge
                elif seg.pos == seg.login_reply:
                    await play.login_seen.wait()
                    sess.send(with_action_id(pairs, play.login_id))
                    if (_first(pairs, "Response") or "").lower() == "success":
                        self._logged_in(play)
                else:
                    await play.logged_in.wait()
                    if aid is not None:
                        seg.played_ids.add(aid)
                    if aid is not None and aid in play.id_map:
                        pairs = with_action_id(pairs, play.id_map[aid]) if _is_response(pairs) else [
                            (k, play.id_map[aid] if k == "ActionID" else v) for k, v in pairs]
                    sess.send(pairs)
                    self.played += 1
                    if aid is None and _first(pairs, "Uniqueid") is not None:  # a channel's event
                        play.events_sent += 1
                seg.pos += 1
            await sess.flush()
            self._segment_done(seg)  # the trace ends without eof: keep the link open
        except ConnectionError:
            pass


async def replay_trace_tcp(
    path: str | Path | Sequence[TraceItem],
    speed: float,
    emit: Callable[[DomainEvent], None],
    now: Callable[[], float],
    origin: float,
    ami: AmiConfig | None = None,
    rules: ChannelRules | None = None,
) -> AmiTracker:
    """Play a recorded trace over loopback TCP through the real client and tracker.

    A :class:`TraceAmiServer` on 127.0.0.1 (port 0) serves ``path`` (or its items, read beforehand
    so that reading it does not eat into the trace's first events) with trace t = 0 at loop time
    ``origin``; an :class:`AmiClient` (timeouts and user from
    ``ami``; any secret is accepted, the real one is never read) logs in,
    resyncs and feeds an :class:`AmiTracker` whose domain events go to ``emit``,
    stamped with ``now()`` at receipt.  Returns once every item was served and
    a logged-in client saw the final EOF (a recorded failed login just ends);
    the client and server are stopped by then.
    """
    ami = ami or AmiConfig()
    items = list(read_trace(path)) if isinstance(path, str | Path) else list(path)
    tracker = AmiTracker(emit, rules)
    link_down = asyncio.Event()

    def on_connected() -> None:
        link_down.clear()
        tracker.link_up(now())

    def on_disconnected(reason: str) -> None:
        tracker.link_down(now(), reason)
        link_down.set()

    def on_message(msg: Message, conn: AmiConnection) -> None:
        tracker.handle(msg, conn.received_at)

    server = TraceAmiServer(items, speed, origin=origin)

    def delays() -> Iterator[float]:
        # reconnect at once while the trace runs (the server paces the next banner);
        # once it is over, wait quietly until we are stopped
        yield 0.0
        while True:
            yield 3600.0 if server.is_finished else 0.02

    budget = (items[-1].t / speed if items else 0.0) + ami.connect_timeout_s + ami.login_timeout_s + 5.0
    async with server:
        client = AmiClient.from_config(
            ami,
            host=server.host,
            port=server.port,
            secret="replay",
            on_message=on_message,
            on_connected=on_connected,
            on_disconnected=on_disconnected,
            wanted_events=AmiTracker.WANTED,
            delays=delays,
            now=now,
            name="ami-replay",
        )
        async with client:
            try:
                async with asyncio.timeout(budget):
                    await server.finished()
                    if server.logins and not client.stats.connects:
                        await client.wait_connected()  # the whole trace fell within the login
                    if server.ended_with_eof and client.connected:
                        await link_down.wait()  # the final EOF reaches the tracker
            except TimeoutError:
                raise TimeoutError(f"replay of {path} over TCP did not finish within {budget:.1f}s") from None
    return tracker
