"""Rollback on a real worker: the compensations of completed steps, newest first, durably."""
from __future__ import annotations

from typing import Any

import pytest

from executions import operations, store
from executions.audit import verify
from executions.errors import InvalidArgument, OperationNotAllowed
from tests.conftest import wait_terminal
from tests.handlers import UNDONE
from tests.integration.support import events_of, fingerprint, loaded, runs_of

FAST = {"max_attempts": 2, "initial_delay_s": 0.05, "max_delay_s": 0.1}
UNDO = {"handler": "test.undo", "retry": FAST, "timeout_s": 10}


def undone(execution_id: str) -> list[str]:
    return [step for eid, step, *_ in UNDONE if eid == execution_id]


def test_failure_for_good__runs_the_compensations_of_the_succeeded_steps_newest_first(
    worker: Any, define: Any, settle: Any
) -> None:
    define("order", [
        {"name": "reserve", "handler": "test.echo", "compensate": UNDO},
        {"name": "note", "handler": "test.echo"},  # nothing to undo
        {"name": "charge", "handler": "test.echo", "compensate": UNDO},
        {"name": "capture", "handler": "test.permanent", "compensate": UNDO},  # never succeeds
        {"name": "receipt", "handler": "test.echo", "compensate": UNDO},  # never runs
    ], on_failure="compensate")
    started, _ = operations.start("order", {"n": 1})
    eid = started["_id"]

    [doc] = wait_terminal(eid)

    assert doc["status"] == "COMPENSATED"
    assert undone(eid) == ["charge", "reserve"]
    assert [s["status"] for s in doc["steps"]] == ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED", "FAILED", "PENDING"]
    assert [(c["name"], c["status"], c["attempt"]) for c in doc["compensations"]] == [
        ("charge", "SUCCEEDED", 1), ("reserve", "SUCCEEDED", 1)]
    # Each compensation ran once, with its own key, the step's output and the failure's cause.
    assert runs_of(eid, "charge:compensate") == {1: 1} and runs_of(eid, "reserve:compensate") == {1: 1}
    [(_, _, _, output, cause)] = [u for u in UNDONE if u[0] == eid and u[1] == "charge"]
    assert output["step"] == "charge"
    assert cause == {"step": "capture", "error_type": "workflows.errors.PermanentError",
                     "message": "the input can never be processed"}
    assert doc["rollback"]["by"] is None and doc["failed_step"] == "capture"
    kinds = [e["type"] for e in doc["events"]]
    assert kinds[kinds.index("attempt_failed"):] == [
        "attempt_failed", "rollback_started", "compensation_claimed", "compensation_succeeded",
        "compensation_claimed", "compensation_succeeded", "execution_compensated"]
    started_event = events_of(doc, "rollback_started")[0]
    assert (started_event["plan"], started_event["steps"]) == ([2, 0], ["charge", "reserve"])
    assert doc.get("due_at") is None and doc.get("finished_at") is not None
    assert verify(doc) == []


def test_stop__is_the_default_and_undoes_nothing(worker: Any, define: Any) -> None:
    define("plain", [{"handler": "test.echo", "compensate": UNDO}, {"handler": "test.permanent"}])
    started, _ = operations.start("plain", {})
    [doc] = wait_terminal(started["_id"])
    assert doc["status"] == "FAILED" and "compensations" not in doc and UNDONE == []


