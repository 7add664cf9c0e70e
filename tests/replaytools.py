"""Helpers for replay tests: run the real replay, then the acceptance judge."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from config.schema import Config, load_config
from monitor.replay import JsonLinesOutput, replay_virtual

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "ami"
_SHARED_JUDGE = ROOT.parent / "shared" / "tools" / "judge.py"
#: the shared judge when present (it is the acceptance criteria); a vendored copy otherwise
JUDGE = _SHARED_JUDGE if _SHARED_JUDGE.exists() else ROOT / "tests" / "tools" / "judge.py"
TRACES = sorted(p.stem for p in FIXTURES.glob("S*.jsonl"))
WITH_TRUTH = [n for n in TRACES if (FIXTURES / f"{n}.truth.json").exists()]


def replay_lines(path: Path, cfg: Config | None = None) -> list[dict[str, Any]]:
    buf = io.StringIO()
    replay_virtual(path, cfg or load_config(env={}), JsonLinesOutput(buf))
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def judge(truth: Path, lines: list[dict[str, Any]], tmp: Path, scope: str = "A") -> subprocess.CompletedProcess[str]:
    out = tmp / f"{truth.stem}.out.jsonl"
    out.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in lines), encoding="utf-8")
    return subprocess.run([sys.executable, str(JUDGE), str(truth), str(out), "--scope", scope],
                          capture_output=True, text=True, check=False)
