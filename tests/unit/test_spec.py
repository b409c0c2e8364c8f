"""Workflow definitions: validation that names the field, and the content fingerprint."""
from __future__ import annotations

import copy
from typing import Any

import pytest

from workflows import registry
from workflows.errors import DefinitionError, UnknownHandler
from workflows.spec import RetryPolicy, StepSpec, WorkflowSpec, parse_workflow

VALID: dict[str, Any] = {
    "name": "media.ingest",
    "description": "fetch, checksum, store",
    "steps": [
        {"name": "fetch", "handler": "files.fetch"},
        {"name": "checksum", "handler": "files.checksum", "timeout_s": 5,
         "retry": {"max_attempts": 5, "initial_delay_s": 0.5}, "non_retryable": ["ValueError"]},
    ],
}
#: Marks a key that ``definition`` removes.
DELETE = object()


def definition(**changes: Any) -> dict[str, Any]:
    """Return VALID with ``changes`` applied; keys like ``steps.1.retry.max_attempts`` reach inside."""
    data = copy.deepcopy(VALID)
    for path, value in changes.items():
        *parents, last = path.split(".")
        target: Any = data
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        key = int(last) if isinstance(target, list) else last
        if value is DELETE:
            del target[key]
        else:
            target[key] = value
    return data


def test_parse_workflow__reads_a_valid_definition_with_defaults():
    spec = parse_workflow(VALID)
    assert spec == WorkflowSpec(
        name="media.ingest",
        description="fetch, checksum, store",
        steps=(
            StepSpec("fetch", "files.fetch"),
            StepSpec("checksum", "files.checksum", RetryPolicy(max_attempts=5, initial_delay_s=0.5),
                     timeout_s=5.0, non_retryable=("ValueError",)),
        ),
    )
    assert parse_workflow(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"steps": []}, "steps"),
        ({"steps": DELETE}, "steps"),
        ({"steps": "fetch"}, "steps"),
        ({"steps.0.name": ""}, "steps[0].name"),
        ({"steps.1.name": "   "}, "steps[1].name"),
        ({"steps.1.name": DELETE}, "steps[1].name"),
        ({"steps.1.name": "fetch"}, "steps[1].name"),
        ({"steps.0.name": "has space"}, "steps[0].name"),
        ({"name": ""}, "name"),
        ({"name": "-leading-dash"}, "name"),
        ({"steps.1.retry.max_attempts": 0}, "steps[1].retry.max_attempts"),
        ({"steps.1.retry.max_attempts": -3}, "steps[1].retry.max_attempts"),
        ({"steps.1.retry.max_attempts": 101}, "steps[1].retry.max_attempts"),
        ({"steps.1.retry.max_attempts": 2.5}, "steps[1].retry.max_attempts"),
        ({"steps.1.retry.max_attempts": True}, "steps[1].retry.max_attempts"),
        ({"steps.1.retry.initial_delay_s": -0.001}, "steps[1].retry.initial_delay_s"),
        ({"steps.1.retry.max_delay_s": -1}, "steps[1].retry.max_delay_s"),
        ({"steps.1.retry.multiplier": 0.5}, "steps[1].retry.multiplier"),
        ({"steps.1.retry.jitter": 1.5}, "steps[1].retry.jitter"),
        ({"steps.1.retry.initial_delay_s": float("nan")}, "steps[1].retry.initial_delay_s"),
        ({"steps.1.retry.backoff": 2}, "steps[1].retry.backoff"),
        ({"steps.1.retry": [3]}, "steps[1].retry"),
        ({"steps.1.timeout_s": 0}, "steps[1].timeout_s"),
        ({"steps.1.timeout_s": -5}, "steps[1].timeout_s"),
        ({"steps.1.timeout_s": "10"}, "steps[1].timeout_s"),
        ({"steps.1.timeout_s": 24 * 3600 + 1}, "steps[1].timeout_s"),
        ({"steps.0.handler": ""}, "steps[0].handler"),
        ({"steps.0.handler": DELETE}, "steps[0].handler"),
        ({"steps.1.non_retryable": "ValueError"}, "steps[1].non_retryable"),
        ({"steps.1.non_retryable": [""]}, "steps[1].non_retryable[0]"),
        ({"steps.0.handlr": "files.fetch"}, "steps[0].handlr"),
        ({"steps.0": "fetch"}, "steps[0]"),
        ({"stpes": []}, "stpes"),
        ({"description": 7}, "description"),
        ({"steps.1.retry.initial_delay_s": 1e306}, "steps[1].retry.initial_delay_s"),
        ({"steps.1.retry.max_delay_s": 1e12}, "steps[1].retry.max_delay_s"),
        ({"steps.1.retry.multiplier": 1e9}, "steps[1].retry.multiplier"),
        ({"steps.1.timeout_s": 10**400}, "steps[1].timeout_s"),
        ({"steps.1.retry.max_delay_s": float("inf")}, "steps[1].retry.max_delay_s"),
        ({"steps.1.max_concurrency": 0}, "steps[1].max_concurrency"),
        ({"steps.1.max_concurrency": 2.5}, "steps[1].max_concurrency"),
        ({"steps.1.max_concurrency": True}, "steps[1].max_concurrency"),
    ],
)
def test_parse_workflow__rejects_a_bad_value_naming_its_field(changes, field):
    with pytest.raises(DefinitionError) as caught:
        parse_workflow(definition(**changes))
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


