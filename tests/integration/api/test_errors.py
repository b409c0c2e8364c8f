"""Nothing a client sends yields a 500: every refusal is a 4xx with a code, a detail and the fields."""
from __future__ import annotations

import json
from typing import Any

import pytest

from detflow_site.api.parsers import PARSE_DEPTH
from executions import store
from tests.integration.api.conftest import assert_error

API = "/api/v1/"


@pytest.fixture(autouse=True)
def pay(define: Any) -> None:
    define("pay", [{"handler": "test.echo"}])


def raw(client: Any, body: bytes | str, content_type: str = "application/json", **extra: Any) -> Any:
    return client.generic("POST", API + "executions/", body, content_type=content_type, **extra)


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def test_errors__input_nested_deeper_than_the_limit_is_refused_naming_input(operator: Any) -> None:
    ok = operator.post(API + "executions/", {"workflow": "pay", "input": nested(32)}, format="json")
    deep = operator.post(API + "executions/", {"workflow": "pay", "input": nested(33)}, format="json")
    deeper = operator.post(API + "executions/", {"workflow": "pay", "input": {"a": nested(400)}},
                           format="json")

    assert ok.status_code == 201
    body = assert_error(deep, 400, "too_deep", "input")
    assert "32 levels" in body["detail"] and "DETFLOW_API_MAX_JSON_DEPTH" in body["detail"]
    assert_error(deeper, 400, "too_deep", "input")
    assert store.collection().count_documents({}) == 1


def test_errors__a_body_nested_past_what_the_parser_decodes_is_400(operator: Any) -> None:
    body = '{"workflow": "pay", "input": ' + "[" * (PARSE_DEPTH + 1) + "]" * (PARSE_DEPTH + 1) + "}"
    strings = json.dumps({"workflow": "pay", "input": "[" * 10_000})

    assert_error(raw(operator, body), 400, "parse_error")
    assert raw(operator, strings).status_code == 201


def test_errors__a_body_over_the_size_limit_is_413(operator: Any, settings: Any) -> None:
    settings.DETFLOW = {**settings.DETFLOW, "API_MAX_BODY_BYTES": "1000"}
    small = json.dumps({"workflow": "pay", "input": "x" * 900})
    large = json.dumps({"workflow": "pay", "input": "x" * 1000})

    assert raw(operator, small).status_code == 201
    body = assert_error(raw(operator, large), 413, "too_large")
    assert "DETFLOW_API_MAX_BODY_BYTES" in body["detail"]


def test_errors__a_body_over_what_django_reads_is_413(operator: Any) -> None:
    huge = json.dumps({"workflow": "pay", "input": "x" * 3_000_000})

    assert_error(raw(operator, huge), 413, "too_large")
    assert store.collection().count_documents({}) == 0


def test_errors__an_input_over_the_stored_cap_is_400(operator: Any) -> None:
    response = operator.post(API + "executions/", {"workflow": "pay", "input": "x" * (1024 * 1024 + 1)},
                             format="json")

    assert_error(response, 400, "invalid", "input")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ('{"workflow": "pay",', "parse_error"),
        ('{"workflow": "pay", "input": NaN}', "parse_error"),
        ('{"workflow": "pay", "input": Infinity}', "parse_error"),
        (b'{"workflow": "pay", "input": "\xff"}', "parse_error"),
        ("[1, 2]", "invalid"),
        ('"pay"', "invalid"),
        ("null", "null"),
    ],
)
def test_errors__malformed_json_and_non_objects_are_400(operator: Any, body: Any, code: str) -> None:
    assert_error(raw(operator, body), 400, code)
    assert store.collection().count_documents({}) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"workflow": 3}, "workflow"),
        ({"workflow": ["pay"]}, "workflow"),
        ({"workflow": None}, "workflow"),
        ({"input": {}}, "workflow"),
        ({"workflow": "pay", "version": "1"}, "version"),
        ({"workflow": "pay", "version": True}, "version"),
        ({"workflow": "pay", "version": 1.5}, "version"),
        ({"workflow": "pay", "version": 0}, "version"),
        ({"workflow": "pay", "version": 2**80}, "version"),
        ({"workflow": "pay", "priority": 1}, "priority"),
        ({"workflow": "x" * 101}, "workflow"),
    ],
)
def test_errors__wrong_types_and_unknown_fields_are_400_naming_the_field(
    operator: Any, body: dict[str, Any], field: str
) -> None:
    response = operator.post(API + "executions/", body, format="json")

    assert response.status_code == 400, response.json()
    assert list(response.json()["fields"]) == [field]
    assert store.collection().count_documents({}) == 0


def test_errors__a_body_that_is_not_json_is_415(operator: Any) -> None:
    response = raw(operator, "workflow=pay", content_type="application/x-www-form-urlencoded")

    assert_error(response, 415, "unsupported_media_type")


def test_errors__unknown_paths_and_methods_answer_json(operator: Any) -> None:
    assert_error(operator.get(API + "nothing/here/"), 404, "not_found")
    assert_error(operator.get(API + "executions"), 404, "not_found")
    assert_error(operator.get(API + "workflows/a%0Ab/versions/-1/"), 404, "not_found")
    assert_error(operator.delete(API + "executions/"), 405, "method_not_allowed")
    assert_error(operator.get(API + "executions/", HTTP_ACCEPT="text/html"), 406, "not_acceptable")


def test_errors__starts_are_throttled_per_user(client_as: Any, settings: Any) -> None:
    settings.DETFLOW = {**settings.DETFLOW, "API_START_RATE": "3/minute"}
    alice, bob = client_as("operator", "alice"), client_as("operator", "bob")

    answers = [alice.post(API + "executions/", {"workflow": "pay"}, format="json") for _ in range(4)]

    assert [a.status_code for a in answers] == [201, 201, 201, 429]
    assert_error(answers[-1], 429, "throttled")
    assert 0 < int(answers[-1]["Retry-After"]) <= 60
    assert bob.post(API + "executions/", {"workflow": "pay"}, format="json").status_code == 201
    assert alice.get(API + "executions/").status_code == 200
    assert store.collection().count_documents({}) == 4
