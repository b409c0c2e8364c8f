"""Workflow definitions are versioned and immutable; an execution keeps the version it started on."""
from __future__ import annotations

import json
from typing import Any

import pytest

from executions import operations
from executions.audit import verify
from tests.conftest import wait_for, wait_terminal
from tests.handlers import LEDGER
from tests.integration.support import loaded
from workflows import definitions
from workflows.errors import WorkflowNotFound


def definition(second_handler: str = "test.echo", timeout_s: float = 60.0) -> dict[str, Any]:
    return {"name": "orders", "description": "take an order",
            "steps": [{"name": "wait", "handler": "test.sleep"},
                      {"name": "ship", "handler": second_handler, "timeout_s": timeout_s}]}


def test_register__identical_definition_returns_same_version() -> None:
    first, first_created = definitions.register(definition())
    again, again_created = definitions.register(definition())

    assert (first.version, first_created) == (1, True)
    assert (again.version, again_created) == (1, False)
    assert again.id == first.id
    assert [d.version for d in definitions.versions("orders")] == [1]


def test_register__changed_definition_creates_next_version() -> None:
    definitions.register(definition())

    changed, created = definitions.register(definition(timeout_s=5))

    assert (changed.version, created) == (2, True)
    assert changed.steps[1]["timeout_s"] == 5
    assert definitions.get("orders").version == 2
    assert definitions.get("orders", 1).steps[1]["timeout_s"] == 60
    with pytest.raises(WorkflowNotFound):
        definitions.get("orders", 3)


def test_execution__keeps_its_pinned_definition_after_a_new_version(worker: Any) -> None:
    v1, _ = definitions.register(definition("test.echo"))
    started, _ = operations.start("orders", {"sleep_s": 0.5})
    eid = started["_id"]
    wait_for(lambda: LEDGER[(f"{eid}:wait", 1)], what="the first step to start")

    v2, created = definitions.register(definition("test.permanent"))
    assert (v2.version, created) == (2, True)
    latest, _ = operations.start("orders", {"sleep_s": 0})
    older, _ = operations.start("orders", {"sleep_s": 0}, version=1)

    pinned, on_v2, on_v1 = wait_terminal(eid, latest["_id"], older["_id"])

    assert (pinned["workflow_version"], pinned["status"]) == (1, "SUCCEEDED")
    assert pinned["definition"]["steps"] == v1.steps
    assert [s["handler"] for s in pinned["steps"]] == ["test.sleep", "test.echo"]
    assert json.loads(pinned["steps"][1]["output_json"])["seen"] == ["wait"]
    assert (on_v2["workflow_version"], on_v2["status"], on_v2["failed_step"]) == (2, "FAILED", "ship")
    assert on_v2["definition"]["steps"] == v2.steps
    assert (on_v1["workflow_version"], on_v1["status"]) == (1, "SUCCEEDED")
    assert loaded(eid)["definition"]["version"] == 1
    for doc in (pinned, on_v2, on_v1):
        assert verify(doc) == []


def test_get__sees_a_new_version_and_a_version_deleted_and_registered_again() -> None:
    from workflows.models import WorkflowDefinition

    first, _ = definitions.register(definition())
    assert definitions.get("orders").id == first.id  # read, and kept by its _id
    second, _ = definitions.register(definition(timeout_s=5))

    assert (definitions.get("orders").version, definitions.get("orders", 1).id) == (2, first.id)
    assert definitions.get("orders").steps[1]["timeout_s"] == 5

    WorkflowDefinition.objects(name="orders").delete()
    with pytest.raises(WorkflowNotFound):
        definitions.get("orders")
    with pytest.raises(WorkflowNotFound):
        definitions.get("orders", 2)
    again, created = definitions.register(definition(second_handler="test.boom"))

    assert (again.version, created) == (1, True) and again.id not in (first.id, second.id)
    assert definitions.get("orders", 1).steps[1]["handler"] == "test.boom"
    assert definitions.get("orders").steps[1]["handler"] == "test.boom"
