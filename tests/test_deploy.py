"""Deployment files: the Dockerfile's essentials and its entrypoint, the systemd unit, the compose stack.

There is no Docker engine here, so the image is not built: the Dockerfile is read for what
matters (non-root user, HEALTHCHECK on /healthz, no secrets, every package copied), and its
ENTRYPOINT + CMD are run as they would run in the container, with the config the image
bakes in (deploy/docker.yaml), on an ephemeral port; the HEALTHCHECK command itself probes it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from config.schema import load_config

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
UNIT = DEPLOY / "systemd" / "ringwatch.service"
COMPOSE = DEPLOY / "docker-compose.yml"
SECRET_WORDS = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|API_?KEY|PRIVATE|ROBOT_URL", re.IGNORECASE)


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing in CI: scripts/test.sh should have installed Debian's {package}")
        pytest.skip(f"{name} not installed (Debian package {package}; scripts/test.sh installs it as root)")
    return path


# -- Dockerfile ----------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), args
    return [str(v) for v in value]


def test_dockerfile_essentials() -> None:
    ins = _instructions()
    words = [w for w, _ in ins]
    assert ins[0] == ("FROM", "python:3.11-slim")
    # runs as a non-root user, set before the entrypoint and never switched back
    users = [a for w, a in ins if w == "USER"]
    assert users, "no USER: the container would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert max(i for i, w in enumerate(words) if w == "USER") < words.index("ENTRYPOINT")
    # HEALTHCHECK probes /healthz
    (health,) = [a for w, a in ins if w == "HEALTHCHECK"]
    assert "/healthz" in health
    assert "CMD" in health
    # no secret in ENV / ARG / LABEL
    for w, a in ins:
        if w in ("ENV", "ARG", "LABEL"):
            assert not SECRET_WORDS.search(a), f"{w} {a}: secrets come from the environment at run time"
    # every package of the distribution is copied into the image
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"]
    copied = {a.split()[0].rstrip("/") for w, a in ins if w == "COPY"}
    for top in {p.split(".")[0] for p in packages}:
        assert top in copied, f"package {top} is not copied into the image"
    assert any(w == "RUN" and "pip install ." in a for w, a in ins)
    assert ("COPY", "deploy/docker.yaml /etc/ringwatch/config.yaml") in ins
    assert _exec_form(dict(ins)["ENTRYPOINT"]) == ["ringwatch"]
    assert _exec_form(dict(ins)["CMD"]) == ["run", "--config", "/etc/ringwatch/config.yaml"]
    assert ("STOPSIGNAL", "SIGTERM") in ins


def test_the_baked_in_config_passes_check_config() -> None:
    res = subprocess.run([sys.executable, "-m", "monitor.cli", "check-config", str(DEPLOY / "docker.yaml")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout
    assert "HTTP 0.0.0.0:8080" in res.stdout  # listens inside the container


def _healthcheck_cmd() -> str:
    (health,) = [a for w, a in _instructions() if w == "HEALTHCHECK"]
    return health.split(" CMD ", 1)[1]


async def test_the_entrypoint_starts_the_daemon_and_the_healthcheck_passes(tmp_path: Path) -> None:
    """ENTRYPOINT + CMD with deploy/docker.yaml as /etc/ringwatch/config.yaml; RINGWATCH_HTTP_PORT=0 binds an
    ephemeral port (the log says which); /healthz answers and the image's HEALTHCHECK command exits 0."""
    ins = _instructions()
    argv = _exec_form(dict(ins)["ENTRYPOINT"]) + _exec_form(dict(ins)["CMD"])
    argv[0] = str(Path(sys.executable).with_name("ringwatch"))  # the console script, as pip installs it
    argv[argv.index("/etc/ringwatch/config.yaml")] = str(DEPLOY / "docker.yaml")
    with socket.socket() as s:  # a PBX port nobody listens on: the link retries in the background
        s.bind(("127.0.0.1", 0))
        ami_port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGWATCH_")}
    env |= {"RINGWATCH_HTTP_PORT": "0", "RINGWATCH_DATA_DIR": str(tmp_path), "RINGWATCH_AMI_HOST": "127.0.0.1",
            "RINGWATCH_AMI_PORT": str(ami_port), "RINGWATCH_AMI_SECRET": "not-a-real-secret"}
    proc = await asyncio.create_subprocess_exec(*argv, cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    log: list[str] = []
    try:
        assert proc.stderr is not None
        port = None
        async with asyncio.timeout(20):
            while port is None:
                line = (await proc.stderr.readline()).decode()
                assert line, "the daemon exited before listening:\n" + "".join(log)
                log.append(line)
                m = re.search(r"HTTP on 0\.0\.0\.0:(\d+)", line)
                port = int(m.group(1)) if m else None
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as resp:
            assert resp.status == 200
            health = await resp.json()
        assert health == {"status": "degraded", "pbx": "asterisk", "pbx_connected": False,
                          "ami_connected": False, "live_calls": 0}  # no PBX here
        probe = await asyncio.create_subprocess_exec(
            *shlex.split(_healthcheck_cmd()), env=env | {"RINGWATCH_HTTP_PORT": str(port)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(10):
            _, err = await probe.communicate()
        assert probe.returncode == 0, err.decode()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            _, rest = await proc.communicate()
    text = "".join(log) + rest.decode()
    assert proc.returncode == 0, text[-2000:]
    assert "ringwatch stopped" in text
    assert "not-a-real-secret" not in text


# -- systemd -------------------------------------------------------------------------------


def _unit() -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
        else:
            key, _, value = line.partition("=")
            sections[current].append((key.strip(), value.strip()))
    return sections


def test_systemd_unit_essentials() -> None:
    unit = _unit()
    service = dict(unit["Service"])
    for key, value in [("DynamicUser", "yes"), ("ProtectSystem", "strict"), ("StateDirectory", "ringwatch"),
                       ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"), ("Restart", "on-failure"),
                       ("ProtectHome", "yes"), ("KillSignal", "SIGTERM")]:
        assert service.get(key) == value, key
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert service["EnvironmentFile"] == "/etc/ringwatch/ringwatch.env"  # secrets: root-only file
    exec_start = shlex.split(service["ExecStart"])
    assert Path(exec_start[0]).name == "ringwatch"
    assert exec_start[1:] == ["run", "--config", "/etc/ringwatch/config.yaml"]
    assert service["CapabilityBoundingSet"] == ""
    for key, value in unit["Service"]:  # never a secret inline
        if key == "Environment":
            assert not SECRET_WORDS.search(value), value
    assert dict(unit["Install"])["WantedBy"] == "multi-user.target"
    assert "RINGWATCH_DATA_DIR=/var/lib/ringwatch" in service["Environment"]


def test_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze", "systemd")
    # verify checks that ExecStart exists: point it at this checkout's console script
    unit = tmp_path / "ringwatch.service"
    real = Path(sys.executable).with_name("ringwatch")
    unit.write_text(UNIT.read_text(encoding="utf-8").replace("/opt/ringwatch/bin/ringwatch", str(real)),
                    encoding="utf-8")
    res = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    complaints = [line for line in (res.stdout + res.stderr).splitlines() if "ringwatch.service" in line]
    assert res.returncode == 0, res.stdout + res.stderr
    assert not complaints, "\n".join(complaints)  # a bad value is only a warning, with exit 0
    sec = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(unit)], capture_output=True,
                         text=True, timeout=60, check=False)
    m = re.search(r"Overall exposure level for ringwatch\.service: ([\d.]+)", sec.stdout)
    if m is None:
        pytest.skip(f"systemd-analyze security --offline is not supported here: {sec.stderr.strip()[:200]}")
    assert float(m.group(1)) <= 2.0, sec.stdout[-3000:]  # "OK" on systemd's 0-10 exposure scale


# -- docker compose -----------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {str(k): str(v) for k, v in env.items()}


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of the bind mounts (relative sources) of a service."""
    out = {}
    for v in service.get("volumes", []):
        source, target = v.split(":")[:2]
        if source.startswith("."):
            out[target] = source
    return out


def test_compose_services_and_files() -> None:
    doc = _compose()
    services = doc["services"]
    assert set(services) == {"ringwatch", "redis", "prometheus", "grafana"}
    rw = services["ringwatch"]
    assert (COMPOSE.parent / rw["build"]["context"] / rw["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert _env(rw)["RINGWATCH_REDIS_URL"].startswith("redis://redis:")
    for name, service in services.items():  # every bind-mounted file is in the repository
        for source in _mounts(service).values():
            assert (COMPOSE.parent / source).is_file(), f"{name}: {source} does not exist"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
    # Prometheus loads the rules file where prometheus.yml looks for rules
    prom = services["prometheus"]
    mounts = _mounts(prom)
    prom_cfg_src = mounts["/etc/prometheus/prometheus.yml"]
    prom_cfg = yaml.safe_load((COMPOSE.parent / prom_cfg_src).read_text(encoding="utf-8"))
    rules_target = next(t for t, s in mounts.items() if s.endswith("ringwatch.rules.yml"))
    assert any(Path(rules_target).match(pattern) for pattern in prom_cfg["rule_files"])
    # ... and scrapes ringwatch with the token ringwatch accepts for metrics
    job = next(j for j in prom_cfg["scrape_configs"] if j["job_name"] == "ringwatch")
    assert job["static_configs"][0]["targets"] == ["ringwatch:8080"]
    token_path = job["authorization"]["credentials_file"]
    assert token_path == "/run/secrets/ringwatch_metrics_token"
    assert "ringwatch_metrics_token" in prom["secrets"]
    # Grafana: the dashboard file sits where the provisioning provider reads, the datasource is Prometheus
    graf = services["grafana"]
    dash_target = next(t for t, s in _mounts(graf).items() if s.endswith("grafana/ringwatch.json"))
    providers = yaml.safe_load(doc["configs"]["grafana_dashboards"]["content"])["providers"]
    assert Path(dash_target).parent == Path(providers[0]["options"]["path"])
    sources = yaml.safe_load(doc["configs"]["grafana_datasource"]["content"])["datasources"]
    assert sources[0]["type"] == "prometheus"
    assert sources[0]["url"] == "http://prometheus:9090"
    targets = {c["target"]: c["source"] for c in graf["configs"]}
    assert targets["/etc/grafana/provisioning/dashboards/ringwatch.yaml"] == "grafana_dashboards"
    assert targets["/etc/grafana/provisioning/datasources/ringwatch.yaml"] == "grafana_datasource"


def test_compose_has_no_inline_secrets() -> None:
    doc = _compose()
    for name, service in doc["services"].items():
        for key, value in _env(service).items():
            if SECRET_WORDS.search(key) and not key.endswith("_FILE"):
                assert re.fullmatch(r"\$\{\w+(:?[-?][^}]*)?\}", value), f"{name}: {key} has an inline value"
            assert not re.search(r"(?i)password|secret", value) or value.startswith("/run/secrets/"), \
                f"{name}: {key}={value}"
        for secret in service.get("secrets", []):
            assert secret in doc["secrets"], f"{name} uses undeclared secret {secret}"
    for name, secret in doc["secrets"].items():
        assert secret["file"].startswith("./secrets/"), name
        assert not (COMPOSE.parent / secret["file"]).exists(), f"secret file {secret['file']} is in the repository"


def test_compose_ringwatch_config_is_valid_and_reads_secrets_from_files(tmp_path: Path) -> None:
    doc = _compose()
    rw = doc["services"]["ringwatch"]
    (mount,) = rw["configs"]
    (cmd,) = [a for w, a in _instructions() if w == "CMD"]
    assert mount["target"] in _exec_form(cmd)  # it replaces the image's config
    path = tmp_path / "config.yaml"
    path.write_text(doc["configs"][mount["source"]]["content"], encoding="utf-8")
    cfg = load_config(path, env={})
    assert cfg.http.host == "0.0.0.0"
    assert cfg.http.metrics_require_token
    given = {f"/run/secrets/{s}" for s in rw["secrets"]}
    assert cfg.pbx.ami.secret_file is not None
    assert str(cfg.pbx.ami.secret_file) in given
    for token in cfg.auth.tokens:
        assert token.token_file is not None, f"token {token.name} must come from a file"
        assert str(token.token_file) in given
    prom_token = next(t for t in cfg.auth.tokens if t.name == "prometheus")
    assert prom_token.role == "agent"  # the least role that may read /metrics
    assert str(prom_token.token_file) == "/run/secrets/ringwatch_metrics_token"


def test_promtool_checks_the_prometheus_config(tmp_path: Path) -> None:
    promtool = _tool("promtool", "prometheus")
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    token = tmp_path / "token"
    token.write_text("t", encoding="utf-8")
    cfg["rule_files"] = [str(DEPLOY / "prometheus" / "ringwatch.rules.yml")]  # the container's paths, here
    for job in cfg["scrape_configs"]:
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(token)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    res = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 8 rules found" in res.stdout + res.stderr


def test_production_doc_names_real_files_and_covers_the_topics() -> None:
    doc = (ROOT / "docs" / "production.md").read_text(encoding="utf-8")
    for path in set(re.findall(r"`((?:deploy|docs|config)/[\w./-]+\.(?:yml|yaml|json|service|md))`", doc)):
        assert (ROOT / path).is_file(), f"docs/production.md names {path}, which does not exist"
    for heading in ("## Docker Compose", "## systemd", "## Grafana dashboard", "## Prometheus alerting rules",
                    "## Alert routing"):
        assert heading in doc
    rules = yaml.safe_load((DEPLOY / "prometheus" / "ringwatch.rules.yml").read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert f"`{rule['alert']}`" in doc, f"{rule['alert']} is not documented"
