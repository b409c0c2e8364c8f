"""Every admin page and action as every caller (OWASP API1, API5, API9 on the console).

Anonymous callers are sent to the login page; a staff user with no role sees no detflow page; viewers
read every page and take no action, not even by a forged POST carrying a valid CSRF token; operators
and superusers act, and the event names them. Django's own model pages (users, tokens, login
attempts) are for superusers alone. Never a 5xx; a refused POST changes nothing.
"""
from __future__ import annotations

from typing import Any

import pytest

from executions import store
from tests.integration.api.conftest import failed_execution, pending_execution
from tests.integration.security.matrix import ROLES, admin_client, assert_no_leak, state, user_for
from tests.integration.security.test_role_matrix import ADMIN_PREFIX, routes

EX = "admin/executions/execution/"
WF = "admin/workflows/workflow/"
BULK = "admin/executions/bulkoperation/"
SCHEDULES = "admin/executions/schedule/"
LOGIN = "/admin/login/"
#: What each role gets, in the order of ``ROLES``: anonymous, nobody, viewer, operator, superuser.
READ = (302, 403, 200, 200, 200)
ACT = (302, 403, 403, 200, 200)
DONE = (302, 403, 403, 302, 302)
STAFF = (302, 200, 200, 200, 200)


class Page:
    """One admin (route, method): the path, the form, and what each role gets."""

    def __init__(self, route: str, method: str, path: str, data: dict[str, str] | None,
                 statuses: tuple[int, ...]) -> None:
        self.route, self.method, self.path, self.data, self.statuses = route, method, path, data, statuses

    def __repr__(self) -> str:
        return f"{self.method} {self.path}"


