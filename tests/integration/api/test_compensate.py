"""Rollback over the API: compensate/, the compensations and rollback an execution shows, and the
retry and skip of a failed compensation; every answer conforms to the OpenAPI schema."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from executions import operations, store
from tests.conftest import wait_for, wait_terminal
from tests.handlers import UNDONE
from tests.integration.api.conftest import assert_error, failed_execution
from tests.integration.support import events_of, fingerprint, loaded

API = "/api/v1/"
FAST = {"max_attempts": 2, "initial_delay_s": 0.05, "max_delay_s": 0.1}
UNDO = {"handler": "test.undo", "retry": FAST, "timeout_s": 10}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture
def conforming(token_for: Callable[..., str | None]) -> Callable[..., Any]:
    """Return a function that calls the API as an operator through the WSGI app and checks that
    the answer (status, content type, body) conforms to the served schema; it returns the answer."""
    schema = schemathesis.openapi.from_wsgi(API + "schema/", get_wsgi_application())
    token = token_for("operator")

    def call(method: str, path: str, body: Any = None, **path_parameters: str) -> Any:
        operation = schema[API + path][method]
        case = operation.Case(path_parameters=path_parameters,
                              **({} if body is None else {"body": body, "media_type": "application/json"}))
        response = case.call(headers={"Authorization": f"Token {token}"})
        case.validate_response(response, checks=CHECKS)
        return response

    return call


def undone(execution_id: str) -> list[str]:
    return [step for eid, step, *_ in UNDONE if eid == execution_id]


def test_detail__a_rollback_by_on_failure_shows_its_compensations_and_cause(
    worker: Any, define: Any, conforming: Callable[..., Any], viewer: Any
) -> None:
    define("order", [
        {"name": "reserve", "handler": "test.echo", "compensate": UNDO},
        {"name": "note", "handler": "test.echo"},
        {"name": "charge", "handler": "test.echo", "compensate": UNDO},
        {"name": "capture", "handler": "test.permanent", "compensate": UNDO},
    ], on_failure="compensate")
    started, _ = operations.start("order", {"n": 1})
    eid = started["_id"]
    [doc] = wait_terminal(eid)
    assert doc["status"] == "COMPENSATED"

    body = conforming("GET", "executions/{execution_id}/", execution_id=eid).json()

    assert (body["status"], body["failed_step"], body["failed_compensation"]) == (
        "COMPENSATED", "capture", None)
    assert [s["status"] for s in body["steps"]] == ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED", "FAILED"]
    assert [(c["name"], c["step_index"], c["handler"], c["status"], c["attempt"], c["error"])
            for c in body["compensations"]] == [("charge", 2, "test.undo", "SUCCEEDED", 1, None),
                                                ("reserve", 0, "test.undo", "SUCCEEDED", 1, None)]
    charge = body["compensations"][0]
    assert charge["output"] == {"undone": "charge", "key": f"{eid}:charge:compensate"}
    assert [a["outcome"] for a in charge["attempts"]] == ["succeeded"]
    assert charge["started_at"] and charge["finished_at"] and charge["current"] is None
    assert body["rollback"]["by"] is None and body["rollback"]["started_at"]
    assert body["rollback"]["cause"] == {"step": "capture", "error_type": "workflows.errors.PermanentError",
                                         "message": "the input can never be processed"}
    # The status filter takes the new statuses; the list shows the summary fields.
    listed = viewer.get(API + "executions/?status=COMPENSATED").json()["results"]
    assert [(r["id"], r["failed_step"], r["failed_compensation"]) for r in listed] == [(eid, "capture", None)]
    assert viewer.get(API + "executions/?status=COMPENSATING").json()["results"] == []
    assert viewer.get(API + "executions/?status=COMPENSATED&failed_step=capture").json()["results"]
    # The workflow's version shows what undoes each step.
    version = conforming("GET", "workflows/{name}/versions/{version}/", name="order", version="1").json()
    assert version["on_failure"] == "compensate"
    assert [(s["name"], (s["compensate"] or {}).get("handler")) for s in version["steps"]] == [
        ("reserve", "test.undo"), ("note", None), ("charge", "test.undo"), ("capture", "test.undo")]
    assert version["steps"][0]["compensate"]["retry"]["max_attempts"] == 2


def test_compensate__dry_run_shows_the_plan_and_changes_nothing_then_the_rollback_runs(
    worker: Any, define: Any, settle: Any, conforming: Callable[..., Any], operator: Any
) -> None:
    define("manual", [
        {"name": "a", "handler": "test.echo", "compensate": UNDO},
        {"name": "b", "handler": "test.echo", "compensate": UNDO},
        {"name": "c", "handler": "test.permanent", "compensate": UNDO},
    ])
    started, _ = operations.start("manual", {"n": 7})
    eid = started["_id"]
    [failed] = wait_terminal(eid)
    assert failed["status"] == "FAILED"
    settle()
    plain = conforming("GET", "workflows/{name}/versions/{version}/", name="manual", version="1").json()
    assert plain["on_failure"] == "stop"

    preview = conforming("POST", "executions/{execution_id}/compensate/",
                         {"reason": "order withdrawn", "dry_run": True}, execution_id=eid)

    body = preview.json()
    assert preview.status_code == 200
    assert (body["execution_id"], body["action"], body["dry_run"]) == (eid, "compensate", True)
    assert [(p["step"], p["step_index"], p["handler"], p["status"]) for p in body["plan"]] == [
        ("b", 1, "test.undo", "SUCCEEDED"), ("a", 0, "test.undo", "SUCCEEDED")]
    assert body["plan"][0]["output"] == {"step": "b", "input": {"n": 7}, "seen": ["a"]}
    assert body["changes"] == {"execution": {"before": "FAILED", "after": "COMPENSATING"},
                               "compensations.b": {"before": "", "after": "PENDING"},
                               "compensations.a": {"before": "", "after": "PENDING"}}
    assert (body["event"]["type"], body["event"]["by"], body["event"]["reason"]) == (
        "rollback_started", "operator", "order withdrawn")
    assert body["execution"]["status"] == "FAILED"
    stored = loaded(eid)
    assert fingerprint(stored) == fingerprint(failed) and "compensations" not in stored
    assert UNDONE == []

    done = conforming("POST", "executions/{execution_id}/compensate/", {"reason": "order withdrawn"},
                      execution_id=eid)

    assert done.status_code == 200 and done.json()["dry_run"] is False
    assert [p["step"] for p in done.json()["plan"]] == ["b", "a"]
    assert done.json()["execution"]["status"] == "COMPENSATING"
    [doc] = wait_terminal(eid)
    assert doc["status"] == "COMPENSATED" and undone(eid) == ["b", "a"]
    shown = conforming("GET", "executions/{execution_id}/", execution_id=eid).json()
    assert shown["rollback"]["by"] == "operator" and shown["rollback"]["reason"] == "order withdrawn"
    assert shown["rollback"]["cause"]["step"] == "c"
    assert [c["status"] for c in shown["compensations"]] == ["SUCCEEDED", "SUCCEEDED"]
    again = operator.post(API + f"executions/{eid}/compensate/", {"reason": "again"}, format="json")
    assert "COMPENSATED" in assert_error(again, 409, "not_allowed")["detail"]


def test_compensate__include_skipped_undoes_a_step_an_operator_skipped(
    worker: Any, define: Any, settle: Any, operator: Any
) -> None:
    define("skipped", [
        {"name": "a", "handler": "test.permanent", "compensate": UNDO},
        {"name": "b", "handler": "test.permanent"},
    ])
    started, _ = operations.start("skipped", {})
    eid = started["_id"]
    wait_terminal(eid)
    operations.skip(eid, by="ops", reason="a was done by hand", output={"by": "hand"})
    wait_for(lambda: loaded(eid)["status"] == "FAILED" and loaded(eid)["failed_step"] == "b",
             what="step b to fail")
    settle()
    before = fingerprint(loaded(eid))

    without = operator.post(API + f"executions/{eid}/compensate/", {"reason": "undo"}, format="json")
    widened = operator.post(API + f"executions/{eid}/compensate/",
                            {"reason": "undo", "include_skipped": True, "dry_run": True}, format="json")

    assert "nothing to undo" in assert_error(without, 409, "not_allowed")["detail"]
    assert widened.status_code == 200
    assert [(p["step"], p["status"], p["output"]) for p in widened.json()["plan"]] == [
        ("a", "SKIPPED", {"by": "hand"})]
    assert fingerprint(loaded(eid)) == before


def test_compensate__409_for_a_succeeded_execution_and_for_nothing_to_undo(
    worker: Any, define: Any, operator: Any
) -> None:
    define("fine", [{"handler": "test.echo", "compensate": UNDO}])
    define("bare", [{"handler": "test.echo"}, {"handler": "test.permanent", "compensate": UNDO}])
    succeeded, _ = operations.start("fine", {})
    bare, _ = operations.start("bare", {})
    wait_terminal(succeeded["_id"], bare["_id"])
    before = [fingerprint(loaded(e["_id"])) for e in (succeeded, bare)]

    done = operator.post(API + f"executions/{succeeded['_id']}/compensate/", {"reason": "undo"},
                         format="json")
    nothing = operator.post(API + f"executions/{bare['_id']}/compensate/",
                            {"reason": "undo", "dry_run": True}, format="json")

    assert "SUCCEEDED" in assert_error(done, 409, "not_allowed")["detail"]
    assert "nothing to undo" in assert_error(nothing, 409, "not_allowed")["detail"]
    assert [fingerprint(loaded(e["_id"])) for e in (succeeded, bare)] == before


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({}, "reason", "required"),
        ({"reason": " "}, "reason", "blank"),
        ({"reason": "r", "dry_run": "true"}, "dry_run", "invalid"),
        ({"reason": "r", "dry_run": 0}, "dry_run", "invalid"),
        ({"reason": "r", "include_skipped": "yes"}, "include_skipped", "invalid"),
        ({"reason": "r", "force": True}, "force", "unknown_field"),
        ({"reason": "r", "output": {}}, "output", "unknown_field"),
    ],
)
def test_compensate__bad_bodies_are_400_naming_the_field(
    operator: Any, define: Any, body: dict[str, Any], field: str, code: str
) -> None:
    eid = failed_execution(define)
    before = fingerprint(loaded(eid))

    response = operator.post(API + f"executions/{eid}/compensate/", body, format="json")

    assert_error(response, 400, code, field)
    assert fingerprint(loaded(eid)) == before


def test_compensate__unknown_execution_is_404_and_a_viewer_is_403(
    operator: Any, viewer: Any, define: Any
) -> None:
    eid = failed_execution(define)
    before = fingerprint(loaded(eid))

    missing = operator.post(API + "executions/nope/compensate/", {"reason": "r"}, format="json")
    refused = viewer.post(API + f"executions/{eid}/compensate/", {"reason": "r"}, format="json")

    assert_error(missing, 404, "execution_not_found")
    assert_error(refused, 403, "permission_denied")
    assert fingerprint(loaded(eid)) == before


def test_retry__of_a_failed_compensation_goes_on_with_the_rollback(
    worker: Any, define: Any, settle: Any, conforming: Callable[..., Any], operator: Any
) -> None:
    define("refund", [
        {"name": "reserve", "handler": "test.echo", "compensate": UNDO},
        {"name": "charge", "handler": "test.echo",
         "compensate": {"handler": "test.undo_flaky", "retry": FAST}},
        {"name": "capture", "handler": "test.permanent"},
    ], on_failure="compensate")
    started, _ = operations.start("refund", {"undo_succeed_on": 3})
    eid = started["_id"]
    [doc] = wait_terminal(eid)
    assert doc["status"] == "COMPENSATION_FAILED"
    settle()
    before = fingerprint(loaded(eid))

    shown = conforming("GET", "executions/{execution_id}/", execution_id=eid).json()
    assert (shown["status"], shown["failed_compensation"]) == ("COMPENSATION_FAILED", "charge")
    charge = shown["compensations"][0]
    assert (charge["status"], charge["attempt"], charge["output"]) == ("FAILED", 2, None)
    assert charge["error"] == {"type": "workflows.errors.RetryableError",
                               "message": "undo failed on attempt 2"}
    assert [a["outcome"] for a in charge["attempts"]] == ["failed", "failed"]
    diagnosis = conforming("GET", "executions/{execution_id}/diagnosis/", execution_id=eid).json()
    assert (diagnosis["status"], diagnosis["repair"]["action"]) == ("COMPENSATION_FAILED", "operator")
    history = conforming("GET", "executions/{execution_id}/events/", execution_id=eid).json()["results"]
    assert history[-1]["type"] == "compensation_failed"
    edited = operator.post(API + f"executions/{eid}/retry/", {"reason": "r", "input": {"path": "/etc"}},
                           format="json")
    assert_error(edited, 400, "invalid", "input")
    assert fingerprint(loaded(eid)) == before

    retried = conforming("POST", "executions/{execution_id}/retry/", {"reason": "gateway fixed"},
                         execution_id=eid)

    body = retried.json()
    assert retried.status_code == 200
    assert body["changes"] == {"execution": {"before": "COMPENSATION_FAILED", "after": "COMPENSATING"},
                               "compensations.charge": {"before": "FAILED", "after": "PENDING"}}
    assert body["event"]["type"] == "compensation_retried"
    assert body["execution"]["failed_compensation"] is None
    [doc] = wait_terminal(eid)
    assert doc["status"] == "COMPENSATED"
    assert undone(eid) == ["charge", "charge", "charge", "reserve"]
    shown = conforming("GET", "executions/{execution_id}/", execution_id=eid).json()
    # It succeeded on its third attempt: the error of the ones before is not shown.
    assert [(c["status"], c["attempt"], c["error"]) for c in shown["compensations"]] == [
        ("SUCCEEDED", 3, None), ("SUCCEEDED", 1, None)]
    assert [e["by"] for e in events_of(doc, "compensation_retried")] == ["operator"]


def test_skip__of_a_failed_compensation_takes_no_output_and_goes_on(
    worker: Any, define: Any, settle: Any, conforming: Callable[..., Any], operator: Any
) -> None:
    define("skips", [
        {"name": "reserve", "handler": "test.echo", "compensate": UNDO},
        {"name": "charge", "handler": "test.echo", "compensate": {"handler": "test.undo_refused"}},
        {"name": "capture", "handler": "test.permanent"},
    ], on_failure="compensate")
    started, _ = operations.start("skips", {})
    eid = started["_id"]
    [doc] = wait_terminal(eid)
    assert doc["status"] == "COMPENSATION_FAILED"
    settle()
    before = fingerprint(loaded(eid))

    with_output = operator.post(API + f"executions/{eid}/skip/", {"reason": "r", "output": {"x": 1}},
                                format="json")
    wrong_step = operator.post(API + f"executions/{eid}/skip/", {"reason": "r", "step": "reserve"},
                               format="json")
    preview = conforming("POST", "executions/{execution_id}/skip/",
                         {"reason": "refunded by hand", "step": "charge", "dry_run": True}, execution_id=eid)

    assert_error(with_output, 400, "invalid", "output")
    assert_error(wrong_step, 400, "invalid", "step")
    assert preview.status_code == 200 and preview.json()["event"]["type"] == "compensation_skipped"
    assert fingerprint(loaded(eid)) == before

    skipped = conforming("POST", "executions/{execution_id}/skip/", {"reason": "refunded by hand"},
                         execution_id=eid)

    assert skipped.status_code == 200
    assert skipped.json()["changes"] == {
        "execution": {"before": "COMPENSATION_FAILED", "after": "COMPENSATING"},
        "compensations.charge": {"before": "FAILED", "after": "SKIPPED"}}
    [doc] = wait_terminal(eid)
    assert doc["status"] == "COMPENSATED" and undone(eid) == ["charge", "reserve"]
    shown = conforming("GET", "executions/{execution_id}/", execution_id=eid).json()
    assert [(c["name"], c["status"]) for c in shown["compensations"]] == [
        ("charge", "SKIPPED"), ("reserve", "SUCCEEDED")]
    assert shown["compensations"][0]["error"]["type"] == "workflows.errors.PermanentError"
    assert store.load(eid)["compensations"][0].get("output_json") is None
