"""Workflows and handlers: register (idempotently), read versions, name what is unknown."""
from __future__ import annotations

from typing import Any

from tests.integration.api.conftest import assert_error

API = "/api/v1/"
DEFINITION = {
    "name": "billing",
    "description": "Charge and notify",
    "steps": [{"name": "charge", "handler": "test.echo", "timeout_s": 30,
               "retry": {"max_attempts": 5, "initial_delay_s": 1, "multiplier": 2, "max_delay_s": 60,
                         "jitter": 0.1}},
              {"name": "notify", "handler": "test.echo", "max_concurrency": 2}],
}


def test_workflows__register_twice_gives_one_version_and_a_change_the_next(operator: Any) -> None:
    first = operator.post(API + "workflows/", DEFINITION, format="json")
    again = operator.post(API + "workflows/", DEFINITION, format="json")
    changed = operator.post(API + "workflows/", {**DEFINITION, "description": "Charge, then notify"},
                            format="json")

    assert (first.status_code, again.status_code, changed.status_code) == (201, 200, 201)
    assert (first.json()["version"], again.json()["version"], changed.json()["version"]) == (1, 1, 2)
    assert first.json()["fingerprint"] == again.json()["fingerprint"] != changed.json()["fingerprint"]
    assert first.json()["steps"][1]["max_concurrency"] == 2
    assert first.json()["steps"][0] == {
        "name": "charge", "handler": "test.echo", "timeout_s": 30.0, "non_retryable": [],
        "max_concurrency": None, "compensate": None, "sleep": None, "wait": None,
        "retry": {"max_attempts": 5, "initial_delay_s": 1.0, "multiplier": 2.0, "max_delay_s": 60.0,
                  "jitter": 0.1},
    }
    assert first.json()["on_failure"] == "stop"


def test_workflows__a_compensation_and_on_failure_are_shown_with_their_defaults(operator: Any) -> None:
    undoing = {**DEFINITION, "on_failure": "compensate",
               "steps": [{**DEFINITION["steps"][0], "compensate": {"handler": "test.undo"}}]}

    body = operator.post(API + "workflows/", undoing, format="json").json()

    assert body["on_failure"] == "compensate"
    assert body["steps"][0]["compensate"] == {
        "handler": "test.undo", "timeout_s": 60.0, "non_retryable": [],
        "retry": {"max_attempts": 3, "initial_delay_s": 1.0, "multiplier": 2.0, "max_delay_s": 60.0,
                  "jitter": 0.1},
    }


def test_workflows__list_detail_and_version_show_what_is_stored(operator: Any, define: Any) -> None:
    operator.post(API + "workflows/", DEFINITION, format="json")
    operator.post(API + "workflows/", {**DEFINITION, "description": "v2"}, format="json")
    define("another", [{"handler": "test.echo"}])

    listed = operator.get(API + "workflows/").json()["results"]
    detail = operator.get(API + "workflows/billing/").json()
    first = operator.get(API + "workflows/billing/versions/1/").json()

    assert [(w["name"], w["version"]) for w in listed] == [("another", 1), ("billing", 2)]
    assert detail["name"] == "billing"
    assert detail["latest"]["version"] == 2 and detail["latest"]["description"] == "v2"
    assert [v["version"] for v in detail["versions"]] == [2, 1]
    assert (first["version"], first["description"]) == (1, "Charge and notify")


def test_workflows__unknown_handler_is_refused_naming_the_field_and_the_known_handlers(
    operator: Any,
) -> None:
    bad = {**DEFINITION, "steps": [{"name": "charge", "handler": "billing.nope"}]}

    response = operator.post(API + "workflows/", bad, format="json")

    body = assert_error(response, 400, "unknown_handler", "steps[0].handler")
    [message] = body["fields"]["steps[0].handler"]
    assert "'billing.nope'" in message and "test.echo" in message and "files.receive" in message
    assert operator.get(API + "workflows/").json()["results"] == []


def test_workflows__invalid_definitions_name_the_field(operator: Any) -> None:
    cases = [
        ({**DEFINITION, "steps": []}, "steps"),
        ({**DEFINITION, "name": ""}, "name"),
        ({**DEFINITION, "colour": "red"}, "colour"),
        ({**DEFINITION, "steps": [{"name": "a", "handler": "test.echo", "retry": {"max_attempts": 0}}]},
         "steps[0].retry.max_attempts"),
        ({**DEFINITION, "steps": [{"name": "a", "handler": "test.echo", "timeout_s": "soon"}]},
         "steps[0].timeout_s"),
        ([DEFINITION], "definition"),
    ]
    for body, field in cases:
        assert_error(operator.post(API + "workflows/", body, format="json"), 400, "invalid_definition",
                     field)


def test_workflows__unknown_name_or_version_is_404_listing_what_exists(
    operator: Any, define: Any
) -> None:
    define("known", [{"handler": "test.echo"}])

    missing = assert_error(operator.get(API + "workflows/unknown/"), 404, "workflow_not_found",
                           "workflow")
    no_version = assert_error(operator.get(API + "workflows/known/versions/7/"), 404,
                              "workflow_not_found", "version")
    huge = operator.get(API + f"workflows/known/versions/{2**70}/")

    assert "known workflows: known" in missing["detail"]
    assert "its versions: 1" in no_version["detail"]
    assert huge.status_code == 404


def test_handlers__lists_every_registered_handler_with_its_origin_and_summary(viewer: Any) -> None:
    results = viewer.get(API + "handlers/").json()["results"]

    by_name = {h["name"]: h for h in results}
    assert [h["name"] for h in results] == sorted(by_name)
    assert by_name["test.echo"] == {"name": "test.echo", "origin": "tests.handlers.echo",
                                    "summary": "Return the input and the names of the earlier outputs."}
    assert "files.receive" in by_name