ACTION = EX + "<str:execution_id>/<str:action>/"
BULK_FORM = {"action": "retry", "reason": "fixed", "scope": "filter", "status": "FAILED"}
#: detflow's pages and Django's own admin routes (model pages are walked from the resolver below).
PAGES = [
    Page("admin/", "GET", "/admin/", None, STAFF),
    Page("admin/^(?P<app_label>executions|insights|workflows)/$", "GET", "/admin/executions/", None,
         (302, 404, 200, 200, 200)),
    Page("admin/^(?P<app_label>executions|insights|workflows)/$", "GET", "/admin/workflows/", None,
         (302, 404, 200, 200, 200)),
    Page("admin/^(?P<app_label>executions|insights|workflows)/$", "GET", "/admin/insights/", None,
         (302, 404, 200, 200, 200)),
    Page(EX, "GET", "/admin/executions/execution/", None, READ),
    Page(EX, "GET", "/admin/executions/execution/?status=FAILED&page_size=5000&cursor=x", None, READ),
    Page(EX + "<str:execution_id>/", "GET", "/admin/executions/execution/{failed}/", None, READ),
    Page(EX + "<str:execution_id>/", "GET", "/admin/executions/execution/{pending}/", None, READ),
    Page(ACTION, "GET", "/admin/executions/execution/{pending}/cancel/", None, ACT),
    Page(ACTION, "GET", "/admin/executions/execution/{failed}/retry/", None, ACT),
    Page(ACTION, "GET", "/admin/executions/execution/{failed}/skip/", None, ACT),
    Page(ACTION, "POST", "/admin/executions/execution/{pending}/cancel/",
         {"stage": "preview", "reason": "not needed"}, ACT),
    Page(ACTION, "POST", "/admin/executions/execution/{failed}/retry/",
         {"stage": "preview", "reason": "fixed", "input": '{"n": 2}'}, ACT),
    Page(ACTION, "POST", "/admin/executions/execution/{failed}/skip/",
         {"stage": "preview", "reason": "by hand", "output": '{"ok": true}'}, ACT),
    Page(ACTION, "POST", "/admin/executions/execution/{pending}/cancel/",
         {"stage": "confirm", "reason": "not needed"}, DONE),
    Page(ACTION, "POST", "/admin/executions/execution/{failed}/retry/",
         {"stage": "confirm", "reason": "fixed", "input": '{"n": 2}'}, DONE),
    Page(ACTION, "POST", "/admin/executions/execution/{failed}/skip/",
         {"stage": "confirm", "reason": "by hand", "output": '{"ok": true}'}, DONE),
    Page(ACTION, "POST", "/admin/executions/execution/{failed}/delete/", {"stage": "confirm", "reason": "x"},
         (302, 403, 403, 404, 404)),
    Page(ACTION, "GET", "/admin/executions/execution/{pending}/pause/", None, ACT),
    Page(ACTION, "POST", "/admin/executions/execution/{pending}/pause/",
         {"stage": "preview", "reason": "hold it"}, ACT),
    Page(ACTION, "POST", "/admin/executions/execution/{pending}/resume/",
         {"stage": "preview", "reason": "not paused"}, (302, 403, 403, 400, 400)),
    Page(WF, "GET", "/admin/workflows/workflow/", None, READ),
    Page(WF + "<str:name>/", "GET", "/admin/workflows/workflow/fails/", None, READ),
    Page(WF + "<str:name>/", "GET", "/admin/workflows/workflow/no-such/", None, (302, 403, 404, 404, 404)),
    # A workflow's pause changes its control document only (the executions are held later, by workers).
    Page(WF + "<str:name>/<str:action>/", "POST", "/admin/workflows/workflow/fails/pause/",
         {"reason": "maintenance"}, DONE),
    Page(WF + "<str:name>/<str:action>/", "POST", "/admin/workflows/workflow/fails/pause/", {"reason": " "},
         (302, 403, 403, 400, 400)),
    Page(WF + "<str:name>/<str:action>/", "GET", "/admin/workflows/workflow/fails/pause/", None,
         (302, 403, 403, 405, 405)),
    Page(WF + "<str:name>/<str:action>/", "POST", "/admin/workflows/workflow/fails/resume/",
         {"reason": "not paused"}, (302, 403, 403, 400, 400)),
    Page(SCHEDULES, "GET", "/admin/executions/schedule/", None, READ),
    Page(SCHEDULES + "<str:schedule_id>/<str:action>/", "POST", "/admin/executions/schedule/nope/pause/", {},
         (302, 403, 403, 404, 404)),
    Page(SCHEDULES + "<str:schedule_id>/<str:action>/", "GET", "/admin/executions/schedule/nope/delete/",
         None, (302, 403, 403, 404, 404)),
    # Bulk operations: a dry run (200) or a confirmation (302 to the operation) changes no execution
    # here (no worker runs the operation).
    Page(BULK, "GET", "/admin/executions/bulkoperation/", None, READ),
    Page(BULK, "GET", "/admin/executions/bulkoperation/?cursor=garbage", None, (302, 403, 400, 400, 400)),
    Page(BULK + "new/", "GET", "/admin/executions/bulkoperation/new/", None, (302, 403, 403, 302, 302)),
    Page(BULK + "new/", "POST", "/admin/executions/bulkoperation/new/", BULK_FORM, ACT),
    Page(BULK + "new/", "POST", "/admin/executions/bulkoperation/new/", {**BULK_FORM, "confirmed": "1"},
         DONE),
    Page(BULK + "new/", "POST", "/admin/executions/bulkoperation/new/",
         {"action": "retry", "reason": " ", "scope": "selected"}, (302, 403, 403, 400, 400)),
    Page(BULK + "<str:op_id>/", "GET", "/admin/executions/bulkoperation/bulk_nope/", None,
         (302, 403, 404, 404, 404)),
    Page(BULK + "<str:op_id>/cancel/", "POST", "/admin/executions/bulkoperation/bulk_nope/cancel/", {},
         (302, 403, 403, 404, 404)),
    Page("admin/insights/insight/", "GET", "/admin/insights/insight/", None, READ),
    Page("admin/insights/insight/", "GET", "/admin/insights/insight/?after=not-an-id", None, READ),
    Page("admin/login/", "GET", LOGIN, None, (200, 302, 302, 302, 302)),
    Page("admin/logout/", "POST", "/admin/logout/", {}, (302, 200, 200, 200, 200)),
    Page("admin/password_change/", "GET", "/admin/password_change/", None, STAFF),
    Page("admin/password_change/done/", "GET", "/admin/password_change/done/", None, STAFF),
    Page("admin/autocomplete/", "GET", "/admin/autocomplete/?app_label=auth&model_name=user&field_name=x",
         None, (302, 403, 403, 403, 403)),
    Page("admin/jsi18n/", "GET", "/admin/jsi18n/", None, STAFF),
    Page("admin/r/<path:content_type_id>/<path:object_id>/", "GET", "/admin/r/999999/1/", None,
         (302, 404, 404, 404, 404)),
    Page("admin/(?P<url>.*)$", "GET", "/admin/no-such-page/", None, (302, 404, 404, 404, 404)),
]


@pytest.fixture(autouse=True)
def no_workflow_pause() -> Any:
    """A workflow paused by a row is resumed for the next (the store's clean-up keeps controls)."""
    from executions import controls

    controls.collection().delete_many({})
    yield
    controls.collection().delete_many({})
    controls.paused_workflows(fresh=True)  # no cached pause outlives it


def model_prefixes() -> dict[str, str]:
    """Return ``{route prefix: changelist path}`` of every Django model page the admin serves."""
    found = {}
    for route in routes():
        parts = route.split("/")
        if route.startswith(ADMIN_PREFIX) and len(parts) == 4 and parts[3] == "" and \
                parts[1] not in ("executions", "workflows", "insights") and "<" not in route and \
                "^" not in route and parts[2] not in ("", "password_change", "done"):
            found[route] = "/" + route
    return found


def test_inventory__every_admin_route_has_a_row_or_is_a_model_page_the_model_matrix_walks() -> None:
    served = {r for r in routes() if r.startswith(ADMIN_PREFIX)}
    listed = {page.route for page in PAGES}
    models = tuple(model_prefixes())
    other_apps = {r for r in served if r.startswith("admin/^(?P<app_label>") and r not in listed}

    uncovered = {r for r in served - listed - other_apps if not r.startswith(models)}

    assert uncovered == set(), "admin routes without a row in the admin matrix"
    assert listed - served == set(), "rows for routes the admin no longer serves"
    assert {"admin/auth/user/", "admin/authtoken/tokenproxy/"} <= set(models)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("page", PAGES, ids=repr)
