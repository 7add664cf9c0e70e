"""Nothing outside telephony/ knows AMI or ESL; nothing in telephony/ knows a rule."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# AMI header and event names that only the Asterisk adapter may use
AMI_WORDS = re.compile(r"\b(Uniqueid|Linkedid|DestChannel|AgentCalled|AgentConnect|QueueCallerJoin|"
                       r"CoreShowChannel|ActionID|EventList|DialEnd|HangupRequest|MemberName)\b")
# the composition roots may import the adapter's public entry points, nothing else of telephony.ami
ALLOWED_AMI_IMPORTS = {"telephony.ami.adapter", "telephony.ami.trace"}
# the same for FreeSWITCH: ESL header and callcenter names, and the ESL adapter's entry point
ESL_WORDS = re.compile(r"(?<![\w-])(Unique-ID|Other-Leg-Unique-ID|Event-Subclass|CC-Action|CC-Member-UUID|"
                       r"CC-Member-Session-UUID|CC-Agent-UUID|callcenter::info|bridge-agent-start|"
                       r"member-queue-start|agent-offering)(?![\w-])")
ALLOWED_ESL_IMPORTS = {"telephony.esl.adapter"}


def _py(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_no_ami_outside_telephony() -> None:
    offenders = []
    for folder in ("monitor", "alerts", "config"):
        for path in _py(folder):
            for mod in _imports(path):
                if mod.startswith("telephony.ami") and mod not in ALLOWED_AMI_IMPORTS:
                    offenders.append(f"{path.relative_to(ROOT)} imports {mod}")
            text = path.read_text(encoding="utf-8")
            for m in AMI_WORDS.finditer(text):
                offenders.append(f"{path.relative_to(ROOT)} mentions AMI name {m.group(0)}")
    assert not offenders, "\n".join(offenders)


def test_telephony_knows_no_rules_or_alerts() -> None:
    offenders = [
        f"{p.relative_to(ROOT)} imports {mod}"
        for p in _py("telephony")
        for mod in _imports(p)
        if mod.split(".")[0] in {"monitor", "alerts"} and mod != "monitor.clock"
    ]
    assert not offenders, "\n".join(offenders)


def test_no_esl_outside_telephony() -> None:
    offenders = []
    for folder in ("monitor", "alerts", "config"):
        for path in _py(folder):
            for mod in _imports(path):
                if mod.startswith("telephony.esl") and mod not in ALLOWED_ESL_IMPORTS:
                    offenders.append(f"{path.relative_to(ROOT)} imports {mod}")
            text = path.read_text(encoding="utf-8")
            for m in ESL_WORDS.finditer(text):
                offenders.append(f"{path.relative_to(ROOT)} mentions ESL name {m.group(0)}")
    assert not offenders, "\n".join(offenders)


def test_the_two_adapters_do_not_import_each_other() -> None:
    offenders = [
        f"{p.relative_to(ROOT)} imports {mod}"
        for pkg, other in (("telephony/esl", "telephony.ami"), ("telephony/ami", "telephony.esl"))
        for p in _py(pkg)
        for mod in _imports(p)
        if mod.startswith(other)
    ]
    assert not offenders, "\n".join(offenders)
