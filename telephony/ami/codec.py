"""Sans-I/O codec for the Asterisk Manager Interface (AMI).

Bytes in, messages out; actions out as bytes.  No sockets, no asyncio, no clock.

Framing happens on bytes, before any decoding: a message ends at the first
``b"\\r\\n\\r\\n"``.  Only a whole message is decoded as UTF-8, so a multi-byte
character (a Chinese caller name) split across two TCP reads is never damaged.
The first line of a stream is the banner (``Asterisk Call Manager/11.0.0``),
a single ``\\r\\n``-terminated line.

Bad input never raises: a message larger than ``max_message_bytes`` is discarded
up to its terminator, undecodable or headerless frames are skipped, and each case
is counted in :class:`DecoderStats` and logged (rate-limited by the caller's
logger configuration).  Memory is bounded by ``max_message_bytes`` plus the size
of one chunk handed to :meth:`AmiDecoder.feed`.

A hot-path filter (``wanted_events``) lets a consumer drop events it never needs
(about half of a real stream is ``VarSet``/``Newexten``) before anything is
decoded: only the event name is looked at.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

TERMINATOR = b"\r\n\r\n"
EOL = b"\r\n"
_EVENT_PREFIX = b"Event: "
_FOLLOWS_PREFIX = b"Response: Follows"
_END_COMMAND = b"--END COMMAND--"
_FOLLOWS_TEXT = "Response: Follows"
#: one header line: the key runs to the first colon; one optional space; the value to the line's end
_HEADER = re.compile(r"^([^:\r\n]+):[ ]?([^\r\n]*)", re.MULTILINE)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024


class Message:
    """One AMI message: ordered ``(key, value)`` pairs, repeated keys kept.

    ``get`` returns the first value of a key, ``getall`` every value in order.
    Output lines of ``Response: Follows`` (which have no colon) are kept under
    the key ``Output``, like modern Asterisk sends them.
    """

    __slots__ = ("_index", "pairs")

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self.pairs: tuple[tuple[str, str], ...] = tuple(pairs)
        index: dict[str, str] = {}
        for k, v in self.pairs:
            if k not in index:
                index[k] = v
        self._index = index

    @classmethod
    def from_mapping(cls, fields: Mapping[str, str]) -> Message:
        return cls(list(fields.items()))

    def get(self, key: str, default: str | None = None) -> str | None:
        return self._index.get(key, default)

    def __getitem__(self, key: str) -> str:
        return self._index[key]

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def getall(self, key: str) -> list[str]:
        return [v for k, v in self.pairs if k == key]

    @property
    def event(self) -> str | None:
        return self._index.get("Event")

    @property
    def response(self) -> str | None:
        return self._index.get("Response")

    @property
    def action_id(self) -> str | None:
        return self._index.get("ActionID")

    def __repr__(self) -> str:
        head = self.event or f"Response:{self.response}"
        return f"<Message {head} {len(self.pairs)} fields>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message) and other.pairs == self.pairs

    def __hash__(self) -> int:
        return hash(self.pairs)


@dataclass(frozen=True, slots=True)
class Banner:
    """The first line of an AMI stream: the protocol version, not Asterisk's."""

    text: str

    @property
    def version(self) -> str:
        return self.text.rpartition("/")[2]


@dataclass(slots=True)
class DecoderStats:
    messages: int = 0
    filtered: int = 0
    garbage: int = 0
    oversize: int = 0
    undecodable: int = 0
    bytes_in: int = 0


