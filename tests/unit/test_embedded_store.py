"""The embedded store's two adjustments to mongomock: lookups by _id, and serialized operations."""
from __future__ import annotations

import threading

import mongomock
import pytest
from bson import ObjectId
from mongomock.collection import Collection

from detflow_site import embedded


@pytest.fixture
def collection() -> Collection:
    embedded.serialize_mongomock()
    docs = mongomock.MongoClient().db.things
    docs.insert_many([{"_id": f"e{i}", "version": i % 3, "tags": ["a"] if i % 2 else []}
                      for i in range(50)])
    docs.insert_one({"_id": ObjectId("65a1b2c3d4e5f60718293a4b"), "version": 1})
    docs.insert_one({"_id": 7, "version": 1})
    return docs


@pytest.mark.parametrize(
    "query",
    [
        {"_id": "e4"},
        {"_id": "e4", "version": 1},
        {"_id": "e4", "version": 2},
        {"_id": "missing"},
        {"_id": 7},
        {"_id": ObjectId("65a1b2c3d4e5f60718293a4b")},
        {"_id": {"$in": ["e1", "e2"]}},
        {"version": 1},
        {"_id": "e5", "tags": "a"},
    ],
)
def test_lookup_by_id__finds_what_a_full_scan_finds(collection: Collection, query: dict) -> None:
    scan = Collection._iter_documents.__wrapped__
    assert list(collection._iter_documents(query)) == list(scan(collection, query))


def test_conditional_updates__one_winner_among_threads(collection: Collection) -> None:
    wins: list[int] = []

    def write(n: int) -> None:
        result = collection.update_one({"_id": "e0", "version": 0},
                                       {"$set": {"by": n}, "$inc": {"version": 1}})
        if result.modified_count:
            wins.append(n)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1
    assert collection.find_one({"_id": "e0"})["version"] == 1


def test_unique_partial_index__still_refuses_a_duplicate_key_and_allows_documents_without_one() -> None:
    from pymongo.errors import DuplicateKeyError

    embedded.serialize_mongomock()
    docs = mongomock.MongoClient().db.keyed
    docs.create_index([("workflow", 1), ("key", 1)], unique=True,
                      partialFilterExpression={"key": {"$type": "string"}})
    docs.insert_many([{"workflow": "w"}, {"workflow": "w"}, {"workflow": "w", "key": "k"}])
    with pytest.raises(DuplicateKeyError):
        docs.insert_one({"workflow": "w", "key": "k"})
    docs.insert_one({"workflow": "v", "key": "k"})
    assert docs.count_documents({}) == 4
