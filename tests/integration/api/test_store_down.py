"""MongoDB unreachable: the API answers 503 with a clear JSON body, never a 500."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from rest_framework.test import APIClient

from detflow_site import services


@pytest.fixture
def store_down(settings: Any, operator: APIClient) -> Iterator[APIClient]:
    """Point the store at a MongoDB address where nothing listens (a real client, really failing
    after its 5 s server selection timeout)."""
    previous = settings.DETFLOW
    settings.DETFLOW = {**previous,
                        "MONGODB_URL": "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=200"}
    services.connect_mongo()
    yield operator
    settings.DETFLOW = previous
    services.connect_mongo()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/api/v1/executions/", None),
        ("post", "/api/v1/executions/", {"workflow": "any", "input": {}}),
    ],
)
def test_api__answers_503_when_mongodb_is_unreachable(
    store_down: APIClient, method: str, path: str, body: Any
) -> None:
    response = getattr(store_down, method)(path, body, format="json")
    assert response.status_code == 503, response.content
    assert response.json()["code"] == "store_unavailable"
    assert "MongoDB cannot be reached" in response.json()["detail"]
    assert response["Retry-After"] == "5"


def test_readyz__is_503_naming_mongodb_when_it_is_unreachable(store_down: APIClient) -> None:
    response = store_down.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready"
    assert body["mongodb"]["ok"] is False and "ServerSelectionTimeoutError" in body["mongodb"]["error"]
    assert body["redis"]["ok"] is True
