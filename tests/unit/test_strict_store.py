"""The embedded store refuses what a MongoDB server (and pymongo in front of it) refuses, with the
same exception types and codes, by its fast path and by mongomock's own update alike."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any
from unittest import mock

import bson
import mongomock
import pytest
from bson.errors import InvalidDocument
from mongomock.collection import Collection
from pymongo import InsertOne
from pymongo.errors import (
    BulkWriteError,
    DocumentTooLarge,
    DuplicateKeyError,
    OperationFailure,
    WriteError,
)

from detflow_site import embedded

MIB = 1024 * 1024
#: A lone surrogate, as ``os.fsdecode`` makes of a file name that is not UTF-8.
LONE = os.fsdecode(b"\xff.txt")


@pytest.fixture
def docs() -> Collection:
    embedded.serialize_mongomock()
    collection = mongomock.MongoClient().db.strict
    collection.insert_one({"_id": "x", "version": 1, "big": "", "steps": [{"status": "PENDING"}]})
    return collection


@pytest.fixture(params=["fast path", "mongomock"])
def path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test through the path-copying write, or through mongomock's own (made strict)."""
    with contextlib.ExitStack() as stack:
        if request.param == "mongomock":
            stack.enter_context(mock.patch.object(Collection, "_update", Collection._update.__wrapped__))
        yield request.param


def _padded(size: int, key: str = "p") -> dict[str, Any]:
    """A document whose BSON encoding is ``size`` bytes."""
    doc = {"_id": key, "pad": ""}
    doc["pad"] = "a" * (size - len(bson.encode(doc)))
    assert len(bson.encode(doc)) == size
    return doc


def test_update_to_17_mib__refused_with_code_17419_and_the_document_unchanged(
        docs: Collection, path: str) -> None:
    docs.update_one({"_id": "x"}, {"$set": {"big": "a" * (10 * MIB)}})
    before = docs.find_one({"_id": "x"})

    with pytest.raises(WriteError) as caught:
        docs.update_one({"_id": "x"}, {"$set": {"more": "b" * (7 * MIB)}, "$inc": {"version": 1}})

    assert type(caught.value) is WriteError
    assert caught.value.code == 17419
    assert caught.value.details["errmsg"] == "Resulting document after update is larger than 16777216"
    assert docs.find_one({"_id": "x"}) == before


def test_update_to_just_under_16_mib__accepted_and_one_byte_more_refused(path: str) -> None:
    """The fast path's size bound is only a bound: near the limit it measures exactly."""
    embedded.serialize_mongomock()
    docs = mongomock.MongoClient().db.edge
    docs.insert_one(_padded(embedded.MAX_BSON_SIZE - 100))
    grown = {"$set": {"n": "y" * 70}}  # 1 type byte + "n\0" + 4 length + 70 + NUL = 78 bytes

    docs.update_one({"_id": "p"}, grown)
    assert len(bson.encode(docs.find_one({"_id": "p"}))) == embedded.MAX_BSON_SIZE - 22

    with pytest.raises(WriteError) as caught:
        docs.update_one({"_id": "p"}, {"$set": {"m": "z" * 15}})  # 22 + 1 bytes
    assert caught.value.code == 17419
    docs.update_one({"_id": "p"}, {"$set": {"m": "z" * 14}})
    assert len(bson.encode(docs.find_one({"_id": "p"}))) == embedded.MAX_BSON_SIZE


def test_push_past_16_mib_one_step_at_a_time__refused_at_the_write_that_passes(
        docs: Collection, path: str) -> None:
    chunk = {"line": "c" * MIB}
    accepted = 0
    with pytest.raises(WriteError) as caught:
        for _ in range(20):
            docs.update_one({"_id": "x"}, {"$push": {"steps.0.logs": {"$each": [chunk]}}})
            accepted += 1
    assert caught.value.code == 17419
    assert accepted == 15
    stored = docs.find_one({"_id": "x"})
    assert len(stored["steps"][0]["logs"]) == 15
    assert len(bson.encode(stored)) <= embedded.MAX_BSON_SIZE


def test_insert_of_17_mib__raises_document_too_large_and_stores_nothing(docs: Collection) -> None:
    with pytest.raises(DocumentTooLarge, match=r"BSON document too large \(\d+ bytes\)"):
        docs.insert_one({"_id": "huge", "pad": "a" * (17 * MIB)})
    assert docs.find_one({"_id": "huge"}) is None


def test_insert_just_over_16_mib__the_server_refuses_it_with_code_2(docs: Collection) -> None:
    with pytest.raises(WriteError) as caught:
        docs.insert_one(_padded(embedded.MAX_BSON_SIZE + 1))
    assert caught.value.code == 2
    assert caught.value.details["errmsg"] == (
        "object to insert too large. size in bytes: 16777217, max size: 16777216")
    docs.insert_one(_padded(embedded.MAX_BSON_SIZE, "fits"))
    assert docs.count_documents({"_id": {"$in": ["p", "fits"]}}) == 1


