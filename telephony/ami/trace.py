"""Recorded AMI traces (``.jsonl``): one JSON object a line, as described in
``tests/fixtures/ami/README.md``: ``banner``, ``msg`` (ordered pairs), ``sent``
(an action the recorder wrote) and ``eof`` lines, each with ``t`` seconds since
the trace's start."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ItemKind = Literal["banner", "msg", "sent", "eof"]


class TraceError(Exception):
    """A trace file cannot be read; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class TraceItem:
    t: float
    kind: ItemKind
    pairs: tuple[tuple[str, str], ...] = ()
    text: str = ""


def read_trace(path: str | Path) -> Iterator[TraceItem]:
    p = Path(path)
    try:
        fh = p.open(encoding="utf-8")
    except OSError as e:
        raise TraceError(f"cannot open trace {p}: {e.strerror}") from e
    with fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
                t = float(obj["t"])
            except (ValueError, KeyError, TypeError) as e:
                raise TraceError(f"{p}:{n}: not a trace line ({e})") from None
            if "msg" in obj or "sent" in obj:
                kind: ItemKind = "msg" if "msg" in obj else "sent"
                raw = obj[kind]
                if not isinstance(raw, list):
                    raise TraceError(f"{p}:{n}: '{kind}' must be a list of [key, value] pairs")
                pairs = tuple((str(k), "" if v is None else str(v)) for k, v in raw)
                yield TraceItem(t, kind, pairs)
            elif "banner" in obj:
                yield TraceItem(t, "banner", text=str(obj["banner"]))
            elif obj.get("eof"):
                yield TraceItem(t, "eof")
            else:
                raise TraceError(f"{p}:{n}: unknown trace line (no msg/sent/banner/eof)")


_UID = re.compile(r"^(\d{9,11})\.(\d+)$")
_CHAN_SUFFIX = re.compile(r"-([0-9a-f]{8})(;\d)?$")
_ID_KEYS = frozenset({"Uniqueid", "Linkedid", "DestUniqueid", "DestLinkedid"})


def renumber(pairs: tuple[tuple[str, str], ...], copy: int) -> tuple[tuple[str, str], ...]:
    """The same message for copy number ``copy`` of a recording: fresh Uniqueids,
    Linkedids and Local channel names, so copies played together are distinct calls."""
    out = []
    for key, val in pairs:
        if key in _ID_KEYS:
            m = _UID.match(val)
            if m:
                val = f"{m.group(1)}.{copy}{int(m.group(2)):06d}"
        elif "Channel" in key and val.startswith("Local/"):
            val = _CHAN_SUFFIX.sub(lambda m: f"-{copy:05x}{m.group(1)}{m.group(2) or ''}", val)
        out.append((key, val))
    return tuple(out)