@dataclass(slots=True)
class AmiDecoder:
    """Incremental AMI decoder.

    ``wanted_events``: when given, ``Event:`` messages whose name is not in the
    set are dropped before decoding (responses are always decoded).
    """

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    wanted_events: frozenset[str] | None = None
    expect_banner: bool = True
    stats: DecoderStats = field(default_factory=DecoderStats)
    _buf: bytearray = field(default_factory=bytearray)
    _discarding: bool = False
    _wanted_b: frozenset[bytes] | None = None

    def __post_init__(self) -> None:
        if self.wanted_events is not None:
            self._wanted_b = frozenset(e.encode() for e in self.wanted_events)

    def reset(self) -> None:
        """Forget partial input (a new connection starts with a banner)."""
        self._buf.clear()
        self._discarding = False
        self.expect_banner = True

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Message | Banner]:
        """Feed received bytes; return every complete message they finish."""
        self.stats.bytes_in += len(data)
        buf = self._buf
        buf += data
        out: list[Message | Banner] = []
        if self.expect_banner and not self._take_banner(out):
            return out
        if self._discarding and not self._skip_oversize():
            return out
        start = 0
        n = len(buf)
        find = buf.find
        wanted = self._wanted_b
        max_size = self.max_message_bytes
        while start < n:
            end = find(TERMINATOR, start)
            if end < 0:
                break
            if end - start > max_size:
                self._count_oversize()
                start = end + 4
                continue
            if wanted is not None and buf.startswith(_EVENT_PREFIX, start):
                eol = find(EOL, start, end)
                name = bytes(buf[start + 7 : end if eol < 0 else eol])
                if name not in wanted:
                    self.stats.filtered += 1
                    start = end + 4
                    continue
            if buf.startswith(_FOLLOWS_PREFIX, start):
                # Legacy command output may contain blank lines: frame on the end marker.
                mark = find(_END_COMMAND, start)
                if mark < 0:
                    if n - start > max_size:
                        self._count_oversize()
                        start = n
                    break
                end = find(TERMINATOR, mark)
                if end < 0:
                    break
            frame = bytes(buf[start:end])
            start = end + 4
            msg = self._decode(frame)
            if msg is not None:
                out.append(msg)
        del buf[:start]
        if len(buf) > max_size:
            # No terminator within the cap: drop what we have and skip to the next one.
            self._count_oversize()
            buf.clear()
            self._discarding = True
        return out

    # -- internals -------------------------------------------------------------

    def _take_banner(self, out: list[Message | Banner]) -> bool:
        buf = self._buf
        eol = buf.find(EOL)
        if eol < 0:
            if len(buf) > self.max_message_bytes:
                self._count_oversize()
                buf.clear()
                self.expect_banner = False
                self._discarding = True
            return False
        self.expect_banner = False
        line = bytes(buf[:eol])
        if b": " in line and not line.startswith(b"Asterisk Call Manager"):
            return True  # no banner (stream picked up mid-way): it is a header line
        del buf[: eol + 2]
        out.append(Banner(line.decode("utf-8", "replace")))
        return True

    def _skip_oversize(self) -> bool:
        buf = self._buf
        end = buf.find(TERMINATOR)
        if end < 0:
            # keep 3 bytes: the terminator could be split across reads
            del buf[: max(0, len(buf) - 3)]
            return False
        del buf[: end + 4]
        self._discarding = False
        return True

    def _count_oversize(self) -> None:
        self.stats.oversize += 1
        log.warning("ami.codec: message over %d bytes discarded", self.max_message_bytes)

    def _decode(self, frame: bytes) -> Message | None:
        try:
            text = frame.decode("utf-8")
        except UnicodeDecodeError:
            self.stats.undecodable += 1
            log.warning("ami.codec: undecodable message (%d bytes) skipped", len(frame))
            return None
        if not text.startswith(_FOLLOWS_TEXT):
            # the common case, in C: every "Key: value" line (lines without a colon carry nothing)
            pairs = _HEADER.findall(text)
            if pairs and " " not in pairs[0][0] and text.startswith(pairs[0][0]):
                self.stats.messages += 1
                return Message(pairs)
            self.stats.garbage += 1
            log.warning("ami.codec: frame without headers (%d bytes) skipped", len(frame))
            return None
        pairs = []
        for line in text.split("\r\n"):
            key, sep, value = line.partition(":")
            if sep and key and " " not in key:
                pairs.append((key, value[1:] if value.startswith(" ") else value))
            elif pairs:
                if line:
                    pairs.append(("Output", line))
            else:
                break
        if not pairs:
            self.stats.garbage += 1
            log.warning("ami.codec: frame without headers (%d bytes) skipped", len(frame))
            return None
        self.stats.messages += 1
        return Message(pairs)


def _check(text: str, what: str) -> str:
    if "\r" in text or "\n" in text:
        raise ValueError(f"AMI {what} must not contain CR or LF: {text[:40]!r}")
    return text


def encode_action(
    action: str,
    fields: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    action_id: str | None = None,
) -> bytes:
    """Serialise an action.  Values with CR/LF are refused (header injection)."""
    parts = [f"Action: {_check(action, 'action name')}"]
    if action_id is not None:
        parts.append(f"ActionID: {_check(action_id, 'ActionID')}")
    items = fields.items() if isinstance(fields, Mapping) else fields
    for k, v in items:
        if not k or ":" in k:
            raise ValueError(f"bad AMI header name {k!r}")
        parts.append(f"{_check(k, 'header name')}: {_check(str(v), 'value')}")
    return ("\r\n".join(parts) + "\r\n\r\n").encode("utf-8")


def encode_message(msg: Message | Sequence[tuple[str, str]]) -> bytes:
    """Serialise a message as a server would send it (used by test servers)."""
    pairs = msg.pairs if isinstance(msg, Message) else msg
    return ("".join(f"{k}: {v}\r\n" for k, v in pairs) + "\r\n").encode("utf-8")


def iter_messages(stream: Iterable[bytes], **kwargs: object) -> Iterator[Message | Banner]:
    """Decode an iterable of chunks (helper for files and tests)."""
    dec = AmiDecoder(**kwargs)  # type: ignore[arg-type]
    for chunk in stream:
        yield from dec.feed(chunk)
