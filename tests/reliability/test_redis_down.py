"""Redis down while a handler runs: the lock cannot be renewed, but MongoDB, which alone decides
(DESIGN invariants 5 and 6), must keep the attempt's lease alive, so that a live worker's attempt is
not recorded lost and its handler not run a second time.

Redis is killed for real (the embedded redis-server, SIGKILL) and started again on the same socket.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from detflow_site import conf, embedded
from executions import operations, runner, store
from executions.store import to_ms
from executions.sweeper import sweep
from tests.conftest import wait_for
from tests.handlers import LEDGER
from tests.reliability.invariants import assert_each_attempt_ran_once, assert_invariants

pytestmark = pytest.mark.usefixtures("audited")

LEASE_S = 0.5


@pytest.fixture
def redis_down(redis_client: Any, settings: Any, gates: Any, tmp_path: Any) -> Iterator[Any]:
    """Return the Redis server the engine's locks use, to kill; it is started again after the
    test, before the gates open (a handler let go with Redis down would fail to release its lock).

    With the embedded Redis that is the embedded server; with an external one, the locks move to a
    private redis-server for the test (an external Redis is not ours to kill)."""
    settings.DETFLOW = {**settings.DETFLOW, "LEASE_S": str(LEASE_S)}
    if conf.get().REDIS_URL is None:
        server = embedded.redis_server()
    else:
        server = embedded.RedisServer(tmp_path)
        server.start()
        settings.DETFLOW = {**settings.DETFLOW, "REDIS_URL": server.url}
    yield server
    if conf.get().REDIS_URL is None:
        if server.process is None:
            server.start()
    else:
        server.stop()


def heartbeat_ms(execution_id: str) -> int:
    doc = store.load(execution_id)
    assert doc is not None
    return to_ms(doc["steps"][0].get("heartbeat_at") or doc["steps"][0]["started_at"]) or 0


def test_redis_down__while_a_handler_runs__mongodb_lease_is_still_renewed(
    redis_down: Any, define: Any, gates: Any
) -> None:
    define("unlocked", [{"handler": "test.gate"}])
    started, _ = operations.start("unlocked", {"block": [1]})
    eid, key = started["_id"], f"{started['_id']}:s1"
    running = threading.Thread(target=runner.advance, args=(eid,), kwargs={"worker": "alive"})
    running.start()
    gates.wait_entered(key, 1)

    redis_down.kill()
    since = heartbeat_ms(eid)
    renewed = wait_for(lambda: heartbeat_ms(eid) >= since + 2 * LEASE_S * 1000 or None,
                       timeout=3 * LEASE_S + 2,
                       what="the MongoDB lease to be renewed while Redis is down (the sweeper "
                            "would record this live attempt lost and its handler would run again)")
    report = sweep()
    redis_down.start()
    gates.open(key, 1)
    running.join(10)

    doc = store.load(eid)
    assert renewed
    assert report.lost == []
    assert doc["status"] == "SUCCEEDED"
    assert [(a["n"], a["outcome"]) for a in doc["steps"][0]["attempts"]] == [(1, "succeeded")]
    assert dict(LEDGER) == {(key, 1): 1}
    assert_invariants(doc)
    assert_each_attempt_ran_once(doc)
