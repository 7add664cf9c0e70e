"""The ``ringwatch`` command line, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.replaytools import FIXTURES, JUDGE, ROOT


def ringwatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitor.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False, env=env)


@pytest.mark.parametrize("speed", ["0", "10"])
def test_replay_json_passes_the_judge(speed: str, tmp_path: Path) -> None:
    res = ringwatch("replay", str(FIXTURES / "S02_slow_answer_20s.jsonl"), "--speed", speed, "--json")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert {o["type"] for o in lines} == {"call", "alert", "notice"}
    out = tmp_path / "out.jsonl"
    out.write_text(res.stdout, encoding="utf-8")
    judged = subprocess.run([sys.executable, str(JUDGE), str(FIXTURES / "S02_slow_answer_20s.truth.json"), str(out),
                             "--scope", "A"], capture_output=True, text=True, check=False)
    assert judged.returncode == 0, judged.stdout


def test_replay_without_json_prints_a_readable_summary() -> None:
    res = ringwatch("replay", str(FIXTURES / "S04_ringnoanswer_then_second_agent.jsonl"))
    assert res.returncode == 0
    assert "IN-ANSWER" in res.stdout
    assert "振铃超过 15 秒" in res.stdout
    assert "call " in res.stdout
    assert "first_hangup=customer" in res.stdout


def test_replay_of_a_missing_or_broken_trace_is_a_clear_error(tmp_path: Path) -> None:
    res = ringwatch("replay", str(tmp_path / "nope.jsonl"))
    assert res.returncode == 2
    assert "cannot open trace" in res.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"t": 0.1, "banner": "Asterisk Call Manager/11.0.0"}\nnot json\n', encoding="utf-8")
    res = ringwatch("replay", str(bad))
    assert res.returncode == 2
    assert "bad.jsonl:2" in res.stderr
    assert "Traceback" not in res.stderr


def test_check_config_names_the_bad_key(tmp_path: Path) -> None:
    good = ringwatch("check-config", str(ROOT / "config" / "default.yaml"))
    assert good.returncode == 0
    assert "OK" in good.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  IN-ANSWER:\n    ring_limit_s: 0\nhttp:\n  prot: 80\n", encoding="utf-8")
    res = ringwatch("check-config", str(bad))
    assert res.returncode == 2
    assert "rules.IN-ANSWER.ring_limit_s" in res.stderr
    assert "http.prot: unknown setting (did you mean port?)" in res.stderr
    notyaml = tmp_path / "x.yaml"
    notyaml.write_text("rules: [unclosed\n", encoding="utf-8")
    res = ringwatch("check-config", str(notyaml))
    assert res.returncode == 2
    assert "not valid YAML" in res.stderr


def test_a_misspelt_or_retired_setting_says_what_to_write(tmp_path: Path) -> None:
    from config.schema import ConfigError, load_config

    bad = tmp_path / "old.yaml"
    bad.write_text("http:\n  websocket_queue: 64\npbx:\n  esl:\n    heartbeat_timout_s: 5\n"
                   "ui:\n  users:\n    - {name: a, role: qa, password_hash: x, tems: [a]}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(bad, env={})
    text = str(err.value)
    assert "http.websocket_queue: no longer a setting: use http.websocket_buffer_kib" in text
    assert "pbx.esl.heartbeat_timout_s: unknown setting (did you mean heartbeat_timeout_s?)" in text
    assert "ui.users.0.tems: unknown setting (did you mean teams?)" in text


def test_environment_overrides_reach_the_config(tmp_path: Path) -> None:
    from config.schema import ConfigError, load_config

    cfg = load_config(env={"RINGWATCH_HTTP_PORT": "9123", "RINGWATCH_AMI_HOST": "pbx.example",
                           "RINGWATCH_AMI_PORT": "5039", "RINGWATCH_AMI_USER": "rw",
                           "RINGWATCH_REDIS_URL": "redis://r:6379/0", "RINGWATCH_DATA_DIR": str(tmp_path),
                           "RINGWATCH_AMI_SECRET": "s3cret"})
    ami = cfg.pbx.ami
    assert (cfg.http.port, ami.host, ami.port, ami.username) == (9123, "pbx.example", 5039, "rw")
    assert cfg.redis.url == "redis://r:6379/0"
    assert cfg.data_dir == tmp_path
    assert "s3cret" not in cfg.model_dump_json()  # the secret is read where used, never stored
    with pytest.raises(ConfigError, match=r"http\.port"):
        load_config(env={"RINGWATCH_HTTP_PORT": "eighty"})
