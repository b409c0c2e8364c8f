"""Admin console fixtures: browsers' sessions signed in as each role, and executions to look at."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client


@pytest.fixture(autouse=True)
def fresh_cache(redis_client: Any) -> None:
    """Every console test starts on an empty Redis: no cached dashboard from an earlier test."""
    redis_client.flushdb()


@pytest.fixture
def console_as(db: None) -> Callable[..., Client]:
    """Return a function that makes a Django test client signed in with ``role`` (viewer, operator)."""
    from django.contrib.auth import get_user_model

    from executions import roles

    def make(role: str, csrf_checks: bool = False) -> Client:
        client = Client(enforce_csrf_checks=csrf_checks)
        if role == "nobody":
            user, _ = get_user_model().objects.get_or_create(username=role, is_staff=True)
        else:
            roles.grant(role, {"viewer": roles.VIEWERS, "operator": roles.OPERATORS}[role])
            user = get_user_model().objects.get(username=role)
        client.force_login(user)
        return client

    return make


def failed_execution(define: Callable[..., Any], name: str = "fails", input: Any = None) -> str:
    """Return the id of an execution whose first step failed for good (run here, no worker)."""
    from executions import operations, runner

    define(name, [{"handler": "test.permanent"}, {"handler": "test.echo"}])
    doc, _ = operations.start(name, {"n": 1} if input is None else input)
    runner.advance(doc["_id"], worker="test")
    return str(doc["_id"])
