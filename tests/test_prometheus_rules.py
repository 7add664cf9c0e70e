"""The Prometheus alerting rules (deploy/prometheus/ringwatch.rules.yml), checked and unit-tested by promtool.

``promtool`` comes from Debian's ``prometheus`` package; ``scripts/test.sh`` installs it when
it runs as root (as CI does).  Without it these tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_dashboard import check_expr, parse_promql

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "ringwatch.rules.yml"
UNIT_TESTS = PROM / "tests"
TARGET_LABELS = frozenset({"instance", "job"})  # added by Prometheus at scrape time


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI: scripts/test.sh should have installed Debian's prometheus")
        pytest.skip("promtool not installed (Debian package prometheus; scripts/test.sh installs it as root)")
    return path


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def _rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}


def _unit_files() -> list[Path]:
    files = sorted(UNIT_TESTS.glob("*.yml"))
    assert files, f"no promtool unit tests in {UNIT_TESTS}"
    return files


def test_promtool_check_rules_is_clean(promtool: str) -> None:
    res = _run(promtool, "check", "rules", str(RULES))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in res.stdout
    assert "WARNING" not in (res.stdout + res.stderr).upper()


def test_promtool_unit_tests_pass(promtool: str) -> None:
    res = _run(promtool, "test", "rules", *map(str, _unit_files()))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_every_alert_has_cases_that_fire_and_cases_that_stay_quiet() -> None:
    fire: dict[str, int] = {}
    quiet: dict[str, int] = {}
    for f in _unit_files():
        doc = yaml.safe_load(f.read_text(encoding="utf-8"))
        assert doc["rule_files"] == ["../ringwatch.rules.yml"]
        for group in doc["tests"]:
            for case in group.get("alert_rule_test", []):
                bucket = fire if case["exp_alerts"] else quiet
                bucket[case["alertname"]] = bucket.get(case["alertname"], 0) + 1
    alerts = set(_rules())
    assert alerts == {"RingwatchScrapeFailing", "RingwatchAmiLinkDown", "RingwatchNoAmiEvents",
                      "RingwatchServiceLevelLow", "RingwatchWebhookDeliveryFailing", "RingwatchChatDeliveryFailing",
                      "RingwatchCommitmentsOverdueRising", "RingwatchStoreWritesBacklog"}
    assert set(fire) == alerts, f"alerts never expected to fire: {alerts - set(fire)}"
    assert set(quiet) == alerts, f"alerts never expected to stay quiet: {alerts - set(quiet)}"


@pytest.mark.parametrize(("mutation", "alert"), [
    (("< 0.8", "< 0.4"), "RingwatchServiceLevelLow"),  # a looser target: support's 50 % no longer fires
    (("for: 2m", "for: 0m"), "RingwatchScrapeFailing"),  # no grace: fires on the first failed scrape
    (('state=~"available|ringing|talking|paused"', 'state=~".+"'), "RingwatchNoAmiEvents"),  # offline counts
    (("delta(ringwatch_commitments_overdue[1h])) > 0", "delta(ringwatch_commitments_overdue[1h])) >= 0"),
     "RingwatchCommitmentsOverdueRising"),  # a steady backlog would page too
    (("for: 10m", "for: 0m"), "RingwatchStoreWritesBacklog"),  # QA's short burst would page
])
def test_the_unit_tests_catch_a_broken_rule(promtool: str, tmp_path: Path, mutation: tuple[str, str],
                                            alert: str) -> None:
    old, new = mutation
    text = RULES.read_text(encoding="utf-8")
    assert old in text
    (tmp_path / "tests").mkdir()
    (tmp_path / RULES.name).write_text(text.replace(old, new, 1), encoding="utf-8")
    for f in _unit_files():
        shutil.copy(f, tmp_path / "tests" / f.name)
    res = _run(promtool, "test", "rules", *(str(tmp_path / "tests" / f.name) for f in _unit_files()))
    assert res.returncode != 0
    assert f"alertname: {alert}" in res.stdout + res.stderr


def test_rule_expressions_use_only_what_ringwatch_exports() -> None:
    for name, rule in _rules().items():
        try:
            check_expr(rule["expr"], allowed_foreign=frozenset({"up"}), target_labels=TARGET_LABELS)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert {"summary", "description"} <= set(rule["annotations"]), name


def test_scrape_rule_names_the_scrape_job() -> None:
    scrape = parse_promql(_rules()["RingwatchScrapeFailing"]["expr"])
    (sel,) = scrape.selectors
    assert (sel.metric, sel.matchers) == ("up", [("job", "=", "ringwatch")])
    prom_cfg = yaml.safe_load((PROM / "prometheus.yml").read_text(encoding="utf-8"))
    assert "ringwatch" in [j["job_name"] for j in prom_cfg["scrape_configs"]]


def test_unit_test_series_are_real_ringwatch_series() -> None:
    """The input series of the promtool tests use real names, labels and label values (e.g. le="15.0")."""
    for f in _unit_files():
        for group in yaml.safe_load(f.read_text(encoding="utf-8"))["tests"]:
            for s in group["input_series"]:
                check_expr(s["series"], allowed_foreign=frozenset({"up"}), target_labels=TARGET_LABELS,
                           free_values=frozenset({"queue", "webhook", "chat", "provider"}))
