"""The validated configuration.  Errors name the key (``rules.IN-ANSWER.ring_limit_s``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_PATH = Path(__file__).with_name("default.yaml")

Role = Literal["agent", "supervisor", "qa", "admin"]


class ConfigError(Exception):
    """The configuration is invalid; the message names every bad key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class AmiConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(5038, ge=1, le=65535)
    username: str = "ringwatch"
    secret_env: str | None = "RINGWATCH_AMI_SECRET"
    secret_file: Path | None = None
    auth: Literal["md5", "plain"] = "md5"
    connect_timeout_s: float = Field(5, gt=0)
    login_timeout_s: float = Field(10, gt=0)
    action_timeout_s: float = Field(10, gt=0)
    ping_interval_s: float = Field(20, gt=0)
    ping_timeout_s: float = Field(5, gt=0)
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30, gt=0)
    reconnect_factor: float = Field(2.0, ge=1)
    max_message_bytes: int = Field(65536, ge=1024)

    def secret(self) -> str:
        """The AMI secret from the environment or a file (never from YAML)."""
        if self.secret_env and os.environ.get(self.secret_env):
            return os.environ[self.secret_env]
        if self.secret_file:
            return self.secret_file.read_text(encoding="utf-8").strip()
        return ""


class PbxConfig(_Strict):
    kind: Literal["asterisk"] = "asterisk"
    ami: AmiConfig = AmiConfig()


class InAnswerRule(_Strict):
    enabled: bool = True
    ring_limit_s: float = Field(15, gt=0)


class InWaitRule(_Strict):
    enabled: bool = True
    service_level_s: float = Field(15, gt=0)
    max_wait_s: float = Field(300, gt=0)


class RulesConfig(_Strict):
    in_answer: InAnswerRule = Field(InAnswerRule(), alias="IN-ANSWER")
    in_wait: InWaitRule = Field(InWaitRule(), alias="IN-WAIT")


class HttpConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    metrics_require_token: bool = True
    websocket_queue: int = Field(256, ge=1)


class TokenConfig(_Strict):
    name: str
    role: Role
    token_env: str | None = None
    token_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> TokenConfig:
        if bool(self.token_env) == bool(self.token_file):
            raise ValueError("give exactly one of token_env or token_file")
        return self

    def token(self) -> str | None:
        if self.token_env:
            return os.environ.get(self.token_env) or None
        assert self.token_file is not None
        try:
            return self.token_file.read_text(encoding="utf-8").strip() or None
        except OSError:
            return None


class AuthConfig(_Strict):
    tokens: list[TokenConfig] = []


class PrivacyConfig(_Strict):
    mask_callers: bool = True


class WebhookConfig(_Strict):
    name: str
    url: str = Field(pattern=r"^https?://")
    timeout_s: float = Field(5, gt=0)
    max_queue: int = Field(1000, ge=1)
    max_retries: int = Field(5, ge=0)
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30, gt=0)


class AlertsConfig(_Strict):
    history_limit: int = Field(10_000, ge=10)
    webhooks: list[WebhookConfig] = []


def _sorted_positive(v: list[float]) -> list[float]:
    if not v or any(b <= 0 for b in v) or sorted(v) != v or len(set(v)) != len(v):
        raise ValueError("buckets must be positive, strictly increasing and not empty")
    return v


class MetricsConfig(_Strict):
    ring_buckets: list[float] = [3, 5, 10, 12, 14, 15, 16, 20, 30, 60]
    wait_buckets: list[float] = [5, 10, 15, 20, 30, 60, 120, 300, 600]

    @model_validator(mode="after")
    def _check(self) -> MetricsConfig:
        _sorted_positive(self.ring_buckets)
        _sorted_positive(self.wait_buckets)
        return self


class RedisConfig(_Strict):
    url: str | None = None


class Config(_Strict):
    timezone: str = "Asia/Shanghai"
    pbx: PbxConfig = PbxConfig()
    rules: RulesConfig = RulesConfig()
    http: HttpConfig = HttpConfig()
    auth: AuthConfig = AuthConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    alerts: AlertsConfig = AlertsConfig()
    metrics: MetricsConfig = MetricsConfig()
    redis: RedisConfig = RedisConfig()
    data_dir: Path = Path("./ringwatch-data")


#: The environment variables operators and scripts use, and the key each sets.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "RINGWATCH_HTTP_PORT": ("http", "port"),
    "RINGWATCH_AMI_HOST": ("pbx", "ami", "host"),
    "RINGWATCH_AMI_PORT": ("pbx", "ami", "port"),
    "RINGWATCH_AMI_USER": ("pbx", "ami", "username"),
    "RINGWATCH_REDIS_URL": ("redis", "url"),
    "RINGWATCH_DATA_DIR": ("data_dir",),
}
# RINGWATCH_AMI_SECRET and RINGWATCH_ADMIN_TOKEN are read where used, never copied into the config.


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _format(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {key}: {e['msg']}")
    return "\n".join(lines)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read configuration {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Defaults, then ``path`` (if any) over them, then the environment overrides."""
    env = os.environ if env is None else env
    data = _read_yaml(DEFAULT_PATH)
    source = str(DEFAULT_PATH)
    if path is not None:
        data = _merge(data, _read_yaml(Path(path)))
        source = str(path)
    for var, keys in ENV_OVERRIDES.items():
        if env.get(var):
            node = data
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = env[var]
            source += f" + ${var}"
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format(e, source)) from None
