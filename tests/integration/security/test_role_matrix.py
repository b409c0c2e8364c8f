"""Every route as every caller (OWASP API Security Top 10, 2023: API1, API2, API5, API8, API9).

The table names each route as Django's resolver spells it, so a route added without a row fails
``test_inventory__...``. Every answer is below 500; every refusal is a 4xx with the error shape and
changes no execution, no definition and no stored file; an action an operator takes is recorded under
the operator's own name. A signaller (the ``signallers`` role) is refused by every route but the
signal route, reads included.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import URLPattern, URLResolver, get_resolver

from executions import store
from tests.integration.api.conftest import failed_execution, pending_execution, signalled_execution
from tests.integration.security.matrix import ROLES, assert_no_leak, assert_refusal, state
from tests.integration.security.matrix import api_client as role_client

#: The callers of ``matrix.ROLES`` and a signaller, who may only send signals.
CALLERS = (*ROLES, "signaller")

DEFINITION = {"name": "registered", "steps": [{"name": "a", "handler": "test.echo"}]}
#: Each request must change nothing but what its own row says.
EX = "api/v1/executions/<str:execution_id>/"


class Row:
    """One served (route, method): the path to call, the body, who may call it, and what they get."""

    def __init__(self, route: str, method: str, path: str, body: Any, allowed: int, *,
                 access: str = "role", signallers: bool = False) -> None:
        self.route, self.method, self.path, self.body, self.allowed = route, method, path, body, allowed
        #: ``role``: viewers read, operators write; ``public``: anyone; ``nowhere``: the API's 404.
        self.access = access
        #: Whether a signaller may call it too (the signal route alone).
        self.signallers = signallers

    def __repr__(self) -> str:
        return f"{self.method} {self.path}"

    def expected(self, role: str) -> int:
        if self.access != "role":
            return self.allowed
        if role == "anonymous":
            return 401
        if role == "signaller":
            return self.allowed if self.signallers else 403
        if role == "nobody" or (role == "viewer" and self.method != "GET"):
            return 403
        return self.allowed


#: Every route and method the site serves. ``{pending}`` is a PENDING execution, ``{failed}`` one
#: whose first step failed for good, ``{waiting}`` a PENDING one whose step waits for ``approved``.
MATRIX = [
    Row("api/v1/workflows/", "GET", "/api/v1/workflows/", None, 200),
    Row("api/v1/workflows/", "POST", "/api/v1/workflows/", DEFINITION, 201),
    Row("api/v1/workflows/<str:name>/", "GET", "/api/v1/workflows/waits/", None, 200),
    Row("api/v1/workflows/<str:name>/versions/<int:version>/", "GET", "/api/v1/workflows/waits/versions/1/",
        None, 200),
    Row("api/v1/handlers/", "GET", "/api/v1/handlers/", None, 200),
    Row("api/v1/executions/", "GET", "/api/v1/executions/", None, 200),
    Row("api/v1/executions/", "POST", "/api/v1/executions/", {"workflow": "waits", "input": {"n": 2}}, 201),
    Row(EX, "GET", "/api/v1/executions/{pending}/", None, 200),
    Row(EX + "events/", "GET", "/api/v1/executions/{pending}/events/", None, 200),
    Row(EX + "diagnosis/", "GET", "/api/v1/executions/{failed}/diagnosis/", None, 200),
    Row(EX + "insight/", "GET", "/api/v1/executions/{failed}/insight/", None, 200),
    Row(EX + "insight/", "POST", "/api/v1/executions/{failed}/insight/", None, 200),
    Row(EX + "cancel/", "POST", "/api/v1/executions/{pending}/cancel/", {"reason": "not needed"}, 200),
    Row(EX + "retry/", "POST", "/api/v1/executions/{failed}/retry/", {"reason": "fixed"}, 200),
    Row(EX + "skip/", "POST", "/api/v1/executions/{failed}/skip/", {"reason": "done by hand"}, 200),
    Row(EX + "compensate/", "POST", "/api/v1/executions/{failed}/compensate/", {"reason": "undo"}, 409),
    Row(EX + "signals/<str:name>/", "POST", "/api/v1/executions/{waiting}/signals/approved/",
        {"payload": {"ok": True}}, 201, signallers=True),
    Row(EX + "pause/", "POST", "/api/v1/executions/{pending}/pause/", {"reason": "hold it"}, 200),
    Row(EX + "resume/", "POST", "/api/v1/executions/{pending}/resume/", {"reason": "go on"}, 409),
    # A workflow's pause outlives the test's store: an unknown workflow answers the same every time.
    Row("api/v1/workflows/<str:name>/pause/", "POST", "/api/v1/workflows/nope/pause/", {"reason": "x"}, 404),
    Row("api/v1/workflows/<str:name>/resume/", "POST", "/api/v1/workflows/nope/resume/", {"reason": "x"},
        404),
    Row("api/v1/bulk-operations/", "POST", "/api/v1/bulk-operations/",
        {"action": "retry", "filter": {"workflow": "waits"}, "dry_run": True}, 200),
    Row("api/v1/bulk-operations/<str:op_id>/", "GET", "/api/v1/bulk-operations/bulk_nope/", None, 404),
    Row("api/v1/bulk-operations/<str:op_id>/cancel/", "POST", "/api/v1/bulk-operations/bulk_nope/cancel/",
        None, 404),
    Row("api/v1/schedules/", "GET", "/api/v1/schedules/", None, 200),
    Row("api/v1/schedules/", "POST", "/api/v1/schedules/", {"workflow": "nope", "cron": "* * * * *"}, 400),
    Row("api/v1/schedules/<str:schedule_id>/", "GET", "/api/v1/schedules/nope/", None, 404),
    Row("api/v1/schedules/<str:schedule_id>/", "DELETE", "/api/v1/schedules/nope/", None, 404),
    Row("api/v1/schedules/<str:schedule_id>/pause/", "POST", "/api/v1/schedules/nope/pause/", None, 404),
    Row("api/v1/schedules/<str:schedule_id>/resume/", "POST", "/api/v1/schedules/nope/resume/", None, 404),
    Row("api/v1/files/", "POST", "/api/v1/files/", "upload", 201),
    Row("api/v1/health/", "GET", "/api/v1/health/", None, 200, access="public"),
    Row("api/v1/schema/", "GET", "/api/v1/schema/", None, 200, access="public"),
    Row("api/v1/docs/", "GET", "/api/v1/docs/", None, 200, access="public"),
    Row("api/v1/^(?P<rest>[\\s\\S]*)$", "GET", "/api/v1/no-such-path/", None, 404, access="nowhere"),
    Row("", "GET", "/", None, 200, access="public"),  # the landing page: links, no data
    Row("healthz", "GET", "/healthz", None, 200, access="public"),
    Row("readyz", "GET", "/readyz", None, 200, access="public"),
    Row("metrics", "GET", "/metrics", None, 200, access="public"),
]
#: The admin's routes: tests/integration/security/test_admin_matrix.py walks them.
ADMIN_PREFIX = "admin/"


def routes(patterns: list[Any] | None = None, prefix: str = "") -> Iterator[str]:
    """Yield every route the site serves, as the resolver spells it."""
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(pattern, URLResolver):
            yield from routes(pattern.url_patterns, prefix + str(pattern.pattern))
        else:
            assert isinstance(pattern, URLPattern)
            yield prefix + str(pattern.pattern)


def call(client: Any, method: str, path: str, body: Any) -> Any:
    if body == "upload":
        return client.post(path, {"file": SimpleUploadedFile("note.txt", b"hello\n")}, format="multipart")
    if method in ("GET", "HEAD", "OPTIONS"):
        return getattr(client, method.lower())(path)
    return client.generic(method, path, b"{}" if body is None else _json(body),
                          content_type="application/json")


def _json(body: Any) -> bytes:
    import json

    return json.dumps(body).encode()


def api_client(role: str) -> Any:
    """Return an API client signed in by token as ``role`` (``matrix.api_client``'s, or a signaller)."""
    if role != "signaller":
        return role_client(role)
    from rest_framework.test import APIClient

    from executions import roles

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {roles.grant('signaller', roles.SIGNALLERS)}")
    return client


def executions(define: Any) -> dict[str, str]:
    return {"pending": pending_execution(define), "failed": failed_execution(define),
            "waiting": signalled_execution(define)}


def test_inventory__every_route_outside_the_admin_has_a_row_in_the_matrix() -> None:
    served = {r for r in routes() if not r.startswith(ADMIN_PREFIX)}
    listed = {row.route for row in MATRIX}

    assert served - listed == set(), "routes without a row in the role matrix"
    assert listed - served == set(), "rows for routes the site no longer serves"


@pytest.mark.parametrize("role", CALLERS)
@pytest.mark.parametrize("row", MATRIX, ids=repr)
def test_matrix__each_route_answers_each_caller_as_its_role_allows_and_a_refusal_changes_nothing(
    db: None, define: Any, isolated: Path, role: str, row: Row,
) -> None:
    ids = executions(define)
    before = state(isolated)

    response = call(api_client(role), row.method, row.path.format(**ids), row.body)

    assert response.status_code == row.expected(role), response.content[:500]
    assert_no_leak(response)
    if response.status_code >= 400:
        body = assert_refusal(response)
        assert state(isolated) == before, "a refused request changed something"
        if response.status_code == 401:
            assert body["code"] == "not_authenticated" and response["WWW-Authenticate"] == "Token"
        if response.status_code == 403:
            assert body["code"] == "permission_denied"
    if row.method == "POST" and row.path.endswith(("/cancel/", "/retry/", "/skip/", "/signals/approved/")) \
            and response.status_code in (200, 201):
        execution_id = ids[next(k for k in ids if f"{{{k}}}" in row.path)]
        event = store.load(execution_id)["events"][-1]
        assert event["by"] == role, event


#: The methods a client can send; each route serves some, and must refuse the others cleanly.
METHODS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")


def swept(role: str, route: str, method: str) -> int:
    """Return what ``method`` on ``route`` answers ``role``, from the matrix's rows."""
    rows = [row for row in MATRIX if row.route == route]
    served = {row.method for row in rows} | {"OPTIONS"}
    if "GET" in served:
        served.add("HEAD")
    access = rows[0].access
    if access == "nowhere":
        return 404
    if not route.startswith("api/v1/"):
        return 200  # Django views that serve any method and change nothing
    if access == "role":
        if role == "anonymous":
            return 401
        if role == "signaller" and not (method == "POST" and any(row.signallers for row in rows)):
            return 403
        if role == "nobody" or (role == "viewer" and method not in ("GET", "HEAD", "OPTIONS")):
            return 403
    if method not in served:
        return 405
    same = "GET" if method == "HEAD" else method  # HEAD answers as GET does (a missing one: 404)
    return next((row.allowed for row in rows if row.method == same), 200)


@pytest.mark.parametrize("role", CALLERS)
@pytest.mark.parametrize("route", sorted({row.route for row in MATRIX}))
def test_methods__a_method_a_route_does_not_serve_is_refused_with_the_error_shape_and_changes_nothing(
    db: None, define: Any, isolated: Path, role: str, route: str,
) -> None:
    ids = executions(define)
    client = api_client(role)
    path = next(row.path for row in MATRIX if row.route == route).format(**ids)
    before = state(isolated)

    for method in METHODS:
        if any(row.route == route and row.method == method for row in MATRIX):
            continue  # served: the matrix above checks it
        response = call(client, method, path, None)

        assert response.status_code == swept(role, route, method), (method, response.content[:300])
        if method == "HEAD":
            assert response.content == b""
        elif response.status_code >= 400:
            assert_refusal(response)
        assert_no_leak(response)
        assert state(isolated) == before, f"{method} {path} changed something"


# API2: authentication.


def _token(db: None, username: str = "viewer") -> str:
    from rest_framework.authtoken.models import Token

    from tests.integration.security.matrix import user_for

    return str(Token.objects.get_or_create(user=user_for(username))[0].key)


@pytest.mark.parametrize("header", [
    "Token not-a-token",
    "Token ",
    "Token a b",
    "Bearer {token}",
    "token{token}",
    "Basic dmlld2VyOnZpZXdlcg==",
    "Token {token}x",
    "Token {token}\x00",
])
def test_authentication__a_malformed_or_wrong_credential_is_a_401_and_never_a_read(
    db: None, define: Any, header: str,
) -> None:
    pending_execution(define)
    client = api_client("anonymous")

    response = client.get("/api/v1/executions/", HTTP_AUTHORIZATION=header.format(token=_token(db)))

    body = assert_refusal(response)
    assert response.status_code == 401, body
    assert "results" not in body


def test_authentication__a_token_in_the_query_string_is_not_a_credential(db: None, define: Any) -> None:
    pending_execution(define)

    response = api_client("anonymous").get(f"/api/v1/executions/?token={_token(db)}")

    assert response.status_code == 401
    assert_refusal(response)


@pytest.mark.parametrize("role", ["viewer", "operator", "superuser"])
def test_authentication__the_token_of_a_deactivated_user_stops_working(
    db: None, define: Any, role: str,
) -> None:
    from tests.integration.security.matrix import user_for

    failed = failed_execution(define)
    client = api_client(role)
    assert client.get("/api/v1/executions/").status_code == 200
    user = user_for(role)
    user.is_active = False
    user.save()
    before = state()

    read = client.get("/api/v1/executions/")
    act = client.post(f"/api/v1/executions/{failed}/retry/", {"reason": "r"}, format="json")

    assert (read.status_code, act.status_code) == (401, 401)
    assert_refusal(read), assert_refusal(act)
    assert state() == before


def test_authentication__a_replaced_token_stops_working_at_once(db: None, define: Any) -> None:
    from executions import roles

    old = roles.grant("svc", roles.OPERATORS)
    roles.grant("svc", roles.OPERATORS, new_token=True)
    failed = failed_execution(define)
    before = state()

    response = api_client("anonymous").post(f"/api/v1/executions/{failed}/retry/", {"reason": "r"},
                                            format="json", HTTP_AUTHORIZATION=f"Token {old}")

    assert response.status_code == 401
    assert_refusal(response)
    assert state() == before


def test_authentication__a_session_needs_the_csrf_token_to_write_through_the_api(
    db: None, define: Any,
) -> None:
    from rest_framework.test import APIClient

    from tests.integration.security.matrix import user_for

    failed = failed_execution(define)
    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(user_for("operator"))
    before = state()

    read = browser.get(f"/api/v1/executions/{failed}/")
    forged = browser.post(f"/api/v1/executions/{failed}/retry/", {"reason": "from another site"},
                          format="json")

    assert read.status_code == 200
    body = assert_refusal(forged)
    assert forged.status_code == 403 and body["code"] == "permission_denied" and "CSRF" in body["detail"]
    assert state() == before


def test_authentication__a_role_granted_later_applies_to_the_next_request(db: None, define: Any) -> None:
    from executions import roles

    failed = failed_execution(define)
    client = api_client("viewer")
    refused = client.post(f"/api/v1/executions/{failed}/retry/", {"reason": "r"}, format="json")
    roles.grant("viewer", roles.OPERATORS)
    allowed = client.post(f"/api/v1/executions/{failed}/retry/", {"reason": "r"}, format="json")
    roles.grant("viewer", roles.VIEWERS)
    dropped = client.post(f"/api/v1/executions/{failed}/cancel/", {"reason": "r"}, format="json")

    assert (refused.status_code, allowed.status_code, dropped.status_code) == (403, 200, 403)
    assert store.load(failed)["events"][-1]["type"] == "retried"


# API8: misconfiguration.


@pytest.mark.parametrize("path", ["/no-such-page", "/api/v1/executions/x/no-such/", "/static/../settings.py",
                                  "/api/v1/executions/%00/", "/api/v1/workflows/%ff%fe/"])
def test_misconfiguration__an_unknown_path_answers_404_without_a_debug_page(db: None, path: str) -> None:
    response = api_client("operator").get(path)

    assert response.status_code == 404
    assert_no_leak(response)
    assert b"Django tried these URL patterns" not in response.content


@pytest.mark.parametrize("accept", ["text/html", "application/xml", "text/html;q=1, */*;q=0"])
def test_misconfiguration__the_api_never_answers_with_an_html_or_browsable_page(
    db: None, define: Any, accept: str,
) -> None:
    failed = failed_execution(define)
    for client in (api_client("anonymous"), api_client("operator")):
        response = client.get(f"/api/v1/executions/{failed}/", HTTP_ACCEPT=accept)

        assert response["Content-Type"] == "application/json"
        assert b"<html" not in response.content.lower()
        assert_no_leak(response)


def test_misconfiguration__answers_carry_the_browser_safety_headers(db: None, define: Any) -> None:
    from django.conf import settings

    failed = failed_execution(define)
    api = api_client("operator").get(f"/api/v1/executions/{failed}/")
    refused = api_client("anonymous").get(f"/api/v1/executions/{failed}/")

    assert settings.DEBUG is False
    for response in (api, refused):
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["X-Frame-Options"] == "DENY"
    assert "Server" not in api and "X-Powered-By" not in api
