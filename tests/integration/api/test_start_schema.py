"""Every bound the server enforces on a start (``POST executions/``) is stated in the served schema:
for each, the number the schema states is the one the server holds to (a request at it is accepted,
one just past it refused)."""
from __future__ import annotations

import json
import re
from typing import Any

from detflow_site.api.serializers import MAX_VERSION
from executions import operations
from tests.integration.api.conftest import assert_error
from workflows.builtin import FILE_PROCESSING

API = "/api/v1/"
START = API + "executions/"


def served(client: Any) -> dict[str, Any]:
    """The start operation as the served schema states it (now: the settings in force), with its
    body's schema resolved."""
    schema = client.get(API + "schema/", HTTP_ACCEPT="application/json").json()
    operation = schema["paths"][START]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    return {**operation, "body": schema["components"]["schemas"][ref]}


def post(client: Any, body: Any, **headers: str) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    return client.post(START, raw, content_type="application/json", **headers)


def nested(levels: int) -> Any:
    """A JSON value nested ``levels`` levels deep (a scalar is 0, ``[]`` is 1)."""
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


def test_start_schema__states_the_workflow_name_and_version_bounds_the_server_holds_to(
    operator: Any, define: Any, client: Any
) -> None:
    op = served(client)
    fields = op["body"]["properties"]
    longest = fields["workflow"]["maxLength"]
    name = "w" * longest
    define(name, [{"handler": "test.echo"}])

    assert (fields["workflow"]["minLength"], longest) == (1, 100)
    assert op["body"]["required"] == ["workflow"]
    assert post(operator, {"workflow": name}).status_code == 201
    assert_error(post(operator, {"workflow": name + "w"}), 400, "max_length", "workflow")
    # What was sent is bounded, not what is left once trimmed.
    assert_error(post(operator, {"workflow": name + " "}), 400, "max_length", "workflow")
    assert_error(post(operator, {"workflow": ""}), 400, "blank", "workflow")
    assert_error(post(operator, {"input": 1}), 400, "required", "workflow")

    assert (fields["version"]["minimum"], fields["version"]["maximum"]) == (1, MAX_VERSION)
    assert post(operator, {"workflow": name, "version": 1}).status_code == 201
    assert_error(post(operator, {"workflow": name, "version": 0}), 400, "min_value", "version")
    assert_error(post(operator, {"workflow": name, "version": MAX_VERSION + 1}), 400, "max_value",
                 "version")
    # The largest version stated passes the bound: it is refused only as not registered.
    assert_error(post(operator, {"workflow": name, "version": MAX_VERSION}), 400, "unknown_workflow",
                 "version")


def test_start_schema__states_no_other_fields(operator: Any, define: Any, client: Any) -> None:
    define("pay", [{"handler": "test.echo"}])

    op = served(client)
    assert op["body"]["additionalProperties"] is False
    assert set(op["body"]["properties"]) == {"workflow", "version", "input"}
    assert_error(post(operator, {"workflow": "pay", "priority": 1}), 400, "unknown_field", "priority")


def test_start_schema__states_the_input_cap_in_bytes_of_json(
    operator: Any, define: Any, client: Any
) -> None:
    define("pay", [{"handler": "test.echo"}])
    op = served(client)
    field = op["body"]["properties"]["input"]
    cap = field["x-maxJSONBytes"]
    # Two bytes in UTF-8 each, inside the two quotes: exactly the cap, then one byte past it.
    at_cap = "\u00e9" * ((cap - 2) // 2) + "a" * ((cap - 2) % 2)

    assert cap == operations.INPUT_CAP_BYTES == 1024 * 1024
    assert f"At most {cap} bytes" in field["description"]
    assert post(operator, {"workflow": "pay", "input": at_cap}).status_code == 201
    assert_error(post(operator, {"workflow": "pay", "input": at_cap + "a"}), 400, "invalid", "input")


def test_start_schema__states_the_input_nesting_limit(
    operator: Any, define: Any, client: Any, settings: Any
) -> None:
    settings.DETFLOW = {**settings.DETFLOW, "API_MAX_JSON_DEPTH": "7"}
    define("pay", [{"handler": "test.echo"}])
    op = served(client)
    field = op["body"]["properties"]["input"]
    limit = field["x-maxDepth"]

    assert limit == 7
    assert f"Nested at most {limit} levels" in field["description"]
    assert post(operator, {"workflow": "pay", "input": nested(limit)}).status_code == 201
    assert post(operator, {"workflow": "pay", "input": {"a": nested(limit - 1)}}).status_code == 201
    assert_error(post(operator, {"workflow": "pay", "input": nested(limit + 1)}), 400, "too_deep", "input")


def test_start_schema__states_the_body_size_limit(
    operator: Any, define: Any, client: Any, settings: Any
) -> None:
    settings.DETFLOW = {**settings.DETFLOW, "API_MAX_BODY_BYTES": "4096"}
    define("pay", [{"handler": "test.echo"}])
    op = served(client)
    limit = op["body"]["x-maxBodyBytes"]
    start = b'{"workflow": "pay", "input": null}'

    assert limit == 4096
    assert f"at most {limit} bytes" in op["body"]["description"]
    assert "413" in op["responses"]
    assert post(operator, start + b" " * (limit - len(start))).status_code == 201
    assert_error(post(operator, start + b" " * (limit - len(start) + 1)), 413, "too_large")


def test_start_schema__states_the_idempotency_key_bounds(
    operator: Any, define: Any, client: Any
) -> None:
    define("pay", [{"handler": "test.echo"}])
    op = served(client)
    (header,) = [p for p in op["parameters"] if p["name"] == "Idempotency-Key"]
    # The pattern is written for ECMA-262 and Python alike (escapes and classes only).
    pattern = re.compile(header["schema"]["pattern"])
    keys = ["k", "k" * 200, "k" * 201, "", " k", "k ", "a key", "k\t", "k\u00e9", "~!" * 100]

    assert header["in"] == "header" and header.get("required", False) is False
    for n, key in enumerate(keys):
        response = post(operator, {"workflow": "pay", "input": n}, HTTP_IDEMPOTENCY_KEY=key)
        stated = pattern.search(key) is not None
        assert response.status_code == (201 if stated else 400), (key, response.json())
    assert [bool(pattern.search(k)) for k in keys] == [True, True, False, False, False, False, True,
                                                       False, False, True]


def test_start_schema__states_the_start_rate(
    operator: Any, define: Any, client: Any, settings: Any
) -> None:
    settings.DETFLOW = {**settings.DETFLOW, "API_START_RATE": "2/minute"}
    define("pay", [{"handler": "test.echo"}])
    schema = client.get(API + "schema/", HTTP_ACCEPT="application/json").json()

    assert "More than 2/minute start requests" in schema["paths"][START]["post"]["responses"]["429"][
        "description"]
    assert [post(operator, {"workflow": "pay"}).status_code for _ in range(3)] == [201, 201, 429]


def test_start_schema__states_that_input_path_is_refused_where_files_receive_reads_it(
    operator: Any, client: Any
) -> None:
    op = served(client)
    assert "refuses input.path" in op["body"]["properties"]["input"]["description"]
    assert_error(post(operator, {"workflow": FILE_PROCESSING, "input": {"path": "/etc/hostname"}}),
                 400, "forbidden", "input.path")
