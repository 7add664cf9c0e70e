"""The sans-I/O AMI codec: framing, UTF-8 across reads, caps, garbage."""

from __future__ import annotations

import itertools
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.ami.codec import AmiDecoder, Banner, Message, encode_action, encode_message

FIXTURES = Path(__file__).parent / "fixtures" / "ami"
RAW = (FIXTURES / "S01_answered_caller_hangs_up.raw").read_bytes()
NAME = "张伟(理赔)"
CHINESE = (
    b"Asterisk Call Manager/11.0.0\r\n"
    + encode_message([("Event", "QueueCallerJoin"), ("CallerIDNum", "13912345678"), ("CallerIDName", NAME),
                      ("Queue", "support")])
    + encode_message([("Event", "Hangup"), ("Uniqueid", "1.1")])
)


def decode_all(chunks: list[bytes], **kw: object) -> list[Message | Banner]:
    dec = AmiDecoder(**kw)  # type: ignore[arg-type]
    out: list[Message | Banner] = []
    for c in chunks:
        out.extend(dec.feed(c))
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def test_real_recording_decodes_to_every_message() -> None:
    out = decode_all([RAW])
    assert out[0] == Banner("Asterisk Call Manager/11.0.0")
    msgs = [m for m in out if isinstance(m, Message)]
    # README: S01 has 160 messages on the monitor connection
    assert len(msgs) == 160
    assert msgs[0].response == "Success"
    assert sum(1 for m in msgs if m.event == "AgentConnect") == 1
    connect = next(m for m in msgs if m.event == "AgentConnect")
    assert connect.get("MemberName") == "Agent 7001"
    assert connect.get("RingTime") == "5"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(RAW) - 1), max_size=40))
def test_any_chunking_gives_the_same_messages(cuts: list[int]) -> None:
    assert decode_all(split_at(RAW, cuts)) == decode_all([RAW])


def test_chinese_name_survives_a_split_at_every_byte() -> None:
    whole = decode_all([CHINESE])
    for i in range(1, len(CHINESE)):
        got = decode_all([CHINESE[:i], CHINESE[i:]])
        assert got == whole, f"split at byte {i}"
        msg = got[1]
        assert isinstance(msg, Message)
        assert msg.get("CallerIDName") == NAME


def test_byte_by_byte_feed() -> None:
    got = decode_all([CHINESE[i : i + 1] for i in range(len(CHINESE))])
    assert [m.event for m in got if isinstance(m, Message)] == ["QueueCallerJoin", "Hangup"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=30))
def test_random_bytes_never_raise_and_memory_stays_bounded(chunks: list[bytes]) -> None:
    dec = AmiDecoder(max_message_bytes=2048)
    for c in chunks:
        for m in dec.feed(c):
            assert isinstance(m, Message | Banner)
        # never more than the cap plus one chunk held back
        assert dec.buffered <= 2048 + 3


def test_oversize_message_is_skipped_and_stream_recovers() -> None:
    big = encode_message([("Event", "VarSet"), ("Value", "x" * 10_000)])
    ok = encode_message([("Event", "Hangup"), ("Uniqueid", "9.9")])
    dec = AmiDecoder(max_message_bytes=4096, expect_banner=False)
    out: list[Message | Banner] = []
    for i in range(0, len(big + ok), 1000):
        out.extend(dec.feed((big + ok)[i : i + 1000]))
    assert [m.event for m in out if isinstance(m, Message)] == ["Hangup"]
    assert dec.stats.oversize == 1


def test_memory_bounded_on_endless_line_without_terminator() -> None:
    dec = AmiDecoder(max_message_bytes=4096, expect_banner=False)
    tracemalloc.start()
    try:
        for _ in range(2000):
            dec.feed(b"A" * 1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert dec.buffered <= 4096
    assert peak < 1_000_000  # 2 MB were fed; little of it is ever held
    assert dec.feed(b"\r\n\r\nEvent: Hangup\r\n\r\n")[-1].event == "Hangup"  # type: ignore[union-attr]


def test_undecodable_message_is_skipped() -> None:
    bad = b"Event: Newchannel\r\nCallerIDName: \xff\xfe\r\n\r\n"
    out = decode_all([bad + b"Event: Hangup\r\n\r\n"], expect_banner=False)
    assert [m.event for m in out if isinstance(m, Message)] == ["Hangup"]


def test_repeated_keys_are_kept_in_order() -> None:
    out = decode_all([b"Event: UserEvent\r\nVariable: a=1\r\nVariable: b=2\r\n\r\n"], expect_banner=False)
    msg = out[0]
    assert isinstance(msg, Message)
    assert msg.getall("Variable") == ["a=1", "b=2"]
    assert msg.get("Variable") == "a=1"


def test_response_follows_command_output_with_blank_lines() -> None:
    data = (
        b"Response: Follows\r\nPrivilege: Command\r\nActionID: 7\r\n"
        b"line one\r\n\r\nline three\r\n--END COMMAND--\r\n\r\n"
        b"Event: Hangup\r\n\r\n"
    )
    for cut in range(1, len(data)):
        out = decode_all([data[:cut], data[cut:]], expect_banner=False)
        assert [m.response or m.event for m in out if isinstance(m, Message)] == ["Follows", "Hangup"]
        first = out[0]
        assert isinstance(first, Message)
        assert first.action_id == "7"
        assert "line three" in first.getall("Output")


def test_filter_drops_unwanted_events_before_decoding() -> None:
    dec = AmiDecoder(wanted_events=frozenset({"AgentConnect"}))
    out = dec.feed(RAW)
    events = [m.event for m in out if isinstance(m, Message) and m.event]
    assert events == ["AgentConnect"]
    responses = [m for m in out if isinstance(m, Message) and m.response]
    assert responses  # responses are never filtered
    assert dec.stats.filtered > 100


def test_stream_without_banner_is_accepted() -> None:
    out = decode_all([b"Event: Hangup\r\nUniqueid: 1.2\r\n\r\n"])
    assert isinstance(out[0], Message)
    assert out[0].get("Uniqueid") == "1.2"


def test_encode_action_round_trip_and_injection_refused() -> None:
    raw = encode_action("Login", {"Username": "监控", "Secret": "s"}, action_id="1")
    out = decode_all([raw], expect_banner=False)
    msg = out[0]
    assert isinstance(msg, Message)
    assert msg.pairs == (("Action", "Login"), ("ActionID", "1"), ("Username", "监控"), ("Secret", "s"))
    with pytest.raises(ValueError, match="CR or LF"):
        encode_action("Originate", {"Channel": "PJSIP/1\r\nAction: Logoff"})
