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
    """Items of a ``.jsonl`` trace, or of a raw byte capture (``.raw``: see :func:`read_raw`)."""
    p = Path(path)
    if p.suffix == ".raw":
        yield from read_raw(p)
        return
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


RAW_CHUNK = 1 << 20


def read_raw(path: str | Path) -> Iterator[TraceItem]:
    """A raw AMI byte capture (``.raw``: exactly the bytes a monitor socket received) as trace items.

    Time follows the events' ``Timestamp`` headers (``timestampevents = yes``), in seconds from
    the first one; a message without one keeps the time of the message before it, so a capture
    without timestamps plays with the clock standing still.  The capture's end is the link
    closing (an ``eof`` item).
    """
    from telephony.ami.codec import AmiDecoder, Banner  # the codec is sans-I/O: bytes in, messages out

    p = Path(path)
    try:
        fh = p.open("rb")
    except OSError as e:
        raise TraceError(f"cannot open capture {p}: {e.strerror}") from e
    decoder = AmiDecoder()
    origin: float | None = None
    t = 0.0
    with fh:
        while chunk := fh.read(RAW_CHUNK):
            for m in decoder.feed(chunk):
                if isinstance(m, Banner):
                    yield TraceItem(t, "banner", text=m.text)
                    continue
                ts = m.get("Timestamp")
                if ts is not None:
                    try:
                        value = float(ts)
                    except ValueError:
                        value = None
                    if value is not None:
                        if origin is None:
                            origin = value
                        t = max(t, value - origin)
                yield TraceItem(t, "msg", m.pairs)
    if decoder.buffered:
        raise TraceError(f"{p}: the capture ends inside a message ({decoder.buffered} bytes)")
    yield TraceItem(t, "eof")
