"""Start, cancel, retry and skip, against executions that a real worker runs."""
from __future__ import annotations

import json
from typing import Any

import pytest

from executions import operations, store
from executions.audit import verify
from executions.errors import InvalidArgument, OperationNotAllowed
from executions.store import now_ms
from tests.conftest import wait_for, wait_terminal
from tests.integration.support import fingerprint, loaded, ms, runs_of, the_event

FAST_TWO = {"max_attempts": 2, "initial_delay_s": 0.05, "max_delay_s": 0.1}


def failed_execution(define: Any, name: str = "fails") -> dict[str, Any]:
    """Run a workflow whose first step fails for good; return its FAILED document."""
    define(name, [{"handler": "test.permanent"}, {"handler": "test.context"}])
    started, _ = operations.start(name, {"n": 1})
    [doc] = wait_terminal(started["_id"])
    assert doc["status"] == "FAILED"
    return doc


# Start.


def test_start__same_idempotency_key_returns_the_first_execution(
    worker: Any, define: Any, settle: Any
) -> None:
    define("pay", [{"handler": "test.echo"}])
    define("mail", [{"handler": "test.echo"}])

    first, first_created = operations.start("pay", {"n": 1}, idempotency_key="order-42")
    again, again_created = operations.start("pay", {"n": 2}, idempotency_key="order-42")
    other, other_created = operations.start("mail", {"n": 3}, idempotency_key="order-42")

    assert (first_created, again_created, other_created) == (True, False, True)
    assert again["_id"] == first["_id"]
    assert other["_id"] != first["_id"]
    assert store.collection().count_documents({"workflow": "pay"}) == 1
    assert store.collection().count_documents({}) == 2
    pay, mail = wait_terminal(first["_id"], other["_id"])
    settle()
    after, after_created = operations.start("pay", {"n": 4}, idempotency_key="order-42")
    assert (after["_id"], after_created, after["status"]) == (first["_id"], False, "SUCCEEDED")
    assert json.loads(pay["steps"][0]["output_json"])["input"] == {"n": 1}
    assert json.loads(mail["steps"][0]["output_json"])["input"] == {"n": 3}
    assert runs_of(first["_id"], "s1") == {1: 1}
    assert runs_of(other["_id"], "s1") == {1: 1}
    assert store.collection().count_documents({}) == 2
    assert verify(pay) == [] and verify(mail) == []


# Cancel.


def test_cancel__mid_run_stops_later_steps_and_records_who_and_why(
    worker: Any, define: Any, settle: Any
) -> None:
    define("long", [{"handler": "test.until_cancelled", "timeout_s": 20}, {"handler": "test.echo"},
                    {"handler": "test.echo"}])
    started, _ = operations.start("long", {})
    eid = started["_id"]
    wait_for(lambda: runs_of(eid, "s1"), what="step 1 to start")
    before = loaded(eid)
    assert (before["status"], before["steps"][0]["status"]) == ("RUNNING", "RUNNING")

    preview = operations.cancel(eid, by="alice", reason="customer asked", dry_run=True)

    expected_changes = {"execution": ("RUNNING", "CANCELLED"), "steps.s2": ("PENDING", "CANCELLED"),
                        "steps.s3": ("PENDING", "CANCELLED")}
    assert preview.dry_run is True
    assert preview.changes == expected_changes
    assert preview.event == {"type": "cancelled", "by": "alice", "reason": "customer asked"}
    assert fingerprint(loaded(eid)) == fingerprint(before)

    result = operations.cancel(eid, by="alice", reason="customer asked")

    assert (result.dry_run, result.changes) == (False, expected_changes)
    [doc] = wait_terminal(eid, timeout=10)
    settle()
    doc = loaded(eid)
    assert doc["status"] == "CANCELLED"
    # The attempt that was running when the cancel came may finish; nothing after it starts.
    assert [s["status"] for s in doc["steps"]] == ["SUCCEEDED", "CANCELLED", "CANCELLED"]
    assert runs_of(eid, "s2") == {} and runs_of(eid, "s3") == {}
    assert [e["step"] for e in doc["events"] if e["type"] == "step_claimed"] == ["s1"]
    event = the_event(doc, "cancelled")
    assert (event["by"], event["reason"]) == ("alice", "customer asked")
    assert "due_at" not in doc
    assert verify(doc) == []


