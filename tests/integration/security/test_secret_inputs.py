"""Secret inputs: the fields a definition names in ``secret_inputs`` reach handlers as given and
show as ``[secret]`` everywhere else: the API, its history, the admin, logs and model prompts."""
from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from executions import store
from tests.conftest import wait_terminal
from tests.integration.api.conftest import assert_error
from tests.integration.insights.support import FakeModel

API = "/api/v1/"
NUMBER = "4111111111114242"
CVV = "8251"
INPUT = {"card": {"number": NUMBER, "holder": "Ada"}, "cvv": CVV, "amount": 12}
DEFINITION = {"name": "charge", "secret_inputs": ["card.number", "cvv"],
              "steps": [{"name": "charge", "handler": "test.card",
                         "retry": {"max_attempts": 3, "initial_delay_s": 0.05, "max_delay_s": 0.1}}]}


def charged(operator: Any, given: Any = INPUT) -> dict[str, Any]:
    response = operator.post(API + "workflows/", DEFINITION, format="json")
    assert response.status_code in (200, 201), response.content
    assert response.json()["secret_inputs"] == ["card.number", "cvv"]
    started = operator.post(API + "executions/", {"workflow": "charge", "input": given}, format="json")
    assert started.status_code == 201, started.content
    assert NUMBER not in started.content.decode() and CVV not in started.content.decode()
    [doc] = wait_terminal(started.json()["id"])
    return doc


def assert_hidden(text: str) -> None:
    assert NUMBER not in text and CVV not in text, "a secret input was shown"


def test_secret_inputs__reach_the_handler_and_are_masked_in_the_api_and_its_history(
    operator: Any, worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="detflow")
    doc = charged(operator)

    assert doc["status"] == "SUCCEEDED"
    assert json.loads(doc["steps"][0]["output_json"]) == {"last4": "4242", "digits": 16, "cvv_given": True}
    detail = operator.get(API + f"executions/{doc['_id']}/")
    events = operator.get(API + f"executions/{doc['_id']}/events/")
    assert detail.json()["input"] == {"card": {"number": "[secret]", "holder": "Ada"}, "cvv": "[secret]",
                                      "amount": 12}
    [failed, _] = detail.json()["steps"][0]["attempts"]
    assert failed["message"] == "card [secret] was declined"
    assert failed["logs"][0]["message"] == "charging card [secret]"
    assert_hidden(detail.content.decode() + events.content.decode())
    assert_hidden("\n".join(r.getMessage() for r in caplog.records))
    # Stored as given (handlers need it), but never the texts the handler wrote about it.
    stored = store.load(doc["_id"])
    assert stored is not None and json.loads(stored["input_json"]) == INPUT
    assert_hidden(json.dumps(stored["steps"][0]["attempts"], default=str))


def test_secret_inputs__a_retry_that_leaves_a_masked_secret_keeps_its_value_and_the_diff_is_masked(
    operator: Any, worker: Any
) -> None:
    doc = charged(operator, {**INPUT, "fail": True})
    assert doc["status"] == "FAILED"
    shown = operator.get(API + f"executions/{doc['_id']}/").json()["input"]

    edited = {**shown, "fail": False, "cvv": "9999"}  # card.number still "[secret]"
    response = operator.post(API + f"executions/{doc['_id']}/retry/", {"reason": "new cvv", "input": edited},
                             format="json")

    assert response.status_code == 200, response.content
    assert_hidden(response.content.decode())
    assert "9999" not in response.content.decode()
    [done] = wait_terminal(doc["_id"])
    assert done["status"] == "SUCCEEDED"
    assert json.loads(done["steps"][0]["output_json"])["last4"] == "4242"
    assert json.loads(done["steps"][0]["input_json"])["card"]["number"] == NUMBER
    history = operator.get(API + f"executions/{doc['_id']}/events/").content.decode()
    assert_hidden(history)
    assert "9999" not in history


def test_secret_inputs__are_masked_on_the_admin_pages(operator: Any, worker: Any, client: Any) -> None:
    from django.contrib.auth import get_user_model

    doc = charged(operator, {**INPUT, "fail": True})
    user = get_user_model().objects.get(username="operator")
    client.force_login(user)

    for path in (f"/admin/executions/execution/{doc['_id']}/",
                 f"/admin/executions/execution/{doc['_id']}/retry/"):
        page = client.get(path)
        assert page.status_code == 200, path
        assert "[secret]" in page.content.decode()
        assert_hidden(page.content.decode())


def test_secret_inputs__never_reach_the_model(operator: Any, worker: Any, model: FakeModel) -> None:
    from insights import service

    doc = charged(operator, {**INPUT, "fail": True})

    service.postmortem(doc["_id"], regenerate=True)

    assert model.raw, "the model was not asked"
    assert_hidden(b"".join(model.raw).decode())
    assert_hidden(json.dumps(service.find(doc["_id"]), default=str))


@pytest.mark.parametrize(("paths", "field"), [
    ("card.number", "secret_inputs"), ([1], "secret_inputs[0]"), (["card..number"], "secret_inputs[0]"),
    (["$where"], "secret_inputs[0]"), (["a"] * 51, "secret_inputs"), (["a", "a"], "secret_inputs"),
])
def test_secret_inputs__a_malformed_list_is_refused_naming_the_field(
    operator: Any, paths: Any, field: str
) -> None:
    body = {**DEFINITION, "secret_inputs": paths}

    response = operator.post(API + "workflows/", body, format="json")

    assert_error(response, 400, response.json()["code"], field)
