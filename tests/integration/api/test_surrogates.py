"""A lone surrogate escape (``"\\ud800"``) is valid JSON but no UTF-8 text: MongoDB cannot store it.

A body holding one anywhere is refused at the parser with a 400 naming where it is, before any
view, validator or write sees it (it answered 500 from the store, or from an encoder, before).
"""
from __future__ import annotations

from typing import Any

import pytest

from executions import store
from tests.integration.api.conftest import assert_error

API = "/api/v1/"
LONE = "\\ud800"


@pytest.fixture(autouse=True)
def pay(define: Any) -> None:
    define("pay", [{"handler": "test.echo"}])


def post(client: Any, path: str, body: str) -> Any:
    return client.generic("POST", API + path, body.encode(), content_type="application/json")


@pytest.mark.parametrize(("path", "body", "where"), [
    ("executions/", '{"workflow": "pay", "input": {"name": "a%sb"}}', "input.name"),
    ("executions/", '{"workflow": "pay", "input": {"a%s": 1}}', "input"),
    ("executions/", '{"workflow": "pay", "input": {"list": [1, "%s"]}}', "input.list[1]"),
    ("executions/", '{"workflow": "pay", "idempotency_key": "k%s"}', "idempotency_key"),
    ("executions/", '{"workflow": "p%s"}', "workflow"),
    ("workflows/", '{"name": "w%s", "steps": [{"name": "a", "handler": "test.echo"}]}', "name"),
    ("workflows/", '{"name": "w", "description": "%s", "steps": [{"name": "a", "handler": "test.echo"}]}',
     "description"),
    ("workflows/", '{"name": "w", "steps": [{"name": "a%s", "handler": "test.echo"}]}', "steps[0].name"),
])
def test_surrogates__a_lone_surrogate_anywhere_is_400_naming_where(
    operator: Any, path: str, body: str, where: str,
) -> None:
    response = post(operator, path, body % LONE)

    error = assert_error(response, 400, "invalid_text", where)
    assert "lone surrogate" in error["detail"] and "\\ud800" in error["detail"]
    assert store.collection().count_documents({}) == 0


def test_surrogates__a_pair_of_surrogate_escapes_is_one_character_and_accepted(operator: Any) -> None:
    response = post(operator, "executions/", '{"workflow": "pay", "input": {"smile": "\\ud83d\\ude00"}}')

    assert response.status_code == 201, response.json()
    stored = store.load(response.json()["id"])
    assert stored is not None and stored["input_json"] == '{"smile":"\U0001f600"}'


def test_surrogates__an_action_reason_with_a_lone_surrogate_is_400(operator: Any) -> None:
    started = post(operator, "executions/", '{"workflow": "pay"}').json()

    response = post(operator, f"executions/{started['id']}/cancel/", '{"reason": "oops ' + LONE + '"}')

    assert_error(response, 400, "invalid_text", "reason")
    stored = store.load(started["id"])
    assert stored is not None and stored["status"] != "CANCELLED"


def test_surrogates__python_callers_get_the_same_refusal_naming_where() -> None:
    """``operations.start`` and ``definitions.register`` check what they are given as the API does."""
    from detflow_site.errors import InvalidArgument
    from executions import operations
    from workflows import definitions
    from workflows.errors import DefinitionError

    with pytest.raises(InvalidArgument, match=r"lone surrogate \(\\ud800\)") as start:
        operations.start("pay", {"files": ["ok", "bad\ud800"]})
    with pytest.raises(DefinitionError, match=r"lone surrogate \(\\udfff\)") as register:
        definitions.register({"name": "w", "description": "x\udfff",
                              "steps": [{"name": "a", "handler": "test.echo"}]})

    assert start.value.field == "input" and "at files[1]" in start.value.reason
    assert register.value.field == "description"
    assert store.collection().count_documents({}) == 0


def test_surrogates__a_charset_that_decodes_to_a_lone_surrogate_is_400(operator: Any) -> None:
    """utf-7 writes U+D800 as ``+2AA-``: no escape in the text, a lone surrogate once decoded."""
    started = post(operator, "executions/", '{"workflow": "pay"}').json()

    response = operator.generic("POST", API + f"executions/{started['id']}/cancel/",
                                b'{"reason": "oops +2AA-"}', content_type="application/json; charset=utf-7")

    assert_error(response, 400, "invalid_text", "reason")
    stored = store.load(started["id"])
    assert stored is not None and stored["status"] != "CANCELLED"