def test_cancel__finished_execution_is_not_allowed(worker: Any, define: Any) -> None:
    define("quick", [{"handler": "test.echo"}])
    started, _ = operations.start("quick", {})
    [doc] = wait_terminal(started["_id"])

    for dry_run in (True, False):
        with pytest.raises(OperationNotAllowed, match="SUCCEEDED"):
            operations.cancel(doc["_id"], by="alice", reason="too late", dry_run=dry_run)
    with pytest.raises(InvalidArgument) as missing:
        operations.cancel(doc["_id"], by="alice", reason="")
    assert missing.value.field == "reason"
    assert fingerprint(loaded(doc["_id"])) == fingerprint(doc)
    assert verify(doc) == []


# Retry.


def test_retry__continues_from_failed_step_with_a_new_budget(worker: Any, define: Any) -> None:
    define("again", [{"handler": "test.echo"}, {"handler": "test.flaky", "retry": FAST_TWO},
                     {"handler": "test.context"}])
    started, _ = operations.start("again", {"succeed_on": 3})
    eid = started["_id"]
    [failed] = wait_terminal(eid)
    assert (failed["status"], failed["failed_step"]) == ("FAILED", "s2")
    assert (failed["steps"][1]["attempt"], failed["steps"][1]["budget_base"]) == (2, 0)

    preview = operations.retry(eid, by="bob", reason="upstream fixed", dry_run=True)

    assert preview.changes == {"execution": ("FAILED", "RUNNING"), "steps.s2": ("FAILED", "PENDING")}
    assert fingerprint(loaded(eid)) == fingerprint(failed)

    result = operations.retry(eid, by="bob", reason="upstream fixed")

    assert result.changes == preview.changes
    [doc] = wait_terminal(eid)
    assert doc["status"] == "SUCCEEDED"
    assert "failed_step" not in doc
    step = doc["steps"][1]
    assert (step["attempt"], step["budget_base"]) == (3, 2)
    assert json.loads(step["output_json"]) == {"attempt": 3}
    assert runs_of(eid, "s1") == {1: 1}
    assert runs_of(eid, "s2") == {1: 1, 2: 1, 3: 1}
    assert sorted(json.loads(doc["steps"][2]["output_json"])["outputs"]) == ["s1", "s2"]
    event = the_event(doc, "retried")
    assert (event["step"], event["step_index"], event["by"], event["reason"]) == (
        "s2", 1, "bob", "upstream fixed")
    assert json.loads(event["input_diff_json"]) == []
    assert verify(doc) == []


def test_retry__with_edited_input_runs_the_step_on_it_and_records_the_diff(
    worker: Any, define: Any
) -> None:
    define("edit", [{"handler": "test.flaky", "retry": FAST_TWO}, {"handler": "test.context"}])
    started, _ = operations.start("edit", {"succeed_on": 9, "keep": "me"})
    eid = started["_id"]
    [failed] = wait_terminal(eid)
    assert failed["status"] == "FAILED"

    operations.retry(eid, by="bob", reason="lower the bar", input={"succeed_on": 3, "keep": "me"})

    [doc] = wait_terminal(eid)
    assert doc["status"] == "SUCCEEDED"
    assert json.loads(doc["steps"][0]["input_json"]) == {"succeed_on": 3, "keep": "me"}
    assert json.loads(doc["steps"][0]["output_json"]) == {"attempt": 3}
    # The edited input belongs to the retried step alone.
    later = json.loads(doc["steps"][1]["output_json"])
    assert later["input"] == {"succeed_on": 9, "keep": "me"}
    assert json.loads(doc["input_json"]) == {"succeed_on": 9, "keep": "me"}
    diff = json.loads(the_event(doc, "retried")["input_diff_json"])
    assert diff == [{"path": "/succeed_on", "op": "replace", "old": 9, "new": 3}]
    assert verify(doc) == []


# Skip.


def test_skip__failed_step_with_output_lets_later_steps_see_it(worker: Any, define: Any) -> None:
    failed = failed_execution(define)
    eid = failed["_id"]

    preview = operations.skip(eid, by="carol", reason="done by hand", output={"stand_in": True},
                              dry_run=True)

    assert preview.changes == {"execution": ("FAILED", "RUNNING"), "steps.s1": ("FAILED", "SKIPPED")}
    assert fingerprint(loaded(eid)) == fingerprint(failed)

    operations.skip(eid, by="carol", reason="done by hand", output={"stand_in": True}, step="s1")

    [doc] = wait_terminal(eid)
    assert doc["status"] == "SUCCEEDED"
    assert "failed_step" not in doc
    assert [s["status"] for s in doc["steps"]] == ["SKIPPED", "SUCCEEDED"]
    assert json.loads(doc["steps"][0]["output_json"]) == {"stand_in": True}
    assert json.loads(doc["steps"][1]["output_json"])["outputs"] == {"s1": {"stand_in": True}}
    assert runs_of(eid, "s1") == {1: 1}
    event = the_event(doc, "skipped")
    assert (event["step"], event["by"], event["reason"]) == ("s1", "carol", "done by hand")
    assert verify(doc) == []


