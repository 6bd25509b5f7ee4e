"""Retry delays for every AWS call we repeat: the agent's PutRecords and the consumer's reads.

Full jitter (a uniform draw below the exponential cap) is AWS's advice for many clients competing
for one shard's throughput: it spreads retries out instead of synchronising them. It lives in
`agent/` because that is upstream of every package that retries, so each can import it without
a cycle.
"""

from __future__ import annotations

from collections.abc import Callable


def backoff_delay(attempt: int, base: float, cap: float, rng: Callable[[], float]) -> float:
    """Seconds to wait before retry `attempt` (0-based): uniform in [0, min(cap, base * 2**n))."""
    return rng() * min(cap, base * (2 ** min(attempt, 32)))
