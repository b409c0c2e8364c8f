"""The per-execution Redis lock: random token, expiry always, compare-and-renew, compare-and-delete.

The lock keeps a second worker away in the normal case; it is not what makes detflow correct.
The ``version`` fence in MongoDB is (DESIGN invariant 5): a worker whose lock expired during a pause
finds its writes refused.

A worker that finds the lock taken leaves a *poke* before it gives up; the holder reads and clears
the poke in the same script that releases the lock, and sends another message when it finds one.
A message that arrives while another worker holds the execution is therefore never lost.
"""
from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

import redis
from redis.exceptions import NoScriptError

#: Delete the lock if it still holds our token; return whether a poke was waiting (and clear it).
_RELEASE = """
local released = 0
if redis.call('get', KEYS[1]) == ARGV[1] then
    redis.call('del', KEYS[1])
    released = 1
end
local poked = redis.call('del', KEYS[2])
return {released, poked}
"""

#: Extend the lock's expiry if it still holds our token.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


def run_script(client: redis.Redis, script: str, sha: str, keys: int, *args: Any) -> Any:
    """Run a Lua script by its SHA1 (``EVALSHA``: the script's text is not sent each time), or by
    its text (``EVAL``, which caches it) when the server does not know it (restarted, flushed)."""
    try:
        return client.evalsha(sha, keys, *args)
    except NoScriptError:
        return client.eval(script, keys, *args)


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


_RELEASE_SHA = _sha(_RELEASE)
_RENEW_SHA = _sha(_RENEW)


class ExecutionLock:
    """A lock on one execution, held by one worker thread (and renewed by its heartbeat)."""

    def __init__(self, client: redis.Redis, execution_id: str, ttl_ms: int) -> None:
        self.client = client
        self.key = f"detflow:lock:{execution_id}"
        self.poke_key = f"detflow:poke:{execution_id}"
        self.ttl_ms = ttl_ms
        self.token = secrets.token_hex(16)
        #: Whether this contender left the poke (``False`` when another one already had).
        self.first_poke = False
        #: When the lock was last set or renewed (``time.monotonic()``).
        self.renewed_at = 0.0

    def acquire(self) -> bool:
        """Take the lock, or leave a poke for its holder and return ``False``."""
        if self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            self.renewed_at = time.monotonic()
            return True
        # Taken: poke the holder, then try once more in case it released in between. If the second
        # try fails too, the holder has not released yet, so its release script will see the poke.
        self.first_poke = bool(
            self.client.set(self.poke_key, "1", nx=True, px=max(self.ttl_ms, 60_000))
        )
        if self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            self.renewed_at = time.monotonic()
            return True
        return False

    def renew(self) -> bool:
        """Extend the expiry to ``ttl_ms`` from now; ``False`` when the lock is no longer ours."""
        started = time.monotonic()
        if run_script(self.client, _RENEW, _RENEW_SHA, 1, self.key, self.token, self.ttl_ms):
            self.renewed_at = started
            return True
        return False

    def fresh(self) -> bool:
        """Whether at least two thirds of the lock's time are left since it was set or renewed:
        enough to start another step under it (a step's heartbeat renews it only once it runs for
        a third of the time)."""
        return time.monotonic() - self.renewed_at < self.ttl_ms / 3000

    def release(self) -> bool:
        """Release the lock if it is still ours; return whether another message poked meanwhile."""
        _released, poked = run_script(self.client, _RELEASE, _RELEASE_SHA, 2, self.key, self.poke_key,
                                      self.token)
        return bool(poked)

    def holder_ttl_ms(self) -> int:
        """Return the milliseconds left on the lock, whoever holds it (-2: not held)."""
        return int(self.client.pttl(self.key))
