"""Where operators read post-mortems: ``manage.py postmortem``, the API, and the demo."""
from __future__ import annotations

import json
from collections.abc import Callable
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from executions import operations, store
from insights import service
from tests.integration.insights.support import FakeModel, failed

API = "/api/v1/executions/{}/insight/"


def postmortem(*args: str) -> str:
    out = StringIO()
    call_command("postmortem", *args, stdout=out)
    return out.getvalue()


def test_command__prints_the_post_mortem_writing_it_first(define: Any) -> None:
    doc = failed(define)

    text = postmortem(doc["_id"])

    lines = text.splitlines()
    assert lines[0] == f"post-mortem of {doc['_id']} (explained v1, FAILED), written by rules"
    assert "summary: FAILED at step 's1': PermanentError: 'the input can never be processed'" in text
    assert f"  event {doc['events'][-2]['seq']}: attempt 1 of 's1' ended failed" in text
    assert (f"  retry with edited input: If the input is at fault, retry 's1' with a corrected input.  "
            f'[POST /api/v1/executions/{doc["_id"]}/retry/ with an "input"]') in lines
    assert service.find(doc["_id"]) is not None


def test_command__json_and_regenerate(define: Any, model: FakeModel) -> None:
    doc = failed(define)
    model.answer = {"summary": "s", "root_cause": "r", "evidence": [], "impact": "i",
                    "suggested_actions": [], "confidence": "low"}
    read = json.loads(postmortem(doc["_id"], "--json"))

    regenerated = json.loads(postmortem(doc["_id"], "--json", "--regenerate"))
    again = json.loads(postmortem(doc["_id"], "--json"))
    model.behaviour = "error"
    failed_again = json.loads(postmortem(doc["_id"], "--json", "--regenerate"))

    assert read["source"] == "rules"  # without --regenerate the command reads: no model call
    assert read["fallback"] == {"writer": "llm:test-model", "reason": service.ON_READ}
    assert regenerated["source"] == "llm:test-model" and regenerated["summary"] == "s"
    assert again == regenerated  # stored and current: the model is not asked again
    assert failed_again["source"] == "rules"
    assert failed_again["fallback"]["reason"].startswith("the endpoint answered HTTP 500")
    assert len(model.requests) == 2


@pytest.mark.parametrize(("make", "message"), [
    (lambda define: "nope", "execution nope does not exist"),
    (lambda define: _pending(define), "is PENDING; a post-mortem is written once it is SUCCEEDED, "
                                      "FAILED or CANCELLED"),
])
def test_command__errors_are_one_line(define: Any, make: Callable[[Any], str], message: str) -> None:
    with pytest.raises(CommandError) as caught:
        postmortem(make(define))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def _pending(define: Any) -> str:
    define("waits", [{"handler": "test.echo"}])
    return str(operations.start("waits", {})[0]["_id"])


@pytest.fixture
def client(db: None) -> Callable[[str | None], APIClient]:
    """Return a function that makes an API client signed in with a role (``None``: anonymous)."""
    from executions import roles

    def make(role: str | None) -> APIClient:
        api = APIClient()
        if role is not None:
            api.credentials(HTTP_AUTHORIZATION=f"Token {roles.grant(role, role)}")
        return api

    return make


