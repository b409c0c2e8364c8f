"""Health and readiness: anyone learns each service's name and state; latencies and error text
(addresses, socket paths) only staff users signed in by token or session."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from detflow_site import services

#: The two probes, and what each calls its states.
PROBES = [("/api/v1/health/", "ok", "degraded"), ("/readyz", "ready", "not ready")]
HEALTH, READYZ = PROBES
#: Each probe with MongoDB down takes the driver's server selection timeout (about 5 s): each kind
#: of caller asks one probe or both, not every pair.
ANYONE = [("anonymous", *HEALTH), ("anonymous", *READYZ), ("wrong token", *READYZ),
          ("nobody", *HEALTH), ("nobody session", *READYZ)]
STAFF = [("viewer token", *HEALTH), ("operator token", *READYZ), ("viewer session", *HEALTH),
         ("viewer session", *READYZ)]


@pytest.fixture
def store_down(settings: Any) -> Iterator[None]:
    """Point the store at a MongoDB address where nothing listens (a real client, really failing)."""
    previous = settings.DETFLOW
    settings.DETFLOW = {**previous, "MONGODB_URL": "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=200"}
    services.connect_mongo()
    yield
    settings.DETFLOW = previous
    services.connect_mongo()


@pytest.fixture
def session_as(db: None) -> Callable[[str], Client]:
    """Return a function that makes a browser session signed in as a new user with ``role``."""
    from django.contrib.auth import get_user_model

    from executions import roles

    def make(role: str) -> Client:
        client = Client()
        if role == "nobody":
            user = get_user_model().objects.create_user("nobody-session", password=None)
        else:
            roles.grant(f"{role}-session", {"viewer": roles.VIEWERS, "operator": roles.OPERATORS}[role])
            user = get_user_model().objects.get(username=f"{role}-session")
        client.force_login(user)
        return client

    return make


def wrong_token() -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + "f" * 40)
    return client


@pytest.mark.slow
@pytest.mark.parametrize(("who", "path", "good", "bad"), ANYONE)
def test_probe__tells_anyone_but_staff_only_names_and_states(
    store_down: None, client_as: Callable[..., APIClient], session_as: Callable[[str], Client],
    who: str, path: str, good: str, bad: str,
) -> None:
    caller = {"anonymous": lambda: client_as("anonymous"), "nobody": lambda: client_as("nobody"),
              "wrong token": wrong_token, "nobody session": lambda: session_as("nobody")}[who]()
    response = caller.get(path)

    assert response.status_code == 503, response.content
    assert response.json() == {"status": bad, "mongodb": {"ok": False}, "redis": {"ok": True}}
    assert "127.0.0.1:9" not in response.content.decode()


@pytest.mark.slow
@pytest.mark.parametrize(("who", "path", "good", "bad"), STAFF)
def test_probe__tells_staff_the_error_and_the_latency(
    store_down: None, client_as: Callable[..., APIClient], session_as: Callable[[str], Client],
    who: str, path: str, good: str, bad: str,
) -> None:
    caller = {"viewer token": lambda: client_as("viewer"), "operator token": lambda: client_as("operator"),
              "viewer session": lambda: session_as("viewer")}[who]()
    body = caller.get(path).json()

    assert body["status"] == bad
    assert body["mongodb"]["ok"] is False and body["mongodb"]["latency_ms"] is None
    assert "ServerSelectionTimeoutError" in body["mongodb"]["error"]
    assert "127.0.0.1:9" in body["mongodb"]["error"]
    assert body["redis"]["ok"] is True and body["redis"]["error"] is None
    assert isinstance(body["redis"]["latency_ms"], float)


@pytest.mark.parametrize(("path", "good", "bad"), PROBES)
def test_probe__healthy_services_answer_200_with_latency_for_staff_only(
    client_as: Callable[..., APIClient], path: str, good: str, bad: str,
) -> None:
    anonymous = client_as("anonymous").get(path)
    staff = client_as("viewer").get(path)

    assert (anonymous.status_code, staff.status_code) == (200, 200)
    assert anonymous.json() == {"status": good, "mongodb": {"ok": True}, "redis": {"ok": True}}
    assert all(isinstance(staff.json()[name]["latency_ms"], float) for name in ("mongodb", "redis"))
