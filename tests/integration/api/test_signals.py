"""Signals over the API, on a real worker: POST executions/{id}/signals/{name}/ ends a wait (or is kept
until the wait starts), once per Idempotency-Key; who may send one (operators and signallers, who may
do nothing else); what an execution shows of its waits and signals; every answer conforms to the
OpenAPI schema."""
from __future__ import annotations

import json
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

from executions import operations
from tests.conftest import wait_for, wait_terminal
from tests.integration.api.conftest import assert_error
from tests.integration.support import events_of, loaded

API = "/api/v1/"
SIGNAL = "executions/{execution_id}/signals/{name}/"
WAIT = {"signal": "approved", "timeout_s": 60}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture
def conforming(token_for: Callable[..., str | None]) -> Callable[..., Any]:
    """Return a function that calls the API through the WSGI app as ``role`` (an operator unless
    told) and checks that the answer conforms to the served schema; it returns the answer."""
    schema = schemathesis.openapi.from_wsgi(API + "schema/", get_wsgi_application())
    tokens: dict[str, str | None] = {}

    def call(method: str, path: str, body: Any = None, *, role: str = "operator",
             headers: dict[str, str] | None = None, **path_parameters: str) -> Any:
        if role not in tokens:
            tokens[role] = token_for(role)
        operation = schema[API + path][method]
        case = operation.Case(path_parameters=path_parameters,
                              **({} if body is None else {"body": body, "media_type": "application/json"}))
        response = case.call(headers={"Authorization": f"Token {tokens[role]}", **(headers or {})})
        case.validate_response(response, checks=CHECKS)
        return response

    return call


def waiting(execution_id: str, step: int) -> dict[str, Any]:
    """Wait until step ``step`` is WAITING; return the document."""
    return wait_for(lambda: (doc := loaded(execution_id))["steps"][step]["status"] == "WAITING" and doc,
                    what=f"step {step} to wait")


def refused(response: Any, status: int, code: str, *fields: str) -> dict[str, Any]:
    """Check an error answer of ``conforming`` (its content type is checked there)."""
    body: dict[str, Any] = response.json()
    assert response.status_code == status, body
    assert set(body) == {"code", "detail", "fields"} and body["code"] == code, body
    assert sorted(body["fields"]) == sorted(fields), body
    return body


def signal(conforming: Callable[..., Any], eid: str, body: Any, name: str = "approved", **more: Any) -> Any:
    return conforming("POST", SIGNAL, body, execution_id=eid, name=name, **more)


def test_signal__ends_a_wait_and_its_payload_is_the_steps_output(
    worker: Any, define: Any, conforming: Callable[..., Any],
) -> None:
    define("approve", [{"handler": "test.echo"}, {"name": "approval", "wait": WAIT}])
    started, _ = operations.start("approve", {"order": 7})
    eid = started["_id"]
    waiting(eid, 1)
    shown = conforming("GET", "executions/{execution_id}/", execution_id=eid).json()
    assert [(s["name"], s["kind"], s["status"]) for s in shown["steps"]] == [
        ("s1", "handler", "SUCCEEDED"), ("approval", "wait", "WAITING")]
    assert shown["steps"][1]["wake_at"] and shown["steps"][0]["wake_at"] is None
    assert shown["signals"] == []

    sent = signal(conforming, eid, {"payload": {"ok": True, "by": "ann"}, "reason": "looks right"})

    body = sent.json()
    assert sent.status_code == 201, body
    assert (body["execution_id"], body["name"], body["signal_index"], body["created"]) == (
        eid, "approved", 0, True)
    assert body["execution"]["id"] == eid
    [doc] = wait_terminal(eid)
    assert doc["status"] == "SUCCEEDED"
    assert json.loads(doc["steps"][1]["output_json"]) == {"ok": True, "by": "ann"}
    shown = conforming("GET", "executions/{execution_id}/", execution_id=eid).json()
    assert shown["steps"][1]["output"] == {"ok": True, "by": "ann"} and shown["steps"][1]["wake_at"] is None
    [kept] = shown["signals"]
    assert (kept["name"], kept["key"], kept["by"], kept["reason"], kept["consumed_by"], kept["payload"]) == (
        "approved", None, "operator", "looks right", "approval", {"ok": True, "by": "ann"})
    assert kept["at"]
    received = events_of(doc, "signal_received")
    assert [(e["name"], e["by"], e["reason"]) for e in received] == [("approved", "operator", "looks right")]


def test_signal__sent_before_its_wait_starts_is_kept_and_taken_later(
    worker: Any, define: Any, conforming: Callable[..., Any],
) -> None:
    define("early", [{"name": "nap", "sleep": {"seconds": 0.5}}, {"name": "approval", "wait": WAIT}])
    started, _ = operations.start("early", {})
    eid = started["_id"]
    asleep = conforming("GET", "executions/{execution_id}/", execution_id=eid).json()
    assert [s["kind"] for s in asleep["steps"]] == ["sleep", "wait"]

    sent = signal(conforming, eid, {"payload": [1, 2]})

    body = sent.json()
    assert sent.status_code == 201 and body["created"] is True and body["consumed_by"] is None, body
    [doc] = wait_terminal(eid)
    assert doc["status"] == "SUCCEEDED" and json.loads(doc["steps"][1]["output_json"]) == [1, 2]
    assert doc["signals"][0]["consumed_by"] == "approval"


