"""The sans-I/O ESL codec: framing on Content-Length, URL-decoded event bodies, UTF-8 across reads,
nested bodies, caps, the event filter, and garbage."""

from __future__ import annotations

import itertools
import json
import tracemalloc
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.esl.codec import (
    MAX_HEADER_BYTES,
    EslDecoder,
    EslEvent,
    EslFrame,
    EventFilter,
    encode_command,
    encode_event,
    encode_frame,
    parse_event_headers,
)
from telephony.esl.trace import frame_bytes, is_esl_trace, read_esl_trace
from telephony.esl.tracker import FsTracker

FIXTURES = Path(__file__).parent / "fixtures" / "esl"
RAW = (FIXTURES / "F01_answered_caller_hangs_up.raw").read_bytes()
NAME = "张伟(理赔)"
Item = EslFrame | EslEvent


def decode_all(chunks: list[bytes], **kw: object) -> list[Item]:
    dec = EslDecoder(**kw)  # type: ignore[arg-type]
    out: list[Item] = []
    for c in chunks:
        out.extend(dec.feed(c))
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


WHOLE = decode_all([RAW])
FILTERED = decode_all([RAW], event_filter=FsTracker.FILTER)


def test_real_recording_decodes_to_every_frame() -> None:
    # README: F01 has 185 frames on the monitor connection, 180 of them events
    assert len(WHOLE) == 185
    assert sum(isinstance(f, EslEvent) for f in WHOLE) == 180
    first, accepted = WHOLE[0], WHOLE[1]
    assert isinstance(first, EslFrame)
    assert first.content_type == "auth/request"
    assert first.body is None
    assert isinstance(accepted, EslFrame)
    assert accepted.reply_text == "+OK accepted"
    last = WHOLE[-1]
    assert isinstance(last, EslFrame)
    assert last.content_type == "text/disconnect-notice"
    assert last.body is not None
    assert last.body.startswith("Disconnected, goodbye.")
    start = next(f for f in WHOLE if isinstance(f, EslEvent) and f.get("CC-Action") == "member-queue-start")
    assert start.name == "CUSTOM"
    assert start.subclass == "callcenter::info"
    assert start.get("CC-Member-CID-Name") == "张伟"  # URL-decoded UTF-8
    assert start.get("CC-Queue") == "support@default"


def test_trace_frames_are_the_recorded_bytes() -> None:
    # the .jsonl re-encoded is byte for byte the .raw capture: replay feeds the codec real bytes
    items = [i for i in read_esl_trace(FIXTURES / "F01_answered_caller_hangs_up.jsonl") if i.kind == "frame"]
    assert b"".join(frame_bytes(i) for i in items) == RAW
    assert is_esl_trace(FIXTURES / "F01_answered_caller_hangs_up.jsonl")
    assert not is_esl_trace(Path(__file__).parent / "fixtures" / "ami" / "S01_answered_caller_hangs_up.jsonl")


def test_repeated_keys_and_nested_body() -> None:
    complete = next(f for f in WHOLE if isinstance(f, EslEvent) and f.name == "CHANNEL_HANGUP_COMPLETE")
    assert len(complete.getall("Hangup-Cause")) == 2  # README: carried twice
    job = next(f for f in WHOLE if isinstance(f, EslEvent) and f.name == "BACKGROUND_JOB")
    assert job.body == "+OK d9db8365-6a63-4c3a-958f-7a27097d6648\n"
    assert "origination_caller_id_name=张伟" in (job.get("Job-Command-Arg") or "")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(RAW) - 1), max_size=40))
def test_any_chunking_gives_the_same_frames(cuts: list[int]) -> None:
    chunks = split_at(RAW, cuts)
    assert decode_all(chunks) == WHOLE
    assert decode_all(chunks, event_filter=FsTracker.FILTER) == FILTERED


def test_byte_by_byte_feed() -> None:
    part = RAW[:60_000]
    assert decode_all([part[i : i + 1] for i in range(len(part))]) == decode_all([part])