def test_compensation_failing_for_good__stops_until_an_operator_retries_or_skips_it(
    worker: Any, define: Any, settle: Any
) -> None:
    define("refund", [
        {"name": "reserve", "handler": "test.echo", "compensate": UNDO},
        {"name": "charge", "handler": "test.echo",
         "compensate": {"handler": "test.undo_flaky", "retry": FAST}},
        {"name": "capture", "handler": "test.permanent"},
    ], on_failure="compensate")
    started, _ = operations.start("refund", {"undo_succeed_on": 4})
    eid = started["_id"]

    [doc] = wait_terminal(eid)
    assert doc["status"] == "COMPENSATION_FAILED" and doc["failed_compensation"] == "charge"
    assert [c["status"] for c in doc["compensations"]] == ["FAILED", "PENDING"]
    assert undone(eid) == ["charge", "charge"]  # its budget of 2, and reserve's never started

    with pytest.raises(InvalidArgument, match="output"):
        operations.skip(eid, by="ops", reason="done by hand", output={"x": 1})
    result = operations.retry(eid, by="ops", reason="gateway fixed")
    assert result.changes == {"execution": ("COMPENSATION_FAILED", "COMPENSATING"),
                              "compensations.charge": ("FAILED", "PENDING")}
    [doc] = wait_terminal(eid)
    # A new budget of 2: attempt 3 fails, attempt 4 succeeds; then the reservation is released.
    assert doc["status"] == "COMPENSATED"
    assert undone(eid) == ["charge", "charge", "charge", "charge", "reserve"]
    assert [(c["status"], c["attempt"], c["budget_base"]) for c in doc["compensations"]] == [
        ("SUCCEEDED", 4, 2), ("SUCCEEDED", 1, 0)]
    assert [e["by"] for e in events_of(doc, "compensation_retried")] == ["ops"]
    assert verify(doc) == []


def test_compensation_skipped_by_an_operator__lets_the_rollback_go_on(
    worker: Any, define: Any, settle: Any
) -> None:
    define("skips", [
        {"name": "reserve", "handler": "test.echo", "compensate": UNDO},
        {"name": "charge", "handler": "test.echo", "compensate": {"handler": "test.undo_refused"}},
        {"name": "capture", "handler": "test.permanent"},
    ], on_failure="compensate")
    started, _ = operations.start("skips", {})
    eid = started["_id"]
    [doc] = wait_terminal(eid)
    assert doc["status"] == "COMPENSATION_FAILED" and undone(eid) == ["charge"]

    preview = operations.skip(eid, by="ops", reason="refunded by hand", dry_run=True)
    assert preview.event["type"] == "compensation_skipped" and fingerprint(loaded(eid)) == fingerprint(doc)
    operations.skip(eid, by="ops", reason="refunded by hand")
    [doc] = wait_terminal(eid)

    assert doc["status"] == "COMPENSATED"
    assert [c["status"] for c in doc["compensations"]] == ["SKIPPED", "SUCCEEDED"]
    assert undone(eid) == ["charge", "reserve"]
    assert "failed_compensation" not in doc
    assert verify(doc) == []


def test_operator_compensate__previews_the_plan_then_rolls_a_failed_execution_back(
    worker: Any, define: Any, settle: Any
) -> None:
    define("manual", [
        {"name": "a", "handler": "test.echo", "compensate": UNDO},
        {"name": "b", "handler": "test.permanent", "compensate": UNDO},
        {"name": "c", "handler": "test.echo", "compensate": UNDO},
    ])
    started, _ = operations.start("manual", {"n": 7})
    eid = started["_id"]
    [failed] = wait_terminal(eid)
    assert failed["status"] == "FAILED"
    operations.skip(eid, by="ops", reason="b is not needed", output={"skipped": True})
    [doc] = wait_terminal(eid)
    assert doc["status"] == "SUCCEEDED"
    with pytest.raises(OperationNotAllowed, match="SUCCEEDED"):
        operations.compensate(eid, by="ops", reason="undo", dry_run=True)


