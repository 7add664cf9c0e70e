"""The asyncio ESL client: a thin adapter around the sans-I/O codec.

One owned supervisor task (``esl-supervisor``) runs the reconnect loop::

    connect (connect_timeout_s) -> auth/request -> auth <password> (login_timeout_s)
    -> event plain <what the tracker reads> -> on_connected()
    -> resync (api strmicroepoch, show channels/calls as json, callcenter_config lists)
       while reading and watching liveness
    -> link ends (EOF, reset, disconnect-notice, nothing received for heartbeat_timeout_s)
    -> on_disconnected(reason) -> wait the next delay of the backoff -> again

While a link is up it owns ``esl-reader`` (reads 64 KiB chunks, decodes, hands
every event to ``on_event`` in arrival order and answers the waiting commands:
ESL replies to a connection's commands strictly in order, so ``command/reply``
and ``api/response`` frames are matched first in, first out; ``bgapi`` results
come later as ``BACKGROUND_JOB`` events matched by the ``Job-UUID`` we chose),
``esl-liveness`` (FreeSWITCH sends ``HEARTBEAT`` every event-heartbeat-interval,
20 s by default, so an idle but healthy link still carries data: nothing at all
for ``heartbeat_timeout_s`` and the link is declared dead) and ``esl-resync``.
All are cancelled and awaited when the link ends and in :meth:`EslClient.stop`.

Resync: the snapshot's replies go to ``on_resync_reply(command, body, now)``
synchronously in the reader, in stream order (every event before a reply has been
handed on before it), and ``on_resync_done(now)`` right after the last one, so the
consumer reconciles exactly the state the snapshot describes.

Errors are classified: a refused password (``-ERR invalid``) or an ACL refusal
(``text/rude-rejection``) is loud (ERROR, naming host and port, never the password)
and retried no sooner than ``auth_retry_min_s``; network errors and EOF are retried
after the next backoff delay (capped exponential, full jitter), which restarts
after every good login.  The password never reaches a log record, not even at
DEBUG: commands are logged by their first word only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from telephony.backoff import backoff as backoff
from telephony.esl.codec import (
    DEFAULT_MAX_FRAME_BYTES,
    DecoderStats,
    EslDecoder,
    EslEvent,
    EslFrame,
    EventFilter,
    encode_command,
)
from telephony.esl.tracker import FsTracker, pipe_rows
from telephony.linkclient import LinkClient

if TYPE_CHECKING:
    from config.schema import EslConfig

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
_MEMBERS = "api callcenter_config queue list members "
_QUEUE_LIST = "api callcenter_config queue list"

EventCallback = Callable[[EslEvent, float], None]
ReplyHook = Callable[[str, str, float], None]
DelayFactory = Callable[[], Iterator[float]]


# -- errors ------------------------------------------------------------------------


class EslError(Exception):
    """Base class of the client's errors."""


class EslAuthError(EslError):
    """FreeSWITCH refused the password (or the ACL refused us).  The text never holds the password."""


class EslProtocolError(EslError):
    """The peer does not speak ESL as expected."""


class EslConnectionLost(EslError):
    """The link went away while a command was waiting for its reply."""


class EslNotConnected(EslConnectionLost):
    """A command was sent while no link is up."""


class EslCommandError(EslError):
    """FreeSWITCH answered ``-ERR ...``."""

    def __init__(self, command: str, reply: str) -> None:
        self.command = command
        self.reply = reply
        super().__init__(f"ESL command {' '.join(command.split(' ', 2)[:2])} failed: {reply.strip()[:200]}")


# -- public state ----------------------------------------------------------------------


@dataclass(slots=True)
class EslConnection:
    """What a consumer may know about the link a frame came on."""

    number: int  # 1 for the first link of this client, then 2, 3, ...
    host: str
    port: int
    received_at: float = 0.0  # now() when the TCP read carrying the frame returned


@dataclass(slots=True)
class EslClientStats:
    connected: bool = False
    connect_attempts: int = 0
    connects: int = 0  # good logins
    reconnects: int = 0  # good logins after the first one
    disconnects: int = 0
    auth_failures: int = 0
    heartbeat_timeouts: int = 0
    heartbeats: int = 0
    resyncs: int = 0
    resync_failures: int = 0
    events_received: int = 0
    last_error: str | None = None
    decoder: DecoderStats = field(default_factory=DecoderStats)


