"""Coverage-guided fuzzing of the AMI codec with atheris (libFuzzer), outside the test suite.

    .venv/bin/pip install -e '.[fuzz]'
    .venv/bin/python tests/fuzz_codec.py -max_total_time=300 [corpus_dir]

Each input is split into chunks at positions taken from its first bytes, fed to an
``AmiDecoder`` with a small size cap, and decoded again in one piece: the decoder must never
raise, must keep its buffer within the cap plus one chunk, and must give the same messages
whatever the chunking (framing happens on bytes, so a split never changes a message).
Without atheris installed, the same properties run under hypothesis in the suite
(``tests/test_codec.py``, ``tests/test_faults.py``; ``RINGWATCH_FUZZ_EXAMPLES=20000`` for a long run).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import atheris

with atheris.instrument_imports():
    from telephony.ami.codec import AmiDecoder, Banner, Message

CAP = 512


def _messages(out: list[Message | Banner]) -> list[tuple[tuple[str, str], ...] | str]:
    return [m.text if isinstance(m, Banner) else m.pairs for m in out]


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    n_cuts, data = data[0] % 8, data[1:]
    cuts = sorted({(data[i % len(data)] * 7 + i * 13) % (len(data) + 1) for i in range(n_cuts)} | {0, len(data)})
    dec = AmiDecoder(max_message_bytes=CAP)
    out: list[Message | Banner] = []
    for a, b in itertools.pairwise(cuts):
        out.extend(dec.feed(data[a:b]))
        assert dec.buffered <= CAP + (b - a)
    whole = AmiDecoder(max_message_bytes=CAP)
    if _messages(whole.feed(data)) != _messages(out):
        # a cap discard depends on how much was buffered; beyond that, chunking must not matter
        assert dec.stats.oversize or whole.stats.oversize, "the same bytes decoded differently"


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
