"""``manage.py runstore``: the strict embedded store over the MongoDB wire protocol, through pymongo
and mongoengine in other processes, with MongoDB's answers and error codes, and its fail point."""
from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
from pymongo import monitoring
from pymongo.errors import AutoReconnect, DuplicateKeyError, NotPrimaryError, OperationFailure, WriteError

from tests.wire import ROOT, WireStore, start_store, wire_store_fixture  # noqa: F401  (wire_store)


class Commands(monitoring.CommandListener):
    """The names of the commands a client sent (pymongo's own command monitoring)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def db(wire_store: WireStore) -> Iterator[Any]:
    """A fresh database of the store, through a fresh client."""
    with wire_store.client() as client:
        name = f"test_wire_{uuid.uuid4().hex[:8]}"
        yield client[name]
        client.drop_database(name)


@pytest.fixture
def faults(wire_store: WireStore) -> Iterator[WireStore]:
    """The store, with its fail point cleared afterwards."""
    try:
        yield wire_store
    finally:
        wire_store.fail("off")


def test_runstore__answers_hello_with_the_server_limits_and_build_info(db: Any) -> None:
    hello = db.command("hello")
    assert hello["isWritablePrimary"] is True
    assert (hello["maxBsonObjectSize"], hello["maxMessageSizeBytes"], hello["maxWriteBatchSize"]) == (
        16777216, 48000000, 100000)
    assert hello["minWireVersion"] == 0 and hello["maxWireVersion"] >= 9
    assert hello["logicalSessionTimeoutMinutes"] > 0 and "setName" not in hello
    assert db.command("isMaster")["ismaster"] is True
    assert db.command("buildInfo")["versionArray"][0] >= 4
    assert db.command("ping")["ok"] == 1.0


def test_find__a_cursor_over_several_batches_with_sort_skip_limit_and_projection(
        db: Any, wire_store: WireStore) -> None:
    db.items.insert_many([{"_id": i, "n": i, "odd": i % 2, "pad": "x" * 10} for i in range(350)])
    sent = Commands()
    with wire_store.client(event_listeners=[sent]) as client:
        items = client[db.name].items
        found = list(items.find({"odd": 1}, {"pad": 0}, batch_size=40).sort("n", -1).skip(5).limit(120))
        assert [d["n"] for d in found] == list(range(339, 99, -2))
        assert found[0] == {"_id": 339, "n": 339, "odd": 1}
        assert sent.names.count("getMore") == 2
        whole = list(items.find({}, {"n": 1, "_id": 0}))  # first batch 101, then the rest
        assert len(whole) == 350 and whole[0] == {"n": 0}
        cursor = items.find({}, batch_size=10)
        next(cursor)
        cursor.close()
        assert sent.names[-1] == "killCursors"


def test_update__set_inc_and_push_each_slice_and_a_stale_version_matches_nothing(db: Any) -> None:
    db.runs.insert_one({"_id": "r1", "version": 1, "steps": [{"status": "PENDING"}], "events": []})
    done = db.runs.update_one({"_id": "r1", "version": 1}, {
        "$set": {"steps.0.status": "RUNNING"}, "$inc": {"version": 1},
        "$push": {"events": {"$each": [{"kind": "a"}, {"kind": "b"}, {"kind": "c"}], "$slice": -2}}})
    assert (done.matched_count, done.modified_count) == (1, 1)
    stale = db.runs.update_one({"_id": "r1", "version": 1}, {"$set": {"steps.0.status": "FAILED"},
                                                             "$inc": {"version": 1}})
    assert (stale.matched_count, stale.modified_count) == (0, 0)
    assert db.runs.find_one({"_id": "r1"}) == {
        "_id": "r1", "version": 2, "steps": [{"status": "RUNNING"}], "events": [{"kind": "b"}, {"kind": "c"}]}
    many = db.runs.update_many({}, {"$set": {"seen": True}}, upsert=False)
    upserted = db.runs.update_one({"_id": "r2"}, {"$set": {"version": 1}}, upsert=True)
    assert (many.matched_count, upserted.upserted_id) == (1, "r2")
    assert db.runs.delete_one({"_id": "r2"}).deleted_count == 1


def test_find_and_modify__returns_before_or_after_reports_an_upsert_and_removes(db: Any) -> None:
    db.jobs.insert_one({"_id": 1, "version": 3})
    after = db.jobs.find_one_and_update({"_id": 1, "version": 3}, {"$inc": {"version": 1}},
                                        return_document=pymongo.ReturnDocument.AFTER)
    assert after == {"_id": 1, "version": 4}
    assert db.jobs.find_one_and_update({"_id": 1, "version": 3}, {"$inc": {"version": 1}}) is None
    reply = db.command("findAndModify", "jobs", query={"_id": 2}, update={"$set": {"version": 1}},
                       upsert=True, new=True)
    assert reply["lastErrorObject"] == {"n": 1, "updatedExisting": False, "upserted": 2}
    assert reply["value"] == {"_id": 2, "version": 1}
    assert db.jobs.find_one_and_delete({"_id": 2}) == {"_id": 2, "version": 1}
    assert db.jobs.count_documents({}) == 1


def test_writes__a_duplicate_key_is_error_11000_with_its_key(db: Any) -> None:
    db.defs.create_index([("name", 1), ("version", -1)], unique=True, name="name_1_version_-1")
    db.defs.insert_one({"name": "w", "version": 1})
    with pytest.raises(DuplicateKeyError) as caught:
        db.defs.insert_one({"name": "w", "version": 1})
    assert caught.value.code == 11000
    assert caught.value.details["keyValue"] == {"name": "w", "version": 1}
    with pytest.raises(pymongo.errors.BulkWriteError) as bulk:
        db.defs.insert_many([{"name": "w", "version": 2}, {"name": "w", "version": 2},
                             {"name": "w", "version": 3}])
    assert [e["code"] for e in bulk.value.details["writeErrors"]] == [11000]
    assert bulk.value.details["nInserted"] == 1
    assert db.defs.count_documents({}) == 2


def test_writes__the_strict_stores_refusals_are_write_errors_with_mongodbs_codes(db: Any) -> None:
    nine_mib = "x" * (9 * 1024 * 1024)
    db.big.insert_one({"_id": "b", "a": nine_mib})
    with pytest.raises(WriteError) as too_large:  # a 17 MiB update: 9 MiB more on 9 MiB
        db.big.update_one({"_id": "b"}, {"$set": {"b": nine_mib}})
    assert too_large.value.code == 17419
    assert set(db.big.find_one({"_id": "b"})) == {"_id", "a"}
    with pytest.raises(WriteError) as conflict:
        db.big.update_one({"_id": "b"}, {"$set": {"c.d": 1, "c": {}}})
    with pytest.raises(WriteError) as dollar:
        db.big.update_one({"_id": "b"}, {"$set": {"$bad": 1}})
    with pytest.raises(WriteError) as filters:
        db.big.update_one({"_id": "b"}, {"$set": {"l.$[x]": 1}}, array_filters=[{"x": 1}])
    assert (conflict.value.code, dollar.value.code, filters.value.code) == (40, 52, 238)
    assert "arrayFilters" in str(filters.value)


def test_indexes__created_listed_refused_when_they_conflict_and_dropped(db: Any) -> None:
    made = db.command("createIndexes", "ex", indexes=[
        {"key": {"due_at": 1}, "name": "due_at_1", "sparse": True},
        {"key": {"k": 1}, "name": "k_1", "unique": True,
         "partialFilterExpression": {"k": {"$exists": True}}}])
    assert (made["createdCollectionAutomatically"], made["numIndexesAfter"]) == (True, 3)
    assert db.ex.create_index([("due_at", 1)], sparse=True) == "due_at_1"  # the same: no change
    listed = {i["name"]: i for i in db.ex.list_indexes()}
    assert set(listed) == {"_id_", "due_at_1", "k_1"}
    assert listed["k_1"]["key"] == {"k": 1} and listed["k_1"]["unique"] is True
    assert listed["k_1"]["partialFilterExpression"] == {"k": {"$exists": True}}
    with pytest.raises(OperationFailure) as options:
        db.ex.create_index([("due_at", 1)], name="due_at_1")
    with pytest.raises(OperationFailure) as keys:
        db.ex.create_index([("other", 1)], name="due_at_1")
    assert (options.value.code, keys.value.code) == (85, 86)
    db.ex.drop_index("due_at_1")
    with pytest.raises(OperationFailure) as missing:
        db.ex.drop_index("due_at_1")
    assert missing.value.code == 27
    assert [c["name"] for c in db.list_collections()] == ["ex"]
    db.ex.drop()
    assert db.list_collection_names() == []


def test_reads__aggregate_count_and_distinct_as_the_project_uses_them(db: Any) -> None:
    db.wd.insert_many([{"name": n, "version": v} for n in ("a", "b") for v in (1, 2, 3)])
    latest = list(db.wd.aggregate([{"$sort": {"name": 1, "version": -1}},
                                   {"$group": {"_id": "$name", "latest": {"$first": "$$ROOT"}}},
                                   {"$sort": {"_id": 1}}], batchSize=1))
    assert [(r["_id"], r["latest"]["version"]) for r in latest] == [("a", 3), ("b", 3)]
    assert db.wd.count_documents({"version": {"$gte": 2}}, limit=3) == 3
    assert db.wd.estimated_document_count() == 6
    assert sorted(db.wd.distinct("name", {"version": 1})) == ["a", "b"]


def test_commands__an_unknown_one_is_answered_with_code_59_and_its_name(db: Any) -> None:
    with pytest.raises(OperationFailure) as caught:
        db.command("replSetGetStatus")
    assert caught.value.code == 59 and "replSetGetStatus" in str(caught.value)
    assert db.command("ping")["ok"] == 1.0  # the connection serves on


#: Run in a child process: mongoengine connected by detflow's own code, through the wire.
_CHILD = """
import json, sys, django
django.setup()
from workflows import definitions
definitions.register({"name": sys.argv[1], "steps": [{"name": "s1", "handler": "test.echo"}]})
print(json.dumps({"names": definitions.names(),
                  "latest": [d.name for d in definitions.latest_versions()]}))