CHINESE = (
    encode_frame([("Content-Type", "api/response")], f"queue|cid_name\nsupport@default|{NAME}\n+OK\n")
    + encode_event([("Event-Name", "CUSTOM"), ("Event-Subclass", "callcenter::info"),
                    ("CC-Action", "member-queue-start"), ("CC-Member-CID-Name", NAME)])
    # a raw (not URL-encoded) UTF-8 value, as a hand-written event could carry
    + encode_frame([("Content-Type", "text/event-plain")],
                   f"Event-Name: CHANNEL_CREATE\nCaller-Caller-ID-Name: {NAME}\n\n")
)


def test_chinese_name_survives_a_split_at_every_byte() -> None:
    whole = decode_all([CHINESE])
    assert len(whole) == 3
    for i in range(1, len(CHINESE)):
        got = decode_all([CHINESE[:i], CHINESE[i:]])
        assert got == whole, f"split at byte {i}"
    api, custom, create = whole
    assert isinstance(api, EslFrame)
    assert NAME in (api.body or "")
    assert isinstance(custom, EslEvent)
    assert custom.get("CC-Member-CID-Name") == NAME
    assert isinstance(create, EslEvent)
    assert create.get("Caller-Caller-ID-Name") == NAME


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=2, max_value=200))
def test_a_body_split_across_many_reads(parts: int) -> None:
    body = json.dumps({"row_count": 1, "rows": [{"cid_name": NAME * 2000}]}, ensure_ascii=False)
    data = encode_frame([("Content-Type", "api/response")], body) + encode_frame(
        [("Content-Type", "command/reply"), ("Reply-Text", "+OK")])
    step = max(1, len(data) // parts)
    got = decode_all([data[i : i + step] for i in range(0, len(data), step)])
    assert [f.content_type for f in got if isinstance(f, EslFrame)] == ["api/response", "command/reply"]
    first = got[0]
    assert isinstance(first, EslFrame)
    assert first.body == body


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=30))
def test_random_bytes_never_raise_and_memory_stays_bounded(chunks: list[bytes]) -> None:
    dec = EslDecoder(max_frame_bytes=4096)
    for c in chunks:
        for item in dec.feed(c):
            assert isinstance(item, EslFrame | EslEvent)
        # at most one awaited body (the cap) or one unfinished header block, plus this chunk
        assert dec.buffered <= max(4096, MAX_HEADER_BYTES) + len(c)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"Content-Length: ", b"Content-Type: text/event-plain", b"\n", b"\n\n", b"12",
                                 b"-3", b"x", b"Event-Name: CUSTOM", b"\xe5\xbc", b"%E5", b": "]), max_size=200))
def test_protocol_shaped_garbage_never_raises(parts: list[bytes]) -> None:
    dec = EslDecoder(max_frame_bytes=1024, event_filter=FsTracker.FILTER)
    dec.feed(b"".join(parts))
    assert dec.buffered <= MAX_HEADER_BYTES + 1024 + sum(map(len, parts))


def test_oversize_body_is_skipped_while_it_streams_and_the_stream_recovers() -> None:
    big = encode_frame([("Content-Type", "api/response")], "x" * 200_000)
    ok = encode_frame([("Content-Type", "command/reply"), ("Reply-Text", "+OK")])
    dec = EslDecoder(max_frame_bytes=64 * 1024)
    out: list[Item] = []
    data = big + ok
    for i in range(0, len(data), 1000):
        out.extend(dec.feed(data[i : i + 1000]))
        assert dec.buffered <= 2000  # never buffered
    assert [f.reply_text for f in out if isinstance(f, EslFrame)] == ["+OK"]
    assert dec.stats.oversize == 1


