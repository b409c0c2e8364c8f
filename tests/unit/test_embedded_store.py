"""The embedded store's adjustments to mongomock: lookups by _id, serialized operations, and writes
that copy only the changed paths."""
from __future__ import annotations

import contextlib
import copy
import datetime as dt
import random
import re
import threading
from collections import OrderedDict
from unittest import mock

import mongomock
import pytest
from bson import SON, Int64, ObjectId, Timestamp
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


@pytest.mark.parametrize("update", [{"$set": {"kind": "a"}}, {"$set": {"tag": "t", "kind": "a"}},
                                    {"$set": {"kind": "a", "n": 1}, "$inc": {"version": 1}}])
def test_unique_partial_index__an_update_that_brings_a_document_into_it_is_refused(update: dict) -> None:
    from pymongo.errors import DuplicateKeyError

    embedded.serialize_mongomock()
    docs = mongomock.MongoClient().db.unique_updates
    docs.create_index([("tag", 1)], unique=True, partialFilterExpression={"kind": "a"})
    docs.insert_many([{"_id": "one", "kind": "a", "tag": "t"}, {"_id": "two", "kind": "b", "tag": "t"},
                      {"_id": "three", "kind": "a", "tag": "u"}])
    docs.update_one({"_id": "two"}, {"$set": {"note": "x"}, "$inc": {"version": 1}})  # leaves the keys

    with pytest.raises(DuplicateKeyError):
        docs.update_one({"_id": "two"}, update)
    with pytest.raises(DuplicateKeyError):
        docs.update_one({"_id": "three"}, {"$set": {"tag": "t"}})

    assert docs.find_one({"_id": "two"}) == {"_id": "two", "kind": "b", "tag": "t", "note": "x",
                                             "version": 1}
    assert docs.find_one({"_id": "three"})["tag"] == "u"


def _execution(n: int) -> dict:
    return {"_id": f"x{n}", "version": 1, "status": "PENDING", "events": [{"seq": 1}],
            "steps": [{"name": f"s{i}", "status": "PENDING", "attempts": []} for i in range(4)]}


def _random_update(rng: random.Random) -> tuple[dict, dict]:
    """An update like the engine's (or, now and then, one the path-copying write leaves alone, or
    one a server refuses: conflicting paths, a lone surrogate, a top-level ``$`` field)."""
    i = rng.randrange(5)  # 4 is past the last step
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=rng.randrange(100),
                                                                microseconds=rng.randrange(10**6))
    zone = dt.timezone(dt.timedelta(hours=rng.randrange(-12, 13)))
    choices: list[tuple[str, str, object]] = [
        ("$set", f"steps.{i}.status", rng.choice(["RUNNING", "SUCCEEDED"])),
        ("$set", f"steps.{i}.current", {"n": rng.randrange(3), "at": at}),
        ("$set", "due_at", at), ("$set", "status", "RUNNING"), ("$set", "a.b.c", [1, {"d": 2}]),
        ("$set", "version", rng.choice([1, 1.0, 2])), ("$set", f"steps.{i}", {"name": "r"}),
        ("$set", "status.deeper", 1), ("$set", "steps.x.status", 1),
        ("$unset", f"steps.{i}.current", ""), ("$unset", "due_at", ""), ("$unset", "no.such", ""),
        ("$unset", f"steps.{i}", ""),
        ("$inc", "version", 1), ("$inc", "event_seq", rng.choice([1, 2, 0])), ("$inc", "status", 1),
        ("$push", "events", {"$each": [{"seq": rng.randrange(9)}]}),
        ("$push", f"steps.{i}.attempts", {"$each": [{"n": rng.randrange(9)}], "$slice": -2}),
        ("$push", "tags", "t"), ("$push", "status", "t"),
        ("$push", "events", {"$each": [{"seq": 0}], "$position": 0}),
        ("$set", f"steps.{i}.message", "\udcff.txt"), ("$set", "$top", 1),
        ("$set", "when", [at.astimezone(zone), at.replace(tzinfo=None), (at, 1)]),
        ("$set", f"steps.{i}.ordered", OrderedDict(b=at, a=[{"c": at}])),
        ("$set", "son", SON([("z", (1, at.astimezone(zone)))])), ("$set", "raw", b"\x00\xff"),
        ("$push", "events", {"$each": [{"seq": 1, "at": (at,)}, OrderedDict(at=at)]}),
    ]
    update: dict = {}
    for op, path, value in rng.sample(choices, rng.randint(1, 4)):
        update.setdefault(op, {})[path] = value
    spec: dict = {"_id": f"x{rng.randrange(3)}"}
    if rng.random() < 0.3:
        spec["version"] = rng.randrange(1, 4)
    return spec, update