def test_skip__naming_a_step_that_has_not_failed_is_rejected(worker: Any, define: Any) -> None:
    failed = failed_execution(define)

    with pytest.raises(InvalidArgument) as wrong:
        operations.skip(failed["_id"], by="carol", reason="r", output={}, step="s2")

    assert wrong.value.field == "step"
    assert fingerprint(loaded(failed["_id"])) == fingerprint(failed)


@pytest.mark.parametrize("action", ["retry", "skip"])
@pytest.mark.parametrize("reason", ["", "   ", None])
def test_operator_action__without_reason_is_rejected(
    worker: Any, define: Any, action: str, reason: Any
) -> None:
    failed = failed_execution(define)

    with pytest.raises(InvalidArgument) as missing:
        getattr(operations, action)(failed["_id"], by="dave", reason=reason)

    assert missing.value.field == "reason"
    assert fingerprint(loaded(failed["_id"])) == fingerprint(failed)


@pytest.mark.parametrize("action", ["retry", "skip"])
def test_operator_action__on_execution_that_has_not_failed_is_not_allowed(
    worker: Any, define: Any, action: str
) -> None:
    define("fine", [{"handler": "test.echo"}])
    started, _ = operations.start("fine", {})
    [doc] = wait_terminal(started["_id"])

    for dry_run in (True, False):
        with pytest.raises(OperationNotAllowed, match="only a FAILED execution"):
            getattr(operations, action)(doc["_id"], by="dave", reason="why not", dry_run=dry_run)

    assert fingerprint(loaded(doc["_id"])) == fingerprint(doc)
    assert verify(doc) == []


def test_start__concurrent_starts_with_one_key_create_one_execution(worker: Any, define: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    define("once", [{"handler": "test.echo"}])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(
            lambda n: operations.start("once", {"n": n}, idempotency_key="same"), range(8)))

    assert len({doc["_id"] for doc, _ in results}) == 1
    assert sorted(created for _, created in results) == [False] * 7 + [True]
    assert store.collection().count_documents({}) == 1
    [doc] = wait_terminal(results[0][0]["_id"])
    assert doc["status"] == "SUCCEEDED"
    assert runs_of(doc["_id"], "s1") == {1: 1}


def test_cancel__during_retry_wait_stops_the_pending_retry(worker: Any, define: Any, settle: Any) -> None:
    define("waits", [{"handler": "test.flaky",
                      "retry": {"max_attempts": 3, "initial_delay_s": 0.8, "jitter": 0}},
                     {"handler": "test.echo"}])
    started, _ = operations.start("waits", {"succeed_on": 2})
    eid = started["_id"]
    waiting = wait_for(lambda: (d := loaded(eid))["steps"][0]["status"] == "RETRY_WAIT" and d,
                       what="the first attempt to fail")

    result = operations.cancel(eid, by="erin", reason="not needed")

    assert result.changes == {"execution": ("RUNNING", "CANCELLED"), "steps.s1": ("RETRY_WAIT", "CANCELLED"),
                              "steps.s2": ("PENDING", "CANCELLED")}
    settle()  # the delayed retry message arrives and finds nothing to do
    doc = loaded(eid)
    # settle() returned only after the delayed retry message was due and handled.
    assert now_ms() >= ms(waiting["steps"][0]["next_retry_at"])
    assert doc["status"] == "CANCELLED"
    assert [s["status"] for s in doc["steps"]] == ["CANCELLED", "CANCELLED"]
    assert "due_at" not in doc and "next_retry_at" not in doc["steps"][0]
    assert runs_of(eid, "s1") == {1: 1}
    assert runs_of(eid, "s2") == {}
    assert verify(doc) == []


# Dry runs and writes build the event in one place.


@pytest.mark.parametrize(("action", "arguments"), [
    ("retry", {"input": {"n": 2}}),
    ("skip", {"output": {"skipped": True}}),
])
def test_action__dry_run_answers_the_event_the_write_stores(
    worker: Any, define: Any, action: str, arguments: dict[str, Any]
) -> None:
    doc = failed_execution(define, f"fails-{action}")
    act = getattr(operations, action)

    preview = act(doc["_id"], by="erin", reason="looked at it", dry_run=True, **arguments)
    result = act(doc["_id"], by="erin", reason="looked at it", **arguments)

    kind = {"retry": "retried", "skip": "skipped"}[action]
    stored = {k: v for k, v in the_event(loaded(doc["_id"]), kind).items() if k not in ("seq", "at")}
    assert preview.event == result.event == stored
    assert preview.changes == result.changes
