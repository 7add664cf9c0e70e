"""The FreeSWITCH adapter's public entry points: the only part of ``telephony.esl``
the rest of ringwatch imports.  Everything here speaks domain events outward."""

from __future__ import annotations

import logging
import re
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from config.schema import Config, EslConfig
from telephony.esl.client import EslClient, EslClientStats
from telephony.esl.codec import DEFAULT_MAX_FRAME_BYTES, EslDecoder, EslEvent
from telephony.esl.demo_pbx import EslDemoPbx as EslDemoPbx  # the demo's FreeSWITCH (recordings over ESL)
from telephony.esl.server import replay_esl_trace_tcp as replay_esl_trace_tcp
from telephony.esl.trace import EslTraceError as EslTraceError
from telephony.esl.trace import EslTraceItem, frame_bytes, read_esl_trace
from telephony.esl.trace import is_esl_trace as is_esl_trace
from telephony.esl.tracker import FsChannelRules, FsTracker, is_resync_command
from telephony.events import DomainEvent

log = logging.getLogger(__name__)

EavesdropMode = Literal["listen", "whisper", "barge"]
_UUID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z-]{0,63}$")
_DIAL = re.compile(r"^[^\s{}\[\]<>,'\"]+$")
_SPY_ID = re.compile(r"^[\w.-]{1,40}$")


def load_esl_trace(path: str | Path) -> list[EslTraceItem]:
    """Every item of a recorded ESL trace (for :func:`replay_esl_trace_tcp`, read before the clock starts)."""
    return list(read_esl_trace(path))


def esl_channel_rules(cfg: Config) -> FsChannelRules:
    """The tracker's site rules (agents' phones, outbound dials) from ``pbx.esl``."""
    esl = cfg.pbx.esl
    return FsChannelRules.build(esl.agent_patterns, esl.outbound_contexts, esl.outbound_patterns)


def replay_esl_trace(
    path: str | Path,
    advance_to: Callable[[float], None],
    emit: Callable[[DomainEvent], None],
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    rules: FsChannelRules | None = None,
) -> FsTracker:
    """Feed a recorded ESL ``.jsonl`` trace through the real codec and tracker.

    Before each recorded frame, ``advance_to(t)`` moves the caller's (virtual)
    clock to the frame's receive time, so deadlines due in between fire first.
    The link is up once the recorded ``auth`` is accepted and down at ``eof``.
    Commands the recorder sent are not replayed; their replies are in the trace
    (in order: ESL answers a connection's commands first in, first out), and the
    replies to a snapshot the recorder asked for (``show channels as json``, the
    ``callcenter_config`` lists) are reconciled as a resync when the last one is in.
    """
    tracker = FsTracker(emit, rules)
    decoder = EslDecoder(max_frame_bytes, event_filter=FsTracker.FILTER)
    items = list(read_esl_trace(path))
    # the recorder's next command after each item: a snapshot is a run of resync commands
    next_sent: list[EslTraceItem | None] = [None] * len(items)
    upcoming: EslTraceItem | None = None
    for i in range(len(items) - 1, -1, -1):
        next_sent[i] = upcoming
        if items[i].kind in ("sent", "eof"):
            upcoming = items[i]
    connected = False
    sent: deque[str] = deque()
    snapshot = False
    for i, item in enumerate(items):
        advance_to(item.t)
        if item.kind == "sent":
            sent.append(item.text)
            continue
        if item.kind == "eof":
            if snapshot:
                tracker.resync_done(item.t)
                snapshot = False
            if connected:
                tracker.link_down(item.t, "eof")
                connected = False
            decoder.reset()
            sent.clear()
            continue
        for frame in decoder.feed(frame_bytes(item)):
            if isinstance(frame, EslEvent):
                tracker.handle(frame, item.t)
                continue
            if frame.content_type not in ("command/reply", "api/response"):
                continue
            command = sent.popleft() if sent else ""
            if command.startswith("auth ") and frame.reply_text.startswith("+OK"):
                tracker.link_up(item.t)
                connected = True
            elif frame.content_type == "api/response" and is_resync_command(command):
                tracker.resync_reply(command, frame.body or "", item.t)
                snapshot = True
            if snapshot and not any(is_resync_command(c) for c in sent) and not _snapshot_goes_on(
                    next_sent[i], item.t):
                tracker.resync_done(item.t)
                snapshot = False
    if snapshot and items:
        tracker.resync_done(items[-1].t)
    return tracker


