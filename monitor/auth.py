"""Who may do what: bearer tokens, roles and permissions.

Tokens come from the configuration (each one from an environment variable or
a file, never from YAML) plus ``RINGWATCH_ADMIN_TOKEN`` (role ``admin``, named
``admin-env``).  Only SHA-256 digests of the tokens are kept; a presented token
is hashed and compared with every known digest using
:func:`hmac.compare_digest`, so neither the content nor the length of a token
shows in the timing.  Tokens are never logged, and never accepted in a query
string (access logs print request lines): HTTP clients send
``Authorization: Bearer <token>``; browsers' websockets send a first frame
``{"type": "auth", "token": ...}`` instead (see ``alerts.ws``).

Roles, from least to most trusted: ``agent`` (a wallboard or an agent's own
screen) < ``qa`` / ``supervisor`` < ``admin``.  Permissions are listed
explicitly per role in :data:`ROLE_PERMISSIONS`; ``admin:*`` grants every
permission.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import redis.asyncio as aioredis
from aiohttp import web

from config.schema import AuthConfig, Role, UserConfig
from monitor.persist import RedisWriter

log = logging.getLogger(__name__)

Permission = Literal[
    "alerts:read",  # alert list and live alert frames
    "alerts:ack",  # acknowledge / resolve alerts
    "calls:read",  # live calls (caller masked per config)
    "calls:dispose",  # log a call's wrap-up outcome (OUT-WRAPUP disposition)
    "agents:read",  # agents and their states
    "notices:read",  # agent notices (e.g. "apologise to the caller")
    "metrics:read",  # /metrics
    "commitments:read",  # commitments (callbacks, complaint closing, ...) and the complaints report
    "commitments:write",  # create / fulfil / annotate commitments (agents, supervisors; not QA)
    "commitments:cancel",  # cancel a commitment (supervisor, admin)
    "kpi:read",  # wallboard KPIs (every role, the read-only wallboard role too)
    "calls:spy",  # listen / whisper / barge into a team's calls (supervisor, admin)
    "qa:read",  # QA quotas, samples, scorecards
    "qa:review",  # score a sampled call, run a sample
    "audit:read",  # the audit stream (admin)
    "outbound:read",  # OUT-HOURS status now, outbound violations today (every role)
    "outbound:permit",  # the pre-dial permission check (the PBX's token: role pbx; agents' desktops)
    "dnc:read",  # look up / list the do-not-call list
    "dnc:write",  # put a number on the do-not-call list (agents, supervisors)
    "dnc:manage",  # take a number off it, CSV import / export (supervisor, admin)
    "admin:*",  # everything
]

ADMIN_TOKEN_ENV: Final = "RINGWATCH_ADMIN_TOKEN"
ADMIN_TOKEN_NAME: Final = "admin-env"

_BASE: frozenset[Permission] = frozenset({"metrics:read", "agents:read", "notices:read", "commitments:read",
                                          "kpi:read"})
_AGENT: frozenset[Permission] = _BASE | {"calls:dispose", "commitments:write"}  # agents log their calls' outcomes
_QA: frozenset[Permission] = _BASE | {"alerts:read", "calls:read", "qa:read", "qa:review"}  # QA reviews, logs nothing
_SUPERVISOR: frozenset[Permission] = _QA | {"alerts:ack", "calls:dispose", "commitments:write", "commitments:cancel",
                                            "calls:spy"}
_WALLBOARD: frozenset[Permission] = frozenset({"kpi:read", "agents:read", "metrics:read"})  # a TV: read-only

#: OUT-HOURS / OUT-DNC (monitor.outbound_api), added to the roles' sets below
_OUT_READ: frozenset[Permission] = frozenset({"outbound:read", "dnc:read"})
_OUT_AGENT: frozenset[Permission] = _OUT_READ | {"outbound:permit", "dnc:write"}
_OUT_SUPERVISOR: frozenset[Permission] = _OUT_AGENT | {"dnc:manage"}

ROLE_PERMISSIONS: Final[Mapping[Role, frozenset[Permission]]] = {
    "agent": _AGENT | _OUT_AGENT,
    "qa": _QA | _OUT_READ,
    "supervisor": _SUPERVISOR | _OUT_SUPERVISOR,
    "admin": _SUPERVISOR | _OUT_SUPERVISOR | {"admin:*", "audit:read"},
    "wallboard": _WALLBOARD | {"outbound:read"},
    "pbx": frozenset({"outbound:permit"}),  # the dialplan's token: the pre-dial check and nothing else
}


def role_allows(role: Role, permission: Permission) -> bool:
    perms = ROLE_PERMISSIONS[role]
    return permission in perms or "admin:*" in perms


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated client: the token's configured name and role (never the token)."""

    name: str
    role: Role
    #: the teams this principal may see and spy on; None: every team (tokens, admins, QA)
    teams: frozenset[str] | None = None
    phone: str | None = None  # a logged-in user's own phone (ChanSpy rings it)
    via: Literal["token", "session"] = "token"

    def can(self, permission: Permission) -> bool:
        return role_allows(self.role, permission)

    @property
    def permissions(self) -> list[str]:
        return sorted(ROLE_PERMISSIONS[self.role])


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenStore:
    """The known tokens, as digests.  ``authenticate`` is constant-time in the token."""

    def __init__(self, entries: Iterable[tuple[str, str, Role]] = ()) -> None:
        """``entries``: (token, name, role) triples; empty tokens are ignored."""
        self._entries: list[tuple[bytes, Principal]] = []
        #: browser sessions (``monitor.ui`` sets this); None: bearer tokens only
        self.sessions: SessionStore | None = None
        seen: set[bytes] = set()
        for token, name, role in entries:
            if not token:
                continue
            d = _digest(token)
            if d in seen:
                log.warning("auth: token %r has the same value as an earlier token; ignored", name)
                continue
            seen.add(d)
            self._entries.append((d, Principal(name, role)))

    @classmethod
    def from_config(cls, cfg: AuthConfig, env: Mapping[str, str] | None = None) -> TokenStore:
        """Tokens from ``cfg.tokens`` and ``RINGWATCH_ADMIN_TOKEN`` (read from ``env``, default ``os.environ``)."""
        env = os.environ if env is None else env
        entries: list[tuple[str, str, Role]] = []
        admin = (env.get(ADMIN_TOKEN_ENV) or "").strip()
        if admin:
            entries.append((admin, ADMIN_TOKEN_NAME, "admin"))
        for tc in cfg.tokens:
            # token_env is read from ``env`` (testable); token_file through the schema
            token = (env.get(tc.token_env) or "").strip() or None if tc.token_env else tc.token()
            if token is None:
                log.warning("auth: token %r (role %s) has no value; it is not accepted", tc.name, tc.role)
                continue
            if len(token) < 16:
                log.warning("auth: token %r is shorter than 16 characters", tc.name)
            entries.append((token, tc.name, tc.role))
        return cls(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:  # never the tokens
        return f"TokenStore({[(p.name, p.role) for _, p in self._entries]!r})"

    def authenticate(self, token: str | None) -> Principal | None:
        """The principal owning ``token``, or None.  Every known digest is compared (no early exit)."""
        if not token:
            return None
        presented = _digest(token)
        found: Principal | None = None
        for digest, principal in self._entries:
            if hmac.compare_digest(presented, digest) and found is None:
                found = principal
        return found


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    return value or None


# -- HTTP ------------------------------------------------------------------------

#: The challenge sent with every 401.
WWW_AUTHENTICATE: Final = 'Bearer realm="ringwatch"'


def json_response(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON body with Chinese left readable (``ensure_ascii=False``): every API answer."""
    return web.json_response(obj, status=status, headers=headers, dumps=lambda o: json.dumps(o, ensure_ascii=False))


_ERROR_CLASSES: Final[dict[int, type[web.HTTPException]]] = {
    cls.status_code: cls for cls in vars(web).values()
    if isinstance(cls, type) and issubclass(cls, web.HTTPError) and getattr(cls, "status_code", 0) >= 400
}


def error_class(status: int) -> type[web.HTTPException]:
    """The aiohttp error class of a service error's HTTP status (an unknown status is a bug: 500)."""
    return _ERROR_CLASSES.get(status, web.HTTPInternalServerError)


def json_error(status: type[web.HTTPException], code: str, zh: str, en: str,
               headers: Mapping[str, str] | None = None) -> web.HTTPException:
    """An HTTP error whose body is ``{"error": code, "message": {"zh": ..., "en": ...}}``."""
    body = json.dumps({"error": code, "message": {"zh": zh, "en": en}}, ensure_ascii=False)
    return status(text=body, content_type="application/json", headers=headers)


def unauthorized(invalid: bool) -> web.HTTPException:
    challenge = WWW_AUTHENTICATE + (', error="invalid_token"' if invalid else "")
    if invalid:
        return json_error(web.HTTPUnauthorized, "unauthorized", "令牌无效", "invalid token",
                          {"WWW-Authenticate": challenge})
    return json_error(web.HTTPUnauthorized, "unauthorized", "需要令牌(Authorization: Bearer)",
                      "a token is required (Authorization: Bearer)", {"WWW-Authenticate": challenge})


def forbidden(permission: Permission) -> web.HTTPException:
    return json_error(web.HTTPForbidden, "forbidden", f"当前角色无权限:{permission}",
                      f"your role lacks the permission {permission}")


def authenticate_request(request: web.Request, tokens: TokenStore) -> Principal:
    """The request's principal; raises 401 (with ``WWW-Authenticate``) when the token is missing or unknown.

    Without an ``Authorization`` header, a browser's session cookie (``monitor.ui`` login) is
    accepted when ``tokens.sessions`` is set; a state-changing request on a session must carry
    the session's CSRF token in ``X-CSRF-Token`` (403 otherwise)."""
    header = request.headers.get("Authorization")
    if header is None and tokens.sessions is not None and SESSION_COOKIE in request.cookies:
        return tokens.sessions.authenticate_request(request)
    token = bearer_token(header)
    if token is None:
        raise unauthorized(invalid=header is not None)
    principal = tokens.authenticate(token)
    if principal is None:
        raise unauthorized(invalid=True)
    return principal


def authorize(request: web.Request, tokens: TokenStore, permission: Permission) -> Principal:
    """Like :func:`authenticate_request`, then 403 when the role lacks ``permission``."""
    principal = authenticate_request(request, tokens)
    if not principal.can(permission):
        raise forbidden(permission)
    return principal


# -- people: passwords, sessions, CSRF (the web UI) ------------------------------------------

#: The session cookie: Secure (per ``ui.cookie_secure``), HttpOnly, SameSite=Strict, Path=/.
SESSION_COOKIE: Final = "rw_session"
CSRF_HEADER: Final = "X-CSRF-Token"
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_password(password: str, *, salt: bytes | None = None, n: int = _SCRYPT_N) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64), for ``ui.users[].password_hash``."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    return f"scrypt${n}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Check ``password`` against a ``scrypt$...`` or ``pbkdf2_sha256$iterations$salt$hash`` string."""
    try:
        parts = stored.split("$")
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt, want = _unb64(parts[4]), _unb64(parts[5])
            got = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(want),
                                 maxmem=256 * 1024 * 1024)
        elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            salt, want = _unb64(parts[2]), _unb64(parts[3])
            got = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, int(parts[1]), len(want))
        else:
            return False
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, want)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii").rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)


@functools.cache
def _dummy_hash() -> str:
    """What an unknown user's password is checked against (same cost as a real one)."""
    return hash_password(secrets.token_urlsafe(16))


class UserDirectory:
    """The users of ``ui.users``: name -> (password hash, principal).  A login verifies in a worker
    thread (scrypt costs ~50 ms of CPU); an unknown name costs the same as a wrong password."""

    def __init__(self, users: Iterable[UserConfig], *, qa_team_scoped: bool = False) -> None:
        """Supervisors and agents are limited to their ``teams``; QA too when ``qa_team_scoped``."""
        self._users: dict[str, tuple[str, Principal]] = {}
        scoped = {"supervisor", "agent"} | ({"qa"} if qa_team_scoped else set())
        for u in users:
            teams = frozenset(u.teams) if u.role in scoped else None
            self._users[u.name] = (u.password_hash, Principal(u.name, u.role, teams, u.phone, "session"))

    def __len__(self) -> int:
        return len(self._users)

    def principal(self, name: str) -> Principal | None:
        entry = self._users.get(name)
        return entry[1] if entry else None

    async def verify(self, name: str, password: str) -> Principal | None:
        entry = self._users.get(name)
        stored = entry[0] if entry is not None else _dummy_hash()
        ok = await asyncio.to_thread(verify_password, password, stored)
        return entry[1] if ok and entry is not None else None


@dataclass(slots=True)
class Session:
    principal: Principal
    csrf: str
    expires: float


class SessionStore:
    """Browser sessions.  Only SHA-256 digests of session ids are kept; ``now`` is Unix time (injectable).

    In memory, and in Redis when there is one (:meth:`use_redis`: key ``<prefix>sess:<digest hex>``,
    a JSON ``{"name", "csrf", "expires"}`` with the session's TTL as the key's expiry; written behind,
    loaded at :meth:`start`), so a restart does not log everyone out.  A loaded session takes the
    user's *current* role and teams from the user directory; a user no longer configured is dropped."""

    def __init__(self, ttl_s: float, now: Callable[[], float] = time.time, limit: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self._now = now
        self._limit = limit
        self._sessions: dict[bytes, Session] = {}
        self.writer: RedisWriter | None = None
        self._prefix = "ringwatch:"
        self._users: UserDirectory | None = None

    def use_redis(self, client: aioredis.Redis, prefix: str, users: UserDirectory) -> None:
        """Keep the sessions in Redis too (before :meth:`start`)."""
        self.writer = RedisWriter(client, "sessions")
        self._prefix = prefix
        self._users = users

    def _key(self, digest: bytes) -> str:
        return f"{self._prefix}sess:{digest.hex()}"

    async def start(self) -> None:
        """Load the sessions kept in Redis (a Redis failure is logged: nobody is logged in then)."""
        if self.writer is None:
            return
        try:
            await self._load()
        except Exception as e:
            log.error("auth: could not load the sessions from Redis (%s)", type(e).__name__)
        await self.writer.start()

    async def stop(self) -> None:
        if self.writer is not None:
            await self.writer.stop()

    async def _load(self) -> None:
        assert self.writer is not None
        assert self._users is not None
        r = self.writer.client
        keys = [k async for k in r.scan_iter(match=f"{self._prefix}sess:*", count=1000)]
        now = self._now()
        loaded = 0
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            for key, raw in zip(chunk, await r.mget(chunk), strict=True):
                name = key if isinstance(key, str) else key.decode()
                try:
                    d = json.loads(raw) if raw is not None else None
                    digest = bytes.fromhex(name.rsplit(":", 1)[1])
                    principal = self._users.principal(str(d["name"])) if isinstance(d, dict) else None
                    if principal is None or not isinstance(d, dict) or float(d["expires"]) <= now:
                        continue
                    self._sessions[digest] = Session(principal, str(d["csrf"]), float(d["expires"]))
                    loaded += 1
                except (ValueError, KeyError, TypeError, IndexError):
                    continue
        log.info("auth: %d browser sessions loaded from Redis", loaded)

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, principal: Principal) -> tuple[str, Session]:
        """A new session id (for the cookie) and its session (with the CSRF token)."""
        self._expire()
        while len(self._sessions) >= self._limit:  # the oldest go first
            oldest = next(iter(self._sessions))
            del self._sessions[oldest]
            self._forget(oldest)
        sid = secrets.token_urlsafe(32)
        session = Session(principal, secrets.token_urlsafe(24), self._now() + self.ttl_s)
        digest = _digest(sid)
        self._sessions[digest] = session
        if self.writer is not None:
            key, ttl_ms = self._key(digest), max(1, int(self.ttl_s * 1000))
            value = json.dumps({"name": principal.name, "csrf": session.csrf, "expires": session.expires})
            self.writer.submit(lambda r: r.set(key, value, px=ttl_ms))
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        key = _digest(sid)
        session = self._sessions.get(key)
        if session is not None and session.expires <= self._now():
            del self._sessions[key]
            return None
        return session

    def delete(self, sid: str | None) -> bool:
        if not sid:
            return False
        digest = _digest(sid)
        self._forget(digest)
        return self._sessions.pop(digest, None) is not None

    def _forget(self, digest: bytes) -> None:
        if self.writer is not None:
            key = self._key(digest)
            self.writer.submit(lambda r: r.delete(key))

    def _expire(self) -> None:  # Redis expires its copies by itself (the key's TTL)
        now = self._now()
        for key in [k for k, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[key]

    def authenticate_request(self, request: web.Request) -> Principal:
        """The session's principal; 401 for an unknown/expired session, 403 for a state-changing
        request without the session's CSRF token (or from another origin)."""
        session = self.get(request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise json_error(web.HTTPUnauthorized, "unauthorized", "会话已失效,请重新登录",
                             "session expired: log in again", {"WWW-Authenticate": WWW_AUTHENTICATE})
        if request.method not in SAFE_METHODS:
            check_csrf(request, session)
        return session.principal


def same_origin(request: web.Request) -> bool:
    """False when the request says it comes from another origin (``Origin`` header)."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    return origin.split("://", 1)[-1] == request.host


def check_csrf(request: web.Request, session: Session) -> None:
    """403 unless ``X-CSRF-Token`` equals the session's token and the origin is ours."""
    presented = request.headers.get(CSRF_HEADER, "")
    if not same_origin(request) or not hmac.compare_digest(presented.encode(), session.csrf.encode()):
        raise json_error(web.HTTPForbidden, "csrf", "缺少或错误的 CSRF 令牌(X-CSRF-Token)",
                         "missing or wrong CSRF token (X-CSRF-Token)")