def test_api__viewers_read_the_post_mortem_and_only_operators_write_it_again(
    define: Any, client: Callable[[str | None], APIClient]
) -> None:
    from executions.roles import OPERATORS, VIEWERS

    doc = failed(define)
    url = API.format(doc["_id"])

    assert client(None).get(url).status_code == 401
    read = client(VIEWERS).get(url)
    assert read.status_code == 200, read.content
    body = read.json()
    assert body["source"] == "rules" and body["current"] is True
    assert body["execution_id"] == doc["_id"] and body["execution_status"] == "FAILED"
    assert body["summary"].startswith("FAILED at step 's1'")
    assert body["suggested_actions"][0] == {
        "action": "retry_with_edited_input",
        "detail": "If the input is at fault, retry 's1' with a corrected input.",
        "how": f'POST /api/v1/executions/{doc["_id"]}/retry/ with an "input"'}
    assert {e["event_seq"] for e in body["evidence"]} <= {e["seq"] for e in doc["events"]}
    assert body["facts"]["failure"]["step"] == "s1"

    refused = client(VIEWERS).post(url, {}, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "permission_denied"
    written = client(OPERATORS).post(url, {}, format="json")
    assert written.status_code == 200, written.content
    assert written.json()["summary"] == body["summary"]
    assert store.load(doc["_id"]) == doc


def test_api__errors_are_json_with_a_stable_code(
    define: Any, client: Callable[[str | None], APIClient]
) -> None:
    from executions.roles import OPERATORS

    missing = client(OPERATORS).get(API.format("nope"))
    pending = client(OPERATORS).post(API.format(_pending(define)), {}, format="json")

    assert missing.status_code == 404 and missing.json()["code"] == "execution_not_found"
    assert pending.status_code == 409 and pending.json()["code"] == "not_finished"
    assert "a post-mortem is written once it is SUCCEEDED, FAILED or CANCELLED" in pending.json()["detail"]


def test_api__a_model_s_html_is_returned_as_json_text(
    define: Any, client: Callable[[str | None], APIClient], model: FakeModel
) -> None:
    from executions.roles import VIEWERS

    doc = failed(define)
    model.answer = {"summary": "<script>alert(1)</script>\x1b[31m red", "root_cause": "<b>x</b>",
                    "evidence": [], "impact": "", "suggested_actions": [], "confidence": "low"}
    service.postmortem(doc["_id"])  # the model writes it (a read would not ask it)

    response = client(VIEWERS).get(API.format(doc["_id"]))

    assert response["Content-Type"] == "application/json"
    assert response.json()["summary"] == "<script>alert(1)</script>[31m red"  # text; escapes removed


def test_api__a_retried_execution_shows_its_earlier_post_mortem_as_not_current(
    define: Any, client: Callable[[str | None], APIClient]
) -> None:
    from executions.roles import VIEWERS

    doc = failed(define)
    service.postmortem(doc["_id"])
    operations.retry(doc["_id"], by="op", reason="once more")

    body = client(VIEWERS).get(API.format(doc["_id"])).json()

    assert body["current"] is False and body["execution_status"] == "FAILED"


def test_api__the_schema_documents_the_insight_endpoint(client: Callable[[str | None], APIClient]) -> None:
    schema = client(None).get("/api/v1/schema/", HTTP_ACCEPT="application/json").json()

    operations_ = schema["paths"]["/api/v1/executions/{execution_id}/insight/"]
    assert set(operations_) == {"get", "post"}
    assert "Insight" in schema["components"]["schemas"]


def test_demo__prints_and_reports_the_post_mortem_of_each_failed_execution(
    redis_client: Any, tmp_path: Path
) -> None:
    out = StringIO()
    call_command("demo", "--json", "--workdir", str(tmp_path), stdout=out)

    summary = json.loads(out.getvalue())
    failures = [row for row in summary["executions"] if row["status"] == "FAILED"]
    assert len(failures) == 3
    for row in failures:
        postmortem_ = row["postmortem"]
        assert set(postmortem_) == {"source", "summary", "root_cause", "evidence", "suggested_actions"}
        assert postmortem_["source"] == "rules"
        assert postmortem_["summary"].startswith("FAILED at step 'files.validate'")
        assert row["error"] in postmortem_["root_cause"]
        doc = store.load(row["id"])
        assert doc is not None
        assert {e["event_seq"] for e in postmortem_["evidence"]} <= {e["seq"] for e in doc["events"]}
        assert {a["action"] for a in postmortem_["suggested_actions"]} == {
            "retry_with_edited_input", "skip", "code_change"}
    assert all("postmortem" not in row for row in summary["executions"] if row["status"] != "FAILED")


def test_api__a_get_before_the_execution_finished_is_a_documented_409(
    define: Any, client: Callable[[str | None], APIClient]
) -> None:
    from executions.roles import VIEWERS

    response = client(VIEWERS).get(API.format(_pending(define)))
    schema = client(None).get("/api/v1/schema/", HTTP_ACCEPT="application/json").json()

    assert response.status_code == 409 and response.json()["code"] == "not_finished"
    assert "409" in schema["paths"]["/api/v1/executions/{execution_id}/insight/"]["get"]["responses"]
