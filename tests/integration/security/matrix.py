"""The roles the security suite signs in as, and what a request may not leave behind.

Five callers: nobody signed in, a signed-in user with no role, a viewer, an operator, a superuser.
Each API client signs in by token and each admin client by session, under its role's name (so a
recorded event names it).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.test import Client
from rest_framework.test import APIClient

#: Every caller the matrices try, weakest first.
ROLES = ("anonymous", "nobody", "viewer", "operator", "superuser")
#: Words that mark a traceback, the server's files or its settings in an answer.
LEAKS = ("Traceback", 'File "', "site-packages", "DJANGO_SETTINGS_MODULE", "SECRET_KEY")
#: Words that mark Django's debug pages (a technical 500 or 404).
DEBUG_PAGE = ("DEBUG = True", "Exception Value:", "Django tried these URL patterns", "Request Method:")


def user_for(role: str) -> Any:
    """Return the user that plays ``role`` (created on first use; ``None`` for anonymous)."""
    from django.contrib.auth import get_user_model

    from executions import roles

    users = get_user_model()
    if role == "anonymous":
        return None
    if role == "nobody":
        return users.objects.get_or_create(username="nobody", defaults={"is_staff": True})[0]
    if role == "superuser":
        user, created = users.objects.get_or_create(username="superuser",
                                                    defaults={"is_staff": True, "is_superuser": True})
        if created:
            user.set_unusable_password()
            user.save()
        return user
    roles.grant(role, {"viewer": roles.VIEWERS, "operator": roles.OPERATORS}[role])
    return users.objects.get(username=role)


def api_client(role: str) -> APIClient:
    """Return an API client signed in by token as ``role``."""
    from rest_framework.authtoken.models import Token

    client = APIClient()
    user = user_for(role)
    if user is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


def admin_client(role: str, csrf_checks: bool = False) -> Client:
    """Return a browser's client signed in to the admin as ``role`` (by session)."""
    client = Client(enforce_csrf_checks=csrf_checks)
    user = user_for(role)
    if user is not None:
        client.force_login(user)
    return client


def state(storage: Path | None = None) -> dict[str, Any]:
    """Return what any write would change: each execution's version, each definition, stored files."""
    from executions import store
    from workflows.models import WorkflowDefinition

    found: dict[str, Any] = {
        "executions": sorted((d["_id"], d["version"]) for d in store.collection().find({}, {"version": 1})),
        "workflows": sorted((d["name"], d["version"], d.get("fingerprint"))
                            for d in WorkflowDefinition._get_collection().find({})),
    }
    if storage is not None:
        found["files"] = sorted(str(p.relative_to(storage)) for p in storage.rglob("*")) \
            if storage.exists() else []
    return found


def assert_refusal(response: Any, *fields: str) -> dict[str, Any]:
    """Check that ``response`` is a 4xx with the API's error shape, naming ``fields`` when given."""
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:500])
    assert response["Content-Type"] == "application/json", response.content[:500]
    body = response.json()
    assert set(body) == {"code", "detail", "fields"}, body
    assert isinstance(body["code"], str) and body["code"], body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert isinstance(body["fields"], dict), body
    if fields:
        assert sorted(body["fields"]) == sorted(fields), body
    assert_no_leak(response)
    return body


def assert_no_leak(response: Any, tracebacks_shown: bool = False) -> None:
    """No answer is a 5xx or a debug page, and none shows a traceback or the server's directories,
    but a failed attempt's traceback, which readers are shown on purpose (it is what they debug
    with; it names the handler's source files): JSON answers are checked without it, and a page
    that shows one (``tracebacks_shown``) only for the debug page's marks."""
    from django.conf import settings

    assert response.status_code < 500, (response.status_code, response.content[:500])
    text = b"".join(response).decode("utf-8", "replace") if getattr(response, "streaming", False) \
        else response.content.decode("utf-8", "replace")
    for word in DEBUG_PAGE:
        assert word not in text, f"{word!r} in the answer: {text[:500]}"
    if response.get("Content-Type") == "application/json" and text:
        text = json.dumps(_without(json.loads(text), "traceback"))
    elif tracebacks_shown:
        return
    for word in (*LEAKS, str(settings.BASE_DIR)):
        assert word not in text, f"{word!r} in the answer: {text[:500]}"


def _without(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        return {k: _without(v, key) for k, v in value.items() if k != key}
    if isinstance(value, list):
        return [_without(v, key) for v in value]
    return value
