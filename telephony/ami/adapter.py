"""The Asterisk adapter's public entry points: the only part of ``telephony.ami``
the rest of ringwatch imports.  Everything here speaks domain events outward."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from config.schema import AmiConfig, Config
from telephony.ami.client import AmiActionError, AmiClient, AmiClientStats, AmiConnection, AmiError
from telephony.ami.codec import DEFAULT_MAX_MESSAGE_BYTES, AmiDecoder, Banner, Message, encode_message
from telephony.ami.lines import LineTracker as LineTracker
from telephony.ami.server import TraceAmiServer as TraceAmiServer
from telephony.ami.server import replay_trace_tcp as replay_trace_tcp
from telephony.ami.trace import read_trace
from telephony.ami.tracker import AmiTracker, ChannelRules, interface_base
from telephony.events import DomainEvent

log = logging.getLogger(__name__)

SpyMode = Literal["listen", "whisper", "barge"]
#: ChanSpy option letters per mode (added to the always-on options): listen = none, whisper = w, barge = B
SPY_MODE_OPTIONS: dict[str, str] = {"listen": "", "whisper": "w", "barge": "B"}


def channel_rules(cfg: Config) -> ChannelRules:
    """The tracker's site rules (agents' phones, outbound dials, dispositions) from ``pbx.channels``."""
    ch = cfg.pbx.channels
    return ChannelRules.build(ch.agent_patterns, ch.outbound_contexts, ch.outbound_patterns,
                              ch.disposition_userevent, ch.wrapup_pause_prefix, ch.commitment_userevent)


def replay_trace(
    path: str | Path,
    advance_to: Callable[[float], None],
    emit: Callable[[DomainEvent], None],
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    rules: ChannelRules | None = None,
    lines: LineTracker | None = None,
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
    decoder = AmiDecoder(max_message_bytes, wanted_events=AmiTracker.WANTED | (lines.WANTED if lines else frozenset()))
    connected = False
    for item in read_trace(path):
        advance_to(item.t)
        if item.kind == "banner":
            decoder.reset()
            for m in decoder.feed(item.text.encode("utf-8") + b"\r\n"):
                if isinstance(m, Banner):
                    tracker.link_up(item.t)
                    if lines is not None:
                        lines.link_up(item.t)
                    connected = True
        elif item.kind == "msg":
            for m in decoder.feed(encode_message(item.pairs)):
                if not isinstance(m, Banner):
                    tracker.handle(m, item.t)
                    if lines is not None:
                        lines.handle(m, item.t)
        elif item.kind == "eof" and connected:
            tracker.link_down(item.t, "eof")
            if lines is not None:
                lines.link_down(item.t, "eof")
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
        lines: LineTracker | None = None,
        **client_overrides: Any,
    ) -> None:
        self._now = now
        self.tracker = AmiTracker(emit, rules)
        self.lines = lines  # trunk / endpoint state (SYS-LINES): its events, its resync lists (_lines_resync)
        self._lines_resync_task: asyncio.Task[None] | None = None
        # the staleness sweep (issue 3): a periodic CoreShowChannels; the tracker's reconcile on its
        # ...Complete closes the calls whose channels the PBX no longer has (a lost Hangup)
        self.sweep_interval_s: float = client_overrides.pop("sweep_interval_s", cfg.sweep_interval_s)
        self.sweeps = 0
        self._sweeper: asyncio.Task[None] | None = None
        self.client = AmiClient.from_config(
            cfg,
            on_message=self._on_message,
            on_connected=self._on_connected,
            on_disconnected=self._on_disconnected,
            wanted_events=AmiTracker.WANTED | (lines.WANTED if lines is not None else frozenset()),
            now=now,
            **client_overrides,
        )

    def _on_message(self, msg: Message, conn: AmiConnection) -> None:
        self.tracker.handle(msg, conn.received_at)
        if self.lines is not None:
            self.lines.handle(msg, conn.received_at)

    def _on_connected(self) -> None:
        self.tracker.link_up(self._now())
        if self.lines is not None:
            self.lines.link_up(self._now())
            old, self._lines_resync_task = self._lines_resync_task, None
            if old is not None:
                old.cancel()
            self._lines_resync_task = asyncio.get_running_loop().create_task(self._lines_resync(),
                                                                              name="ami-lines-resync")

    async def _lines_resync(self) -> None:
        """The line lists after a login, apart from the calls' resync: a PBX that refuses one (manager
        ``write`` class, chan_sip absent) costs the line states of that list only, and says so."""
        assert self.lines is not None
        for action in self.lines.resync_actions:
            try:
                items = await self.client.list_action(action)
            except AmiActionError as e:
                log.info("ami.lines_resync_refused action=%s message=%s (manager.conf write class?)", action,
                         e.response.get("Message"))
            except (AmiError, TimeoutError) as e:
                log.warning("ami.lines_resync_failed action=%s error=%s", action, e)
                return
            else:
                log.debug("ami.lines_resync action=%s items=%d", action, len(items))

    def _on_disconnected(self, reason: str) -> None:
        self.tracker.link_down(self._now(), reason)
        if self.lines is not None:
            self.lines.link_down(self._now(), reason)

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
        if self.sweep_interval_s > 0:
            self._sweeper = asyncio.create_task(self._sweep(), name="ami-sweep")

    async def stop(self) -> None:
        resync, self._lines_resync_task = self._lines_resync_task, None
        if resync is not None:
            resync.cancel()
            await asyncio.gather(resync, return_exceptions=True)
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        await self.client.stop()

    async def _sweep(self) -> None:
        """Every ``sweep_interval_s``: ask the PBX for its channels (the events reach the tracker,
        whose reconcile closes calls the PBX no longer has).  Skipped while the link is down."""
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            if not self.client.connected:
                continue
            try:
                await self.client.list_action("CoreShowChannels")
                self.sweeps += 1
            except (AmiError, TimeoutError) as e:
                log.warning("ami.sweep_failed error=%s", e)

    async def wait_connected(self) -> None:
        await self.client.wait_connected()

    async def spy(self, supervisor_channel: str, call_id: str, agent: str, mode: SpyMode,
                  options: str = "qbES", spy_id: str | None = None) -> str:
        """Ring the supervisor's own phone (``supervisor_channel``, e.g. ``PJSIP/8001``) into ChanSpy on
        ``agent``'s leg of call ``call_id``: ``listen`` (silent), ``whisper`` (option ``w``: the agent
        hears the supervisor, the customer does not) or ``barge`` (``B``: both hear).  ``options`` are
        always added (``q`` no beep, ``b`` bridged calls only, ``E`` exit when the call ends, ``S``
        stop when nothing is left).  ``spy_id`` comes back on the SpyStarted / SpyStopped events.
        Returns the spied channel.  :class:`LookupError` when the agent has no leg in that call;
        ``AmiError`` / ``TimeoutError`` when the PBX refuses or does not answer."""
        target = self.tracker.agent_channel(call_id, agent)
        if target is None:
            raise LookupError(f"{agent} has no channel in call {call_id}")
        opts = options + SPY_MODE_OPTIONS[mode]
        if spy_id is not None:
            self.tracker.spy_ids[interface_base(supervisor_channel)] = spy_id
        await self.client.action("Originate", [
            ("Channel", supervisor_channel), ("Application", "ChanSpy"), ("Data", f"{target},{opts}"),
            ("CallerID", f'"ringwatch {mode}" <{spy_id or "spy"}>'), ("Timeout", "30000"), ("Async", "true"),
        ])
        return target


from telephony.ami.demo_pbx import DemoPbx as DemoPbx  # noqa: E402  (re-exported for the demo)
from telephony.ami.simulator import QueueSpec as QueueSpec  # noqa: E402  (the call-centre simulator, issue 3)
from telephony.ami.simulator import SimConfig as SimConfig  # noqa: E402
from telephony.ami.simulator import SimulatedPbx as SimulatedPbx  # noqa: E402
from telephony.ami.simulator import Simulator as Simulator  # noqa: E402
from telephony.ami.simulator import demo_simulator as demo_simulator  # noqa: E402
from telephony.ami.simulator import write_capture as write_capture  # noqa: E402
