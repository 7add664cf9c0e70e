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

import hashlib
import hmac
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from aiohttp import web

from config.schema import AuthConfig, Role

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
    "admin:*",  # everything
]

ADMIN_TOKEN_ENV: Final = "RINGWATCH_ADMIN_TOKEN"
ADMIN_TOKEN_NAME: Final = "admin-env"

_BASE: frozenset[Permission] = frozenset({"metrics:read", "agents:read", "notices:read", "commitments:read"})
_AGENT: frozenset[Permission] = _BASE | {"calls:dispose", "commitments:write"}  # agents log their calls' outcomes
_QA: frozenset[Permission] = _BASE | {"alerts:read", "calls:read"}  # QA reviews, does not log outcomes
_SUPERVISOR: frozenset[Permission] = _QA | {"alerts:ack", "calls:dispose", "commitments:write", "commitments:cancel"}

ROLE_PERMISSIONS: Final[Mapping[Role, frozenset[Permission]]] = {
    "agent": _AGENT,
    "qa": _QA,
    "supervisor": _SUPERVISOR,
    "admin": _SUPERVISOR | {"admin:*"},
}


def role_allows(role: Role, permission: Permission) -> bool:
    perms = ROLE_PERMISSIONS[role]
    return permission in perms or "admin:*" in perms


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated client: the token's configured name and role (never the token)."""

    name: str
    role: Role

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
    """The request's principal; raises 401 (with ``WWW-Authenticate``) when the token is missing or unknown."""
    header = request.headers.get("Authorization")
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