def _snapshot_goes_on(upcoming: EslTraceItem | None, t: float) -> bool:
    """The recorder's next command asks for more of the snapshot, right away."""
    return (upcoming is not None and upcoming.kind == "sent" and is_resync_command(upcoming.text)
            and upcoming.t - t < 1.0)


class FreeSwitchAdapter:
    """The live FreeSWITCH link: ESL client + tracker, speaking domain events.

    The same surface as the Asterisk adapter: ``start``/``stop``/``wait_connected``,
    ``stats`` (the metrics' LinkStats), ``connected``, ``last_error``.  ``now``
    stamps every frame at receipt (the daemon's clock).
    """

    def __init__(
        self,
        cfg: EslConfig,
        emit: Callable[[DomainEvent], None],
        now: Callable[[], float],
        rules: FsChannelRules | None = None,
        **client_overrides: Any,
    ) -> None:
        self._now = now
        self.tracker = FsTracker(emit, rules)
        self.client = EslClient.from_config(
            cfg,
            on_event=self._on_event,
            on_connected=self._on_connected,
            on_disconnected=self._on_disconnected,
            on_resync_reply=self.tracker.resync_reply,
            on_resync_done=self.tracker.resync_done,
            now=now,
            **client_overrides,
        )

    def _on_event(self, ev: EslEvent, received_at: float) -> None:
        self.tracker.handle(ev, received_at)

    def _on_connected(self) -> None:
        self.tracker.link_up(self._now())

    def _on_disconnected(self, reason: str) -> None:
        self.tracker.link_down(self._now(), reason)

    @property
    def stats(self) -> EslClientStats:
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

    async def spy(self, supervisor_dial: str, call_id: str, agent: str, mode: EavesdropMode,
                  options: str = "", spy_id: str | None = None) -> str:
        """Ring the supervisor's own phone (``supervisor_dial``, a dial string: ``user/8001``,
        ``sofia/internal/8001@pbx``) into ``eavesdrop`` on ``agent``'s leg of call ``call_id``:
        ``listen`` (silent), ``whisper`` (the agent hears the supervisor, the customer does not) or
        ``barge`` (both hear); see :func:`eavesdrop_command`.  The same surface as
        ``AsteriskAdapter.spy``; ``options`` (ChanSpy letters) mean nothing to FreeSWITCH and are
        ignored.  ``spy_id`` comes back on the SpyStarted / SpyStopped events (the supervisor's
        channel executing ``eavesdrop``, its hang-up; a failed originate stops it).

        Returns the spied leg's Unique-ID once FreeSWITCH accepted the ``bgapi originate`` (the
        supervisor's phone is still ringing).  :class:`LookupError` when the agent has no leg in
        that call; ``ValueError`` for a dial string that is not one, ``EslError`` / ``TimeoutError``
        when FreeSWITCH refuses or does not answer."""
        target = self.tracker.agent_channel(call_id, agent)
        if target is None:
            raise LookupError(f"{agent} has no channel in call {call_id}")
        channel = str(uuid.uuid4())  # the supervisor's channel: its events are known by it
        job = str(uuid.uuid4())
        command = eavesdrop_command(target, supervisor_dial, mode, caller_id_name=f"ringwatch {mode}",
                                    origination_uuid=channel, spy_id=spy_id)
        self.tracker.expect_spy(channel, spy_id, call_id, agent, job)
        try:
            await self.client.bgapi_submit(command, job)
        except BaseException:
            self.tracker.forget_spy(channel)
            raise
        log.info("esl.spy call=%s agent=%s mode=%s spy=%s", call_id, agent, mode, spy_id)
        return target


