"""Per-step concurrency limits across every worker: a Redis sorted-set semaphore.

Each holder is a member whose score is its expiry; expired members are dropped before counting,
so a crashed worker's slot frees itself when its lease would have run out. The watchdog renews a
held slot with the lease (Dramatiq's ``ConcurrentRateLimiter`` cannot renew, so a handler running
longer than its TTL would lose its slot while still running).
"""
from __future__ import annotations

import secrets

import redis

#: Drop expired holders; take a slot if fewer than ARGV[2] remain. Returns 1 when taken.
_ACQUIRE = """
redis.call('zremrangebyscore', KEYS[1], '-inf', ARGV[1])
if redis.call('zcard', KEYS[1]) < tonumber(ARGV[2]) then
    redis.call('zadd', KEYS[1], ARGV[3], ARGV[4])
    redis.call('pexpire', KEYS[1], ARGV[5])
    return 1
end
return 0
"""

#: Push a held slot's expiry forward; 0 when it was dropped meanwhile.
_RENEW = """
if redis.call('zscore', KEYS[1], ARGV[2]) then
    redis.call('zadd', KEYS[1], ARGV[1], ARGV[2])
    redis.call('pexpire', KEYS[1], ARGV[3])
    return 1
end
return 0
"""


def key(workflow: str, step: str) -> str:
    """Return the Redis key of a step's slots (shared by every version of the workflow)."""
    return f"detflow:slots:{workflow}:{step}"


class StepSlot:
    """One attempt's claim on one of a step's ``limit`` concurrent slots."""

    def __init__(self, client: redis.Redis, workflow: str, step: str, limit: int, ttl_ms: int):
        self.client = client
        self.key = key(workflow, step)
        self.limit = limit
        self.ttl_ms = ttl_ms
        self.token = secrets.token_hex(8)

    def acquire(self, now_ms: int) -> bool:
        return bool(self.client.eval(_ACQUIRE, 1, self.key, now_ms, self.limit,
                                     now_ms + self.ttl_ms, self.token, self.ttl_ms * 2))

    def renew(self, now_ms: int) -> bool:
        return bool(self.client.eval(_RENEW, 1, self.key, now_ms + self.ttl_ms, self.token,
                                     self.ttl_ms * 2))

    def release(self) -> None:
        self.client.zrem(self.key, self.token)


def holders(client: redis.Redis, workflow: str, step: str, now_ms: int) -> int:
    """Return how many live attempts hold a slot of the step (for diagnosis)."""
    return int(client.zcount(key(workflow, step), f"({now_ms}", "+inf"))
