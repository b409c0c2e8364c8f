"""Pause and resume of one execution over the API: who and why recorded, a reason required, 409 twice."""
from __future__ import annotations

from typing import Any

from executions import store
from tests.integration.api.conftest import assert_error, pending_execution
from tests.integration.support import the_event

API = "/api/v1/"


def test_pause_then_resume__records_who_and_why_and_lifts_the_hold(operator: Any, define: Any) -> None:
    eid = pending_execution(define)

    paused = operator.post(API + f"executions/{eid}/pause/", {"reason": "vendor down"}, format="json")
    held = store.load(eid)
    twice = operator.post(API + f"executions/{eid}/pause/", {"reason": "again"}, format="json")
    shown = operator.get(API + f"executions/{eid}/").json()["paused"]
    resumed = operator.post(API + f"executions/{eid}/resume/", {"reason": "vendor back"}, format="json")

    assert paused.status_code == 200 and paused.json()["action"] == "pause"
    assert held["paused"]["execution"]["by"] == "operator"
    assert held["paused"]["execution"]["reason"] == "vendor down"
    assert twice.status_code == 409
    assert shown["execution"]["reason"] == "vendor down" and "workflow" not in shown
    assert operator.get(API + f"executions/{eid}/").json()["paused"] == {}
    assert resumed.status_code == 200
    doc = store.load(eid)
    assert not doc.get("paused")
    event = the_event(doc, "resumed")
    assert (event["by"], event["reason"]) == ("operator", "vendor back")


def test_pause__needs_a_reason_and_a_dry_run_changes_nothing(operator: Any, define: Any) -> None:
    eid = pending_execution(define)

    missing = operator.post(API + f"executions/{eid}/pause/", {}, format="json")
    dry = operator.post(API + f"executions/{eid}/pause/", {"reason": "r", "dry_run": True}, format="json")
    not_paused = operator.post(API + f"executions/{eid}/resume/", {"reason": "r"}, format="json")

    assert_error(missing, 400, "required", "reason")
    assert dry.status_code == 200 and dry.json()["dry_run"] is True
    assert not store.load(eid).get("paused")
    assert not_paused.status_code == 409


def test_workflow_pause__answers_the_pause_and_409_twice_404_unknown(operator: Any, define: Any) -> None:
    eid = pending_execution(define)
    name = store.load(eid)["workflow"]

    before = operator.get(API + f"workflows/{name}/").json()["paused"]
    paused = operator.post(API + f"workflows/{name}/pause/", {"reason": "maintenance"}, format="json")
    shown = operator.get(API + f"workflows/{name}/").json()["paused"]
    twice = operator.post(API + f"workflows/{name}/pause/", {"reason": "again"}, format="json")
    resumed = operator.post(API + f"workflows/{name}/resume/", {"reason": "done"}, format="json")
    not_paused = operator.post(API + f"workflows/{name}/resume/", {"reason": "done"}, format="json")
    unknown = operator.post(API + "workflows/no-such-flow/pause/", {"reason": "r"}, format="json")
    missing = operator.post(API + f"workflows/{name}/pause/", {}, format="json")

    assert paused.status_code == 200
    assert paused.json()["paused"] is True and paused.json()["by"] == "operator"
    assert before is None
    assert (shown["by"], shown["reason"]) == ("operator", "maintenance") and shown["at"]
    assert operator.get(API + f"workflows/{name}/").json()["paused"] is None
    assert twice.status_code == 409 and not_paused.status_code == 409
    assert resumed.status_code == 200 and resumed.json()["paused"] is False
    assert unknown.status_code == 404
    assert_error(missing, 400, "required", "reason")
