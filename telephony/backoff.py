"""Reconnect delays shared by the PBX clients (AMI, ESL)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator


def backoff(
    initial: float = 0.5,
    maximum: float = 30.0,
    factor: float = 2.0,
    rng: Callable[[], float] = random.random,
) -> Iterator[float]:
    """Reconnect delays: a random first delay in ``[0, initial]``, then capped
    exponential growth with full jitter (each delay uniform in ``[0, cap]``).

    Models: websockets ``client.py`` ``backoff()``, redis-py ``backoff.py``
    (``FullJitterBackoff``).  Infinite; the client starts a fresh one after
    every good login.
    """
    yield rng() * initial
    cap = initial
    while True:
        cap = min(cap * factor, maximum)
        yield rng() * cap
