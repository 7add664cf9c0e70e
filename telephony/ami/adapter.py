"""The Asterisk adapter's public entry points: the only part of ``telephony.ami``
the rest of ringwatch imports.  Everything here speaks domain events outward."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from config.schema import AmiConfig, Config
from telephony.ami.client import AmiClient, AmiClientStats, AmiConnection
from telephony.ami.codec import DEFAULT_MAX_MESSAGE_BYTES, AmiDecoder, Banner, Message, encode_message
from telephony.ami.server import TraceAmiServer as TraceAmiServer
from telephony.ami.server import replay_trace_tcp as replay_trace_tcp
from telephony.ami.trace import read_trace
from telephony.ami.tracker import AmiTracker, ChannelRules
from telephony.events import DomainEvent


def channel_rules(cfg: Config) -> ChannelRules:
    """The tracker's site rules (agents' phones, outbound dials, dispositions) from ``pbx.channels``."""
    ch = cfg.pbx.channels
    return ChannelRules.build(ch.agent_patterns, ch.outbound_contexts, ch.outbound_patterns,
                              ch.disposition_userevent, ch.wrapup_pause_prefix)


def replay_trace(
    path: str | Path,
    advance_to: Callable[[float], None],
    emit: Callable[[DomainEvent], None],
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    rules: ChannelRules | None = None,
) -> AmiTracker:
    """Feed a recorded ``.jsonl`` trace through the real codec and tracker.

    Before each recorded message, ``advance_to(t)`` moves the caller's (virtual)
    clock to the message's receive time, so deadlines due in between fire first.
    A new ``banner`` is a new connection (the link came back); an ``eof`` is the
    link going down.  Actions the recorder sent are not replayed: their
    responses and list events are in the trace and reach the tracker as they
    reached the recorder.
    """
    tracker = AmiTracker(emit, rules)
    decoder = AmiDecoder(max_message_bytes, wanted_events=AmiTracker.WANTED)
    connected = False
    for item in read_trace(path):
        advance_to(item.t)
        if item.kind == "banner":
            decoder.reset()
            for m in decoder.feed(item.text.encode("utf-8") + b"\r\n"):
                if isinstance(m, Banner):
                    tracker.link_up(item.t)
                    connected = True
        elif item.kind == "msg":
            for m in decoder.feed(encode_message(item.pairs)):
                if not isinstance(m, Banner):
                    tracker.handle(m, item.t)
        elif item.kind == "eof" and connected:
            tracker.link_down(item.t, "eof")
            connected = False
    return tracker


class AsteriskAdapter:
    """The live Asterisk link: AMI client + tracker, speaking domain events.

    ``now`` stamps every message at receipt (the daemon's clock); ``emit``
    receives the domain events.  ``stats`` satisfies the metrics' LinkStats.
    """

    def __init__(
        self,
        cfg: AmiConfig,
        emit: Callable[[DomainEvent], None],
        now: Callable[[], float],
        rules: ChannelRules | None = None,
        **client_overrides: Any,
    ) -> None:
        self._now = now
        self.tracker = AmiTracker(emit, rules)
        self.client = AmiClient.from_config(
            cfg,
            on_message=self._on_message,
            on_connected=self._on_connected,
            on_disconnected=self._on_disconnected,
            wanted_events=AmiTracker.WANTED,
            now=now,
            **client_overrides,
        )

    def _on_message(self, msg: Message, conn: AmiConnection) -> None:
        self.tracker.handle(msg, conn.received_at)

    def _on_connected(self) -> None:
        self.tracker.link_up(self._now())

    def _on_disconnected(self, reason: str) -> None:
        self.tracker.link_down(self._now(), reason)

    @property
    def stats(self) -> AmiClientStats:
        return self.client.stats

    @property
    def connected(self) -> bool:
        return self.client.connected

    @property
    def last_error(self) -> str | None:
        return self.client.last_error

    async def start(self) -> None:
        await self.client.start()

    async def stop(self) -> None:
        await self.client.stop()

    async def wait_connected(self) -> None:
        await self.client.wait_connected()


from telephony.ami.demo_pbx import DemoPbx as DemoPbx  # noqa: E402  (re-exported for the demo)
