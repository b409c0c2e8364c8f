"""Steps run back to back under one message (``DETFLOW_INLINE_STEPS``): each next decision is made
from the document the write before it stored, and the run ends at its budget, at a wait, when the
lock has used up a third of its time, or when someone else changed the execution in between."""
from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import pytest

from executions import dispatch, operations, runner, store, transitions
from executions.store import Snapshot
from tests.conftest import running_worker, wait_for, wait_terminal
from tests.handlers import LEDGER
from workflows.context import StepContext
from workflows.registry import step


@step("test.cancel_own_execution")
def cancel_own_execution(ctx: StepContext) -> dict[str, Any]:
    """Cancel the execution this step belongs to (an operator acting while it runs), then succeed."""
    operations.cancel(ctx.execution_id, by="ops", reason="changed our mind")
    return {"cancelled": True}


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count the advance messages sent, by execution."""
    counts: Counter[str] = Counter()
    real_send = dispatch.send

    def counting(execution_id: str, delay_ms: int = 0) -> bool:
        counts[execution_id] += 1
        return real_send(execution_id, delay_ms)

    monkeypatch.setattr(dispatch, "send", counting)
    return counts


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Snapshot, dict[str, Any] | None]]:
    """Every snapshot a write returned, beside the working document the store held right after."""
    pairs: list[tuple[Snapshot, dict[str, Any] | None]] = []
    real_commit = transitions.commit

    def recording(*args: Any, **kwargs: Any) -> Snapshot | None:
        after = real_commit(*args, **kwargs)
        if after is not None:
            pairs.append((after, store.load_working(after.state.id)))
        return after

    monkeypatch.setattr(transitions, "commit", recording)
    return pairs


def test_inline__one_message_runs_every_step__from_what_each_write_stored(
    broker: Any, define: Any, sent: Counter[str], written: list[tuple[Snapshot, Any]]
) -> None:
    define("chain", [{"handler": "test.echo"}, {"handler": "test.context"}, {"handler": "test.echo"}])
    execution_id = operations.start("chain", {"n": 1})[0]["_id"]
    sent.clear()

    runner.advance(execution_id)

    doc = store.load(execution_id)
    assert doc is not None and doc["status"] == "SUCCEEDED"
    assert [(e["type"], e.get("step")) for e in doc["events"][1:]] == [
        ("step_claimed", "s1"), ("step_succeeded", "s1"), ("step_claimed", "s2"),
        ("step_succeeded", "s2"), ("step_claimed", "s3"), ("step_succeeded", "s3"),
        ("execution_succeeded", None)]
    assert sent[execution_id] == 0
    # Step 2 saw step 1's output, which it read from the snapshot, not from the store.
    assert doc["steps"][1]["output_json"] and '"s1"' in doc["steps"][1]["output_json"]
    # Four writes: s1's claim, then each outcome with the next claim (the last with the end).
    assert len(written) == 4
    for after, stored in written:
        assert stored is not None
        assert after.doc == stored
        assert after.state == store.to_state(stored)
    assert [after.finished for after, _ in written] == [False] * 3 + [True]
    assert [after.event_seq for after, _ in written] == [2, 4, 6, 8]  # the claims rode along


def test_inline__the_budget_hands_the_rest_to_a_new_message(
    broker: Any, define: Any, sent: Counter[str], settings: Any
) -> None:
    settings.DETFLOW = {**settings.DETFLOW, "INLINE_STEPS": "2"}
    define("five", [{"handler": "test.echo"}] * 5)
    execution_id = operations.start("five", {"n": 1})[0]["_id"]
    sent.clear()

    claimed = []
    for _ in range(3):
        runner.advance(execution_id)
        doc = store.load(execution_id)
        assert doc is not None
        claimed.append(sum(1 for e in doc["events"] if e["type"] == "step_claimed"))

    assert claimed == [2, 4, 5]
    assert doc["status"] == "SUCCEEDED"
    assert sent[execution_id] == 2  # one hand-on after each full run, none after the end


def test_inline__a_retry_due_at_once_runs_in_the_same_message(broker: Any, define: Any) -> None:
    define("flaky", [{"handler": "test.flaky",
                      "retry": {"max_attempts": 3, "initial_delay_s": 0, "max_delay_s": 0}},
                     {"handler": "test.echo"}])
    execution_id = operations.start("flaky", {"succeed_on": 3})[0]["_id"]

    runner.advance(execution_id)

    doc = store.load(execution_id)
    assert doc is not None and doc["status"] == "SUCCEEDED"
    assert [a["outcome"] for a in doc["steps"][0]["attempts"]] == ["failed", "failed", "succeeded"]


def test_inline__a_retry_that_waits_ends_the_run(broker: Any, define: Any, sent: Counter[str]) -> None:
    define("waits", [{"handler": "test.flaky",
                      "retry": {"max_attempts": 2, "initial_delay_s": 5, "max_delay_s": 5}},
                     {"handler": "test.echo"}])
    execution_id = operations.start("waits", {"succeed_on": 2})[0]["_id"]
    sent.clear()

    runner.advance(execution_id)

    doc = store.load(execution_id)
    assert doc is not None and doc["status"] == "RUNNING"
    assert doc["steps"][0]["status"] == "RETRY_WAIT"
    assert sent[execution_id] == 1  # the delayed message for the retry


def test_inline__a_cancel_between_two_steps_stops_the_run(broker: Any, define: Any) -> None:
    define("cancelled", [{"handler": "test.cancel_own_execution"}, {"handler": "test.echo"}])
    execution_id = operations.start("cancelled", {"n": 1})[0]["_id"]

    runner.advance(execution_id)

    doc = store.load(execution_id)
    assert doc is not None and doc["status"] == "CANCELLED"
    assert [s["status"] for s in doc["steps"]] == ["SUCCEEDED", "CANCELLED"]
    assert not [k for k in LEDGER if k[0] == f"{execution_id}:s2"]


def test_inline__a_run_ends_before_its_lock_has_used_a_third_of_its_time(
    worker: Any, define: Any, settings: Any, sent: Counter[str]
) -> None:
    """A run never outlives the lock it started under: with a 0.6 s lease, steps of 0.1 s hand on to
    a new message once 0.2 s have passed, and the execution still finishes."""
    settings.DETFLOW = {**settings.DETFLOW, "LEASE_S": "0.6"}
    define("slowish", [{"handler": "test.sleep"}] * 6)

    execution_id = operations.start("slowish", {"sleep_s": 0.1})[0]["_id"]
    [doc] = wait_terminal(execution_id, timeout=20)

    assert doc["status"] == "SUCCEEDED"
    assert [s["status"] for s in doc["steps"]] == ["SUCCEEDED"] * 6
    # The start's message, then a hand-on after every run of at most three steps (with the
    # default budget and no lock bound, one message would have carried all six: no hand-on).
    assert sent[execution_id] >= 3


def test_inline__a_stopping_worker_claims_no_further_step(broker: Any, redis_client: Any,
                                                         define: Any) -> None:
    """SIGTERM (``Worker.stop``) lets the running attempt finish, then the run hands the next step
    on to a new message instead of claiming it: another worker carries on."""
    define("stopped", [{"handler": "test.sleep"}] * 4)
    redis_client.flushdb()
    broker.flush_all()
    with running_worker(1) as first:
        execution_id = operations.start("stopped", {"sleep_s": 0.3})[0]["_id"]

        def running_s2() -> bool:
            doc = store.load_working(execution_id)
            return doc is not None and doc["steps"][1]["status"] == "RUNNING"
        wait_for(running_s2, timeout=10, what="step s2 to run")
        first.stop(timeout=10_000)

        doc = store.load_working(execution_id)
        assert doc is not None
        assert [s["status"] for s in doc["steps"]] == ["SUCCEEDED", "SUCCEEDED", "PENDING", "PENDING"]
    with running_worker(1):
        [doc] = wait_terminal(execution_id)
    assert doc["status"] == "SUCCEEDED"


def test_inline__a_store_error_in_what_follows_an_outcome_never_costs_the_outcome(
    broker: Any, define: Any, sent: Counter[str], monkeypatch: pytest.MonkeyPatch,
    written: list[tuple[Snapshot, Any]],
) -> None:
    """The next claim rides on an outcome only if the paused workflows can be read: when that read
    fails (a failover), the outcome is written alone and the run goes on from it."""
    from pymongo.errors import AutoReconnect

    from executions import controls

    define("chain", [{"handler": "test.echo"}, {"handler": "test.echo"}])
    execution_id = operations.start("chain", {"n": 1})[0]["_id"]
    real = controls.paused_workflows
    failed = []

    def failing_once(fresh: bool = False) -> dict[str, Any]:
        # The first read made to decide what rides on an outcome (s1's) fails; every other passes.
        if not failed and sys._getframe(1).f_code.co_name == "claim_next":
            failed.append(fresh)
            raise AutoReconnect("failing over")
        return real(fresh)

    monkeypatch.setattr(controls, "paused_workflows", failing_once)

    runner.advance(execution_id)

    doc = store.load(execution_id)
    assert doc is not None and doc["status"] == "SUCCEEDED"
    assert [[a["outcome"] for a in s["attempts"]] for s in doc["steps"]] == [["succeeded"], ["succeeded"]]
    assert [LEDGER[(f"{execution_id}:{name}", 1)] for name in ("s1", "s2")] == [1, 1]
    # s1's claim, s1's outcome alone, s2's claim, s2's outcome with the end.
    assert [after.event_seq for after, _ in written] == [2, 3, 4, 6]
    assert failed == [False]
