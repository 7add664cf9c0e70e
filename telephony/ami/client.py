"""The asyncio AMI client: a thin adapter around the sans-I/O codec.

One owned supervisor task (``ami-supervisor``) runs the reconnect loop::

    connect (connect_timeout_s) -> banner -> Login (plain or MD5, login_timeout_s)
    -> on_connected() -> resync (QueueStatus, CoreShowChannels) while reading and pinging
    -> link ends (EOF, reset, Shutdown, unanswered Ping) -> on_disconnected(reason)
    -> wait the next delay of the backoff -> again

While a link is up it owns two more tasks, ``ami-reader`` (reads 64 KiB chunks,
decodes, correlates replies with requests by ActionID and hands every event to
``on_message`` in arrival order) and ``ami-keepalive`` (sends ``Ping`` every
``ping_interval_s`` and declares the link dead when no reply comes within
``ping_timeout_s``), plus ``ami-resync`` for the snapshot after each login.
All of them are cancelled and awaited when the link ends and in :meth:`AmiClient.stop`.

Errors are classified: a rejected login is loud (ERROR, naming host, port and
user, never the secret) and retried no sooner than ``auth_retry_min_s``;
network errors, EOF and ``Shutdown`` are retried after the next backoff delay.
The backoff restarts after every good login.

Credentials never reach a log record, not even at DEBUG: actions are logged by
name and ActionID only.

Time: the receive time handed to consumers (``AmiConnection.received_at``) is
the injected ``now()`` sampled once per TCP read, so every message of one read
shares one timestamp.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from telephony.ami.codec import DEFAULT_MAX_MESSAGE_BYTES, AmiDecoder, Banner, DecoderStats, Message, encode_action
from telephony.backoff import backoff as backoff
from telephony.linkclient import LinkClient

if TYPE_CHECKING:
    from config.schema import AmiConfig

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
MAX_LIST_ITEMS = 100_000
_MAX_EARLY_MESSAGES = 1_000  # messages read during the handshake, kept for on_message
DEFAULT_RESYNC: tuple[str, ...] = ("QueueStatus", "CoreShowChannels")

Fields = Mapping[str, str] | Iterable[tuple[str, str]]
MessageCallback = Callable[[Message, "AmiConnection"], None]
DelayFactory = Callable[[], Iterator[float]]


# -- errors ------------------------------------------------------------------------


class AmiError(Exception):
    """Base class of the client's errors."""


class AmiAuthError(AmiError):
    """The PBX rejected the login (bad user or secret).  The text never holds the secret."""


class AmiProtocolError(AmiError):
    """The peer does not speak AMI as expected (no banner, ...)."""


class AmiConnectionLost(AmiError):
    """The link went away while a request was waiting for its reply."""


class AmiNotConnected(AmiConnectionLost):
    """A request was made while no link is up."""


class AmiActionError(AmiError):
    """The PBX answered ``Response: Error`` to an action."""

    def __init__(self, action: str, response: Message) -> None:
        self.action = action
        self.response = response
        super().__init__(f"AMI action {action} failed: {response.get('Message') or 'Error'}")


# -- public state ----------------------------------------------------------------------


@dataclass(slots=True)
class AmiConnection:
    """What a consumer may know about the link a message came on."""

    number: int  # 1 for the first link of this client, then 2, 3, ...
    host: str
    port: int
    banner: str = ""
    received_at: float = 0.0  # now() when the TCP read carrying the message returned


@dataclass(slots=True)
class AmiClientStats:
    connected: bool = False
    connect_attempts: int = 0
    connects: int = 0  # good logins
    reconnects: int = 0  # good logins after the first one
    disconnects: int = 0
    auth_failures: int = 0
    ping_timeouts: int = 0
    resyncs: int = 0
    resync_failures: int = 0
    events_received: int = 0
    last_error: str | None = None
    decoder: DecoderStats = field(default_factory=DecoderStats)