# -- internals -------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    command: str  # for messages: the first word only is logged
    future: asyncio.Future[EslFrame]
    hook: Callable[[EslFrame, float], None] | None = None  # run in the reader, in stream order


@dataclass(slots=True, eq=False)
class _Link:
    info: EslConnection
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    decoder: EslDecoder
    pending: deque[_Pending] = field(default_factory=deque)
    jobs: dict[str, asyncio.Future[str]] = field(default_factory=dict)
    backlog: deque[EslFrame | EslEvent] = field(default_factory=deque)
    last_rx: float = 0.0  # loop time of the last read that carried data
    resync_done: asyncio.Future[None] | None = None
    dead: bool = False  # abort instead of a graceful close

    def fail_pending(self, reason: str) -> None:
        pending, self.pending = self.pending, deque()
        jobs, self.jobs = self.jobs, {}
        futures: list[asyncio.Future[Any]] = [p.future for p in pending]
        futures.extend(jobs.values())
        if self.resync_done is not None:
            futures.append(self.resync_done)
        for fut in futures:
            if not fut.done():
                fut.set_exception(EslConnectionLost(f"ESL link lost ({reason})"))
                fut.exception()  # the waiter may be gone: never warn about an unretrieved exception

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


def _verb(command: str) -> str:
    """What may be logged of a command: its first word (``auth`` never with its password)."""
    return command.split(" ", 1)[0]