"""


def _child(store: WireStore, database: str, name: str) -> dict[str, Any]:
    env = {**store.environ(database), "DJANGO_SETTINGS_MODULE": "tests.settings"}
    done = subprocess.run([sys.executable, "-c", _CHILD, name], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_processes__two_mongoengine_processes_see_each_others_writes(wire_store: WireStore) -> None:
    database = f"test_wire_{uuid.uuid4().hex[:8]}"
    first = _child(wire_store, database, "wire-first")
    second = _child(wire_store, database, "wire-second")
    assert first == {"names": ["wire-first"], "latest": ["wire-first"]}
    assert second == {"names": ["wire-first", "wire-second"], "latest": ["wire-first", "wire-second"]}
    with wire_store.client() as client:
        assert client[database].workflow_definitions.count_documents({}) == 2
        client.drop_database(database)


def test_faults__not_writable_primary_for_n_answers_then_writes_again(db: Any, faults: WireStore) -> None:
    faults.fail({"times": 2}, failCommands=["insert"], errorCode=10107)
    for _ in range(2):
        with pytest.raises(NotPrimaryError):
            db.f.insert_one({"_id": "x"})
    db.f.insert_one({"_id": "x"})
    assert db.f.count_documents({}) == 1


def test_faults__not_writable_primary_for_a_time(db: Any, faults: WireStore) -> None:
    faults.fail({"forSeconds": 0.5}, failCommands=["update"], errorCode=10107)
    started = time.monotonic()
    refused = 0
    while True:
        try:
            db.f.update_one({"_id": "y"}, {"$set": {"v": 1}}, upsert=True)
            break
        except NotPrimaryError:
            refused += 1
    assert refused >= 1 and time.monotonic() - started >= 0.5


def test_faults__a_connection_dropped_before_or_after_applying_the_write(db: Any, faults: WireStore) -> None:
    faults.fail({"times": 1}, failCommands=["insert"], closeConnection=True)
    with pytest.raises(AutoReconnect):
        db.f.insert_one({"_id": "before"})
    faults.fail({"times": 1}, failCommands=["insert"], closeAfterApplying=True)
    with pytest.raises(AutoReconnect):
        db.f.insert_one({"_id": "after"})
    assert [d["_id"] for d in db.f.find()] == ["after"]


def test_faults__a_delayed_answer(db: Any, faults: WireStore) -> None:
    faults.fail({"times": 1}, failCommands=["find"], blockConnection=True, blockTimeMS=300)
    started = time.monotonic()
    assert db.f.find_one({}) is None
    assert time.monotonic() - started >= 0.3


def test_runstore__stops_on_sigterm_with_a_client_connected_and_refuses_a_port_in_use(tmp_path: Any) -> None:
    store = start_store(tmp_path / "one", faults=False)
    try:
        with store.client() as client:
            client.test_wire.a.insert_one({})
            with pytest.raises(OperationFailure) as off:  # fail points need --faults
                client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
            assert off.value.code == 59
            port = int(store.url.rsplit(":", 1)[1].strip("/"))
            taken = subprocess.run([sys.executable, str(ROOT / "manage.py"), "runstore", "--port", str(port)],
                                   cwd=ROOT, env=store.environ("test_wire"), capture_output=True, text=True,
                                   timeout=60)
            assert taken.returncode != 0
            assert f"cannot listen on 127.0.0.1:{port}" in taken.stderr
            assert store.stop(timeout_s=5) == 0
    finally:
        store.stop()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_commands__options_the_store_cannot_honour_are_refused_by_name(db: Any) -> None:
    db.c.insert_one({"_id": 1, "s": "A"})
    with pytest.raises(OperationFailure) as collation:
        db.c.find_one({"s": "a"}, collation={"locale": "en", "strength": 2})
    with pytest.raises(OperationFailure) as pipeline:
        db.c.update_one({"_id": 1}, [{"$set": {"t": "$s"}}])
    assert (collation.value.code, pipeline.value.code) == (238, 238)
    assert "collation" in str(collation.value) and "pipeline" in str(pipeline.value)


def test_writes__version_fenced_updates_from_many_connections_have_one_winner_each(
        wire_store: WireStore) -> None:
    database = f"test_wire_{uuid.uuid4().hex[:8]}"
    with wire_store.client() as setup:
        setup[database].ex.insert_one({"_id": "e", "version": 0, "winners": []})
    wins: list[int] = []

    def writer(who: int) -> None:
        with wire_store.client(maxPoolSize=1) as client:
            runs = client[database].ex
            for _ in range(25):
                seen = runs.find_one({"_id": "e"}, {"version": 1})["version"]
                done = runs.update_one({"_id": "e", "version": seen},
                                       {"$inc": {"version": 1}, "$push": {"winners": who}})
                if done.modified_count:
                    wins.append(who)

    threads = [threading.Thread(target=writer, args=(who,)) for who in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    with wire_store.client() as client:
        final = client[database].ex.find_one({"_id": "e"})
        client.drop_database(database)
    assert final["version"] == len(wins) == len(final["winners"])
    assert sorted(final["winners"]) == sorted(wins)


def test_values__uuids_and_datetimes_round_trip_as_the_project_stores_them(wire_store: WireStore) -> None:
    key = uuid.uuid4()
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 678000)
    with wire_store.client(uuidRepresentation="standard") as client:
        values = client[f"test_wire_{uuid.uuid4().hex[:8]}"].values
        values.insert_one({"_id": key, "at": when, "n": 2**40})
        assert values.find_one({"_id": key, "at": {"$lte": when}}) == {"_id": key, "at": when, "n": 2**40}
        client.drop_database(values.database.name)


def test_faults__only_the_clients_of_one_app_name(db: Any, faults: WireStore) -> None:
    faults.fail("alwaysOn", failCommands=["insert"], errorCode=10107, appName="worker")
    with faults.client(appname="worker") as worker, pytest.raises(NotPrimaryError):
        worker[db.name].f.insert_one({"_id": "worker"})
    db.f.insert_one({"_id": "api"})
    assert [d["_id"] for d in db.f.find()] == ["api"]
