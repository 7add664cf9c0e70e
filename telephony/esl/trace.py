"""Recorded ESL traces (``.jsonl``), as described in ``tests/fixtures/esl/README.md``.

One JSON object a line, each with ``t`` (seconds since the trace's start):

* ``{"headers": [[k, v], ...], "body": "..." | null, ...}`` -- a frame received on the
  monitor connection, outer headers in order, the body raw (URL-encoding intact);
  re-encoded with :func:`frame_bytes` it is byte-for-byte what FreeSWITCH sent
  (``event``/``event_body``, the recorder's own decoding, are not read);
* ``{"sent": "api show channels as json"}`` -- a command the recorder wrote;
* ``{"eof": true}`` -- the server closed the socket.

An ESL trace has no ``banner`` line; :func:`is_esl_trace` tells the two formats apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ItemKind = Literal["frame", "sent", "eof"]


class EslTraceError(Exception):
    """An ESL trace cannot be read; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class EslTraceItem:
    t: float
    kind: ItemKind
    headers: tuple[tuple[str, str], ...] = ()
    body: str | None = None
    text: str = ""  # the command of a "sent" item

    @property
    def content_type(self) -> str:
        return next((v for k, v in self.headers if k == "Content-Type"), "")


def frame_bytes(item: EslTraceItem) -> bytes:
    """The bytes FreeSWITCH sent for a recorded frame (headers in their recorded order)."""
    head = "".join(f"{k}: {v}\n" for k, v in item.headers) + "\n"
    return head.encode("utf-8") + (item.body.encode("utf-8") if item.body is not None else b"")


def is_esl_trace(path: str | Path) -> bool:
    """True when the first line of ``path`` is an ESL frame (``headers``), not an AMI ``banner``/``msg``."""
    try:
        with Path(path).open(encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    return False
                return isinstance(obj, dict) and "headers" in obj and "banner" not in obj and "msg" not in obj
    except (OSError, UnicodeDecodeError):
        return False
    return False


def read_esl_trace(path: str | Path) -> Iterator[EslTraceItem]:
    p = Path(path)
    try:
        fh = p.open(encoding="utf-8")
    except OSError as e:
        raise EslTraceError(f"cannot open trace {p}: {e.strerror}") from e
    with fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
                t = float(obj["t"])
            except (ValueError, KeyError, TypeError) as e:
                raise EslTraceError(f"{p}:{n}: not a trace line ({e})") from None
            if "headers" in obj:
                raw = obj["headers"]
                if not isinstance(raw, list) or not all(isinstance(x, list) and len(x) == 2 for x in raw):
                    raise EslTraceError(f"{p}:{n}: 'headers' must be a list of [key, value] pairs")
                body = obj.get("body")
                yield EslTraceItem(t, "frame", tuple((str(k), str(v)) for k, v in raw),
                                   None if body is None else str(body))
            elif "sent" in obj:
                yield EslTraceItem(t, "sent", text=str(obj["sent"]))
            elif obj.get("eof"):
                yield EslTraceItem(t, "eof")
            else:
                raise EslTraceError(f"{p}:{n}: unknown ESL trace line (no headers/sent/eof)")


def write_frame_item(t: float, headers: list[tuple[str, str]], body: str | None) -> str:
    """One trace line for a frame (tests build traces with it)."""
    return json.dumps({"t": round(t, 3), "headers": [list(h) for h in headers], "body": body},
                      ensure_ascii=False)


__all__ = ["EslTraceError", "EslTraceItem", "frame_bytes", "is_esl_trace", "read_esl_trace",
           "write_frame_item"]
