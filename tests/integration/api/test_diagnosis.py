"""Diagnosis: why an execution is where it is, read from MongoDB, the engine, the lock and the queue."""
from __future__ import annotations

from typing import Any

import pytest

from detflow_site import conf
from executions import faults, operations, runner, store
from executions.diagnosis import SWEEP_COMMAND, diagnose
from executions.store import now_ms, to_ms
from executions.sweeper import sweep
from tests.integration.api.conftest import failed_execution

API = "/api/v1/"


def grace_ms() -> int:
    return round(conf.get().SWEEP_GRACE_S * 1000)


def test_diagnosis__a_fresh_execution_waits_for_its_queued_message(viewer: Any, define: Any) -> None:
    define("pay", [{"handler": "test.echo"}])
    started, _ = operations.start("pay", {})

    body = viewer.get(API + f"executions/{started['_id']}/diagnosis/").json()

    assert body["next"] == {"action": "claim", "step": "s1", "attempt": 1, "at": None, "reason": None}
    assert (body["messages"]["queued"], body["messages"]["fetched"], body["messages"]["delayed"]) == (1, 0, 0)
    assert body["lock"] == {"held": False, "ttl_ms": None, "holder": None}
    assert (body["stuck"], body["repair"]["action"]) == (False, "wait")


def test_diagnosis__a_message_nobody_takes_means_no_worker(define: Any) -> None:
    define("pay", [{"handler": "test.echo"}])
    started, _ = operations.start("pay", {})

    found = diagnose(started["_id"], now=now_ms() + grace_ms() + 100)

    assert found.stuck
    assert found.messages is not None and found.messages["waited_ms"] >= grace_ms()
    assert found.repair["action"] == "start_worker"
    assert conf.get().QUEUE in found.summary


def test_diagnosis__due_work_whose_message_was_lost_is_stuck_until_a_sweep(
    define: Any, redis_client: Any
) -> None:
    define("pay", [{"handler": "test.echo"}])
    started, _ = operations.start("pay", {})
    redis_client.flushall()
    later = now_ms() + grace_ms()

    lost = diagnose(started["_id"], now=later)
    sweep(now=later)
    resent = diagnose(started["_id"])

    assert lost.stuck and lost.repair == {
        "action": "sweep", "command": SWEEP_COMMAND, "detail": lost.repair["detail"]}
    assert "no message is waiting" in lost.summary
    assert lost.messages == {"queued": 0, "fetched": 0, "delayed": 0, "next_eta": None,
                             "waited_ms": None, "scanned": 0, "complete": True}
    assert not resent.stuck and resent.messages is not None and resent.messages["queued"] == 1


def test_diagnosis__a_crashed_worker_holds_the_lock_then_its_lease_expires(define: Any) -> None:
    define("pay", [{"handler": "test.echo"}])
    started, _ = operations.start("pay", {})
    eid = started["_id"]
    faults.arm("claimed", execution_id=eid)
    with pytest.raises(faults.SimulatedCrash):
        runner.advance(eid, worker="w-1")
    lease_end = to_ms(store.load(eid)["steps"][0]["lease_expires_at"])
    assert lease_end is not None

    running = diagnose(eid)
    expired = diagnose(eid, now=lease_end + 1)

    assert (running.next["action"], running.next["reason"], running.stuck) == ("wait", "lease", False)
    assert running.lease is not None and running.lease["worker"] == "w-1"
    assert running.lock is not None and running.lock["held"] and running.lock["holder"] == "w-1"
    assert 0 < running.lock["ttl_ms"] <= conf.get().LEASE_S * 1000
    assert (expired.next["action"], expired.next["reason"]) == ("recover_lost", "retry")
    assert expired.stuck and expired.repair["action"] == "sweep"
    assert expired.lease is not None and expired.lease["expired"]
    assert "w-1" in expired.summary


def test_diagnosis__a_retry_waits_with_its_delayed_message(define: Any) -> None:
    define("flaky", [{"handler": "test.flaky",
                      "retry": {"max_attempts": 3, "initial_delay_s": 30, "max_delay_s": 60}}])
    started, _ = operations.start("flaky", {"succeed_on": 2})
    runner.advance(started["_id"], worker="w-1")

    found = diagnose(started["_id"])

    assert (found.next["action"], found.next["reason"], found.next["step"]) == ("wait", "retry", "s1")
    assert found.messages is not None and found.messages["delayed"] == 1
    assert found.messages["next_eta"] is not None
    assert (found.stuck, found.repair["action"]) == (False, "wait")


def test_diagnosis__a_failed_execution_waits_for_an_operator(define: Any) -> None:
    eid = failed_execution(define)

    found = diagnose(eid)

    assert (found.status, found.next["action"], found.stuck) == ("FAILED", "none", False)
    assert found.repair["action"] == "operator"
    assert f"executions/{eid}/retry/" in found.repair["detail"]


def test_diagnosis__reads_and_changes_nothing(viewer: Any, define: Any, redis_client: Any) -> None:
    eid = failed_execution(define)
    before = store.load(eid)
    keys = sorted(redis_client.keys("*"))

    viewer.get(API + f"executions/{eid}/diagnosis/")

    assert store.load(eid) == before
    assert sorted(redis_client.keys("*")) == keys
