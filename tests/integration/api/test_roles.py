"""Every endpoint as each role: anonymous 401, no role 403, viewers read, operators also write,
signallers only send signals."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from executions import store
from tests.integration.api.conftest import ROLES, failed_execution, pending_execution, signalled_execution

API = "/api/v1/"
DEFINITION = {"name": "registered", "steps": [{"name": "a", "handler": "test.echo"}]}

#: (method, path, body, status an allowed caller gets); ``{pending}``, ``{failed}`` and ``{waiting}``
#: (its step waits for the signal ``approved``) are ids.
ENDPOINTS = [
    ("GET", "workflows/", None, 200),
    ("POST", "workflows/", DEFINITION, 201),
    ("GET", "workflows/waits/", None, 200),
    ("GET", "workflows/waits/versions/1/", None, 200),
    ("GET", "handlers/", None, 200),
    ("GET", "executions/", None, 200),
    ("POST", "executions/", {"workflow": "waits", "input": {"n": 2}}, 201),
    ("GET", "executions/{pending}/", None, 200),
    ("GET", "executions/{pending}/events/", None, 200),
    ("GET", "executions/{pending}/diagnosis/", None, 200),
    ("POST", "executions/{pending}/cancel/", {"reason": "not needed"}, 200),
    ("POST", "executions/{failed}/retry/", {"reason": "fixed"}, 200),
    ("POST", "executions/{failed}/skip/", {"reason": "done by hand"}, 200),
    # Its failed step names no compensation: an operator is refused by its state, not by the role.
    ("POST", "executions/{failed}/compensate/", {"reason": "undo"}, 409),
    ("POST", "executions/{waiting}/signals/approved/", {"payload": {"ok": True}}, 201),
    ("POST", "files/", "upload", 201),
]
#: The roles tried on each endpoint: those of the conftest, and a signaller.
ALL_ROLES = (*ROLES, "signaller")
#: Open to anyone: health for probes, the schema and its page.
PUBLIC = [("GET", "health/", None, 200), ("GET", "schema/", None, 200), ("GET", "docs/", None, 200)]


def call(client: Any, method: str, path: str, body: Any) -> Any:
    if method == "GET":
        return client.get(path)
    if body == "upload":
        return client.post(path, {"file": SimpleUploadedFile("note.txt", b"hello\n")}, format="multipart")
    return client.post(path, body, format="json")


def expected(role: str, method: str, allowed: int, path: str = "") -> int:
    if role == "anonymous":
        return 401
    if role == "signaller":
        return allowed if "/signals/" in path else 403
    if role == "nobody" or (role == "viewer" and method != "GET"):
        return 403
    return allowed


@pytest.mark.parametrize("role", ALL_ROLES)
@pytest.mark.parametrize(("method", "path", "body", "allowed"), ENDPOINTS,
                         ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
def test_roles__each_endpoint_answers_each_role_as_its_role_allows(
    client_as: Callable[..., Any], define: Any, role: str, method: str, path: str, body: Any,
    allowed: int,
) -> None:
    ids = {"pending": pending_execution(define), "failed": failed_execution(define),
           "waiting": signalled_execution(define)}
    before = sorted((d["_id"], d["version"]) for d in store.collection().find({}, {"version": 1}))

    response = call(client_as(role), method, API + path.format(**ids), body)

    assert response.status_code == expected(role, method, allowed, path), response.content[:500]
    after = sorted((d["_id"], d["version"]) for d in store.collection().find({}, {"version": 1}))
    if response.status_code in (401, 403):
        body_json = response.json()
        assert body_json["code"] == ("not_authenticated" if role == "anonymous" else "permission_denied")
        assert after == before, "a refused request changed an execution"
    if role == "anonymous":
        assert response["WWW-Authenticate"] == "Token"


@pytest.mark.parametrize("role", ALL_ROLES)
@pytest.mark.parametrize(("method", "path", "body", "allowed"), PUBLIC, ids=[p for _, p, _, _ in PUBLIC])
def test_roles__health_schema_and_docs_are_open_to_anyone(
    client_as: Callable[..., Any], role: str, method: str, path: str, body: Any, allowed: int
) -> None:
    response = call(client_as(role), method, API + path, body)

    assert response.status_code == allowed


def test_roles__session_login_works_like_a_token(client: Any, define: Any, token_for: Any) -> None:
    from django.contrib.auth import get_user_model

    token_for("viewer", "alice")
    client.force_login(get_user_model().objects.get(username="alice"))
    pending_execution(define)

    listed = client.get(API + "executions/")
    refused = client.post(API + "executions/", {"workflow": "waits"}, content_type="application/json")

    assert listed.status_code == 200 and len(listed.json()["results"]) == 1
    assert refused.status_code == 403 and refused.json()["code"] == "permission_denied"


def test_roles__a_bad_token_is_refused_with_401(client: Any, db: None) -> None:
    response = client.get(API + "executions/", HTTP_AUTHORIZATION="Token not-a-token")

    assert response.status_code == 401
    assert response.json()["code"] == "authentication_failed"


def test_roles__apiuser_command_grants_one_role_and_prints_a_stable_token(db: None) -> None:
    from io import StringIO

    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    out = StringIO()
    call_command("apiuser", "svc", "--role", "viewer", stdout=out)
    call_command("apiuser", "svc", "--role", "operator", stdout=out)
    call_command("apiuser", "svc", "--role", "operator", "--new-token", stdout=out)

    first, second, third = out.getvalue().split()
    user = get_user_model().objects.get(username="svc")
    assert first == second != third
    assert sorted(user.groups.values_list("name", flat=True)) == ["operators"]
    assert not user.has_usable_password()


def test_roles__apiuser_command_refuses_a_bad_user_name_in_one_line(db: None) -> None:
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="user name 'no spaces allowed'"):
        call_command("apiuser", "no spaces allowed", "--role", "viewer")