class EslClient(LinkClient):
    """Asyncio ESL client: auth, narrow subscription, command correlation, liveness, resync, reconnect.

    ``on_event(event, received_at)`` receives every event in arrival order,
    synchronously in the reader task; ``received_at`` is the injected ``now()`` when
    the TCP read carrying it returned.  ``on_connected()`` runs after every good
    login (before the resync), ``on_disconnected(reason)`` when a link that had logged
    in ends, ``on_error(text)`` when a connect or login fails or a link is lost.
    Callbacks must not block; an exception in one is logged and does not break the link.
    """

    stats: EslClientStats

    def __init__(
        self,
        *,
        host: str,
        port: int,
        password: str,
        connect_timeout_s: float = 5.0,
        login_timeout_s: float = 10.0,
        command_timeout_s: float = 10.0,
        heartbeat_timeout_s: float = 60.0,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        reconnect_factor: float = 2.0,
        auth_retry_min_s: float = 10.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        subscription: str | None = None,
        event_filter: EventFilter | None = FsTracker.FILTER,
        on_event: EventCallback | None = None,
        on_connected: Callable[[], None] | None = None,
        on_disconnected: Callable[[str], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        on_resync_reply: ReplyHook | None = None,
        on_resync_done: Callable[[float], None] | None = None,
        resync_commands: Iterable[str] | None = FsTracker.RESYNC_COMMANDS,
        delays: DelayFactory | None = None,
        now: Callable[[], float] = time.monotonic,
        name: str = "esl",
    ) -> None:
        self.host = host
        self.port = port
        self._password = password
        self.connect_timeout_s = connect_timeout_s
        self.login_timeout_s = login_timeout_s
        self.command_timeout_s = command_timeout_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.auth_retry_min_s = auth_retry_min_s
        self.max_frame_bytes = max_frame_bytes
        self.subscription = subscription or FsTracker.subscription()
        self.event_filter = event_filter
        self.resync_commands = tuple(resync_commands or ())
        self.name = name
        self._on_event = on_event
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._on_error = on_error
        self._on_resync_reply = on_resync_reply
        self._on_resync_done = on_resync_done
        self._now = now
        self._delays: DelayFactory = delays or functools.partial(
            backoff, reconnect_initial_s, reconnect_max_s, reconnect_factor
        )
        self.stats = EslClientStats()
        self._link: _Link | None = None
        self._links = 0
        self.kind = "ESL"
        self._init_lifecycle()

    @classmethod
    def from_config(cls, cfg: EslConfig, **kwargs: Any) -> EslClient:
        """Build a client from ``pbx.esl``; the password comes from ``cfg.password()`` unless given."""
        params: dict[str, Any] = {
            "host": cfg.host,
            "port": cfg.port,
            "password": kwargs.pop("password") if "password" in kwargs else cfg.password(),
            "connect_timeout_s": cfg.connect_timeout_s,
            "login_timeout_s": cfg.login_timeout_s,
            "command_timeout_s": cfg.command_timeout_s,
            "heartbeat_timeout_s": cfg.heartbeat_timeout_s,
            "reconnect_initial_s": cfg.reconnect_initial_s,
            "reconnect_max_s": cfg.reconnect_max_s,
            "reconnect_factor": cfg.reconnect_factor,
            "auth_retry_min_s": cfg.auth_retry_min_s,
            "max_frame_bytes": cfg.max_frame_bytes,
        }
        if cfg.subscription == "all":
            params["subscription"] = "event plain ALL"
        params.update(kwargs)
        if not params["password"]:
            log.warning("esl.no_password: no ESL password configured (set $%s or pbx.esl.password_file); "
                        "the login will fail", cfg.password_env or "RINGWATCH_ESL_PASSWORD")
        return cls(**params)

    def __repr__(self) -> str:  # never the password
        state = "connected" if self.connected else "disconnected"
        return f"<EslClient {self.host}:{self.port} {state}>"

    # -- state ---------------------------------------------------------------------



    @property
    def connection(self) -> EslConnection | None:
        return self._link.info if self._link is not None else None


    # -- lifecycle -----------------------------------------------------------------

    async def _goodbye(self) -> None:
        link = self._link
        if link is None:
            return
        with contextlib.suppress(EslError, OSError, TimeoutError):
            await self._send(link, "exit", timeout_s=min(1.0, self.command_timeout_s))

    # -- commands ------------------------------------------------------------------

    async def command(self, command: str, timeout_s: float | None = None) -> EslFrame:
        """Send a command and return its ``command/reply`` (``-ERR`` raises :class:`EslCommandError`)."""
        reply = await self._send(self._require_link(), command, timeout_s)
        if reply.reply_text.startswith("-ERR"):
            raise EslCommandError(command, reply.reply_text)
        return reply

    async def api(self, command: str, timeout_s: float | None = None) -> str:
        """``api <command>``: its response body (``-ERR ...`` raises :class:`EslCommandError`)."""
        reply = await self._send(self._require_link(), f"api {command}", timeout_s)
        body = reply.body or ""
        if body.startswith("-ERR"):
            raise EslCommandError(f"api {command}", body)
        return body

    async def bgapi(self, command: str, timeout_s: float | None = None) -> str:
        """``bgapi <command>``: the job's result, from the ``BACKGROUND_JOB`` event with our ``Job-UUID``."""
        link = self._require_link()
        job = str(uuid.uuid4())
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        link.jobs[job] = fut
        try:
            async with asyncio.timeout(self.command_timeout_s if timeout_s is None else timeout_s):
                reply = await self._send(link, f"bgapi {command}", None, headers=[("Job-UUID", job)])
                if reply.reply_text.startswith("-ERR"):
                    raise EslCommandError(f"bgapi {command}", reply.reply_text)
                return await fut
        except TimeoutError:
            raise TimeoutError(f"no result for ESL bgapi {_verb(command)} within the timeout") from None
        finally:
            link.jobs.pop(job, None)

    async def bgapi_submit(self, command: str, job: str | None = None, timeout_s: float | None = None) -> str:
        """``bgapi <command>`` without waiting for its result: returns the Job-UUID (``job`` when given)
        once FreeSWITCH accepted it.  The result comes later as a ``BACKGROUND_JOB`` event with that
        Job-UUID (``on_event``).  ``-ERR`` raises :class:`EslCommandError`."""
        job = job or str(uuid.uuid4())
        reply = await self._send(self._require_link(), f"bgapi {command}", timeout_s, headers=[("Job-UUID", job)])
        if reply.reply_text.startswith("-ERR"):
            raise EslCommandError(f"bgapi {command}", reply.reply_text)
        return job

    def _require_link(self) -> _Link:
        link = self._link
        if link is None:
            raise EslNotConnected(f"ESL link to {self.host}:{self.port} is down")
        return link

    def _request(self, link: _Link, command: str, hook: Callable[[EslFrame, float], None] | None = None,
                 headers: Iterable[tuple[str, str]] = ()) -> _Pending:
        pending = _Pending(command, asyncio.get_running_loop().create_future(), hook)
        data = encode_command(command, headers)
        link.pending.append(pending)
        try:
            link.writer.write(data)
        except BaseException:
            link.pending.remove(pending)
            raise
        log.debug("esl.send %s", _verb(command))
        return pending

    async def _send(self, link: _Link, command: str, timeout_s: float | None,
                    headers: Iterable[tuple[str, str]] = ()) -> EslFrame:
        pending = self._request(link, command, headers=headers)
        return await self._wait(link, pending, timeout_s)

    async def _wait(self, link: _Link, pending: _Pending, timeout_s: float | None) -> EslFrame:
        try:
            async with asyncio.timeout(self.command_timeout_s if timeout_s is None else timeout_s):
                await link.writer.drain()
                return await pending.future
        except TimeoutError:
            # the reply may still come: it must not be taken for the next command's
            pending.hook = None
            raise TimeoutError(f"no reply to ESL {_verb(pending.command)} within the timeout") from None
        except ConnectionError as e:
            raise EslConnectionLost(f"ESL link lost while sending {_verb(pending.command)}: {e!r}") from None

    # -- dispatch ------------------------------------------------------------------

    def _dispatch(self, link: _Link, item: EslFrame | EslEvent, received_at: float) -> str | None:
        """Hand one decoded item on; returns a reason when the link must end."""
        if isinstance(item, EslEvent):
            self.stats.events_received += 1
            name = item.name
            if name == "HEARTBEAT":
                self.stats.heartbeats += 1
            elif name == "BACKGROUND_JOB":
                job = link.jobs.get(item.get("Job-UUID") or "")
                if job is not None and not job.done():
                    job.set_result(item.body or "")
            if self._on_event is not None:
                try:
                    self._on_event(item, received_at)
                except Exception:
                    log.exception("esl.on_event failed for %s", name)
            return None
        ctype = item.content_type
        if ctype in ("command/reply", "api/response"):
            if not link.pending:
                log.debug("esl.reply_unmatched %s", ctype)
                return None
            pending = link.pending.popleft()
            if pending.hook is not None:
                try:
                    pending.hook(item, received_at)
                except Exception:
                    log.exception("esl.resync hook failed for %s", _verb(pending.command))
            if not pending.future.done():
                pending.future.set_result(item)
            return None
        if ctype == "text/disconnect-notice":
            # the answer to our own ``exit`` when stopping; otherwise FreeSWITCH closed on us
            log.log(logging.INFO if self._stopping else logging.WARNING, "esl.disconnect_notice host=%s port=%d: %s",
                    self.host, self.port, (item.body or "").strip().splitlines()[0:1])
            return "disconnected by FreeSWITCH (disconnect-notice)"
        if ctype == "text/rude-rejection":
            return "rejected by FreeSWITCH (rude-rejection)"
        log.debug("esl.frame_ignored %s", ctype)
        return None

    def _notify(self, what: str, callback: Callable[..., None] | None, *args: object) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            log.exception("esl.%s callback failed", what)

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
            except EslAuthError as e:
                auth_failed = True
                self.stats.auth_failures += 1
                error: str | None = str(e)
                self._set_error(str(e))
            except (OSError, EOFError, EslError) as e:
                error = self._describe(e)
                self._set_error(error)
            except Exception as e:  # a bug: keep the daemon's link alive, loudly
                log.exception("esl.connect_crashed host=%s port=%d", self.host, self.port)
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
                log.error("esl.login_rejected: %s -- check the event socket password (event_socket.conf.xml, "
                          "$RINGWATCH_ESL_PASSWORD) and apply-inbound-acl; retrying in %.1fs (auth failures so "
                          "far: %d)", error, delay, self.stats.auth_failures)
            elif error is not None:
                log.warning("esl.connect_failed host=%s port=%d error=%s retry_in=%.2fs",
                            self.host, self.port, error, delay)
            else:
                log.info("esl.reconnect host=%s port=%d retry_in=%.2fs", self.host, self.port, delay)
            await asyncio.sleep(delay)

    def _describe(self, e: BaseException) -> str:
        where = f"{self.host}:{self.port}"
        if isinstance(e, TimeoutError):
            return f"{where}: timed out ({e})" if str(e) else f"{where}: timed out"
        return f"{where}: {e}" if isinstance(e, EslError) else f"{where}: {type(e).__name__}: {e}"

    async def _open(self) -> _Link:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_connection(self.host, self.port)
        except TimeoutError:
            raise TimeoutError(f"connect timed out after {self.connect_timeout_s:g}s") from None
        decoder = EslDecoder(self.max_frame_bytes, event_filter=self.event_filter, stats=self.stats.decoder)
        self._links += 1
        link = _Link(EslConnection(self._links, self.host, self.port), reader, writer, decoder)
        try:
            try:
                async with asyncio.timeout(self.login_timeout_s):
                    await self._handshake(link)
            except TimeoutError:
                raise TimeoutError(f"no auth/request or login reply within {self.login_timeout_s:g}s") from None
        except BaseException:
            link.dead = True
            await link.close()
            raise
        return link

    async def _next(self, link: _Link) -> EslFrame | EslEvent:
        while not link.backlog:
            data = await link.reader.read(READ_CHUNK)
            if not data:
                raise EslConnectionLost("connection closed by the server during login")
            link.info.received_at = self._now()
            link.last_rx = asyncio.get_running_loop().time()
            link.backlog.extend(link.decoder.feed(data))
        return link.backlog.popleft()

    async def _reply(self, link: _Link) -> EslFrame:
        """The next command/reply of the handshake (events before it stay in the backlog)."""
        early: list[EslEvent] = []
        try:
            while True:
                item = await self._next(link)
                if isinstance(item, EslEvent):
                    early.append(item)
                    continue
                if item.content_type == "text/rude-rejection":
                    raise EslAuthError(f"ESL connection to {self.host}:{self.port} refused by FreeSWITCH's ACL "
                                       f"(apply-inbound-acl in event_socket.conf.xml): {(item.body or '').strip()}")
                if item.content_type == "text/disconnect-notice":
                    raise EslConnectionLost("disconnected by FreeSWITCH during login")
                if item.content_type in ("command/reply", "api/response"):
                    return item
        finally:
            link.backlog.extendleft(reversed(early))

    async def _handshake(self, link: _Link) -> None:
        first = await self._next(link)
        if isinstance(first, EslFrame) and first.content_type == "text/rude-rejection":
            raise EslAuthError(f"ESL connection to {self.host}:{self.port} refused by FreeSWITCH's ACL "
                               f"(apply-inbound-acl in event_socket.conf.xml): {(first.body or '').strip()}")
        if not isinstance(first, EslFrame) or first.content_type != "auth/request":
            raise EslProtocolError("no auth/request (is this a FreeSWITCH event socket port?)")
        log.info("esl.connected host=%s port=%d", self.host, self.port)
        if any(c in self._password for c in "\r\n") or not self._password.strip():
            # refused here, without echoing it: encode_command would quote it in its error
            raise EslAuthError(f"ESL login to {self.host}:{self.port} not attempted: the configured password "
                               "is empty or contains a line break")
        link.writer.write(encode_command(f"auth {self._password}"))
        await link.writer.drain()
        reply = await self._reply(link)
        if not reply.reply_text.startswith("+OK"):
            raise EslAuthError(f"ESL login to {self.host}:{self.port} failed: "
                               f"{reply.reply_text or 'no reply text'} (wrong password?)")
        link.writer.write(encode_command(self.subscription))
        await link.writer.drain()
        reply = await self._reply(link)
        if not reply.reply_text.startswith("+OK"):
            raise EslProtocolError(f"event subscription refused: {reply.reply_text}")

    async def _run_link(self, link: _Link) -> None:
        """Serve one logged-in link until it ends; every task it starts is awaited here."""
        first = self.stats.connects == 0
        self.stats.connects += 1
        if not first:
            self.stats.reconnects += 1
        self.stats.connected = True
        self._link = link
        self._up.set()
        log.info("esl.logged_in host=%s port=%d link=%d subscription=%s", self.host, self.port,
                 link.info.number, self.subscription)
        self._notify("on_connected", self._on_connected)
        reason: str | None = None
        early = list(link.backlog)
        link.backlog.clear()
        for item in early:
            reason = reason or self._dispatch(link, item, link.info.received_at)
        reader = asyncio.create_task(self._read_loop(link), name=f"{self.name}-reader")
        liveness = asyncio.create_task(self._liveness(link), name=f"{self.name}-liveness")
        resync = asyncio.create_task(self._resync(link), name=f"{self.name}-resync")
        tasks = (reader, liveness, resync)
        try:
            if reason is None:
                done, _ = await asyncio.wait((reader, liveness), return_when=asyncio.FIRST_COMPLETED)
                reason = self._end_reason(done)
        finally:
            self._link = None
            self._up.clear()
            self.stats.connected = False
            self.stats.disconnects += 1
            if self._stopping or reason is None:
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
            log.log(level, "esl.disconnected host=%s port=%d link=%d reason=%s", self.host, self.port,
                    link.info.number, reason)
            self._notify("on_disconnected", self._on_disconnected, reason)

    def _end_reason(self, done: set[asyncio.Task[str]]) -> str:
        task = next(iter(done))
        if task.cancelled():
            return "cancelled"
        exc = task.exception()
        if exc is None:
            return task.result()
        if isinstance(exc, OSError | EslConnectionLost):
            return f"connection error: {type(exc).__name__}: {exc}"
        log.error("esl.%s crashed", task.get_name(), exc_info=exc)
        return f"internal error: {type(exc).__name__}"

    async def _read_loop(self, link: _Link) -> str:
        reader, decoder, dispatch = link.reader, link.decoder, self._dispatch
        loop = asyncio.get_running_loop()
        while True:
            data = await reader.read(READ_CHUNK)
            if not data:
                return "eof"
            received_at = link.info.received_at = self._now()
            link.last_rx = loop.time()
            for item in decoder.feed(data):
                reason = dispatch(link, item, received_at)
                if reason is not None:
                    return reason

    async def _liveness(self, link: _Link) -> str:
        """Nothing received for heartbeat_timeout_s (HEARTBEAT is due every 20 s): the link is dead."""
        loop = asyncio.get_running_loop()
        if not link.last_rx:
            link.last_rx = loop.time()
        while True:
            remaining = link.last_rx + self.heartbeat_timeout_s - loop.time()
            if remaining <= 0:
                self.stats.heartbeat_timeouts += 1
                link.dead = True
                log.warning("esl.heartbeat_timeout host=%s port=%d: nothing received for %gs (HEARTBEAT is "
                            "expected every event-heartbeat-interval): declaring the link dead",
                            self.host, self.port, self.heartbeat_timeout_s)
                return f"no HEARTBEAT or other data within {self.heartbeat_timeout_s:g}s"
            await asyncio.sleep(remaining)

    # -- resync ------------------------------------------------------------------------

    async def _resync(self, link: _Link) -> None:
        """Ask for FreeSWITCH's state after a login.  Replies are handed on in the reader (stream order);
        the per-queue member lists are asked for as soon as the queue list is in."""
        if not self.resync_commands:
            return
        loop = asyncio.get_running_loop()
        link.resync_done = loop.create_future()
        counts: dict[str, int] = {}
        commands = [c for c in self.resync_commands if c != _QUEUE_LIST]
        wants_queues = _QUEUE_LIST in self.resync_commands
        pendings = [self._request(link, c, self._resync_hook(link, c, counts, last=False)) for c in commands]
        if wants_queues:
            pendings.append(self._request(link, _QUEUE_LIST, self._queues_hook(link, counts)))
        else:
            pendings[-1].hook = self._resync_hook(link, pendings[-1].command, counts, last=True)
        try:
            async with asyncio.timeout(self.command_timeout_s * 2):
                await link.writer.drain()
                await asyncio.gather(*(p.future for p in pendings))
                await link.resync_done
        except (TimeoutError, EslError, OSError) as e:
            self.stats.resync_failures += 1
            log.warning("esl.resync_failed host=%s port=%d error=%s", self.host, self.port,
                        str(e) or type(e).__name__)
            return
        log.info("esl.resync_done %s", " ".join(f"{k}={v}" for k, v in counts.items()))

    def _resync_hook(self, link: _Link, command: str, counts: dict[str, int],
                     last: bool) -> Callable[[EslFrame, float], None]:
        def hook(frame: EslFrame, received_at: float) -> None:
            body = frame.body or ""
            key = _verb(command.removeprefix("api "))
            counts[key] = counts.get(key, 0) + 1
            self._notify("on_resync_reply", self._on_resync_reply, command, body, received_at)
            if last:
                self._finish_resync(link, received_at)

        return hook

    def _queues_hook(self, link: _Link, counts: dict[str, int]) -> Callable[[EslFrame, float], None]:
        def hook(frame: EslFrame, received_at: float) -> None:
            body = frame.body or ""
            self._notify("on_resync_reply", self._on_resync_reply, _QUEUE_LIST, body, received_at)
            queues = [q for q in (r.get("name", "") for r in pipe_rows(body)) if q and " " not in q]
            counts["queues"] = len(queues)
            if not queues:
                self._finish_resync(link, received_at)
                return
            for i, q in enumerate(queues):
                command = f"{_MEMBERS}{q}"
                self._request(link, command, self._resync_hook(link, command, counts, last=i == len(queues) - 1))

        return hook

    def _finish_resync(self, link: _Link, received_at: float) -> None:
        self.stats.resyncs += 1
        self._notify("on_resync_done", self._on_resync_done, received_at)
        if link.resync_done is not None and not link.resync_done.done():
            link.resync_done.set_result(None)