def test_endless_header_block_is_bounded_and_the_stream_recovers() -> None:
    dec = EslDecoder()
    tracemalloc.start()
    try:
        for _ in range(2000):
            dec.feed(b"A" * 1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert dec.buffered <= MAX_HEADER_BYTES + 1000
    assert peak < 1_000_000  # 2 MB were fed; little of it is ever held
    out = dec.feed(b"\n\nContent-Type: command/reply\nReply-Text: +OK\n\n")
    assert [f.reply_text for f in out if isinstance(f, EslFrame)] == ["+OK"]


def test_bad_content_length_and_undecodable_frames_are_counted_not_raised() -> None:
    out = decode_all([b"Content-Length: banana\nContent-Type: command/reply\nReply-Text: +OK\n\n",
                      encode_frame([("Content-Type", "api/response")], b"\xff\xfe bad"),
                      encode_frame([("Content-Type", "command/reply"), ("Reply-Text", "+OK two")])])
    assert [f.reply_text for f in out if isinstance(f, EslFrame)] == ["+OK", "+OK two"]


def test_filter_drops_by_name_subclass_and_marker_before_decoding() -> None:
    dec = EslDecoder(event_filter=FsTracker.FILTER)
    out = dec.feed(RAW)
    names = [f.name for f in out if isinstance(f, EslEvent)]
    assert set(names) <= {*FsTracker.EVENTS, "CUSTOM"}
    assert "CHANNEL_EXECUTE" not in names  # only att_xfer ones pass, F01 has none
    actions = [f.get("CC-Action") for f in out if isinstance(f, EslEvent) and f.name == "CUSTOM"]
    assert "members-count" not in actions
    assert "member-queue-start" in actions
    assert dec.stats.filtered == 150  # of 180 events, undecoded
    assert [f.content_type for f in out if isinstance(f, EslFrame)][:3] == [
        "auth/request", "command/reply", "command/reply"]  # frames other than events always pass
    keep_execute = EventFilter(frozenset({"CHANNEL_EXECUTE"}),
                               require={"CHANNEL_EXECUTE": b"\nApplication: att_xfer\n"})
    att = encode_event([("Event-Name", "CHANNEL_EXECUTE"), ("Application", "att_xfer")])
    other = encode_event([("Event-Name", "CHANNEL_EXECUTE"), ("Application", "playback")])
    got = decode_all([other + att + other], event_filter=keep_execute)
    assert [f.get("Application") for f in got if isinstance(f, EslEvent)] == ["att_xfer"]
    # a CUSTOM event whose subclass is not on its first line is judged on its whole body
    mine = encode_event([("Event-Name", "CUSTOM"), ("Event-Subclass", "callcenter::info"), ("CC-Action", "x")])
    theirs = encode_event([("Event-Name", "CUSTOM"), ("Event-Subclass", "sofia::register")])
    got = decode_all([theirs + mine + theirs], event_filter=FsTracker.FILTER)
    assert [f.get("CC-Action") for f in got if isinstance(f, EslEvent)] == ["x"]


def test_encode_command_refuses_injection_and_events_round_trip() -> None:
    assert encode_command("api status") == b"api status\n\n"
    assert encode_command("bgapi status", [("Job-UUID", "j-1")]) == b"bgapi status\nJob-UUID: j-1\n\n"
    with pytest.raises(ValueError, match="CR or LF"):
        encode_command("api status\n\nexit")
    with pytest.raises(ValueError, match="CR or LF"):
        encode_command("bgapi status", [("Job-UUID", "x\nauth y")])
    pairs = [("Event-Name", "CHANNEL_CREATE"), ("Caller-Caller-ID-Name", "张 三: 100%"), ("Empty", "")]
    (ev,) = decode_all([encode_event(pairs, "+OK nested\n")])
    assert isinstance(ev, EslEvent)
    assert ev.pairs == (*pairs, ("Content-Length", "11"))  # as FreeSWITCH writes BACKGROUND_JOB
    assert ev.body == "+OK nested\n"


def _one_value_at_a_time(text: str) -> list[tuple[str, str]]:
    """The plain reading of an event's header block: each line split at ": ", each value decoded alone."""
    pairs: list[tuple[str, str]] = []
    for line in text.split("\n"):
        key, sep, value = line.partition(": ")
        if sep:
            pairs.append((key, unquote(value, errors="replace")))
        elif line.endswith(":") and line[:-1]:
            pairs.append((line[:-1], ""))
    return pairs


_PIECES = st.sampled_from(["a", "Unique-ID", ":", ": ", " ", "\n", "%", "%2", "%3A", "%E5", "%BC", "%A0", "%00",
                           "%0A", "%25", "\x00", "\r", "张", "0", "F"])


@given(st.lists(_PIECES, max_size=60).map("".join))
@settings(max_examples=3000)
def test_values_decoded_together_read_as_each_decoded_alone(text: str) -> None:
    # the decoder URL-decodes an event's ~150 values in one call (joined by NUL); truncated UTF-8,
    # stray "%", %00, raw NUL and CR anywhere must give exactly what decoding them one by one gives
    assert parse_event_headers(text) == _one_value_at_a_time(text)
