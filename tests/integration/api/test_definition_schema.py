"""The served schema states the definition's bounds, and every definition schemathesis generates from it
(its positive cases) is registered."""
from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode

from workflows import definitions, spec

API = "/api/v1/"
#: Definitions generated; each is registered through the API.
CASES = 300


def test_definition_schema__served_states_max_attempts_at_most_100_and_timeout_above_0(client: Any) -> None:
    schema = client.get(API + "schema/", HTTP_ACCEPT="application/json").json()
    body = schema["paths"][API + "workflows/"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    step = schema["components"]["schemas"][ref]["properties"]["steps"]["items"]

    assert body["required"] is True
    assert step["properties"]["retry"]["properties"]["max_attempts"] == {
        **step["properties"]["retry"]["properties"]["max_attempts"], "minimum": 1, "maximum": 100}
    assert {k: step["properties"]["timeout_s"][k] for k in ("minimum", "exclusiveMinimum", "maximum")} == {
        "minimum": 0, "exclusiveMinimum": True, "maximum": spec.MAX_TIMEOUT_S}
    assert schema["components"]["schemas"][ref] == spec.DEFINITION.openapi()


def fit_rules(step: dict[str, Any]) -> None:
    """Make a generated step keep the rules the schema states in words: a registered handler, or
    exactly one kind of step (a sleep with one of seconds and until; a default output only for a
    wait that continues)."""
    if "sleep" in step or "wait" in step:
        for name in ("handler", *spec.HANDLER_ONLY, *(["wait"] if "sleep" in step else [])):
            step.pop(name, None)
    else:
        step["handler"] = "test.echo"
        if "compensate" in step:
            step["compensate"]["handler"] = "test.undo"
        return
    if "sleep" in step:
        sleep = step["sleep"]
        if "seconds" in sleep or "until" not in sleep:
            step["sleep"] = {"seconds": sleep.get("seconds", 1)}
        elif sleep["until"].startswith("outputs."):
            step["sleep"] = {"until": "input.at"}
    elif (step["wait"].get("on_timeout", "fail") != "continue"
          or not storable(step["wait"].get("default_output"))):
        step["wait"].pop("default_output", None)


def storable(value: Any) -> bool:
    """Whether a default output keeps the rule its help states: no NUL in a key, 64-bit integers."""
    if isinstance(value, dict):
        return all("\x00" not in k and storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(storable(v) for v in value)
    return not isinstance(value, int) or isinstance(value, bool) or -2**63 <= value < 2**63


@pytest.mark.slow
def test_definition_schema__every_definition_schemathesis_generates_is_registered(token_for: Any) -> None:
    token = token_for("operator")
    schema = schemathesis.openapi.from_wsgi(API + "schema/", get_wsgi_application())
    operation = schema[API + "workflows/"]["POST"]
    statuses: Counter[int] = Counter()
    steps: Counter[int] = Counter()

    @hypothesis_settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(GenerationMode.POSITIVE))
    def check(case: Any) -> None:
        body = case.body
        # The rules the schema states in words (spec.RULES): names unique, handlers registered, bytes.
        names = [step["name"] for step in body["steps"]]
        assume(len(set(names)) == len(names))
        for step in body["steps"]:
            fit_rules(step)
        if body.get("input_schema"):  # valid JSON Schema, as the rules say (tests/unit/test_inputs.py)
            body["input_schema"] = {"type": "object", "description": json.dumps(body["input_schema"])}
        assume(len(json.dumps(body, ensure_ascii=False).encode()) <= spec.MAX_DEFINITION_BYTES)

        response = case.call(headers={"Authorization": f"Token {token}"})

        statuses[response.status_code] += 1
        steps[len(body["steps"])] += 1
        assert response.status_code in (200, 201), (body, response.json())
        stored = definitions.get(body["name"], response.json()["version"])
        assert stored.steps == spec.parse_workflow(body).to_dict()["steps"]

    check()

    print(f"statuses {sorted(statuses.items())}; steps per definition {sorted(steps.items())}")
    assert statuses.total() >= CASES // 2