# -- internals -------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    action_id: str
    action: str
    future: asyncio.Future[Message]
    is_list: bool
    response: Message | None = None
    items: list[Message] = field(default_factory=list)
    truncated: int = 0


class _LinkEnded(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True, eq=False)
class _Link:
    info: AmiConnection
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    decoder: AmiDecoder
    pending: dict[str, _Pending] = field(default_factory=dict)
    backlog: deque[Message | Banner] = field(default_factory=deque)
    dead: bool = False  # abort instead of a graceful close

    def send(self, name: str, fields: Fields, action_id: str) -> None:
        self.writer.write(encode_action(name, fields, action_id))

    def fail_pending(self, reason: str) -> None:
        pending, self.pending = self.pending, {}
        for p in pending.values():
            if not p.future.done():
                p.future.set_exception(AmiConnectionLost(f"AMI link lost ({reason}) before {p.action} completed"))
                # the waiter may be gone (timed out): never warn about an unretrieved exception
                p.future.exception()

    async def close(self) -> None:
        transport = self.writer.transport
        if self.dead:
            transport.abort()
        else:
            transport.close()
        try:
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()
        except TimeoutError:
            transport.abort()
        except (OSError, asyncio.IncompleteReadError):
            pass


def _md5_key(challenge: str, secret: str) -> str:
    return hashlib.md5((challenge + secret).encode("utf-8"), usedforsecurity=False).hexdigest()


