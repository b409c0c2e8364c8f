"""The API's pure helpers: nesting counts, error flattening, cursors, and its three settings."""
from __future__ import annotations

import json

import pytest
from rest_framework.exceptions import ErrorDetail

from detflow_site import conf
from detflow_site.api.errors import flatten
from detflow_site.api.fields import depth
from detflow_site.api.filters import decode_cursor, encode_cursor
from detflow_site.api.parsers import nesting
from detflow_site.errors import InvalidArgument
from executions.store import to_dt


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 0), ("[]", 1), ('{"a": [1, {"b": []}]}', 4), ('["[[[[", "]]]"]', 1),
        ('{"a": "\\"[[[\\""}', 1), ("[[[]]][[]]", 3),
    ],
)
def test_nesting__counts_brackets_outside_strings(text: str, expected: int) -> None:
    assert nesting(text, 100) == expected


def test_nesting__stops_counting_past_the_limit() -> None:
    assert nesting("[" * 10_000, 5) == 6


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 0), ("x", 0), ([], 1), ({}, 1), ([[1], {"a": {"b": None}}], 3), ({"a": [[[]]]}, 4)],
)
def test_depth__of_decoded_values(value: object, expected: int) -> None:
    assert depth(value, 100) == expected
    assert nesting(json.dumps(value), 100) == expected


def test_flatten__gives_dotted_field_paths() -> None:
    detail = {
        "reason": [ErrorDetail("This field is required.", code="required")],
        "steps": [{}, {"retry": {"max_attempts": [ErrorDetail("too small", code="min_value")]}}],
        "non_field_errors": [ErrorDetail("bad", code="invalid")],
    }

    assert flatten(detail) == {"reason": ["This field is required."],
                               "steps[1].retry.max_attempts": ["too small"], "": ["bad"]}


def test_cursor__round_trips_and_refuses_anything_else() -> None:
    doc = {"created_at": to_dt(1_700_000_000_123), "_id": "ab" * 16}

    assert decode_cursor(encode_cursor(doc)) == (1_700_000_000_123, "ab" * 16)
    # "", garbage, null, [1, 2], ["1", "a"], [true, "a"], [99999999999999999999, "a"]
    for bad in ["", "x", "bnVsbA", "WzEsIDJd", "WyIxIiwgImEiXQ", "W3RydWUsICJhIl0",
                "Wzk5OTk5OTk5OTk5OTk5OTk5OTk5LCJhIl0"]:
        with pytest.raises(InvalidArgument):
            decode_cursor(bad)


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [({"API_START_RATE": " 60 / minute "}, {"API_START_RATE": "60/minute"}),
     ({"API_MAX_BODY_BYTES": "4096", "API_MAX_JSON_DEPTH": "256"},
      {"API_MAX_BODY_BYTES": 4096, "API_MAX_JSON_DEPTH": 256})],
)
def test_settings__api_values_parse(raw: dict[str, str], parsed: dict[str, object]) -> None:
    settings, problems = conf.parse(raw)

    assert problems == []
    assert {k: getattr(settings, k) for k in parsed} == parsed


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [("API_START_RATE", "60", "such as 600/minute"), ("API_START_RATE", "0/minute", "such as 600/minute"),
     ("API_START_RATE", "5/fortnight", "such as 600/minute"), ("API_MAX_BODY_BYTES", "0", "at least 1"),
     ("API_MAX_JSON_DEPTH", "257", "at most 256"), ("API_MAX_JSON_DEPTH", "1.5", "an integer")],
)
def test_settings__bad_api_values_are_named(name: str, value: str, reason: str) -> None:
    _, [problem] = conf.parse({name: value})

    assert problem.startswith(f"DETFLOW_{name}={value!r}") and reason in problem
