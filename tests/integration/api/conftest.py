"""API fixtures: clients signed in as each role, on a clean Redis (throttle state included)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

#: The roles the tests sign in as: anonymous, a user with no role, a viewer, an operator.
ROLES = ("anonymous", "nobody", "viewer", "operator")


@pytest.fixture(autouse=True)
def isolated(redis_client: Any, settings: Any, tmp_path: Path) -> Path:
    """Every API test starts on an empty Redis (``clean`` flushes it: throttle state too) and keeps
    its files (uploads) in a directory of its own, which it returns."""
    storage = tmp_path / "storage"
    settings.DETFLOW = {**settings.DETFLOW, "STORAGE_DIR": str(storage)}
    return storage


@pytest.fixture
def token_for(db: None) -> Callable[[str], str | None]:
    """Return a function that makes a user with ``role`` (one of ``ROLES``, or ``signaller``) and
    returns its token (``None``: anonymous)."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from executions import roles

    def make(role: str, username: str | None = None) -> str | None:
        if role == "anonymous":
            return None
        name = username or role
        if role == "nobody":
            user, _ = get_user_model().objects.get_or_create(username=name)
            return Token.objects.get_or_create(user=user)[0].key
        return roles.grant(name, {"viewer": roles.VIEWERS, "operator": roles.OPERATORS,
                                  "signaller": roles.SIGNALLERS}[role])

    return make


@pytest.fixture
def client_as(token_for: Callable[..., str | None]) -> Callable[..., APIClient]:
    """Return a function that makes an ``APIClient`` signed in (by token) with ``role``."""

    def make(role: str, username: str | None = None) -> APIClient:
        client = APIClient()
        token = token_for(role, username)
        if token is not None:
            client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        return client

    return make


@pytest.fixture
def operator(client_as: Callable[..., APIClient]) -> APIClient:
    return client_as("operator")


@pytest.fixture
def viewer(client_as: Callable[..., APIClient]) -> APIClient:
    return client_as("viewer")


def failed_execution(define: Callable[..., Any], name: str = "fails") -> str:
    """Return the id of an execution whose first step failed for good (run here, no worker)."""
    from executions import operations, runner

    define(name, [{"handler": "test.permanent"}, {"handler": "test.echo"}])
    doc, _ = operations.start(name, {"n": 1})
    runner.advance(doc["_id"], worker="test")
    return str(doc["_id"])


def pending_execution(define: Callable[..., Any], name: str = "waits") -> str:
    """Return the id of a PENDING execution (no worker takes it)."""
    from executions import operations

    define(name, [{"handler": "test.echo"}])
    doc, _ = operations.start(name, {"n": 1})
    return str(doc["_id"])


def signalled_execution(define: Callable[..., Any], name: str = "approve") -> str:
    """Return the id of a PENDING execution whose one step waits for the signal ``approved`` (no
    worker takes it: a signal sent to it is kept)."""
    from executions import operations

    define(name, [{"name": "approval", "wait": {"signal": "approved", "timeout_s": 3600}}])
    doc, _ = operations.start(name, {"n": 1})
    return str(doc["_id"])


def assert_error(response: Any, status: int, code: str, *fields: str) -> dict[str, Any]:
    """Check an error answer: its status, its stable code, the fields it names; return its body."""
    body = response.json()
    assert response.status_code == status, body
    assert response["Content-Type"] == "application/json"
    assert set(body) == {"code", "detail", "fields"}
    assert body["code"] == code, body
    assert isinstance(body["detail"], str) and body["detail"]
    assert sorted(body["fields"]) == sorted(fields), body
    return body
