"""Retry backoff, a pure function: exponential, capped, with jitter drawn from a hash of (execution,
step, attempt) instead of a random number, so that ``verify`` re-derives every retry time."""
from __future__ import annotations

import hashlib
import math

from workflows.spec import RetryPolicy


def backoff_ms(policy: RetryPolicy, execution_id: str, step: str, used: int, attempt: int) -> int:
    """Return the delay after the ``used``-th failed attempt of a budget, in milliseconds.

    ``initial_delay_s * multiplier ** (used - 1)``, capped at ``max_delay_s``, less a fraction of up
    to ``jitter`` drawn from a hash of (execution, step, attempt): never above the cap.
    """
    exponent = max(used - 1, 0)
    initial, cap = policy.initial_delay_s, policy.max_delay_s
    if initial <= 0 or cap <= 0:
        base = 0.0
    elif policy.multiplier > 1 and exponent * math.log(policy.multiplier) >= math.log(cap) - math.log(
        initial
    ):
        base = cap
    else:
        base = min(cap, initial * policy.multiplier**exponent)
    return round(base * (1 - policy.jitter * jitter_fraction(execution_id, step, attempt)) * 1000)


def jitter_fraction(execution_id: str, step: str, attempt: int) -> float:
    """Return a number in [0, 1) that depends only on (execution, step, attempt)."""
    digest = hashlib.sha256(f"{execution_id}:{step}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
