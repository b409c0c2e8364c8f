"""Bodies that try to make an operator action do more than its purpose (OWASP API3, API4, API6).

Each one, through the API and through the admin, is refused with a 4xx naming the field (the admin:
its 400 page) or ignored, and changes no execution but the one named in the path; a forged ``by`` never
reaches the history: the recorded event names the signed-in user.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from executions import store
from tests.integration.api.conftest import failed_execution, pending_execution
from tests.integration.security.matrix import admin_client, api_client, assert_no_leak, assert_refusal, state

DEPTH = 32  # DETFLOW_API_MAX_JSON_DEPTH in the test settings (the default)


def nested(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


def two(define: Any) -> dict[str, str]:
    """Two failed executions and a pending one: ``failed`` is acted on, ``other`` must stay as it is."""
    return {"failed": failed_execution(define), "other": failed_execution(define, "fails-too"),
            "pending": pending_execution(define)}


#: (action, body, the fields the refusal names). Every action's body is strict.
FORGED = [
    (action, {"reason": "r", name: value}, (name,))
    for action in ("cancel", "retry", "skip")
    for name, value in [("by", "mallory"), ("created_by", "mallory"), ("version", 99),
                        ("status", "SUCCEEDED"), ("execution_id", "{other}"), ("id", "{other}"),
                        ("_id", "{other}"),
                        ("events", []), ("attempt", 1), ("$set", {"status": "SUCCEEDED"})]
]
SHAPE = [
    (action, body, fields)
    for action in ("cancel", "retry", "skip")
    for body, fields in [
        ({}, ("reason",)),
        ({"reason": ""}, ("reason",)),
        ({"reason": "   \n\t"}, ("reason",)),
        ({"reason": "x" * 1001}, ("reason",)),
        ({"reason": 7}, ("reason",)),
        ({"reason": None}, ("reason",)),
        ({"reason": ["why"]}, ("reason",)),
        ({"reason": {"why": "x"}}, ("reason",)),
        ({"reason": True}, ("reason",)),
        ({"reason": "r", "dry_run": "true"}, ("dry_run",)),
        ({"reason": "r", "dry_run": "false"}, ("dry_run",)),
        ({"reason": "r", "dry_run": 1}, ("dry_run",)),
        ({"reason": "r", "dry_run": 0}, ("dry_run",)),
        ({"reason": "r", "dry_run": None}, ("dry_run",)),
        ({"reason": "r", "dry_run": []}, ("dry_run",)),
        ([{"reason": "r"}], ()),
        ("reason", ()),
        (None, ("reason",)),  # no body at all
        (nested(600), ()),
    ]
]
PURPOSE = [
    ("skip", {"reason": "r", "step": "s2"}, ("step",)),           # a step that has not failed
    ("skip", {"reason": "r", "step": "no-such-step"}, ("step",)),
    ("skip", {"reason": "r", "step": "../s1"}, ("step",)),
    ("skip", {"reason": "r", "step": "s1\x00"}, ("step",)),
    ("skip", {"reason": "r", "step": "S1"}, ("step",)),
    ("skip", {"reason": "r", "step": "s" * 101}, ("step",)),
    ("skip", {"reason": "r", "step": 0}, ("step",)),
    ("skip", {"reason": "r", "step": ["s1"]}, ("step",)),
    ("skip", {"reason": "r", "output": nested(DEPTH + 1)}, ("output",)),
    ("skip", {"reason": "r", "output": {"a": nested(DEPTH)}}, ("output",)),
    ("skip", {"reason": "r", "output": "x" * (300 * 1024)}, ("output",)),  # over OUTPUT_CAP_BYTES
    ("retry", {"reason": "r", "input": nested(DEPTH + 1)}, ("input",)),
    ("retry", {"reason": "r", "input": list(range(200_000))}, ("input",)),   # over 1 MiB of JSON
    ("retry", {"reason": "r", "step": "s1"}, ("step",)),          # retry takes no step: it is the failed one
    ("cancel", {"reason": "r", "input": {"n": 2}}, ("input",)),
    ("cancel", {"reason": "r", "output": {"n": 2}}, ("output",)),
]


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**ids) if value.startswith("{") and value.endswith("}") else value
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


@pytest.mark.parametrize(("action", "body", "fields"), FORGED + SHAPE + PURPOSE,
                         ids=[f"{a}-{json.dumps(b)[:60]}" for a, b, _ in FORGED + SHAPE + PURPOSE])
def test_api__a_body_beyond_the_actions_purpose_is_refused_naming_the_field_and_changes_nothing(
    db: None, define: Any, action: str, body: Any, fields: tuple[str, ...],
) -> None:
    ids = two(define)
    target = ids["pending" if action == "cancel" else "failed"]
    before = state()

    response = api_client("operator").post(f"/api/v1/executions/{target}/{action}/", _fill(body, ids),
                                           format="json")

    assert response.status_code == 400, response.content[:300]
    assert_refusal(response, *fields)
    if not fields:
        assert response.json()["fields"] == {}
    assert state() == before


@pytest.mark.parametrize("action", ["cancel", "retry", "skip"])
def test_api__a_value_at_the_depth_limit_passes_and_a_dry_run_changes_nothing(
    db: None, define: Any, action: str,
) -> None:
    ids = two(define)
    target = ids["pending" if action == "cancel" else "failed"]
    body: dict[str, Any] = {"reason": "r", "dry_run": True}
    if action != "cancel":
        body["input" if action == "retry" else "output"] = {"deep": nested(DEPTH - 1)}
    before = state()

    response = api_client("operator").post(f"/api/v1/executions/{target}/{action}/", body, format="json")

    assert response.status_code == 200, response.content[:300]
    assert response.json()["dry_run"] is True
    assert state() == before


@pytest.mark.parametrize(("action", "state_name", "code"), [
    ("retry", "pending", "not_allowed"),
    ("skip", "pending", "not_allowed"),
    ("cancel", "failed", "not_allowed"),
    ("retry", "succeeded", "not_allowed"),
    ("skip", "succeeded", "not_allowed"),
    ("cancel", "succeeded", "not_allowed"),
])
def test_api__an_action_on_an_execution_whose_state_does_not_allow_it_is_a_409(
    db: None, define: Any, action: str, state_name: str, code: str,
) -> None:
    from executions import operations, runner

    ids = two(define)
    if state_name == "succeeded":
        define("passes", [{"handler": "test.echo"}])
        doc, _ = operations.start("passes", {"n": 1})
        runner.advance(doc["_id"], worker="test")
        ids["succeeded"] = str(doc["_id"])
        assert store.load(ids["succeeded"])["status"] == "SUCCEEDED"
    before = state()

    response = api_client("operator").post(f"/api/v1/executions/{ids[state_name]}/{action}/",
                                           {"reason": "r"}, format="json")

    body = assert_refusal(response)
    assert (response.status_code, body["code"]) == (409, code), body
    assert state() == before


@pytest.mark.parametrize("action", ["cancel", "retry", "skip"])
@pytest.mark.parametrize("execution_id", [
    "..", "..%2F..", "%2e%2e", "%00", "a%00b", "{failed}%00", "{failed}%2F..%2F{other}", "{failed}%20",
    "%7B%22%24ne%22%3A1%7D", "%24where", "x" * 3000, "{failed}x", "{failedupper}", "%F0%9F%92%A3",
])
def test_api__an_execution_id_with_path_characters_or_another_shape_finds_nothing_and_changes_nothing(
    db: None, define: Any, action: str, execution_id: str,
) -> None:
    ids = two(define)
    ids["failedupper"] = ids["failed"].upper()
    before = state()

    response = api_client("operator").post(f"/api/v1/executions/{execution_id.format(**ids)}/{action}/",
                                           {"reason": "r"}, format="json")

    body = assert_refusal(response)
    assert response.status_code == 404, body
    assert state() == before


@pytest.mark.parametrize(("limit", "size", "status"), [
    (4096, 4097, 413),           # DETFLOW_API_MAX_BODY_BYTES, set low here
    (4096, 4096, 200),
    (2 * 1024 * 1024, 3 * 1024 * 1024, 413),   # past Django's own DATA_UPLOAD_MAX_MEMORY_SIZE
])
def test_api__a_body_over_the_size_limit_is_a_413_and_changes_nothing(
    db: None, define: Any, settings: Any, limit: int, size: int, status: int,
) -> None:
    settings.DETFLOW = {**settings.DETFLOW, "API_MAX_BODY_BYTES": str(limit)}
    ids = two(define)
    prefix = b'{"reason": "r", "dry_run": true, "output": "'
    raw = prefix + b"x" * (size - len(prefix) - 2) + b'"}'
    assert len(raw) == size
    before = state()

    response = api_client("operator").generic("POST", f"/api/v1/executions/{ids['failed']}/skip/", raw,
                                              content_type="application/json")

    assert response.status_code == status, response.content[:300]
    if status == 413:
        assert assert_refusal(response)["code"] == "too_large"
    assert state() == before


@pytest.mark.parametrize(("content_type", "raw", "status"), [
    ("application/x-www-form-urlencoded", b"reason=r&by=mallory", 415),
    ("multipart/form-data; boundary=x",
     b"--x\r\nContent-Disposition: form-data; name=reason\r\n\r\nr\r\n--x--", 415),
    ("text/plain", b'{"reason": "r"}', 415),
    ("application/json", b"\xff\xfe\x00", 400),
    ("application/json", b'{"reason": "r", "output": NaN}', 400),
    ("application/json", b'{"reason": "r", "reason": "again", "by": "x"}', 400),
    ("application/json; charset=latin-1", b'{"reason": "caf\xe9"}', 200),
])
def test_api__a_body_in_another_form_is_refused_with_the_error_shape(
    db: None, define: Any, content_type: str, raw: bytes, status: int,
) -> None:
    ids = two(define)
    before = state()

    response = api_client("operator").generic("POST", f"/api/v1/executions/{ids['failed']}/retry/",
                                              raw, content_type=content_type)

    assert response.status_code == status, response.content[:300]
    if status >= 400:
        assert_refusal(response)
        assert state() == before
    else:
        assert store.load(ids["failed"])["events"][-1]["reason"] == "café"


def test_api__only_the_execution_in_the_path_changes_and_the_event_names_the_signed_in_user(
    db: None, define: Any,
) -> None:
    ids = two(define)
    other_before = store.load(ids["other"])["version"]

    response = api_client("operator").post(f"/api/v1/executions/{ids['failed']}/skip/",
                                           {"reason": "by hand", "step": "s1", "output": {"by": "mallory"}},
                                           format="json")

    assert response.status_code == 200, response.content
    event = store.load(ids["failed"])["events"]
    skipped = [e for e in event if e["type"] == "skipped"]
    assert [(e["by"], e["step"]) for e in skipped] == [("operator", "s1")]
    assert store.load(ids["other"])["version"] == other_before


# API4: resource consumption on reads and starts.


@pytest.mark.parametrize("query", [
    "page_size=0", "page_size=201", "page_size=-1", "page_size=1e3", "page_size=" + "9" * 40,
    "page_size=abc", "page_size=1&page_size=500", "workflow=" + "w" * 10_000, "failed_step=" + "s" * 1000,
    "cursor=" + "c" * 10_000, "ordering=$natural", "ordering=" + "-" * 500, "status=" + "RUNNING," * 500,
    "created_after=" + "9" * 500, "version=99999999999999999999999", "no_such_filter=1",
    "&".join(f"f{i}=1" for i in range(500)),
])
def test_api__a_list_query_past_its_bounds_is_a_400_naming_the_parameter(db: None, define: Any,
                                                                        query: str) -> None:
    pending_execution(define)

    response = api_client("viewer").get(f"/api/v1/executions/?{query}")

    body = assert_refusal(response)
    assert response.status_code == 400 and len(body["fields"]) >= 1, body


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=" + "9" * 40, "after=-1",
                                   "after=" + "9" * 40, "after=x", "offset=5"])
def test_api__an_events_query_past_its_bounds_is_a_400(db: None, define: Any, query: str) -> None:
    failed = failed_execution(define)

    response = api_client("viewer").get(f"/api/v1/executions/{failed}/events/?{query}")

    body = assert_refusal(response)
    assert response.status_code == 400 and len(body["fields"]) == 1, body


@pytest.mark.parametrize(("body", "fields"), [
    ({"workflow": "waits", "input": nested(DEPTH + 1)}, ("input",)),
    ({"workflow": "waits", "input": list(range(200_000))}, ("input",)),
    ({"workflow": "w" * 101}, ("workflow",)),
    ({"workflow": "waits", "version": "1"}, ("version",)),
    ({"workflow": "waits", "version": 2**31}, ("version",)),
    ({"workflow": "waits", "by": "mallory"}, ("by",)),
    ({"workflow": "waits", "created_by": "mallory"}, ("created_by",)),
    ({"workflow": "waits", "status": "SUCCEEDED"}, ("status",)),
    ({"workflow": "waits", "id": "fixed-id"}, ("id",)),
    ({"workflow": "waits", "steps": []}, ("steps",)),
    ({"workflow": "waits", "definition": {"steps": []}}, ("definition",)),
])
def test_api__a_start_body_that_sets_what_the_server_decides_or_exceeds_a_bound_is_refused(
    db: None, define: Any, isolated: Path, body: dict[str, Any], fields: tuple[str, ...],
) -> None:
    pending_execution(define)
    before = state(isolated)

    response = api_client("operator").post("/api/v1/executions/", body, format="json")

    assert response.status_code == 400, response.content[:300]
    assert_refusal(response, *fields)
    assert state(isolated) == before


def test_api__a_started_execution_names_its_starter_whatever_the_input_says(db: None, define: Any) -> None:
    pending_execution(define)

    response = api_client("operator").post("/api/v1/executions/",
                                           {"workflow": "waits", "input": {"by": "mallory",
                                                                           "created_by": "mallory"}},
                                           format="json")

    assert response.status_code == 201, response.content
    doc = store.load(response.json()["id"])
    assert doc["events"][0]["by"] == "operator"
    assert response.json()["created_by"] == "operator"


@pytest.mark.parametrize(("extra", "field"), [
    ({"version": 7}, "version"), ({"created_by": "mallory"}, "created_by"),
    ({"fingerprint": "0" * 64}, "fingerprint"), ({"created_at": "2020-01-01T00:00:00Z"}, "created_at"),
])
def test_api__a_definition_that_sets_what_the_server_decides_is_refused(
    db: None, define: Any, extra: dict[str, Any], field: str,
) -> None:
    before = state()
    body = {"name": "mine", "steps": [{"name": "a", "handler": "test.echo"}], **extra}

    response = api_client("operator").post("/api/v1/workflows/", body, format="json")

    assert response.status_code == 400, response.content[:300]
    assert_refusal(response, field)
    assert state() == before


# The same escapes through the admin's action forms.

#: (action, form fields beside stage/reason, what the error page says).
ADMIN_REFUSED = [
    ("skip", {"reason": ""}, "a reason is required"),
    ("skip", {"reason": "   "}, "a reason is required"),
    ("retry", {"reason": "x" * 1001}, "at most 1000 characters"),
    ("cancel", {"reason": "x" * 1001}, "at most 1000 characters"),
    ("skip", {"output": json.dumps(nested(DEPTH + 1))}, "DETFLOW_API_MAX_JSON_DEPTH"),
    ("retry", {"input": json.dumps(nested(DEPTH + 1))}, "DETFLOW_API_MAX_JSON_DEPTH"),
    ("skip", {"output": "[" * 50_000 + "]" * 50_000}, "nested deeper"),
    ("skip", {"output": '{"a": NaN}'}, "is not JSON"),
    ("skip", {"output": '"' + "x" * (300 * 1024) + '"'}, "the cap is"),
    ("retry", {"input": "{nope"}, "is not JSON"),
]


@pytest.mark.parametrize(("action", "form", "says"), ADMIN_REFUSED,
                         ids=[f"{a}-{str(f)[:40]}" for a, f, _ in ADMIN_REFUSED])
@pytest.mark.parametrize("stage", ["preview", "confirm"])
def test_admin__an_action_form_beyond_its_purpose_is_a_400_page_and_changes_nothing(
    db: None, define: Any, action: str, form: dict[str, str], says: str, stage: str,
) -> None:
    ids = two(define)
    target = ids["pending" if action == "cancel" else "failed"]
    before = state()

    response = admin_client("operator").post(f"/admin/executions/execution/{target}/{action}/",
                                             {"reason": "r", **form, "stage": stage})

    assert response.status_code == 400, response.content[:300]
    assert says in response.content.decode()
    assert_no_leak(response)
    assert state() == before


@pytest.mark.parametrize("action", ["cancel", "retry", "skip"])
def test_admin__forged_fields_in_an_action_form_are_ignored_and_the_event_names_the_signed_in_user(
    db: None, define: Any, action: str,
) -> None:
    ids = two(define)
    target = ids["pending" if action == "cancel" else "failed"]
    others = {k: store.load(v)["version"] for k, v in ids.items() if v != target}
    form = {"stage": "confirm", "reason": "by hand", "by": "mallory", "created_by": "mallory",
            "execution_id": ids["other"], "step": "s2", "status": "SUCCEEDED", "version": "99",
            "input": "", "output": "null"}

    response = admin_client("operator").post(f"/admin/executions/execution/{target}/{action}/", form)

    assert response.status_code == 302, response.content[:300]
    event = store.load(target)["events"]
    acted = [e for e in event if e.get("by") not in (None,)]
    assert [(e["by"], e.get("step", "s1")) for e in acted] == [("operator", "s1")], acted
    assert {k: store.load(ids[k])["version"] for k in others} == others


@pytest.mark.parametrize("path", ["..%2F..%2F", "%2e%2e", "a%00b", "{failed}%00", "{failed}x", "x" * 3000])
@pytest.mark.parametrize("action", ["cancel", "retry", "skip"])
def test_admin__an_execution_id_with_path_characters_finds_nothing_and_changes_nothing(
    db: None, define: Any, path: str, action: str,
) -> None:
    ids = two(define)
    before = state()
    client = admin_client("operator")

    shown = client.get(f"/admin/executions/execution/{path.format(**ids)}/{action}/")
    done = client.post(f"/admin/executions/execution/{path.format(**ids)}/{action}/",
                       {"stage": "confirm", "reason": "r"})

    assert (shown.status_code, done.status_code) == (404, 404)
    assert_no_leak(shown), assert_no_leak(done)
    assert state() == before


@pytest.mark.parametrize(("action", "state_name"), [("retry", "pending"), ("skip", "pending"),
                                                    ("cancel", "failed")])
def test_admin__an_action_the_executions_state_does_not_allow_is_a_400_page(
    db: None, define: Any, action: str, state_name: str,
) -> None:
    ids = two(define)
    before = state()

    response = admin_client("operator").post(f"/admin/executions/execution/{ids[state_name]}/{action}/",
                                             {"stage": "confirm", "reason": "r"})

    assert response.status_code == 400
    assert "only" in response.content.decode()
    assert state() == before


@pytest.mark.parametrize(("step", "field"), [
    ({"non_retryable": ["builtins.ValueError"] * 50_000}, "definition"),   # past the definition's bytes
    ({"non_retryable": ["builtins.ValueError"] * 51}, "steps[0].non_retryable"),
    ({"non_retryable": ["x" * 100_000]}, "steps[0].non_retryable"),
    ({"handler": "h" * 201}, "steps[0].handler"),
])
def test_api__a_definition_with_a_list_or_string_past_its_cap_is_refused(
    db: None, step: dict[str, Any], field: str,
) -> None:
    before = state()
    body = {"name": "huge", "steps": [{"name": "a", "handler": "test.echo", **step}]}

    response = api_client("operator").post("/api/v1/workflows/", body, format="json")

    assert response.status_code == 400, response.content[:300]
    assert_refusal(response)
    assert any(name.startswith(field) for name in response.json()["fields"]), response.json()
    assert state() == before


@pytest.mark.parametrize("steps", [201, 1000])
def test_api__a_definition_with_more_steps_than_the_cap_is_refused(db: None, steps: int) -> None:
    before = state()
    body = {"name": "long", "steps": [{"name": f"s{i}", "handler": "test.echo"} for i in range(steps)]}

    response = api_client("operator").post("/api/v1/workflows/", body, format="json")

    assert response.status_code == 400, response.content[:300]
    assert_refusal(response)
    assert state() == before
