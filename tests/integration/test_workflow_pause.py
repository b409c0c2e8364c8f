"""A workflow's pause on a real worker: a running execution stops at its next step boundary (its
running step finishes), new ones stay PENDING, nothing is claimed while held; resumed, every one
finishes; an execution's own pause works the same way and survives its workflow's resume."""
from __future__ import annotations

from typing import Any

import pytest

from executions import operations, store
from executions.audit import verify
from executions.errors import InvalidArgument, OperationNotAllowed
from tests.conftest import wait_for, wait_terminal
from tests.integration.support import loaded
from workflows.errors import WorkflowNotFound


def held(execution_id: str, scope: str) -> dict[str, Any]:
    """Wait until the execution is held by a pause of ``scope``; return its document."""
    return wait_for(lambda: scope in ((doc := loaded(execution_id)).get("paused") or {}) and doc,
                    what=f"execution {execution_id} held by its {scope}")


def no_claim_while_held(doc: dict[str, Any]) -> None:
    """Between each ``paused`` event and the ``resumed`` that lifts it, nothing was claimed or started."""
    holding: set[str] = set()
    for event in store.load(doc["_id"])["events"]:  # type: ignore[index]
        if event["type"] == "paused":
            holding.add(event["scope"])
        elif event["type"] == "resumed":
            holding.discard(event["scope"])
        elif holding:
            assert event["type"] not in ("step_claimed", "wait_started"), (event, holding)


def test_workflow_pause__holds_running_and_new_executions_until_resumed(worker: Any, define: Any) -> None:
    define("maint", [{"handler": "test.sleep"}, {"handler": "test.echo"}, {"handler": "test.echo"}])
    running, _ = operations.start("maint", {"sleep_s": 0.4})
    rid = running["_id"]
    wait_for(lambda: loaded(rid)["steps"][0]["status"] == "RUNNING", what="step 1 to run")

    paused = operations.pause_workflow("maint", "ann", "database maintenance")
    assert paused.paused is True
    fresh = [operations.start("maint", {"sleep_s": 0})[0]["_id"] for _ in range(3)]

    doc = held(rid, "workflow")
    assert doc["steps"][0]["status"] == "SUCCEEDED"  # the running step finished
    assert [s["status"] for s in doc["steps"][1:]] == ["PENDING", "PENDING"]
    assert "due_at" not in doc
    for eid in fresh:
        new = held(eid, "workflow")
        assert new["status"] == "PENDING" and "due_at" not in new
        assert [e["type"] for e in new["events"]] == ["created", "paused"]
        assert new["paused"]["workflow"]["by"] == "ann"

    resumed = operations.resume_workflow("maint", "bob", "maintenance over")
    assert resumed.released == 4

    docs = wait_terminal(rid, *fresh)
    assert {d["status"] for d in docs} == {"SUCCEEDED"}
    for d in docs:
        assert "paused" not in d and verify(d) == []
        no_claim_while_held(d)


def test_pause__an_executions_own_pause_outlives_its_workflows_resume(worker: Any, define: Any) -> None:
    define("both", [{"handler": "test.sleep"}, {"handler": "test.echo"}])
    started, _ = operations.start("both", {"sleep_s": 0.3})
    eid = started["_id"]
    wait_for(lambda: loaded(eid)["steps"][0]["status"] == "RUNNING", what="step 1 to run")
    operations.pause(eid, "ann", "look at it first")
    operations.pause_workflow("both", "ann", "maintenance")
    wait_for(lambda: loaded(eid)["steps"][0]["status"] == "SUCCEEDED", what="step 1 to finish")

    operations.resume_workflow("both", "ann", "done")
    doc = loaded(eid)
    assert set(doc.get("paused") or {}) == {"execution"} and doc["steps"][1]["status"] == "PENDING"

    operations.resume(eid, "ann", "looked")
    [done] = wait_terminal(eid)
    assert done["status"] == "SUCCEEDED" and verify(done) == []
    no_claim_while_held(done)


def test_workflow_pause__a_second_pause_or_a_resume_of_a_running_workflow_is_refused(define: Any) -> None:
    define("twice", [{"handler": "test.echo"}])
    operations.pause_workflow("twice", "ann", "one")
    with pytest.raises(OperationNotAllowed, match="paused already"):
        operations.pause_workflow("twice", "ann", "two")
    operations.resume_workflow("twice", "ann", "done")
    with pytest.raises(OperationNotAllowed, match="not paused"):
        operations.resume_workflow("twice", "ann", "again")
    with pytest.raises(InvalidArgument, match="reason"):
        operations.pause_workflow("twice", "ann", " ")
    with pytest.raises(WorkflowNotFound):
        operations.pause_workflow("ghost", "ann", "x")


def test_pause__diagnosis_says_who_paused_it_and_how_to_resume(define: Any) -> None:
    from executions import diagnosis

    define("diag", [{"handler": "test.echo"}])
    operations.pause_workflow("diag", "ann", "maintenance")
    started, _ = operations.start("diag", {})
    operations.pause(started["_id"], "bob", "check the input")

    found = diagnosis.diagnose(started["_id"])

    assert "its workflow 'diag' was paused by 'ann' ('maintenance')" in found.summary
    assert "this execution was paused by 'bob' ('check the input')" in found.summary
    assert f"executions/{started['_id']}/resume/" in found.repair["detail"]
    assert "workflows/diag/resume/" in found.repair["detail"] and not found.stuck
    operations.resume_workflow("diag", "ann", "done")