class AmiClient(LinkClient):
    """Asyncio AMI client with login, ActionID correlation, keepalive, resync and reconnect.

    ``on_message(msg, conn)`` receives every event message (list events too), in
    arrival order, synchronously in the reader task; ``conn.received_at`` is the
    receive time on the injected clock.  ``on_connected()`` runs after every good
    login, before the resync; ``on_disconnected(reason)`` when a link that had
    logged in ends; ``on_error(text)`` whenever a connect or login attempt fails
    or a link is lost (``text`` is the new :attr:`last_error`).  Callbacks must
    not block; an exception in one is logged and does not break the link.

    ``wanted_events``: the decoder drops other events undecoded.  ``Shutdown``
    and ``<Action>Complete`` of the resync actions are always added; a list
    action of your own only sees the list events the filter lets through.
    """

    stats: AmiClientStats

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        secret: str,
        auth: Literal["md5", "plain"] = "md5",
        connect_timeout_s: float = 5.0,
        login_timeout_s: float = 10.0,
        action_timeout_s: float = 10.0,
        ping_interval_s: float = 20.0,
        ping_timeout_s: float = 5.0,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        reconnect_factor: float = 2.0,
        auth_retry_min_s: float = 10.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        on_message: MessageCallback | None = None,
        on_connected: Callable[[], None] | None = None,
        on_disconnected: Callable[[str], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        wanted_events: Iterable[str] | None = None,
        delays: DelayFactory | None = None,
        now: Callable[[], float] = time.monotonic,
        resync_actions: Iterable[str] = DEFAULT_RESYNC,
        events: str = "on",
        name: str = "ami",
    ) -> None:
        if auth not in ("md5", "plain"):
            raise ValueError(f"AMI auth must be 'md5' or 'plain', not {auth!r}")
        self.host = host
        self.port = port
        self.username = username
        self._secret = secret
        self.auth = auth
        self.connect_timeout_s = connect_timeout_s
        self.login_timeout_s = login_timeout_s
        self.action_timeout_s = action_timeout_s
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.auth_retry_min_s = auth_retry_min_s
        self.max_message_bytes = max_message_bytes
        self.resync_actions = tuple(resync_actions)
        self.events = events
        self.name = name
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._on_error = on_error
        self._now = now
        self._delays: DelayFactory = delays or functools.partial(
            backoff, reconnect_initial_s, reconnect_max_s, reconnect_factor
        )
        wanted: frozenset[str] | None = None
        if wanted_events is not None:
            wanted = frozenset(wanted_events) | {"Shutdown"} | {f"{a}Complete" for a in self.resync_actions}
        self._wanted = wanted
        self.stats = AmiClientStats()
        self._ids = itertools.count(1)
        self._id_prefix = f"rw-{secrets.token_hex(3)}-"
        self._link: _Link | None = None
        self._links = itertools.count(1)
        self.kind = "AMI"
        self._init_lifecycle()

    @classmethod
    def from_config(cls, cfg: AmiConfig, **kwargs: Any) -> AmiClient:
        """Build a client from ``pbx.ami``; the secret comes from ``cfg.secret()`` unless given."""
        params: dict[str, Any] = {
            "host": cfg.host,
            "port": cfg.port,
            "username": cfg.username,
            "secret": kwargs.pop("secret") if "secret" in kwargs else cfg.secret(),
            "auth": cfg.auth,
            "connect_timeout_s": cfg.connect_timeout_s,
            "login_timeout_s": cfg.login_timeout_s,
            "action_timeout_s": cfg.action_timeout_s,
            "ping_interval_s": cfg.ping_interval_s,
            "ping_timeout_s": cfg.ping_timeout_s,
            "reconnect_initial_s": cfg.reconnect_initial_s,
            "reconnect_max_s": cfg.reconnect_max_s,
            "reconnect_factor": cfg.reconnect_factor,
            "max_message_bytes": cfg.max_message_bytes,
        }
        params.update(kwargs)
        if not params["secret"]:
            log.warning("ami.no_secret user=%s: no AMI secret configured (set $%s or pbx.ami.secret_file); "
                        "the login will fail", cfg.username, cfg.secret_env or "RINGWATCH_AMI_SECRET")
        return cls(**params)

    def __repr__(self) -> str:  # never the secret
        state = "connected" if self.connected else "disconnected"
        return f"<AmiClient {self.username}@{self.host}:{self.port} {state}>"

    # -- state ---------------------------------------------------------------------



    @property
    def connection(self) -> AmiConnection | None:
        return self._link.info if self._link is not None else None


    # -- lifecycle -----------------------------------------------------------------

    async def _goodbye(self) -> None:
        with contextlib.suppress(AmiError, OSError):
            await self.action("Logoff", timeout_s=min(1.0, self.action_timeout_s))

    # -- requests ------------------------------------------------------------------

    async def action(self, name: str, fields: Fields = (), timeout_s: float | None = None) -> Message:
        """Send an action and return its response (``Response: Error`` raises :class:`AmiActionError`).

        ``timeout_s`` defaults to ``action_timeout_s``; on expiry :class:`TimeoutError`.
        """
        link = self._require_link()
        pending = self._request(link, name, fields, is_list=False)
        return await self._wait(link, pending, timeout_s)

    async def list_action(self, name: str, fields: Fields = (), timeout_s: float | None = None) -> list[Message]:
        """Send a list action (``EventList: start`` ... ``...Complete``) and return its list events.

        The events also reach ``on_message``.  The timeout covers the whole list.
        """
        link = self._require_link()
        pending = self._request(link, name, fields, is_list=True)
        await self._wait(link, pending, timeout_s)
        return pending.items

    def _require_link(self) -> _Link:
        link = self._link
        if link is None:
            raise AmiNotConnected(f"AMI link to {self.host}:{self.port} is down")
        return link

    def _next_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids)}"

    def _request(self, link: _Link, name: str, fields: Fields, is_list: bool) -> _Pending:
        aid = self._next_id()
        pending = _Pending(aid, name, asyncio.get_running_loop().create_future(), is_list)
        link.pending[aid] = pending
        try:
            link.send(name, fields, aid)
        except BaseException:
            del link.pending[aid]
            raise
        log.debug("ami.send action=%s action_id=%s", name, aid)
        return pending

    async def _wait(self, link: _Link, pending: _Pending, timeout_s: float | None) -> Message:
        try:
            async with asyncio.timeout(self.action_timeout_s if timeout_s is None else timeout_s):
                await link.writer.drain()
                return await pending.future
        except TimeoutError:
            raise TimeoutError(f"no reply to AMI action {pending.action} within the timeout") from None
        except ConnectionError as e:
            raise AmiConnectionLost(f"AMI link lost while sending {pending.action}: {e!r}") from None
        finally:
            # a reply that never came (timeout, cancellation) must not stay registered
            if link.pending.get(pending.action_id) is pending:
                del link.pending[pending.action_id]

    # -- dispatch ------------------------------------------------------------------

    def _dispatch(self, link: _Link, msg: Message) -> None:
        aid = msg.action_id
        pending = link.pending.get(aid) if aid is not None else None
        if msg.event is not None:
            self.stats.events_received += 1
            if pending is not None and pending.is_list and aid is not None:
                self._list_event(link, aid, pending, msg)
            self._deliver(msg, link)
            return
        if pending is None or aid is None:
            log.debug("ami.response_unmatched response=%s action_id=%s", msg.response, aid)
            return
        response = (msg.response or "").lower()
        if response == "error":
            del link.pending[aid]
            if not pending.future.done():
                pending.future.set_exception(AmiActionError(pending.action, msg))
        elif pending.is_list and (msg.get("EventList") or "").lower() == "start":
            pending.response = msg
        else:
            del link.pending[aid]
            if not pending.future.done():
                pending.future.set_result(msg)

    def _list_event(self, link: _Link, aid: str, pending: _Pending, msg: Message) -> None:
        if (msg.get("EventList") or "").lower() == "complete":
            del link.pending[aid]
            if pending.truncated:
                log.warning("ami.list_truncated action=%s dropped=%d", pending.action, pending.truncated)
            if not pending.future.done():
                pending.future.set_result(msg)
        elif len(pending.items) < MAX_LIST_ITEMS:
            pending.items.append(msg)
        else:
            pending.truncated += 1

    def _deliver(self, msg: Message, link: _Link) -> None:
        if self._on_message is None:
            return
        try:
            self._on_message(msg, link.info)
        except Exception:
            log.exception("ami.on_message failed for %s", msg.event)

    def _notify(self, what: str, callback: Callable[..., None] | None, *args: object) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            log.exception("ami.%s callback failed", what)

    def _set_error(self, text: str) -> None:
        self.stats.last_error = text
        self._notify("on_error", self._on_error, text)

    # -- the reconnect loop ------------------------------------------------------------

    async def _supervise(self) -> None:
        delays = self._delays()
        while not self._stopping:
            self.stats.connect_attempts += 1
            auth_failed = False
            try:
                link = await self._open()
            except AmiAuthError as e:
                auth_failed = True
                self.stats.auth_failures += 1
                self._set_error(str(e))
                error: str | None = str(e)
            except (OSError, EOFError, AmiError) as e:
                error = self._describe(e)
                self._set_error(error)
            except Exception as e:  # a bug: keep the daemon's link alive, loudly
                log.exception("ami.connect_crashed host=%s port=%d", self.host, self.port)
                error = f"{self.host}:{self.port}: internal error: {type(e).__name__}"
                self._set_error(error)
            else:
                error = None
                delays = self._delays()  # a good login: start the backoff again
                await self._run_link(link)
                if self._stopping:
                    return
            delay = next(delays, 0.0)
            if auth_failed:
                delay = max(delay, self.auth_retry_min_s)
                log.error(
                    "ami.login_rejected: %s -- check the AMI username and secret (manager.conf); "
                    "retrying in %.1fs (auth failures so far: %d)",
                    error, delay, self.stats.auth_failures,
                )
            elif error is not None:
                log.warning("ami.connect_failed host=%s port=%d user=%s error=%s retry_in=%.2fs",
                            self.host, self.port, self.username, error, delay)
            else:
                log.info("ami.reconnect host=%s port=%d retry_in=%.2fs", self.host, self.port, delay)
            await asyncio.sleep(delay)

    def _describe(self, e: BaseException) -> str:
        where = f"{self.host}:{self.port}"
        if isinstance(e, TimeoutError):
            return f"{where}: timed out ({e})" if str(e) else f"{where}: timed out"
        return f"{where}: {e}" if isinstance(e, AmiError) else f"{where}: {type(e).__name__}: {e}"

    async def _open(self) -> _Link:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_connection(self.host, self.port)
        except TimeoutError:
            raise TimeoutError(f"connect timed out after {self.connect_timeout_s:g}s") from None
        decoder = AmiDecoder(self.max_message_bytes, wanted_events=self._wanted, stats=self.stats.decoder)
        link = _Link(AmiConnection(next(self._links), self.host, self.port), reader, writer, decoder)
        try:
            try:
                async with asyncio.timeout(self.login_timeout_s):
                    await self._handshake(link)
            except TimeoutError:
                raise TimeoutError(f"no banner/login reply within {self.login_timeout_s:g}s") from None
        except BaseException:
            link.dead = True
            await link.close()
            raise
        return link

    async def _next(self, link: _Link) -> Message | Banner:
        while not link.backlog:
            data = await link.reader.read(READ_CHUNK)
            if not data:
                raise AmiConnectionLost("connection closed by the server during login")
            link.info.received_at = self._now()
            link.backlog.extend(link.decoder.feed(data))
        return link.backlog.popleft()

    async def _reply(self, link: _Link, aid: str, early: list[Message]) -> Message:
        while True:
            m = await self._next(link)
            if isinstance(m, Banner):
                continue
            if m.event is None and m.action_id == aid:
                return m
            if m.event is not None and len(early) < _MAX_EARLY_MESSAGES:
                early.append(m)

    async def _handshake(self, link: _Link) -> None:
        first = await self._next(link)
        if not isinstance(first, Banner):
            raise AmiProtocolError("no AMI banner (is this an Asterisk manager port?)")
        link.info.banner = first.text
        log.info("ami.connected host=%s port=%d banner=%r", self.host, self.port, first.text)
        early: list[Message] = []
        if self.auth == "md5":
            aid = self._next_id()
            link.send("Challenge", [("AuthType", "MD5")], aid)
            await link.writer.drain()
            reply = await self._reply(link, aid, early)
            challenge = reply.get("Challenge")
            if (reply.response or "").lower() != "success" or not challenge:
                raise AmiAuthError(self._auth_text(reply, "MD5 challenge refused"))
            fields = [("AuthType", "MD5"), ("Username", self.username),
                      ("Key", _md5_key(challenge, self._secret)), ("Events", self.events)]
        else:
            fields = [("Username", self.username), ("Secret", self._secret), ("Events", self.events)]
        aid = self._next_id()
        link.send("Login", fields, aid)
        await link.writer.drain()
        reply = await self._reply(link, aid, early)
        if (reply.response or "").lower() != "success":
            raise AmiAuthError(self._auth_text(reply, "login refused"))
        # events read with the reply are handed on after on_connected(), in order
        rest = [m for m in link.backlog if isinstance(m, Message)]
        link.backlog.clear()
        link.backlog.extend([*early, *rest])

    def _auth_text(self, reply: Message, what: str) -> str:
        return (f"AMI login to {self.host}:{self.port} as user {self.username!r} failed: "
                f"{reply.get('Message') or what} ({self.auth} auth)")

    async def _run_link(self, link: _Link) -> None:
        """Serve one logged-in link until it ends; every task it starts is awaited here."""
        first = self.stats.connects == 0
        self.stats.connects += 1
        if not first:
            self.stats.reconnects += 1
        self.stats.connected = True
        self._link = link
        self._up.set()
        log.info("ami.logged_in host=%s port=%d user=%s link=%d", self.host, self.port, self.username,
                 link.info.number)
        self._notify("on_connected", self._on_connected)
        early = [m for m in link.backlog if isinstance(m, Message)]
        link.backlog.clear()
        for m in early:
            self._dispatch(link, m)
        reader = asyncio.create_task(self._read_loop(link), name=f"{self.name}-reader")
        keepalive = asyncio.create_task(self._keepalive(link), name=f"{self.name}-keepalive")
        resync = asyncio.create_task(self._resync(link), name=f"{self.name}-resync")
        tasks = (reader, keepalive, resync)
        reason = "stopped"
        try:
            done, _ = await asyncio.wait((reader, keepalive), return_when=asyncio.FIRST_COMPLETED)
            reason = self._end_reason(done)
        finally:
            self._link = None
            self._up.clear()
            self.stats.connected = False
            self.stats.disconnects += 1
            if self._stopping:
                reason = "stopped"
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            link.fail_pending(reason)
            await link.close()
            level = logging.INFO
            if reason != "stopped":
                level = logging.WARNING
                self._set_error(f"{self.host}:{self.port}: link lost: {reason}")
            log.log(level, "ami.disconnected host=%s port=%d link=%d reason=%s", self.host, self.port,
                    link.info.number, reason)
            self._notify("on_disconnected", self._on_disconnected, reason)

    def _end_reason(self, done: set[asyncio.Task[str]]) -> str:
        task = next(iter(done))
        if task.cancelled():
            return "cancelled"
        exc = task.exception()
        if exc is None:
            return task.result()
        if isinstance(exc, OSError | AmiConnectionLost):
            return f"connection error: {type(exc).__name__}: {exc}"
        log.error("ami.%s crashed", task.get_name(), exc_info=exc)
        return f"internal error: {type(exc).__name__}"

    async def _read_loop(self, link: _Link) -> str:
        reader, decoder, dispatch = link.reader, link.decoder, self._dispatch
        while True:
            data = await reader.read(READ_CHUNK)
            if not data:
                return "eof"
            link.info.received_at = self._now()
            for m in decoder.feed(data):
                if isinstance(m, Banner):
                    continue
                dispatch(link, m)
                if m.event == "Shutdown":
                    log.warning("ami.pbx_shutdown host=%s port=%d shutdown=%s restart=%s", self.host, self.port,
                                m.get("Shutdown"), m.get("Restart"))
                    return "shutdown"

    async def _keepalive(self, link: _Link) -> str:
        """Ping every ping_interval_s; a Ping without reply within ping_timeout_s kills the link."""
        while True:
            await asyncio.sleep(self.ping_interval_s)
            pending = self._request(link, "Ping", (), is_list=False)
            try:
                await self._wait(link, pending, self.ping_timeout_s)
            except TimeoutError:
                self.stats.ping_timeouts += 1
                link.dead = True
                log.warning("ami.ping_timeout host=%s port=%d timeout=%gs: declaring the link dead",
                            self.host, self.port, self.ping_timeout_s)
                return f"no reply to Ping within {self.ping_timeout_s:g}s"
            except AmiActionError:
                pass  # any answer proves the link is alive

    async def _resync(self, link: _Link) -> None:
        """Ask for the PBX's state after a login; the list events reach on_message like all others.

        The actions are pipelined (Asterisk serves one session's actions in order),
        so QueueStatus's QueueEntry items arrive before CoreShowChannelsComplete.
        """
        if not self.resync_actions:
            return
        pendings = [self._request(link, a, (), is_list=True) for a in self.resync_actions]
        results = await asyncio.gather(*(self._wait(link, p, None) for p in pendings), return_exceptions=True)
        failed = [(p.action, r) for p, r in zip(pendings, results, strict=True) if isinstance(r, BaseException)]
        if failed:
            self.stats.resync_failures += 1
            for action, err in failed:
                log.warning("ami.resync_failed action=%s error=%s", action, err)
            return
        self.stats.resyncs += 1
        log.info("ami.resync_done %s", " ".join(f"{p.action}={len(p.items)}" for p in pendings))