def test_signal__the_same_idempotency_key_twice_is_stored_once_another_payload_is_409(
    worker: Any, define: Any, conforming: Callable[..., Any],
) -> None:
    define("approve", [{"name": "approval", "wait": WAIT}])
    started, _ = operations.start("approve", {})
    eid = started["_id"]
    waiting(eid, 0)
    key = {"Idempotency-Key": "approval-7"}

    first = signal(conforming, eid, {"payload": {"ok": 1}}, headers=key)
    wait_terminal(eid)
    again = signal(conforming, eid, {"payload": {"ok": 1}}, headers=key)
    other = signal(conforming, eid, {"payload": {"ok": 2}}, headers=key)

    assert first.status_code == 201 and first.json()["created"] is True
    assert again.status_code == 200, again.json()
    assert (again.json()["created"], again.json()["signal_index"], again.json()["consumed_by"]) == (
        False, 0, "approval")
    refused(other, 409, "idempotency_conflict")
    doc = loaded(eid)
    assert len(doc["signals"]) == 1 and doc["signals"][0]["key"] == "approval-7"
    assert len(events_of(doc, "signal_received")) == 1


def test_signal__refusals_name_the_field_and_change_nothing(
    worker: Any, define: Any, conforming: Callable[..., Any], operator: Any,
) -> None:
    define("approve", [{"name": "approval", "wait": WAIT}])
    define("plain", [{"handler": "test.echo"}])
    started, _ = operations.start("approve", {})
    eid = started["_id"]
    waiting(eid, 0)
    done, _ = operations.start("plain", {})
    wait_terminal(done["_id"])
    before = loaded(eid)["version"]

    unknown = signal(conforming, eid, {"payload": 1}, name="rejected")
    assert "approved" in refused(unknown, 400, "invalid", "name")["detail"]
    refused(signal(conforming, done["_id"], {}), 400, "invalid", "name")  # waits for no signal
    refused(signal(conforming, "no-such-execution", {}), 404, "execution_not_found")
    refused(signal(conforming, eid, {"payload": 1, "extra": 2}), 400, "unknown_field", "extra")
    refused(signal(conforming, eid, {"reason": 3}), 400, "invalid", "reason")
    refused(signal(conforming, eid, {"reason": "x" * 1001}), 400, "max_length", "reason")
    refused(signal(conforming, eid, {"payload": "x" * 70_000}), 400, "invalid", "payload")
    refused(signal(conforming, eid, {}, headers={"Idempotency-Key": "k" * 201}), 400, "invalid",
                 "Idempotency-Key")
    bad_name = operator.post(API + f"executions/{eid}/signals/-no/", {}, format="json")
    assert_error(bad_name, 400, "invalid", "name")
    lone = operator.generic("POST", API + f"executions/{eid}/signals/approved/",
                            b'{"payload": {"note": "a\\ud800b"}}', content_type="application/json")
    assert_error(lone, 400, "invalid_text", "payload.note")
    not_json = operator.generic("POST", API + f"executions/{eid}/signals/approved/", b"[1,",
                                content_type="application/json")
    assert not_json.status_code == 400
    assert loaded(eid)["version"] == before and "signals" not in loaded(eid)

    signal(conforming, eid, {"payload": "yes"})
    wait_terminal(eid)
    finished = signal(conforming, eid, {"payload": "again"})
    refused(finished, 409, "not_allowed")
    assert len(loaded(eid)["signals"]) == 1


def test_signal__a_signaller_may_signal_and_nothing_else_a_viewer_may_not_signal(
    define: Any, conforming: Callable[..., Any], client_as: Callable[..., Any],
) -> None:
    define("approve", [{"name": "approval", "wait": WAIT}])
    started, _ = operations.start("approve", {})  # no worker: the signal is kept
    eid = started["_id"]
    signaller, viewer = client_as("signaller", "hook"), client_as("viewer")

    sent = signal(conforming, eid, {"payload": {"ok": True}}, role="signaller")
    denied = viewer.post(API + f"executions/{eid}/signals/approved/", {"payload": 1}, format="json")

    assert sent.status_code == 201, sent.json()
    assert loaded(eid)["signals"][0]["by"] == "signaller"
    assert_error(denied, 403, "permission_denied")
    for response in (signaller.get(API + "executions/"), signaller.get(API + f"executions/{eid}/"),
                     signaller.post(API + "executions/", {"workflow": "approve"}, format="json"),
                     signaller.post(API + f"executions/{eid}/cancel/", {"reason": "r"}, format="json")):
        assert_error(response, 403, "permission_denied")
    assert len(loaded(eid)["signals"]) == 1 and loaded(eid)["status"] == "PENDING"


def test_signal__a_secret_input_in_a_payload_is_shown_masked(
    define: Any, conforming: Callable[..., Any],
) -> None:
    define("card", [{"name": "approval", "wait": WAIT}], secret_inputs=["card"])
    started, _ = operations.start("card", {"card": "4111111111111111"})
    eid = started["_id"]
    card = "4111111111111111"
    signal(conforming, eid, {"payload": {"card": card, "ok": True}, "reason": card})

    shown = conforming("GET", "executions/{execution_id}/", execution_id=eid).json()

    assert shown["signals"][0]["payload"] == {"card": "[secret]", "ok": True}
    assert shown["signals"][0]["reason"] == "[secret]"
    assert "4111111111111111" not in json.dumps(shown)


def test_signal__the_apiuser_command_grants_the_signaller_role_without_the_admin(db: None) -> None:
    from io import StringIO

    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    out = StringIO()
    call_command("apiuser", "hook", "--role", "signaller", stdout=out)

    user = get_user_model().objects.get(username="hook")
    assert sorted(user.groups.values_list("name", flat=True)) == ["signallers"]
    assert out.getvalue().strip() and not user.is_staff
