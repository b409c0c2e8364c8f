"""Production settings: the deploy checks pass, the development key is refused, writes are majority."""
from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from mongoengine.connection import get_db

from detflow_site import services
from tests.integration.test_commands import manage

PRODUCTION = {"DJANGO_DEBUG": "0", "DJANGO_ALLOWED_HOSTS": "detflow.example.com",
              "DETFLOW_MONGODB_URL": "mongodb://mongo:27017/?replicaSet=rs0",
              "DETFLOW_REDIS_URL": "redis://redis:6379/0", "DETFLOW_LOG_FORMAT": "json"}


def test_check_deploy__passes_with_production_settings() -> None:
    result = manage("check", "--deploy", DJANGO_SECRET_KEY=secrets.token_urlsafe(50), **PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy__refuses_the_development_secret_key() -> None:
    result = manage("check", "--deploy", **PRODUCTION)
    assert result.returncode != 0
    assert "detflow.E002" in result.stderr
    assert "DJANGO_SECRET_KEY is the development key" in result.stderr


@pytest.fixture
def real_mongo_settings(settings: Any) -> Iterator[None]:
    previous = settings.DETFLOW
    settings.DETFLOW = {**previous, "MONGODB_URL": "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=100"}
    services.connect_mongo()
    yield
    settings.DETFLOW = previous
    services.connect_mongo()


def test_connect_mongo__writes_with_majority_concern_on_a_real_server(real_mongo_settings: None) -> None:
    # Connecting is lazy: no server is reached, the client's settings are what is checked.
    db = get_db()
    assert db.write_concern.document == {"w": "majority", "wtimeout": 10000}
    assert db.client.read_preference.mongos_mode == "primary"
    options = db.client.options.pool_options
    assert (options.connect_timeout, options.socket_timeout) == (5.0, 20.0)
    assert db.client.options.server_selection_timeout == 5.0