def test_insert_many_with_a_17_mib_document__a_bulk_write_error_after_the_ones_before(
        docs: Collection) -> None:
    with pytest.raises(BulkWriteError) as caught:
        docs.insert_many([{"_id": "a"}, {"_id": "b", "pad": "a" * (17 * MIB)}, {"_id": "c"}])
    [error] = caught.value.details["writeErrors"]
    assert (error["index"], error["code"]) == (1, 2)
    assert sorted(d["_id"] for d in docs.find({"_id": {"$in": ["a", "b", "c"]}})) == ["a"]


def test_update_command_of_17_mib__refused_by_pymongo_before_it_is_sent(docs: Collection, path: str) -> None:
    with pytest.raises(DocumentTooLarge, match=r"^update command document too large$"):
        docs.update_one({"_id": "x"}, {"$set": {"pad": "a" * (17 * MIB)}})
    with pytest.raises(DocumentTooLarge, match=r"^findAndModify command document too large$"):
        docs.find_one_and_update({"_id": "x"}, {"$set": {"pad": "a" * (17 * MIB)}})
    assert "pad" not in docs.find_one({"_id": "x"})


def test_upsert_past_16_mib__refused_with_code_17420(docs: Collection, path: str) -> None:
    with pytest.raises(WriteError) as caught:
        docs.update_one({"_id": "new"}, {"$set": {"pad": "a" * (embedded.MAX_BSON_SIZE + 100)}},
                        upsert=True)
    assert caught.value.code == 17420
    assert caught.value.details["errmsg"] == "Document to upsert is larger than 16777216"
    assert docs.find_one({"_id": "new"}) is None


def test_replace_past_16_mib__refused_with_code_17419(docs: Collection) -> None:
    with pytest.raises(WriteError) as caught:
        docs.replace_one({"_id": "x"}, {"pad": "a" * (embedded.MAX_BSON_SIZE + 100)})
    assert caught.value.code == 17419
    assert docs.find_one({"_id": "x"})["version"] == 1


def test_find_one_and_update_past_16_mib__an_operation_failure_as_find_and_modify_answers(
        docs: Collection, path: str) -> None:
    docs.update_one({"_id": "x"}, {"$set": {"big": "a" * (10 * MIB)}})
    with pytest.raises(OperationFailure) as caught:
        docs.find_one_and_update({"_id": "x"}, {"$set": {"pad": "a" * (7 * MIB)}})
    assert type(caught.value) is OperationFailure
    assert caught.value.code == 17419
    assert "pad" not in docs.find_one({"_id": "x"})


def test_bulk_write_past_16_mib__a_bulk_write_error_after_the_writes_before(docs: Collection) -> None:
    with pytest.raises(BulkWriteError) as caught:
        docs.bulk_write([InsertOne({"_id": "a"}), InsertOne(_padded(embedded.MAX_BSON_SIZE + 1, "b")),
                         InsertOne({"_id": "c"})])
    [error] = caught.value.details["writeErrors"]
    assert (error["index"], error["code"]) == (1, 2)
    assert sorted(d["_id"] for d in docs.find({"_id": {"$in": ["a", "b", "c"]}})) == ["a"]


def test_update_many_past_16_mib__stops_at_the_first_document_it_cannot_grow(path: str) -> None:
    embedded.serialize_mongomock()
    docs = mongomock.MongoClient().db.many
    docs.insert_many([{"_id": "a", "pad": ""}, _padded(10 * MIB, "b"), {"_id": "c", "pad": ""}])

    with pytest.raises(WriteError) as caught:
        docs.update_many({}, {"$set": {"more": "m" * (7 * MIB)}})

    assert caught.value.code == 17419
    assert [("more" in d) for d in docs.find({}, sort=[("_id", 1)])] == [True, False, False]


def _encoder_error(value: Any) -> type[BaseException]:
    """What pymongo's own BSON encoder raises for ``value`` (pymongo raises it before sending)."""
    try:
        bson.encode(value)
    except Exception as exc:
        return type(exc)
    raise AssertionError(f"bson encodes {value!r}")


def test_lone_surrogate_in_an_insert__refused_as_pymongo_refuses_it(docs: Collection) -> None:
    with pytest.raises(_encoder_error({"name": LONE})):
        docs.insert_one({"_id": "s", "name": LONE})
    with pytest.raises(_encoder_error({LONE: 1})):
        docs.insert_one({"_id": "s", "keys": {LONE: 1}})
    assert docs.find_one({"_id": "s"}) is None