def eavesdrop_command(
    agent_uuid: str,
    supervisor_dial: str,
    mode: EavesdropMode = "listen",
    *,
    caller_id_name: str = "ringwatch",
    timeout_s: int = 30,
    origination_uuid: str | None = None,
    spy_id: str | None = None,
) -> str:
    """The ``originate`` command that lets a supervisor's phone silently monitor an agent's call.

    ``agent_uuid``: the agent's channel (its Unique-ID); ``supervisor_dial``: a dial string
    for the supervisor's phone (``user/8001``, ``sofia/internal/8001@pbx``).

    * ``listen``  -- hears both sides, nobody hears the supervisor (no whisper, no barge);
    * ``whisper`` -- the supervisor talks to the agent only (``eavesdrop_whisper_aleg``
      on the agent's leg; the caller hears nothing);
    * ``barge``   -- three-way: both parties hear the supervisor
      (``eavesdrop_whisper_aleg`` and ``eavesdrop_whisper_bleg``).

    Only the command string: who may monitor and the audit trail belong with the
    supervisor console (``monitor.spy``, through :meth:`FreeSwitchAdapter.spy`), which sends it
    with ``bgapi``.  ``origination_uuid``: the Unique-ID the supervisor's channel gets (its events
    are matched by it); ``spy_id``: ringwatch's request id, as channel variable ``ringwatch_spy``.
    Every value is validated (no spaces, braces or commas that could inject dial-string variables).
    """
    if not _UUID.match(agent_uuid):
        raise ValueError(f"not a channel Unique-ID: {agent_uuid!r}")
    if not _DIAL.match(supervisor_dial):
        raise ValueError(f"bad supervisor dial string: {supervisor_dial!r}")
    if not re.match(r"^[\w .-]{1,40}$", caller_id_name):
        raise ValueError(f"bad caller id name: {caller_id_name!r}")
    if origination_uuid is not None and not _UUID.match(origination_uuid):
        raise ValueError(f"not a channel Unique-ID: {origination_uuid!r}")
    if spy_id is not None and not _SPY_ID.match(spy_id):
        raise ValueError(f"bad spy id: {spy_id!r}")
    # the eavesdropper hears both sides; DTMF is off so no key press can change the mode
    whisper = {"listen": (False, False), "whisper": (True, False), "barge": (True, True)}.get(mode)
    if whisper is None:
        raise ValueError(f"eavesdrop mode must be listen, whisper or barge, not {mode!r}")
    flags = {
        "eavesdrop_enable_dtmf": "false",
        "eavesdrop_bridge_aleg": "true",
        "eavesdrop_bridge_bleg": "true",
        "eavesdrop_whisper_aleg": str(whisper[0]).lower(),  # the agent's leg hears the supervisor
        "eavesdrop_whisper_bleg": str(whisper[1]).lower(),  # the caller's leg hears the supervisor
    }
    variables = {
        "origination_caller_id_name": caller_id_name.replace(" ", "_"),
        "originate_timeout": str(int(timeout_s)),
        "ringwatch_eavesdrop": mode,
        **({"origination_uuid": origination_uuid} if origination_uuid is not None else {}),
        **({"ringwatch_spy": spy_id} if spy_id is not None else {}),
        **flags,
    }
    head = ",".join(f"{k}={v}" for k, v in variables.items())
    return f"originate {{{head}}}{supervisor_dial} &eavesdrop({agent_uuid})"


__all__ = [
    "EavesdropMode",
    "EslDemoPbx",
    "EslTraceError",
    "FreeSwitchAdapter",
    "eavesdrop_command",
    "esl_channel_rules",
    "is_esl_trace",
    "load_esl_trace",
    "replay_esl_trace",
    "replay_esl_trace_tcp",
]
