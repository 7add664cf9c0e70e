"""What the loopback PBX servers share (``telephony.ami.server``, ``telephony.esl.server``): a
listening socket on loopback, one session per accepted connection, session bookkeeping, and
``wait_until`` for tests.  Each protocol subclasses :class:`LoopbackSession` (its per-connection
state) and :class:`LoopbackServer` (``_new_session`` and ``_serve``, the protocol itself).

These servers are test and demo tools (they play recordings and the simulator over real TCP);
ringwatch itself only ever connects to a PBX.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Generic, Self, TypeVar

log = logging.getLogger(__name__)


class Conditions:
    """``wait(predicate)`` until it holds; the owner calls :meth:`changed` whenever its state changes
    (no polling: each predicate is checked on every change)."""

    def __init__(self) -> None:
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    async def wait(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        if predicate():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, fut)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout_s):
                await fut
        finally:
            self._waiters.remove(entry)

    def changed(self) -> None:
        for predicate, fut in self._waiters:
            if not fut.done() and predicate():
                fut.set_result(None)


class LoopbackSession:
    """One accepted connection: its streams, and ``end`` to reset it and wait for its handler."""

    def __init__(self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.number = number
        self.reader = reader
        self.writer = writer
        self.done = asyncio.Event()
        self.task = asyncio.current_task()  # the handler (asyncio's streams created it)

    def send_raw(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    async def flush(self) -> None:
        if not self.writer.is_closing():
            await self.writer.drain()

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.transport.abort()

    async def end(self) -> None:
        """Reset the connection and wait until its handler is gone (even if it was sleeping)."""
        self.abort()
        if self.task is not None and self.task is not asyncio.current_task() and not self.task.done():
            self.task.cancel()
        await self.done.wait()


S = TypeVar("S", bound=LoopbackSession)


class LoopbackServer(abc.ABC, Generic[S]):
    """Listening socket, session bookkeeping, and ``wait_until`` for tests."""

    #: the logger's prefix in "session N failed" lines
    kind = "loopback"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.connections = 0
        self.connect_times: list[float] = []  # loop.time() of each accepted connection
        self._server: asyncio.Server | None = None
        self._sessions: set[S] = set()
        self._conditions = Conditions()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening, close every session and wait for their handlers."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for s in list(self._sessions):
            await s.end()
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        """Wait until ``predicate()`` holds; it is checked on every change of the server's state."""
        await self._conditions.wait(predicate, timeout_s)

    def changed(self) -> None:
        """Wake ``wait_until`` callers (also useful to tests that change state themselves)."""
        self._conditions.changed()

    @abc.abstractmethod
    def _new_session(self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> S:
        """This protocol's per-connection state."""

    @abc.abstractmethod
    async def _serve(self, sess: S) -> None:
        """Speak the protocol on one connection until it ends."""

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.connect_times.append(asyncio.get_running_loop().time())
        sess = self._new_session(self.connections, reader, writer)
        self._sessions.add(sess)
        self.changed()
        try:
            await self._serve(sess)
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass  # the peer left, or stop()/drop() ended the session: this is the handler's top
        except Exception:
            log.exception("%s.server: session %d failed", self.kind, sess.number)
        finally:
            self._sessions.discard(sess)
            writer.close()
            try:
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            finally:
                sess.done.set()
                self.changed()
