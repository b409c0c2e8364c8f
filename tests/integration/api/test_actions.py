"""Cancel, retry and skip: a reason required, dry runs change nothing, 409 when the state forbids."""
from __future__ import annotations

import json
from typing import Any

import pytest

from executions import operations, runner, store
from tests.integration.api.conftest import assert_error, failed_execution, pending_execution
from tests.integration.support import events_of, fingerprint, the_event

API = "/api/v1/"


@pytest.mark.parametrize("action", ["cancel", "retry", "skip"])
def test_actions__dry_run_answers_the_changes_and_changes_nothing(
    operator: Any, define: Any, action: str
) -> None:
    eid = pending_execution(define) if action == "cancel" else failed_execution(define)
    before = fingerprint(store.load(eid))

    response = operator.post(API + f"executions/{eid}/{action}/", {"reason": "check", "dry_run": True},
                             format="json")

    body = response.json()
    assert response.status_code == 200
    assert (body["execution_id"], body["action"], body["dry_run"]) == (eid, action, True)
    assert body["changes"]["execution"]["before"] == ("PENDING" if action == "cancel" else "FAILED")
    assert body["event"]["reason"] == "check" and body["event"]["by"] == "operator"
    assert fingerprint(store.load(eid)) == before


def test_cancel__records_who_and_why(operator: Any, define: Any) -> None:
    eid = pending_execution(define)

    body = operator.post(API + f"executions/{eid}/cancel/", {"reason": "customer withdrew"},
                         format="json").json()

    doc = store.load(eid)
    assert body["changes"] == {"execution": {"before": "PENDING", "after": "CANCELLED"},
                               "steps.s1": {"before": "PENDING", "after": "CANCELLED"}}
    assert body["execution"]["status"] == doc["status"] == "CANCELLED"
    event = the_event(doc, "cancelled")
    assert (event["by"], event["reason"]) == ("operator", "customer withdrew")


def test_retry__with_an_edited_input_records_the_difference(operator: Any, define: Any) -> None:
    eid = failed_execution(define)

    body = operator.post(API + f"executions/{eid}/retry/", {"reason": "fixed", "input": {"n": 2}},
                         format="json").json()

    doc = store.load(eid)
    assert body["changes"]["steps.s1"] == {"before": "FAILED", "after": "PENDING"}
    assert body["execution"]["status"] == "RUNNING"
    assert json.loads(doc["steps"][0]["input_json"]) == {"n": 2}
    assert json.loads(the_event(doc, "retried")["input_diff_json"]) == [
        {"path": "/n", "op": "replace", "old": 1, "new": 2}]


def test_skip__stores_the_given_output_and_checks_the_step(operator: Any, define: Any) -> None:
    eid = failed_execution(define)

    wrong = operator.post(API + f"executions/{eid}/skip/", {"reason": "r", "step": "s2"}, format="json")
    right = operator.post(API + f"executions/{eid}/skip/",
                          {"reason": "by hand", "step": "s1", "output": {"done": True}}, format="json")

    assert_error(wrong, 400, "invalid", "step")
    assert right.status_code == 200
    doc = store.load(eid)
    assert doc["steps"][0]["status"] == "SKIPPED"
    assert json.loads(doc["steps"][0]["output_json"]) == {"done": True}
    assert len(events_of(doc, "skipped")) == 1


@pytest.mark.parametrize(("action", "state"), [("cancel", "failed"), ("retry", "pending"),
                                               ("skip", "pending")])
def test_actions__409_when_the_state_does_not_allow_it(
    operator: Any, define: Any, action: str, state: str
) -> None:
    eid = pending_execution(define) if state == "pending" else failed_execution(define)
    before = fingerprint(store.load(eid))

    response = operator.post(API + f"executions/{eid}/{action}/", {"reason": "try"}, format="json")

    body = assert_error(response, 409, "not_allowed")
    assert ("PENDING" if state == "pending" else "FAILED") in body["detail"]
    assert fingerprint(store.load(eid)) == before


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({}, "reason", "required"),
        ({"reason": ""}, "reason", "blank"),
        ({"reason": "   "}, "reason", "blank"),
        ({"reason": 5}, "reason", "invalid"),
        ({"reason": "x" * 1001}, "reason", "max_length"),
        ({"reason": "r", "dry_run": "yes"}, "dry_run", "invalid"),
        ({"reason": "r", "dry_run": 1}, "dry_run", "invalid"),
        ({"reason": "r", "force": True}, "force", "unknown_field"),
        ({"reason": "r", "input": {"n": 2}}, "input", "unknown_field"),
    ],
)
def test_cancel__bad_bodies_are_400_naming_the_field(
    operator: Any, define: Any, body: dict[str, Any], field: str, code: str
) -> None:
    eid = pending_execution(define)

    assert_error(operator.post(API + f"executions/{eid}/cancel/", body, format="json"), 400, code, field)
    assert store.load(eid)["status"] == "PENDING"


def test_actions__unknown_execution_is_404(operator: Any) -> None:
    for action in ("cancel", "retry", "skip"):
        response = operator.post(API + f"executions/nope/{action}/", {"reason": "r"}, format="json")
        assert_error(response, 404, "execution_not_found")


def test_retry__an_edited_input_may_not_point_files_receive_at_a_server_path(
    operator: Any, define: Any
) -> None:
    define("receiver", [{"name": "files.receive", "handler": "files.receive",
                         "retry": {"max_attempts": 1}}])
    doc, _ = operations.start("receiver", {"name": "x", "content_b64": "not base64!"})
    runner.advance(doc["_id"], worker="test")
    before = fingerprint(store.load(doc["_id"]))

    response = operator.post(API + f"executions/{doc['_id']}/retry/",
                             {"reason": "r", "input": {"path": "/etc/passwd"}}, format="json")

    assert_error(response, 400, "forbidden", "input.path")
    assert fingerprint(store.load(doc["_id"])) == before
