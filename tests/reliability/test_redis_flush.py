"""Redis flushed in the middle of a run loses queued messages, locks and pokes; MongoDB still holds
every execution, and the sweeper re-sends what no message will advance (DESIGN invariant 6)."""
from __future__ import annotations

from typing import Any

import pytest

from executions import operations, store
from tests.conftest import wait_for, wait_terminal
from tests.reliability.invariants import assert_each_attempt_ran_once, assert_invariants

pytestmark = pytest.mark.usefixtures("audited")

#: More executions than the worker runs and prefetches (4 threads, 8 prefetched), so that some
#: messages are still in Redis when it is flushed.
EXECUTIONS = 16
RETRYING = 4


def test_redis_flush__mid_run__sweeper_resends_and_every_execution_completes(
    worker: Any, sweeper: Any, redis_client: Any, define: Any
) -> None:
    define("flushed", [{"handler": "test.sleep"}, {"handler": "test.echo"}, {"handler": "test.sleep"}])
    # Some wait for a retry across the flush, their delayed message in Dramatiq's delay queue.
    define("retried", [{"handler": "test.flaky", "retry": {"max_attempts": 3, "initial_delay_s": 0.5}},
                       {"handler": "test.sleep"}])
    ids = [operations.start("flushed", {"sleep_s": 0.3})[0]["_id"] for _ in range(EXECUTIONS)]
    ids += [operations.start("retried", {"succeed_on": 2, "sleep_s": 0.3})[0]["_id"]
            for _ in range(RETRYING)]

    def in_flight() -> bool:
        docs = [store.load(eid) for eid in ids]
        running = sum(s["status"] == "RUNNING" for d in docs for s in d["steps"])
        return running >= 2
    wait_for(in_flight, timeout=10, what="steps to be running")
    never_claimed = [d["_id"] for d in map(store.load, ids) if d["status"] == "PENDING"]
    redis_client.flushdb()

    docs = wait_terminal(*ids, timeout=30)

    assert [d["status"] for d in docs] == ["SUCCEEDED"] * (EXECUTIONS + RETRYING)
    assert never_claimed, "every execution had started before the flush"
    # A sweep is reported when it returns, which may be after the work it re-sent has finished.
    wait_for(lambda: set(sweeper.resent()) & set(ids), timeout=10,
             what="a sweep to re-send work the flush lost (nothing needed the sweeper after the flush)")
    assert_invariants(*docs)
    assert_each_attempt_ran_once(*docs)