@pytest.mark.parametrize("update", [
    {"$set": {"steps.0.message": LONE}},
    {"$set": {"version": 2, "steps.0.error": {"text": ["ok", LONE]}}},
    {"$push": {"steps.0.logs": {"$each": [{"message": LONE}]}}},
    {"$set": {f"by.{LONE}": 1}},
])
def test_lone_surrogate_in_an_update__refused_and_the_document_unchanged(
        docs: Collection, path: str, update: dict[str, Any]) -> None:
    before = docs.find_one({"_id": "x"})
    with pytest.raises(_encoder_error({"u": update})):
        docs.update_one({"_id": "x"}, update)
    with pytest.raises(_encoder_error({"u": update})):
        docs.update_one({"_id": "nothing matches"}, update)
    assert docs.find_one({"_id": "x"}) == before


def test_key_that_is_not_a_string__refused_as_the_encoder_refuses_it(docs: Collection, path: str) -> None:
    with pytest.raises(InvalidDocument):
        docs.update_one({"_id": "x"}, {"$set": {"map": {1: "one"}}})
    with pytest.raises(InvalidDocument):
        docs.update_one({"_id": "x"}, {"$set": {"things": {1, 2}}})
    assert "map" not in docs.find_one({"_id": "x"})


@pytest.mark.parametrize(("update", "message"), [
    ({"$set": {"a": 1, "a.b": 2}}, "Updating the path 'a.b' would create a conflict at 'a'"),
    ({"$set": {"a.b": 2, "a": 1}}, "Updating the path 'a' would create a conflict at 'a'"),
    ({"$set": {"version": 2}, "$inc": {"version": 1}},
     "Updating the path 'version' would create a conflict at 'version'"),
    ({"$set": {"steps.0.status": "RUNNING"}, "$unset": {"steps.0": ""}},
     "Updating the path 'steps.0' would create a conflict at 'steps.0'"),
    ({"$push": {"steps.0.attempts": {"$each": [1]}}, "$set": {"steps.0.attempts.3": 1}},
     "Updating the path 'steps.0.attempts.3' would create a conflict at 'steps.0.attempts'"),
    ({"$rename": {"big": "small"}, "$set": {"small.x": 1}},
     "Updating the path 'small.x' would create a conflict at 'small'"),
])
def test_conflicting_paths__refused_with_code_40_even_when_nothing_matches(
        docs: Collection, path: str, update: dict[str, Any], message: str) -> None:
    before = docs.find_one({"_id": "x"})
    for spec in ({"_id": "x"}, {"_id": "x", "version": 9}, {"_id": "absent"}):
        with pytest.raises(WriteError) as caught:
            docs.update_one(spec, update)
        assert (caught.value.code, caught.value.details["errmsg"]) == (40, message)
    assert docs.find_one({"_id": "x"}) == before


def test_paths_that_share_only_a_name_prefix__do_not_conflict(docs: Collection, path: str) -> None:
    docs.update_one({"_id": "x"}, {"$set": {"a.b": 1, "a.bc": 2, "ab": 3}, "$inc": {"version": 1}})
    stored = docs.find_one({"_id": "x"})
    assert (stored["a"], stored["ab"], stored["version"]) == ({"b": 1, "bc": 2}, 3, 2)


def test_empty_operator__accepted_and_changes_nothing_as_on_mongodb_5_and_later(
        docs: Collection, path: str) -> None:
    before = docs.find_one({"_id": "x"})
    result = docs.update_one({"_id": "x"}, {"$set": {}})
    assert (result.matched_count, result.modified_count) == (1, 0)
    assert docs.find_one({"_id": "x"}) == before


def test_top_level_dollar_field_by_an_update__refused_with_code_52(docs: Collection, path: str) -> None:
    with pytest.raises(WriteError) as caught:
        docs.update_one({"_id": "x"}, {"$set": {"$hotel": 320}})
    assert caught.value.code == 52
    assert "$hotel" not in docs.find_one({"_id": "x"})
    assert docs.update_one({"_id": "absent"}, {"$set": {"$hotel": 320}}).matched_count == 0


def test_duplicate_key__code_11000_in_the_servers_words(docs: Collection, path: str) -> None:
    docs.create_index([("workflow", 1), ("key", 1)], unique=True, name="workflow_key",
                      partialFilterExpression={"key": {"$exists": True}})
    docs.insert_one({"_id": "k1", "workflow": "w", "key": "k"})
    docs.insert_one({"_id": "k2", "workflow": "w"})

    with pytest.raises(DuplicateKeyError) as by_id:
        docs.insert_one({"_id": "x"})
    with pytest.raises(DuplicateKeyError) as by_index:
        docs.update_one({"_id": "k2"}, {"$set": {"key": "k"}})

    assert by_id.value.code == by_index.value.code == 11000
    assert by_id.value.details["errmsg"] == (
        'E11000 duplicate key error collection: db.strict index: _id_ dup key: { _id: "x" }')
    assert by_index.value.details["errmsg"] == (
        'E11000 duplicate key error collection: db.strict index: workflow_key '
        'dup key: { workflow: "w", key: "k" }')
    assert by_index.value.details["keyValue"] == {"workflow": "w", "key": "k"}
    assert "key" not in docs.find_one({"_id": "k2"})
