"""Security fixtures: the API's signed-in clients and isolated storage, shared with the API tests."""
from __future__ import annotations

from tests.integration.api.conftest import client_as, isolated, operator, token_for, viewer
from tests.integration.insights.conftest import model

__all__ = ["client_as", "isolated", "model", "operator", "token_for", "viewer"]
