"""A definition's ``input_schema``: a start whose input does not match it is 400 naming the path;
the schema is shown with the definition; a bad schema is refused at registration."""
from __future__ import annotations

from typing import Any

from executions import operations, store
from executions.errors import InvalidArgument
from tests.integration.api.conftest import assert_error

API = "/api/v1/"
ORDER = {
    "type": "object", "required": ["amount"], "additionalProperties": False,
    "properties": {"amount": {"type": "integer", "minimum": 1},
                   "card": {"type": "object", "properties": {"number": {"type": "string"}}}},
}
DEFINITION = {"name": "typed", "steps": [{"name": "charge", "handler": "test.echo"}], "input_schema": ORDER}


def test_start__input_not_matching_the_schema_is_400_naming_the_path(operator: Any) -> None:
    assert operator.post(API + "workflows/", DEFINITION, format="json").status_code == 201
    before = store.collection().count_documents({})

    listed = operator.post(API + "executions/", {"workflow": "typed", "input": [1, 2]}, format="json")
    text = operator.post(API + "executions/", {"workflow": "typed", "input": "hello"}, format="json")
    missing = operator.post(API + "executions/", {"workflow": "typed", "input": {}}, format="json")
    card = {"amount": 2, "card": {"number": 4111}}
    nested = operator.post(API + "executions/", {"workflow": "typed", "input": card}, format="json")
    extra = operator.post(API + "executions/", {"workflow": "typed", "input": {"amount": 2, "x": 1}},
                          format="json")
    good = operator.post(API + "executions/", {"workflow": "typed", "input": {"amount": 2}}, format="json")

    assert "must be an object" in assert_error(listed, 400, "schema_mismatch", "input")["detail"]
    assert_error(text, 400, "schema_mismatch", "input")
    assert "is required" in assert_error(missing, 400, "schema_mismatch", "input.amount")["detail"]
    assert "must be a string" in assert_error(nested, 400, "schema_mismatch", "input.card.number")["detail"]
    assert_error(extra, 400, "schema_mismatch", "input.x")
    assert good.status_code == 201
    assert store.collection().count_documents({}) == before + 1  # nothing stored for a refused input


def test_workflow__shows_its_input_schema_and_a_bad_one_is_refused(operator: Any) -> None:
    operator.post(API + "workflows/", DEFINITION, format="json")

    shown = operator.get(API + "workflows/typed/").json()["latest"]["input_schema"]
    untyped = {"name": "plain", "steps": [{"handler": "test.echo", "name": "a"}]}
    plain = operator.post(API + "workflows/", untyped, format="json").json()
    remote = operator.post(API + "workflows/", {**DEFINITION, "input_schema": {"$ref": "http://x/s.json"}},
                           format="json")
    broken = operator.post(API + "workflows/", {**DEFINITION, "input_schema": {"type": "objekt"}},
                           format="json")

    assert shown == ORDER
    assert plain["input_schema"] is None
    assert_error(remote, 400, "invalid_definition", "input_schema.$ref")
    assert_error(broken, 400, "invalid_definition", "input_schema.type")


def test_operations_start__checks_the_input_whoever_starts(operator: Any, define: Any) -> None:
    define("typed-too", [{"handler": "test.echo"}], input_schema=ORDER)

    try:
        operations.start("typed-too", {"amount": 0})
    except InvalidArgument as refused:
        assert (refused.field, refused.reason) == ("input.amount", "must satisfy minimum: 1")
    else:
        raise AssertionError("a start with an input the schema refuses was accepted")
    assert operations.start("typed-too", {"amount": 1})[1] is True


def test_schedule__an_input_the_schema_refuses_is_400_at_creation(operator: Any) -> None:
    operator.post(API + "workflows/", DEFINITION, format="json")
    body = {"workflow": "typed", "cron": "* * * * *", "timezone": "UTC", "overlap": "skip", "catch_up_s": 0}

    refused = operator.post(API + "schedules/", {**body, "input": {"amount": "two"}}, format="json")
    accepted = operator.post(API + "schedules/", {**body, "input": {"amount": 2}}, format="json")

    assert_error(refused, 400, "schema_mismatch", "input.amount")
    assert accepted.status_code == 201