def test_matrix__each_admin_page_answers_each_caller_as_its_role_allows(
    db: None, define: Any, role: str, page: Page,
) -> None:
    ids = {"pending": pending_execution(define), "failed": failed_execution(define)}
    path = page.path.format(**ids)
    before = state()

    client = admin_client(role)
    response = client.post(path, page.data) if page.method == "POST" else client.get(path)

    expected = page.statuses[ROLES.index(role)]
    assert response.status_code == expected, (response.status_code, response.content[:300])
    assert_no_leak(response, tracebacks_shown="{failed}" in page.path)
    if role == "anonymous" and expected == 302 and page.route != "admin/logout/":
        assert response["Location"].startswith(f"{LOGIN}?next=")
    confirmed = page.method == "POST" and page.data and page.data.get("stage") == "confirm"
    if confirmed and response.status_code == 302 and role != "anonymous":
        execution_id = ids["pending" if "{pending}" in page.path else "failed"]
        event = store.load(execution_id)["events"][-1]
        assert event["by"] == role and event["type"] in ("cancelled", "retried", "skipped"), event
    elif page.method == "POST":
        assert state() == before, "a refused or previewed action changed something"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("changelist", sorted(model_prefixes().values()))
def test_model_pages__users_tokens_and_login_records_are_for_superusers_alone(
    db: None, role: str, changelist: str,
) -> None:
    client = admin_client(role)
    viewer = user_for("viewer")
    statuses = {"anonymous": 302, "superuser": 200}

    listed = client.get(changelist)
    add = client.get(changelist + "add/")

    assert listed.status_code == statuses.get(role, 403), listed.status_code
    # Some model pages are read-only (django-axes' records): even a superuser adds none there.
    assert add.status_code in ({200, 403} if role == "superuser" else {statuses.get(role, 403)})
    assert_no_leak(listed), assert_no_leak(add)
    if changelist == "/admin/auth/user/":
        for suffix in ("change/", "password/", "history/", "delete/"):
            response = client.get(f"{changelist}{viewer.pk}/{suffix}")
            assert response.status_code == statuses.get(role, 403), (suffix, response.status_code)
        made = client.post(changelist + "add/", {"username": "mallory", "password1": "x9!long-enough-pw",
                                                 "password2": "x9!long-enough-pw"})
        promoted = client.post(f"{changelist}{viewer.pk}/change/",
                               {"username": "viewer", "is_superuser": "on", "is_staff": "on"})
        if role != "superuser":
            assert (made.status_code, promoted.status_code) == ((302, 302) if role == "anonymous"
                                                                else (403, 403))
            from django.contrib.auth import get_user_model

            assert not get_user_model().objects.filter(username="mallory").exists()
            viewer.refresh_from_db()
            assert not viewer.is_superuser


def _csrf_client(role: str, page: str) -> tuple[Any, str]:
    """Return a client that enforces CSRF, signed in as ``role``, and the token a page gave it."""
    client = admin_client(role, csrf_checks=True)
    assert client.get(page).status_code == 200
    return client, client.cookies["csrftoken"].value


@pytest.mark.parametrize("action", ["cancel", "retry", "skip"])
def test_forged_post__a_viewer_with_a_valid_csrf_token_still_cannot_act(db: None, define: Any,
                                                                        action: str) -> None:
    ids = {"pending": pending_execution(define), "failed": failed_execution(define)}
    target = ids["pending" if action == "cancel" else "failed"]
    detail = f"/admin/executions/execution/{target}/"
    form = {"stage": "confirm", "reason": "forged", "input": "", "output": "null"}
    before = state()

    viewer, token = _csrf_client("viewer", detail)
    forged = viewer.post(f"{detail}{action}/", {**form, "csrfmiddlewaretoken": token})
    after_forgery = state()
    operator, operator_token = _csrf_client("operator", detail)
    done = operator.post(f"{detail}{action}/", {**form, "csrfmiddlewaretoken": operator_token})

    assert forged.status_code == 403
    assert after_forgery == before
    assert done.status_code == 302, done.content[:300]  # the same request with an operator's token works
    assert store.load(target)["events"][-1]["by"] == "operator"


def test_signaller__gets_no_admin_console_not_even_the_signal_form(db: None, define: Any) -> None:
    from django.contrib.auth import get_user_model
    from django.test import Client

    from executions import roles

    roles.grant("hook", roles.SIGNALLERS)
    client = Client()
    client.force_login(get_user_model().objects.get(username="hook"))
    execution_id = pending_execution(define)
    before = state()

    for path in ("/admin/", f"/admin/executions/execution/{execution_id}/change/",
                 f"/admin/executions/execution/{execution_id}/signal/"):
        response = client.get(path)
        assert response.status_code == 302 and response["Location"].startswith(f"{LOGIN}?next="), path
    posted = client.post(f"/admin/executions/execution/{execution_id}/signal/", {"name": "x", "reason": "r"})
    assert posted.status_code == 302 and state() == before