@pytest.mark.parametrize("data", [None, [], "media.ingest"])
def test_parse_workflow__rejects_a_definition_that_is_not_an_object(data):
    with pytest.raises(DefinitionError) as caught:
        parse_workflow(data)
    assert caught.value.field == "definition"


def test_parse_workflow__rejects_more_than_200_steps():
    steps = [{"name": f"s{i}", "handler": "files.fetch"} for i in range(201)]
    with pytest.raises(DefinitionError, match="at most 200 steps") as caught:
        parse_workflow({"name": "big", "steps": steps})
    assert caught.value.field == "steps"


def test_parse_workflow__rejects_an_unknown_handler_listing_the_known_ones(monkeypatch):
    monkeypatch.setattr(registry, "_handlers", {"files.fetch": print, "files.store": print})
    with pytest.raises(UnknownHandler) as caught:
        parse_workflow(VALID, known_handlers=registry.get_handler)
    assert caught.value.field == "steps[1].handler"
    assert caught.value.known == ["files.fetch", "files.store"]
    assert "'files.checksum'" in str(caught.value)
    assert "known handlers: files.fetch, files.store" in str(caught.value)


def test_parse_workflow__accepts_steps_whose_handlers_are_registered(monkeypatch):
    monkeypatch.setattr(registry, "_handlers", {"files.fetch": print, "files.checksum": print})
    assert [s.handler for s in parse_workflow(VALID, known_handlers=registry.get_handler).steps] == [
        "files.fetch", "files.checksum",
    ]


def test_fingerprint__is_equal_for_equal_content_however_it_is_spelled():
    spelled_out = definition(**{
        "steps.0.timeout_s": 60, "steps.0.retry": {"max_attempts": 3, "jitter": 0.1},
        "steps.1.timeout_s": 5.0, "name": "another.name",
    })
    assert parse_workflow(spelled_out).fingerprint() == parse_workflow(VALID).fingerprint()


@pytest.mark.parametrize(
    "changes",
    [
        {"description": "changed"},
        {"steps.0.handler": "files.other"},
        {"steps.1.retry.max_attempts": 4},
        {"steps.1.retry.jitter": 0},
        {"steps.1.timeout_s": 6},
        {"steps.1.non_retryable": []},
        {"steps": list(reversed(VALID["steps"]))},
    ],
)
def test_fingerprint__changes_when_the_content_changes(changes):
    assert parse_workflow(definition(**changes)).fingerprint() != parse_workflow(VALID).fingerprint()


def test_to_dict__leaves_out_an_unset_max_concurrency_so_old_fingerprints_hold():
    spec = parse_workflow(definition())
    assert all("max_concurrency" not in step for step in spec.to_dict()["steps"])
    limited = parse_workflow(definition(**{"steps.1.max_concurrency": 3}))
    assert limited.to_dict()["steps"][1]["max_concurrency"] == 3
    assert limited.fingerprint() != spec.fingerprint()


@pytest.mark.parametrize(("step", "field"), [
    ({"non_retryable": [f"E{i}" for i in range(51)]}, "steps[0].non_retryable"),
    ({"non_retryable": ["E" * 201]}, "steps[0].non_retryable[0]"),
    ({"handler": "h" * 201}, "steps[0].handler"),
])
def test_parse_workflow__caps_list_and_name_lengths(step, field):
    data = {"name": "capped", "steps": [{"name": "s", "handler": "files.fetch", **step}]}
    with pytest.raises(DefinitionError) as caught:
        parse_workflow(data)
    assert caught.value.field == field


def test_parse_workflow__refuses_a_definition_over_its_byte_budget():
    steps = [{"name": f"s{i}", "handler": "files.fetch", "non_retryable": [f"{i}.{'E' * 190}.{n}" for n in
                                                                            range(10)]} for i in range(150)]
    with pytest.raises(DefinitionError, match="bytes of JSON") as caught:
        parse_workflow({"name": "huge", "steps": steps})
    assert caught.value.field == "definition"


def test_to_dict__leaves_out_empty_secret_inputs_so_old_fingerprints_hold():
    plain = parse_workflow(definition())
    secret = parse_workflow({**definition(), "secret_inputs": ["card.number"]})
    assert "secret_inputs" not in plain.to_dict()
    assert secret.to_dict()["secret_inputs"] == ["card.number"]
    assert secret.fingerprint() != plain.fingerprint()


@pytest.mark.parametrize("default", [10**20, float("nan"), {1: "a"}])
def test_parse_workflow__refuses_a_default_output_that_cannot_be_stored(default: Any) -> None:
    data = {"name": "w", "steps": [{"name": "approval", "wait": {
        "signal": "approved", "timeout_s": 5, "on_timeout": "continue", "default_output": default}}]}
    with pytest.raises(DefinitionError) as raised:
        parse_workflow(data)
    assert raised.value.field == "steps[0].wait.default_output"
