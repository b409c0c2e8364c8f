"""The schema is the validator: ``spec.DEFINITION`` states every bound ``parse_workflow`` enforces, and
the two agree on every definition, valid or not."""
from __future__ import annotations

import copy
import json
import math
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workflows import masking, spec
from workflows.errors import DefinitionError

SCHEMA = spec.DEFINITION.openapi()
STEP = SCHEMA["properties"]["steps"]["items"]
RETRY = STEP["properties"]["retry"]
NAME = {"minLength": 1, "maxLength": 100, "pattern": f"^(?:{spec.NAME_RE.pattern})$"}
VALID: dict[str, Any] = {
    "name": "media.ingest",
    "description": "fetch, checksum, store",
    "secret_inputs": ["card.number"],
    "steps": [
        {"name": "fetch", "handler": "files.fetch"},
        {"name": "checksum", "handler": "files.checksum", "timeout_s": 5, "max_concurrency": 2,
         "retry": {"max_attempts": 5, "initial_delay_s": 0.5, "multiplier": 2, "max_delay_s": 10,
                   "jitter": 0.1},
         "non_retryable": ["ValueError"]},
    ],
}


def json_schema(schema: Any) -> Any:
    """Return OpenAPI 3.0's schema as plain JSON Schema (draft 4): ``nullable`` as a ``null`` type."""
    if isinstance(schema, list):
        return [json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: json_schema(value) for key, value in schema.items() if key not in ("nullable", "format")}
    if schema.get("nullable"):
        out["type"] = [schema["type"], "null"]
    return out


#: ECMA-262 regular expressions, as an OpenAPI client reads the schema's patterns.
VALIDATOR = jsonschema_rs.Draft4Validator(json_schema(SCHEMA))


def schema_allows(data: Any) -> bool:
    """Tell whether the schema allows ``data``, the rules it states in words included."""
    if not VALIDATOR.is_valid(data):
        return False
    names = [step["name"] for step in data["steps"]]
    size = len(json.dumps(data, ensure_ascii=False).encode())
    return len(set(names)) == len(names) and size <= spec.MAX_DEFINITION_BYTES


@pytest.mark.parametrize(("where", "expected"), [
    (SCHEMA["properties"]["name"], NAME),
    (SCHEMA["properties"]["description"], {"maxLength": spec.MAX_DESCRIPTION}),
    (SCHEMA["properties"]["steps"], {"minItems": 1, "maxItems": spec.MAX_STEPS}),
    (SCHEMA["properties"]["secret_inputs"], {"maxItems": masking.MAX_PATHS, "uniqueItems": True}),
    (SCHEMA["properties"]["secret_inputs"]["items"],
     {"pattern": f"^(?:{masking.PATH_RE.pattern})$", "maxLength": spec.MAX_SECRET_PATH}),
    (STEP["properties"]["name"], NAME),
    (STEP["properties"]["handler"], {"minLength": 1, "maxLength": spec.MAX_HANDLER_NAME}),
    (STEP["properties"]["timeout_s"],
     {"minimum": 0, "exclusiveMinimum": True, "maximum": spec.MAX_TIMEOUT_S}),
    (STEP["properties"]["non_retryable"], {"maxItems": spec.MAX_NON_RETRYABLE}),
    (STEP["properties"]["non_retryable"]["items"], {"minLength": 1, "maxLength": spec.MAX_TYPE_NAME}),
    (STEP["properties"]["max_concurrency"],
     {"type": "integer", "nullable": True, "minimum": 1, "maximum": spec.MAX_CONCURRENCY}),
    (RETRY["properties"]["max_attempts"], {"type": "integer", "minimum": 1, "maximum": spec.MAX_ATTEMPTS}),
    (RETRY["properties"]["initial_delay_s"], {"minimum": 0, "maximum": spec.MAX_DELAY_S}),
    (RETRY["properties"]["max_delay_s"], {"minimum": 0, "maximum": spec.MAX_DELAY_S}),
    (RETRY["properties"]["multiplier"], {"minimum": 1, "maximum": spec.MAX_MULTIPLIER}),
    (RETRY["properties"]["jitter"], {"minimum": 0, "maximum": 1}),
])
def test_definition_schema__states_each_bound_spec_enforces(where: dict[str, Any], expected: dict[str, Any]):
    assert {key: where.get(key) for key in expected} == expected


