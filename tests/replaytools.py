"""Helpers for replay tests: run the real replay, then the acceptance judge."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
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


#: times (s) compared between a live (TCP) replay and a virtual one: scheduling on a loaded 2-core box
TIME_TOLERANCE_S = 0.5


def differences(got: Any, want: Any, where: str = "", tol: float = TIME_TOLERANCE_S,
                skip: Callable[[str], bool] = lambda _k: False) -> list[str]:
    """Where ``got`` differs from ``want``: floats within ``tol``, the rest exactly; keys ``skip`` says."""
    if isinstance(got, dict) and isinstance(want, dict):
        if got.keys() != want.keys():
            return [f"{where}: keys {sorted(got.keys() ^ want.keys())}"]
        return [d for k in got if not skip(k) for d in differences(got[k], want[k], f"{where}.{k}", tol, skip)]
    if isinstance(got, list) and isinstance(want, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} items vs {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want, strict=True))
                for d in differences(g, w, f"{where}[{i}]", tol, skip)]
    if isinstance(got, float | int) and isinstance(want, float | int) and not isinstance(got, bool):
        return [] if abs(got - want) <= tol else [f"{where}: {got} vs {want}"]
    return [] if got == want else [f"{where}: {got!r} vs {want!r}"]
