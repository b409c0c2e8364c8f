"""Input schemas: what a definition's ``input_schema`` may be, and how a refused input is named."""
from __future__ import annotations

from typing import Any

import pytest

from workflows import inputs
from workflows.errors import DefinitionError
from workflows.spec import parse_workflow

ORDER = {
    "type": "object", "required": ["amount", "card"], "additionalProperties": False,
    "properties": {
        "amount": {"type": "integer", "minimum": 1},
        "currency": {"enum": ["EUR", "USD"]},
        "card": {"type": "object", "properties": {"number": {"type": "string", "pattern": "^[0-9]{12,19}$"}}},
        "items": {"type": "array", "items": {"$ref": "#/$defs/item"}},
    },
    "$defs": {"item": {"type": "string"}},
}


@pytest.mark.parametrize(("value", "path", "reason"), [
    ([1, 2], "input", "must be an object"),
    ("hello", "input", "must be an object"),
    (None, "input", "must be an object"),
    ({"card": {}}, "input.amount", "is required by the input schema"),
    ({"amount": 0, "card": {}}, "input.amount", "must satisfy minimum: 1"),
    ({"amount": 1.5, "card": {}}, "input.amount", "must be an integer"),
    ({"amount": 3, "card": {}, "currency": "GBP"}, "input.currency", 'must be one of ["EUR", "USD"]'),
    ({"amount": 3, "card": {"number": "4111-1111"}}, "input.card.number",
     'must satisfy pattern: "^[0-9]{12,19}$"'),
    ({"amount": 3, "card": {}, "items": ["a", 2]}, "input.items[1]", "must be a string"),
    ({"amount": 3, "card": {}, "note": "x"}, "input.note", "is not a field the input schema allows"),
])
def test_problem__names_the_path_and_the_rule(value: Any, path: str, reason: str) -> None:
    assert inputs.problem(ORDER, value) == (path, reason)


def test_problem__never_echoes_the_refused_value() -> None:
    path, reason = inputs.problem(ORDER, {"amount": 3, "card": {"number": "4111-1111-SECRET"}})  # type: ignore[misc]
    assert "SECRET" not in path + reason


def test_problem__a_matching_input_has_none() -> None:
    matching = {"amount": 3, "card": {"number": "4111111111111111"}, "items": ["a"]}
    assert inputs.problem(ORDER, matching) is None


@pytest.mark.parametrize(("schema", "field", "says"), [
    ([{"type": "object"}], "input_schema", "must be an object"),
    ("object", "input_schema", "must be an object"),
    ({"type": "objekt"}, "input_schema.type", "is not valid JSON Schema"),
    ({"minimum": "one"}, "input_schema.minimum", "is not valid JSON Schema"),
    ({"$ref": "https://example.com/order.json"}, "input_schema.$ref", "only references inside the schema"),
    ({"properties": {"a": {"$ref": "file:///etc/passwd"}}}, "input_schema.properties.a.$ref",
     "only references inside the schema"),
    ({"items": [{"$dynamicRef": "other.json#x"}]}, "input_schema.items[0].$dynamicRef",
     "only references inside the schema"),
])
def test_parse_workflow__refuses_a_bad_input_schema_naming_the_field(
        schema: Any, field: str, says: str) -> None:
    with pytest.raises(DefinitionError) as refused:
        parse_workflow({"name": "w", "steps": [{"name": "a", "handler": "h"}], "input_schema": schema})
    assert refused.value.field == field and says in str(refused.value)


def test_parse_workflow__keeps_the_schema_and_it_counts_in_the_fingerprint() -> None:
    plain = parse_workflow({"name": "w", "steps": [{"name": "a", "handler": "h"}]})
    typed = parse_workflow({"name": "w", "steps": [{"name": "a", "handler": "h"}], "input_schema": ORDER})

    assert typed.input_schema == ORDER and plain.input_schema is None
    assert "input_schema" not in plain.to_dict() and typed.to_dict()["input_schema"] == ORDER
    assert plain.fingerprint() != typed.fingerprint()
    assert parse_workflow(typed.to_dict()) == typed