def test_path_copying_update__leaves_what_mongomock_leaves_and_counts_the_same() -> None:
    """The embedded store's own write of the engine's updates, against mongomock's (with the same
    server checks around it), on 2,000 random updates of execution-like documents: the same
    documents, counts and errors (types and codes)."""
    embedded.serialize_mongomock()
    ours = mongomock.MongoClient().db.ours
    theirs = mongomock.MongoClient().db.theirs
    for docs in (ours, theirs):
        docs.insert_many([_execution(n) for n in range(2)])
    mongomocks = Collection._update.__wrapped__
    rng = random.Random(7)
    fast = refused = 0
    for _ in range(2000):
        spec, update = _random_update(rng)
        outcome = []
        for docs, patched in ((ours, False), (theirs, True)):
            with contextlib.ExitStack() as stack:
                if patched:
                    stack.enter_context(mock.patch.object(Collection, "_update", mongomocks))
                try:
                    result = docs.update_one(copy.deepcopy(spec), copy.deepcopy(update))
                    outcome.append((result.matched_count, result.modified_count))
                except Exception as exc:  # the same refusal on both sides
                    outcome.append((type(exc).__name__, getattr(exc, "code", None)))
        assert outcome[0] == outcome[1], (spec, update)
        assert list(ours.find({}, sort=[("_id", 1)])) == list(theirs.find({}, sort=[("_id", 1)])), (
            spec, update)
        fast += isinstance(outcome[0][0], int) and outcome[0][1] == 1
        refused += outcome[0] in (("WriteError", 40), ("WriteError", 52), ("UnicodeEncodeError", None))
    assert fast > 350  # many updates changed a document, so the comparison had something to see
    assert refused > 450  # and many were refused as a server refuses them


def test_path_copying_update__never_changes_the_document_a_reader_was_given() -> None:
    embedded.serialize_mongomock()
    docs = mongomock.MongoClient().db.readers
    docs.insert_one(_execution(0))
    stored = docs._store["x0"]
    before = copy.deepcopy(stored)

    docs.update_one({"_id": "x0", "version": 1},
                    {"$set": {"steps.1.status": "RUNNING"}, "$inc": {"version": 1},
                     "$push": {"events": {"$each": [{"seq": 2}]}, "steps.1.attempts": {"$each": [{"n": 1}]}}})

    assert stored == before
    after = docs.find_one({"_id": "x0"})
    assert after["steps"][1] == {"name": "s1", "status": "RUNNING", "attempts": [{"n": 1}]}
    assert after["version"] == 2 and after["events"] == [{"seq": 1}, {"seq": 2}]