def test_operator_compensate__dry_run_changes_nothing_and_include_skipped_widens_the_plan(
    worker: Any, define: Any, settle: Any
) -> None:
    define("manual", [
        {"name": "a", "handler": "test.echo", "compensate": UNDO},
        {"name": "b", "handler": "test.echo", "compensate": UNDO},
        {"name": "c", "handler": "test.permanent", "compensate": UNDO},
    ])
    started, _ = operations.start("manual", {"n": 7})
    eid = started["_id"]
    [failed] = wait_terminal(eid)
    settle()

    result, plan = operations.compensate(eid, by="ops", reason="order withdrawn", dry_run=True)

    assert [(p.step, p.handler, p.status) for p in plan] == [("b", "test.undo", "SUCCEEDED"),
                                                             ("a", "test.undo", "SUCCEEDED")]
    assert plan[0].output["input"] == {"n": 7}
    assert result.dry_run and result.changes == {
        "execution": ("FAILED", "COMPENSATING"), "compensations.b": ("", "PENDING"),
        "compensations.a": ("", "PENDING")}
    assert result.event["type"] == "rollback_started" and result.event["by"] == "ops"
    assert fingerprint(loaded(eid)) == fingerprint(failed) and UNDONE == []

    operations.compensate(eid, by="ops", reason="order withdrawn")
    [doc] = wait_terminal(eid)

    assert doc["status"] == "COMPENSATED" and undone(eid) == ["b", "a"]
    assert doc["rollback"]["by"] == "ops" and doc["rollback"]["reason"] == "order withdrawn"
    assert doc["rollback"]["cause"]["step"] == "c"
    with pytest.raises(OperationNotAllowed, match="COMPENSATED"):
        operations.compensate(eid, by="ops", reason="again")
    with pytest.raises(OperationNotAllowed):
        operations.retry(eid, by="ops", reason="again")
    assert verify(doc) == []


def test_operator_compensate__refuses_what_has_nothing_to_undo(worker: Any, define: Any) -> None:
    define("nothing", [{"handler": "test.echo"}, {"handler": "test.permanent", "compensate": UNDO}])
    started, _ = operations.start("nothing", {})
    wait_terminal(started["_id"])
    with pytest.raises(OperationNotAllowed, match="nothing to undo"):
        operations.compensate(started["_id"], by="ops", reason="undo")
    with pytest.raises(InvalidArgument, match="reason"):
        operations.compensate(started["_id"], by="ops", reason=" ")


def test_operator_compensate__of_a_cancelled_execution_undoes_what_it_did(
    worker: Any, define: Any, settle: Any
) -> None:
    define("halted", [{"name": "a", "handler": "test.echo", "compensate": UNDO},
                      {"name": "b", "handler": "test.until_cancelled", "timeout_s": 20},
                      {"name": "c", "handler": "test.echo"}])
    started, _ = operations.start("halted", {})
    eid = started["_id"]
    from tests.conftest import wait_for

    wait_for(lambda: runs_of(eid, "b"), what="step b to start")
    operations.cancel(eid, by="ops", reason="customer left")
    [doc] = wait_terminal(eid)
    assert doc["status"] == "CANCELLED"

    operations.compensate(eid, by="ops", reason="give the stock back")
    [doc] = wait_terminal(eid)

    assert doc["status"] == "COMPENSATED" and undone(eid) == ["a"]
    assert doc["rollback"]["cause"]["error_type"] == "Cancelled"
    assert store.collection().count_documents({"status": "COMPENSATED"}) == 1
    assert verify(doc) == []


def test_operator_compensate__plan_of_an_output_holding_a_secret_number_masks_it(
    worker: Any, define: Any, settle: Any
) -> None:
    # Scrubbing the JSON text would turn {"pin": 4242} into invalid JSON: the plan masks the value.
    define("secretive", [{"name": "a", "handler": "test.echo", "compensate": UNDO},
                         {"name": "b", "handler": "test.permanent"}], secret_inputs=["card.pin"])
    started, _ = operations.start("secretive", {"card": {"pin": 4242}, "note": "pin 4242"})
    wait_terminal(started["_id"])
    settle()

    _, plan = operations.compensate(started["_id"], by="ops", reason="undo", dry_run=True)

    assert plan[0].output["input"] == {"card": {"pin": "[secret]"}, "note": "pin [secret]"}