def test_definition_schema__names_every_max_constant_of_spec_and_refuses_unknown_fields():
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            yield node
            for value in node.values():
                yield from walk(value)

    nodes = list(walk(SCHEMA))
    stated = {v for node in nodes for k, v in node.items() if k in ("maximum", "maxLength", "maxItems")}
    bounds = {name: value for name, value in vars(spec).items() if name.startswith("MAX_")}

    assert {name for name, value in bounds.items() if value not in stated} == {"MAX_DEFINITION_BYTES"}
    assert f"at most {spec.MAX_DEFINITION_BYTES} bytes of JSON" in SCHEMA["description"]
    assert "Step names are unique" in SCHEMA["description"] and "registered" in SCHEMA["description"]
    free = [SCHEMA["properties"]["input_schema"]]  # a JSON Schema of its own: any keyword
    assert all(node.get("additionalProperties") is False for node in nodes
               if node.get("type") == "object" and not any(node is f for f in free))
    assert [node for node in nodes if node.get("additionalProperties") is True] == free


#: Values a field may be set to: each side of every bound, and the wrong types.
ODD = st.one_of(
    st.none(), st.booleans(), st.sampled_from([0, 1, -1, 2, 100, 101, 199, 200, 201, 10_000, 10_001, 0.5, 1.5,
                                               -0.001, 1e-9, 86_400, 86_401, 604_800, 604_801, 1000.0, 1000.5,
                                               10**400, 1e306, "10", "", " ", "a", "a\n", "-a", "a b", "é",
                                               "a" * 100, "a" * 101, "a" * 200, "a" * 201, "a" * 2001,
                                               "card..number", "x.y", [], {}, ["a"], ["a", "a"], [""],
                                               ["E" * 201], [f"E{i}" for i in range(51)]]),
    st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
)
#: The fields a change may reach, as paths into ``VALID``.
PATHS = [("name",), ("description",), ("secret_inputs",), ("steps",), ("colour",), ("steps", 0),
         ("steps", 1, "name"), ("steps", 0, "handler"), ("steps", 1, "timeout_s"), ("steps", 1, "retry"),
         ("steps", 1, "non_retryable"), ("steps", 1, "max_concurrency"), ("steps", 1, "handlr"),
         ("steps", 1, "non_retryable", 0), ("secret_inputs", 0),
         *[("steps", 1, "retry", key) for key in RETRY["properties"]], ("steps", 1, "retry", "backoff")]


@st.composite
def definitions(draw: Any) -> Any:
    """A definition near ``VALID``: a few fields set to odd values, or many steps, or none."""
    data: Any = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(0, 3))):
        *parents, last = draw(st.sampled_from(PATHS))
        target = data
        try:
            for part in parents:
                target = target[part]
            target[last] = draw(ODD)
        except (KeyError, IndexError, TypeError):
            pass
    if draw(st.integers(0, 9)) == 0:
        count = draw(st.sampled_from([0, 1, 199, 200, 201]))
        data["steps"] = [{"name": f"s{i}", "handler": "h"} for i in range(count)]
    return data


@settings(max_examples=1500, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=definitions())
def test_definition_schema__parse_workflow_accepts_exactly_what_the_schema_allows(data: Any):
    try:
        spec.parse_workflow(data)
        accepted = True
    except DefinitionError:
        accepted = False

    assert accepted == schema_allows(data), data


@pytest.mark.parametrize("value", [1e-9, 86_400])
def test_definition_schema__timeout_bounds_are_the_ones_stated(value: float):
    data = copy.deepcopy(VALID)
    data["steps"][0]["timeout_s"] = value
    assert math.isclose(spec.parse_workflow(data).steps[0].timeout_s, value)
    for refused in (0, -value, spec.MAX_TIMEOUT_S + 1):
        data["steps"][0]["timeout_s"] = refused
        with pytest.raises(DefinitionError) as caught:
            spec.parse_workflow(data)
        assert caught.value.field == "steps[0].timeout_s"
        assert not schema_allows(data)