def test_path_copying_update__stores_none_of_the_values_the_caller_holds() -> None:
    embedded.serialize_mongomock()
    docs = mongomock.MongoClient().db.writers
    docs.insert_one(_execution(0))
    current = {"n": 1, "log": ["a"], "at": dt.datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)}
    event = {"seq": 2, "data": {"k": [1]}}

    docs.update_one({"_id": "x0"}, {"$set": {"steps.1.current": current},
                                    "$push": {"events": {"$each": [event]}, "steps.1.attempts": current}})
    current["log"].append("b")
    current["n"] = 2
    event["data"]["k"].append(2)

    after = docs.find_one({"_id": "x0"})
    stored = {"n": 1, "log": ["a"], "at": dt.datetime(2026, 1, 1, 12, 0, 0, 123000)}
    assert after["steps"][1]["current"] == stored and after["steps"][1]["attempts"] == [stored]
    assert after["events"] == [{"seq": 1}, {"seq": 2, "data": {"k": [1]}}]


@pytest.mark.parametrize(
    "projection",
    [None, {}, {"events": 0, "steps.attempts": 0}, {"events": 0}, {"steps": 0, "missing.deep": 0},
     {"status": 1}, {"_id": 0, "events": 0}, {"steps.attempts": 0, "a.b": 0}, {"odd.x": 0},
     {"events": False}],
)
def test_pickled_reads__return_what_mongomock_returns(projection: dict | None) -> None:
    """The embedded store's copy of a returned document, against mongomock's own."""
    embedded.serialize_mongomock()
    docs = mongomock.MongoClient().db.reads
    doc = _execution(0)
    doc.update(a={"b": [1, {"c": dt.datetime(2026, 1, 1)}], "d": 2}, odd=[1, "two"],
               due_at=dt.datetime(2026, 1, 2, 3, 4, 5, 6000))
    doc["steps"][1]["attempts"] = [{"n": 1, "logs": ["x"]}]
    docs.insert_one(doc)
    mongomocks = Collection._copy_only_fields.__wrapped__

    def read() -> object:
        try:
            return docs.find_one({"_id": "x0"}, projection)
        except Exception as exc:  # mongomock's own refusal (a path into a list of non-documents)
            return type(exc)

    ours = read()
    with mock.patch.object(Collection, "_copy_only_fields", mongomocks):
        theirs = read()

    assert ours == theirs
    if not isinstance(ours, dict):
        return
    ours.setdefault("steps", [{}])[0]["status"] = "CHANGED"  # a copy: the stored one stays
    assert docs.find_one({"_id": "x0"})["steps"][0]["status"] == "PENDING"


def _random_value(rng: random.Random, depth: int = 0) -> object:
    at = dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=rng.randrange(-5, 6))),
                     microsecond=rng.randrange(10**6))
    leaves = [1, 2.5, True, None, "s", b"b", at, at.replace(tzinfo=None), ObjectId(), Timestamp(0, 0),
              Timestamp(5, 1), re.compile("x"), dt.date(2026, 1, 1), Int64(3)]
    if depth > 3 or rng.random() < 0.4:
        return rng.choice(leaves)
    items = [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    kind = rng.choice([dict, list, tuple, OrderedDict, SON])
    if kind in (list, tuple):
        return kind(items)
    return kind((f"k{n}", item) for n, item in enumerate(items))


def test_datetime_patch__returns_what_mongomocks_own_returns() -> None:
    """mongomock's walk of every stored document and query, done faster: the same values, of the
    same types (a Timestamp(0, 0) becomes the current time in both), in new containers."""
    from mongomock import helpers

    embedded.serialize_mongomock()
    ours = helpers.patch_datetime_awareness_in_document
    theirs = ours.__wrapped__
    rng = random.Random(11)
    for _ in range(3000):
        value = _random_value(rng)
        mine = ours(value)
        with mock.patch.object(helpers, "patch_datetime_awareness_in_document", theirs):
            original = theirs(value)
        now = re.compile(r"Timestamp\(\d+, \d+\)") if "Timestamp(0, 0)" in repr(value) else None
        shown, expected = (now.sub("T", repr(v)) if now else repr(v) for v in (mine, original))
        assert shown == expected, value  # a Timestamp(0, 0) is the current time, read twice
        if isinstance(value, dict | list | tuple):
            assert mine is not value
