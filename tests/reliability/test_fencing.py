"""Fencing: a worker whose lease ran out while its handler ran finds, when it finishes, that it
changes nothing; the successor that claimed the step meanwhile owns it (DESIGN invariant 5).

The late worker's handler blocks at a gate. Its pause (a GC, a frozen VM, a partition) is stood for
by deleting its Redis lock and sweeping at a time past its lease: the real sweeper records the
attempt lost, and a successor claims attempt 2 through the real ``advance``. Only then does the late
handler return (or heartbeat), and its outcome must be dropped.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

import pytest

from executions import operations, runner, store
from executions.engine import Claim, decide
from executions.store import now_ms
from executions.sweeper import sweep
from tests.conftest import wait_for
from tests.handlers import LEDGER
from tests.reliability.invariants import assert_each_attempt_ran_once, assert_invariants

pytestmark = pytest.mark.usefixtures("audited")

LEASE_S = 0.5


@pytest.fixture
def short_lease(settings: Any) -> None:
    """Leases (and locks) of half a second, so that a retry after a lost attempt falls due soon."""
    settings.DETFLOW = {**settings.DETFLOW, "LEASE_S": str(LEASE_S)}


def committed(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The part of an execution that only state changes write (not the lease a heartbeat renews)."""
    return {
        "version": doc["version"], "event_seq": doc["event_seq"], "status": doc["status"],
        "events": doc["events"],
        "steps": [{k: s.get(k) for k in ("status", "attempt", "attempts", "output_json", "current")}
                  for s in doc["steps"]],
    }


def advance_in_thread(execution_id: str, worker: str) -> threading.Thread:
    thread = threading.Thread(target=runner.advance, args=(execution_id,), kwargs={"worker": worker})
    thread.start()
    return thread


def finish(execution_id: str) -> dict[str, Any]:
    """Advance the execution in this thread until it ends (each call is one step's life)."""
    for _ in range(10):
        doc = store.load(execution_id)
        assert doc is not None
        if doc["status"] == "SUCCEEDED":
            return doc
        runner.advance(execution_id)
    raise AssertionError(f"execution {execution_id} did not finish")


@pytest.mark.parametrize("heartbeat", [False, True], ids=["late-returns", "late-heartbeats"])
@pytest.mark.parametrize("successor", ["running", "succeeded"])
def test_fencing__a_late_worker_finishing_after_a_successor_claimed__changes_nothing(
    successor: str, heartbeat: bool, redis_client: Any, define: Any, gates: Any, short_lease: None
) -> None:
    define("fenced", [{"handler": "test.gate"}, {"handler": "test.echo"}])
    block = [1, 2] if successor == "running" else [1]
    started, _ = operations.start("fenced", {"block": block, "heartbeat": heartbeat})
    eid, key = started["_id"], f"{started['_id']}:s1"
    late = advance_in_thread(eid, "late-worker")
    gates.wait_entered(key, 1)

    redis_client.delete(f"detflow:lock:{eid}")
    report = sweep(now=now_ms() + round(LEASE_S * 1000) + 200)
    assert report.lost == [eid]
    wait_for(lambda: isinstance(decide(store.to_state(store.load(eid)), now_ms()), Claim),
             timeout=5, what="the retry after the lost attempt to fall due")
    if successor == "running":
        current = advance_in_thread(eid, "successor")
        gates.wait_entered(key, 2)
    else:
        runner.advance(eid, worker="successor")
        finish(eid)
    before = committed(store.load(eid))

    gates.open(key, 1)
    late.join(10)

    assert not late.is_alive()
    assert committed(store.load(eid)) == before
    if heartbeat:
        assert gates.heartbeats[(key, 1)] == "LeaseLost"
    if successor == "running":
        gates.open(key, 2)
        current.join(10)
    doc = finish(eid)
    first = doc["steps"][0]
    claim = next(e for e in doc["events"] if e["type"] == "step_claimed" and e["attempt"] == 2)
    assert json.loads(first["output_json"]) == {"step": "s1", "attempt": 2, "fencing_token": claim["fence"]}
    assert [(a["n"], a["outcome"], a["worker"]) for a in first["attempts"]] == [
        (1, "lost", "late-worker"), (2, "succeeded", "successor")]
    assert dict(LEDGER) == {(key, 1): 1, (key, 2): 1, (f"{eid}:s2", 1): 1}
    assert_invariants(doc)
    assert_each_attempt_ran_once(doc)
