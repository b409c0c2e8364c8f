"""Deadlines on a real worker: past a workflow's ``deadline_s`` the step waiting to start fails with
DeadlineExceeded and the execution fails (or, ``on_deadline: compensate``, is rolled back); a pause
does not hold a deadline off; an operator's retry after it runs without one."""
from __future__ import annotations

from typing import Any

import pytest

from executions import diagnosis, engine, operations
from executions.audit import verify
from executions.state import ExecutionStatus, StepStatus, evolve
from executions.store import load as store_load
from tests.conftest import wait_terminal
from tests.integration.support import loaded, ms, the_event
from workflows.errors import DefinitionError
from workflows.spec import RetryPolicy

WAIT = {"signal": "approved", "timeout_s": 600}


def test_deadline__a_wait_past_it_fails_the_step_and_the_execution(worker: Any, define: Any) -> None:
    define("bounded", [{"handler": "test.echo"}, {"name": "approval", "wait": WAIT}], deadline_s=0.5)
    started, _ = operations.start("bounded", {"n": 1})
    eid = started["_id"]
    assert ms(started["deadline_at"]) == ms(started["created_at"]) + 500

    [doc] = wait_terminal(eid)

    assert doc["status"] == "FAILED" and doc["failed_step"] == "approval"
    assert doc["steps"][0]["status"] == "SUCCEEDED"
    assert doc["steps"][1]["error"]["type"] == "DeadlineExceeded"
    passed = the_event(doc, "deadline_passed")
    assert (passed["step"], passed["on_deadline"]) == ("approval", "fail")
    assert ms(passed["at"]) >= ms(doc["deadline_at"])
    assert [e["type"] for e in doc["events"]][-2:] == ["deadline_passed", "execution_failed"]
    assert verify(doc) == []
    assert "DeadlineExceeded" in diagnosis.diagnose(eid).summary + str(diagnosis.diagnose(eid).repair)


def test_deadline__with_on_deadline_compensate_the_done_steps_are_undone(worker: Any, define: Any) -> None:
    define("undone", [{"handler": "test.echo", "compensate": {"handler": "test.undo"}},
                      {"name": "approval", "wait": WAIT}], deadline_s=0.5, on_deadline="compensate")
    started, _ = operations.start("undone", {"n": 2})

    [doc] = wait_terminal(started["_id"])

    assert doc["status"] == "COMPENSATED"
    kinds = [e["type"] for e in doc["events"]]
    assert kinds.index("deadline_passed") < kinds.index("rollback_started") \
        < kinds.index("execution_compensated")
    assert the_event(doc, "rollback_started")["cause_type"] == "DeadlineExceeded"
    assert verify(doc) == []


def test_deadline__a_paused_execution_still_fails_at_it(worker: Any, define: Any) -> None:
    define("paused-bound", [{"name": "approval", "wait": WAIT}], deadline_s=0.6)
    started, _ = operations.start("paused-bound", {})
    eid = started["_id"]
    operations.pause(eid, "ann", "maintenance")

    [doc] = wait_terminal(eid)

    assert doc["status"] == "FAILED" and doc["steps"][0]["error"]["type"] == "DeadlineExceeded"
    assert "paused" not in doc and verify(doc) == []


def test_deadline__an_operators_retry_after_it_runs_without_one(worker: Any, define: Any) -> None:
    define("late", [{"name": "nap", "sleep": {"seconds": 1}}, {"handler": "test.echo"}], deadline_s=0.3)
    started, _ = operations.start("late", {"n": 3})
    eid = started["_id"]
    [failed] = wait_terminal(eid)
    assert failed["status"] == "FAILED" and failed["failed_step"] == "nap"

    operations.retry(eid, "ann", "the deadline was too short")

    [doc] = wait_terminal(eid)
    assert doc["status"] == "SUCCEEDED" and doc["deadline_spent"] is True
    assert verify(doc) == []


