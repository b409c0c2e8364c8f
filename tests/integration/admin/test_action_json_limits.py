"""The admin's action forms decode JSON within the API's limits: too deep, too large or not JSON is
an error on the page and changes nothing; the execution's pages keep answering."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from tests.integration.admin.conftest import failed_execution

EXECUTIONS = "/admin/executions/execution/"


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize(("action", "field", "text", "says"), [
    ("skip", "output", nested(50_000), "output: is not JSON: JSON parse error - the body is nested deeper"),
    ("skip", "output", nested(700), "output: is not JSON: JSON parse error - the body is nested deeper"),
    ("skip", "output", nested(33), "output: is nested more than 32 levels deep (DETFLOW_API_MAX_JSON_DEPTH)"),
    ("retry", "input", '{"a": ' * 40 + "1" + "}" * 40,
     "input: is nested more than 32 levels deep (DETFLOW_API_MAX_JSON_DEPTH)"),
    ("skip", "output", '{"x": NaN}', "output: is not JSON: JSON parse error - NaN is not a JSON value"),
    ("skip", "output", '{"a": ["\\ud800"]}', "output.a[0]: the text holds a lone surrogate (\\ud800)"),
    ("retry", "input", '{"name": "x\\udfff"}', "input.name: the text holds a lone surrogate (\\udfff)"),
    ("skip", "output", '"\\ud800"', "output: the text holds a lone surrogate (\\ud800)"),
    ("skip", "output", '"' + "a" * 2 * 1024 * 1024 + '"',
     "output: the request body is 2097153 bytes; at most 2097152 are accepted "
     "(DETFLOW_API_MAX_BODY_BYTES)"),
])
def test_action__refuses_json_the_api_refuses_and_changes_nothing(
    console_as: Callable[..., Client], define: Any, action: str, field: str, text: str, says: str,
) -> None:
    from executions import store

    failed = failed_execution(define)
    before = store.load(failed)
    operator = console_as("operator")

    for stage in ("preview", "confirm"):
        response = operator.post(EXECUTIONS + f"{failed}/{action}/",
                                 {"stage": stage, "reason": "try it", field: text})
        assert response.status_code == 400, response.content[:2000]
        assert says in response.content.decode()
    assert store.load(failed) == before
    assert operator.get(EXECUTIONS + f"{failed}/").status_code == 200


def test_action__accepts_json_at_the_depth_limit(console_as: Callable[..., Client], define: Any) -> None:
    from executions import store

    failed = failed_execution(define)
    operator = console_as("operator")
    done = operator.post(EXECUTIONS + f"{failed}/skip/",
                         {"stage": "confirm", "reason": "deep but allowed", "output": nested(32)})

    assert done.status_code == 302, done.content[:2000]
    assert store.load(failed)["steps"][0]["output_json"] == nested(32)
    assert operator.get(EXECUTIONS + f"{failed}/").status_code == 200
