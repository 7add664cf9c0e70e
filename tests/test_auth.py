"""Tokens, roles and permissions."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from config.schema import AuthConfig, Role
from monitor.auth import (
    ADMIN_TOKEN_ENV,
    ROLE_PERMISSIONS,
    Permission,
    TokenStore,
    authorize,
    bearer_token,
    role_allows,
)

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

ROLES: tuple[Role, ...] = ("agent", "qa", "supervisor", "admin")

#: the table operators read in the README: who may do what
EXPECTED: dict[Permission, set[Role]] = {
    "metrics:read": {"agent", "qa", "supervisor", "admin"},
    "agents:read": {"agent", "qa", "supervisor", "admin"},
    "notices:read": {"agent", "qa", "supervisor", "admin"},
    "alerts:read": {"qa", "supervisor", "admin"},
    "calls:read": {"qa", "supervisor", "admin"},
    "alerts:ack": {"supervisor", "admin"},
    "admin:*": {"admin"},
}


@pytest.mark.parametrize("permission", sorted(EXPECTED))
def test_permission_table(permission: Permission) -> None:
    assert {r for r in ROLES if role_allows(r, permission)} == EXPECTED[permission]


def test_roles_are_ordered() -> None:
    agent, qa, sup, admin = (ROLE_PERMISSIONS[r] for r in ROLES)
    assert agent < sup < admin
    assert qa < sup
    # QA reviews calls and alerts but does not log an agent's call outcome
    assert "calls:dispose" in agent
    assert "calls:dispose" not in qa


def test_tokens_from_config_env_and_file(tmp_path: Path) -> None:
    f = tmp_path / "wallboard_token"
    f.write_text("file-token-0123456789\n", encoding="utf-8")
    cfg = AuthConfig.model_validate({"tokens": [
        {"name": "floor", "role": "supervisor", "token_env": "SUP_TOKEN"},
        {"name": "wallboard", "role": "agent", "token_file": str(f)},
        {"name": "unset", "role": "qa", "token_env": "UNSET_TOKEN"},
    ]})
    env = {"SUP_TOKEN": "env-token-0123456789", ADMIN_TOKEN_ENV: "admin-token-0123456789"}
    store = TokenStore.from_config(cfg, env)
    assert len(store) == 3
    p = store.authenticate("env-token-0123456789")
    assert p is not None
    assert (p.name, p.role) == ("floor", "supervisor")
    p = store.authenticate("file-token-0123456789")
    assert p is not None
    assert (p.name, p.role) == ("wallboard", "agent")
    p = store.authenticate("admin-token-0123456789")
    assert p is not None
    assert (p.name, p.role) == ("admin-env", "admin")
    assert p.can("alerts:ack")
    for bad in ("", None, "env-token-012345678", "env-token-0123456789 ", "ENV-TOKEN-0123456789", "令牌"):
        assert store.authenticate(bad) is None


def test_no_tokens_no_way_in() -> None:
    store = TokenStore.from_config(AuthConfig(), env={})
    assert len(store) == 0
    assert store.authenticate("anything") is None


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("monitor.auth.hmac.compare_digest", spy)
    store = TokenStore([("first-token-0123456789", "a", "agent"), ("second-token-0123456789", "b", "qa")])
    assert store.authenticate("first-token-0123456789") is not None
    # every known token is compared (no early exit), as fixed-length digests (no length leak)
    assert len(calls) == 2
    assert {len(a) for a, _ in calls} == {32}
    assert {len(b) for _, b in calls} == {32}


def test_tokens_never_appear_in_repr_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = AuthConfig.model_validate({"tokens": [{"name": "short", "role": "qa", "token_env": "T1"},
                                                {"name": "dup", "role": "qa", "token_env": "T2"}]})
    store = TokenStore.from_config(cfg, {"T1": "tiny", "T2": "tiny"})
    text = repr(store) + "\n".join(r.getMessage() for r in caplog.records)
    assert "tiny" not in text
    assert "short" in text
    assert "dup" in text
    assert len(store) == 1


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None), ("", None), (None, None),
])
def test_bearer_header(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


# -- over HTTP -------------------------------------------------------------------------


@pytest.fixture
async def base() -> AsyncIterator[str]:
    store = TokenStore.from_config(
        AuthConfig.model_validate({"tokens": [{"name": "wallboard", "role": "agent", "token_env": "AGENT_T"},
                                              {"name": "floor", "role": "supervisor", "token_env": "SUP_T"}]}),
        {"AGENT_T": "agent-token-0123456789", "SUP_T": "sup-token-0123456789", ADMIN_TOKEN_ENV: "adm-0123456789"})

    async def ack(request: web.Request) -> web.Response:
        p = authorize(request, store, "alerts:ack")
        return web.json_response({"name": p.name, "role": p.role})

    app = web.Application()
    app.router.add_post("/ack", ack)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.mark.parametrize(("header", "status", "who"), [
    (None, 401, None),
    ("Bearer wrong-token", 401, None),
    ("Basic YWdlbnQ6eA==", 401, None),
    ("Bearer agent-token-0123456789", 403, None),
    ("Bearer sup-token-0123456789", 200, "floor"),
    ("Bearer adm-0123456789", 200, "admin-env"),
])
async def test_http_401_403_200(base: str, header: str | None, status: int, who: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    async with aiohttp.ClientSession() as http, http.post(f"{base}/ack", headers=headers) as resp:
        assert resp.status == status
        body = await resp.json()
        if status == 401:
            challenge = resp.headers["WWW-Authenticate"]
            assert challenge.startswith('Bearer realm="ringwatch"')
            assert ("invalid_token" in challenge) == (header is not None)
            assert body["error"] == "unauthorized"
            assert body["message"]["zh"]
            assert body["message"]["en"]
        elif status == 403:
            assert body["error"] == "forbidden"
            assert "alerts:ack" in body["message"]["en"]
        else:
            assert body["name"] == who