def test_deadline__a_running_attempt_is_not_cut_the_next_step_fails(worker: Any, define: Any) -> None:
    define("slow", [{"handler": "test.sleep", "timeout_s": 5}, {"handler": "test.echo"}], deadline_s=0.2)
    started, _ = operations.start("slow", {"sleep_s": 0.6})

    [doc] = wait_terminal(started["_id"])

    assert doc["steps"][0]["status"] == "SUCCEEDED"
    assert doc["status"] == "FAILED" and doc["failed_step"] == "s2"
    assert doc["steps"][1]["error"]["type"] == "DeadlineExceeded" and doc["steps"][1]["attempt"] == 0
    assert verify(doc) == []
    assert loaded(started["_id"])["status"] == "FAILED"


def test_deadline__the_engine_decides_it_and_refuses_one_that_does_not_exist() -> None:
    step = engine.StepState("a", StepStatus.RETRY_WAIT, RetryPolicy(), attempt=1, next_retry_at=5_000)
    state = engine.ExecutionState("x", ExecutionStatus.RUNNING, (step,), deadline_at=3_000)
    assert engine.decide(state, 1_000) == engine.Wait(3_000, "retry")  # woken at the deadline
    assert engine.decide(state, 3_000) == engine.Expire(0)
    events = engine.expired(state, engine.Expire(0), 3_000)
    assert [e.type for e in events] == ["deadline_passed", "execution_failed"]
    with pytest.raises(engine.IllegalTransition):
        evolve(engine.ExecutionState("x", ExecutionStatus.RUNNING, (step,)),
               {"type": "deadline_passed", "step_index": 0})


@pytest.mark.parametrize("extra,field", [({"deadline_s": 0}, "deadline_s"),
                                         ({"deadline_s": 10, "on_deadline": "panic"}, "on_deadline"),
                                         ({"retention_days": 0}, "retention_days")])
def test_deadline__a_bad_setting_names_its_field(define: Any, extra: dict[str, Any], field: str) -> None:
    with pytest.raises(DefinitionError) as refused:
        define("bad-deadline", [{"handler": "test.echo"}], **extra)
    assert refused.value.field == field


def test_deadline__its_rollback_waits_for_a_pause_and_replays_the_same(worker: Any, define: Any) -> None:
    define("held-undo", [{"handler": "test.echo", "compensate": {"handler": "test.undo"}},
                         {"name": "approval", "wait": WAIT}], deadline_s=0.6, on_deadline="compensate")
    started, _ = operations.start("held-undo", {"n": 4})
    eid = started["_id"]
    from tests.conftest import wait_for

    wait_for(lambda: loaded(eid)["steps"][1]["status"] == "WAITING", what="the wait")
    operations.pause(eid, "ann", "hold it")
    doc = wait_for(lambda: (d := loaded(eid))["steps"][1]["status"] == "FAILED" and d, what="the deadline")
    assert doc["status"] == "RUNNING" and doc["deadline_failed"] == 1 and "due_at" not in doc
    assert verify(store_load(eid)) == []

    operations.resume(eid, "ann", "go on")

    [done] = wait_terminal(eid)
    assert done["status"] == "COMPENSATED" and verify(done) == []


def test_deadline__a_retry_after_it_fails_by_the_workflows_own_rule(worker: Any, define: Any) -> None:
    define("rule-back", [{"handler": "test.echo", "compensate": {"handler": "test.undo"}},
                         {"name": "nap", "sleep": {"seconds": 0.3}}, {"handler": "test.permanent"}],
           on_failure="compensate", deadline_s=0.1, on_deadline="fail")
    started, _ = operations.start("rule-back", {"n": 5})
    eid = started["_id"]
    [expired] = wait_terminal(eid)
    assert expired["status"] == "FAILED" and expired["failed_step"] == "nap"  # on_deadline: fail

    operations.retry(eid, "ann", "once more")

    [done] = wait_terminal(eid)
    # The later failure is the step's own: on_failure compensate rolls the execution back.
    assert done["status"] == "COMPENSATED" and done["steps"][2]["status"] == "FAILED"
    assert verify(done) == []
