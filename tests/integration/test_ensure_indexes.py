"""``manage.py ensure_indexes``: the store holds exactly the declared indexes, and only it makes them.

On the embedded store the connection ensures them (``services.connect_mongo``); on a server the
command does (compose runs it before the api and the workers), and no process creates an index on
its first access to a collection.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo.errors import DuplicateKeyError

from detflow_site import indexes, services

ROOT = Path(__file__).resolve().parents[2]


def manage(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``manage.py`` as a user does: its own process, a fresh directory, the environment's settings."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DETFLOW_")}
    environ.update(env, DJANGO_SETTINGS_MODULE="detflow_site.settings", DJANGO_SQLITE_PATH=":memory:")
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=tmp_path, env=environ,
                          capture_output=True, text=True, timeout=120)


def as_stored() -> dict[str, set[indexes.Index]]:
    """Return each declared collection's indexes as the store holds them (``_id`` left out)."""
    return {name: {_frozen(indexes.stored(info))
                   for key, info in indexes.collection(name).index_information().items() if key != "_id_"}
            for name in indexes.declared()}


def _frozen(index: indexes.Index) -> Any:
    return (index.keys, index.unique, index.sparse, repr(index.partial))


def as_declared() -> dict[str, set[Any]]:
    return {name: {_frozen(index) for index in wanted} for name, wanted in indexes.declared().items()}


@pytest.fixture
def restored() -> Iterator[None]:
    """Leave the store with the declared indexes, whatever the test did to them."""
    yield
    indexes.ensure()


def test_store__holds_the_declared_indexes_and_a_second_run_changes_nothing() -> None:
    # (the embedded store's connection ensured them; on a server, the test session did, as compose does)
    assert as_stored() == as_declared()
    assert indexes.ensure() == []


def test_ensure__replaces_changed_filters_creates_missing_drops_undeclared_then_is_idempotent(
    restored: None,
) -> None:
    executions = indexes.collection("executions")
    definitions = indexes.collection("workflow_definitions")
    # The indexes of the previous release: $type partial filters, and one on created_at that no
    # query used; one declared index missing, and one nobody declared.
    for name, keys, unique in [
        ("workflow_1_idempotency_key_1", [("workflow", 1), ("idempotency_key", 1)], True),
        ("idempotency_key_1_created_at_-1__id_-1",
         [("idempotency_key", 1), ("created_at", -1), ("_id", -1)], False),
    ]:
        executions.drop_index(name)
        executions.create_index(keys, name=name, unique=unique,
                                partialFilterExpression={"idempotency_key": {"$type": "string"}})
    executions.drop_index("status_1_created_at_-1__id_-1")
    executions.create_index([("input_json", 1)])
    definitions.create_index([("created_at", -1)])

    changes = [str(change) for change in indexes.ensure()]

    assert sorted(changes) == sorted([
        "executions: replaced idempotency_key_1_created_at_-1__id_-1 (partial {'idempotency_key': "
        "{'$exists': True}}); was idempotency_key_1_created_at_-1__id_-1 (partial {'idempotency_key': "
        "{'$type': 'string'}})",
        "executions: created status_1_created_at_-1__id_-1",
        "executions: replaced workflow_1_idempotency_key_1 (unique, partial {'idempotency_key': "
        "{'$exists': True}}); was workflow_1_idempotency_key_1 (unique, partial {'idempotency_key': "
        "{'$type': 'string'}})",
        "executions: dropped input_json_1",
        "workflow_definitions: dropped created_at_-1",
    ])
    assert as_stored() == as_declared()
    assert indexes.ensure() == []


def test_unique_key_index__holds_many_executions_without_a_key_and_one_per_workflow_and_key(
    define: Any,
) -> None:
    from executions import operations, store

    define("ok", [{"handler": "test.echo"}])
    define("other", [{"handler": "test.echo"}])
    keyless = [operations.start("ok", {})[0]["_id"] for _ in range(3)]
    first, created = operations.start("ok", {}, idempotency_key="k")
    again, created_again = operations.start("ok", {}, idempotency_key="k")
    elsewhere, created_elsewhere = operations.start("other", {}, idempotency_key="k")
    assert (created, created_again, created_elsewhere) == (True, False, True)
    assert again["_id"] == first["_id"] != elsewhere["_id"]
    assert len(set(keyless)) == 3
    assert all("idempotency_key" not in store.load(i) for i in keyless)  # absent, never null
    with pytest.raises(DuplicateKeyError):
        store.collection().insert_one({**store.load(first["_id"]), "_id": "copy"})


def test_first_access__creates_no_index() -> None:
    import mongoengine
    import mongomock

    from executions.models import Execution
    from insights.models import Insight
    from workflows.models import WorkflowDefinition

    mongoengine.disconnect(services.ALIAS)
    try:
        mongoengine.connect(db="fresh", alias=services.ALIAS, host="mongodb://embedded",
                            uuidRepresentation="standard", mongo_client_class=mongomock.MongoClient)
        Execution.objects(id="x").first()
        WorkflowDefinition.objects(name="x").first()
        Insight._get_collection().insert_one({"execution_id": "x"})
        held = {d._get_collection_name(): sorted(d._get_collection().index_information())
                for d in (Execution, WorkflowDefinition, Insight)}
    finally:
        services.connect_mongo()
    assert held == {"executions": [], "workflow_definitions": [], "insights": ["_id_"]}


def test_command__on_the_embedded_store_reports_the_indexes_as_declared(tmp_path: Path) -> None:
    result = manage(tmp_path, "ensure_indexes")
    assert result.returncode == 0, result.stderr
    total = sum(len(wanted) for wanted in indexes.declared().values())
    assert result.stdout.splitlines() == [
        f"{total} indexes in {len(indexes.declared())} collections as declared, 0 changed, on "
        "embedded mongomock (state lives in this process's memory)"
    ]


def test_command__without_a_reachable_server_fails_in_one_line(tmp_path: Path) -> None:
    result = manage(tmp_path, "ensure_indexes", DETFLOW_MONGODB_URL="mongodb://127.0.0.1:9/")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("CommandError: cannot ensure indexes on MongoDB at mongodb://127.0.0.1:9/: "
                               "ServerSelectionTimeoutError: ")
    assert result.stdout == ""
