"""``indexes.implies``: whether a query implies a partial filter, as MongoDB's planner requires."""
from __future__ import annotations

from typing import Any

import pytest

from detflow_site.indexes import Index, implies

EXISTS = {"key": {"$exists": True}}


@pytest.mark.parametrize(
    ("query", "required", "expected"),
    [
        ({"key": "k"}, EXISTS, True),
        ({"key": {"$eq": "k"}}, EXISTS, True),
        ({"key": {"$in": ["a", "b"]}}, EXISTS, True),
        ({"key": {"$exists": True}}, EXISTS, True),
        ({"key": {"$gte": 1, "$lt": 9}}, EXISTS, True),
        ({"key": {"$type": "string"}}, EXISTS, True),
        ({"key": {"a": 1}}, EXISTS, True),  # equality to an embedded document
        ({"$and": [{"workflow": "w"}, {"key": "k"}]}, EXISTS, True),
        ({"$or": [{"key": "a"}, {"key": "b", "x": 1}]}, EXISTS, True),
        # Nothing on the field, or conditions that also match a document without it.
        ({}, EXISTS, False),
        ({"other": "k"}, EXISTS, False),
        ({"key": None}, EXISTS, False),
        ({"key": {"$eq": None}}, EXISTS, False),
        ({"key": {"$in": ["a", None]}}, EXISTS, False),
        ({"key": {"$in": []}}, EXISTS, False),
        ({"key": {"$ne": "k"}}, EXISTS, False),
        ({"key": {"$nin": ["k"]}}, EXISTS, False),
        ({"key": {"$exists": False}}, EXISTS, False),
        ({"key": {"$not": {"$eq": "k"}}}, EXISTS, False),
        ({"key.sub": "k"}, EXISTS, False),
        ({"$or": [{"key": "a"}, {"other": "b"}]}, EXISTS, False),
        ({"$or": []}, EXISTS, False),
        ({"$nor": [{"key": None}]}, EXISTS, False),  # true, but beyond the rule: a false "no"
        # An equality does not imply a $type filter; the filter itself in the query does.
        ({"key": "k"}, {"key": {"$type": "string"}}, False),
        ({"key": "k", "$and": [{"key": {"$type": "string"}}]}, {"key": {"$type": "string"}}, True),
        ({"key": {"$type": "string"}}, {"key": {"$type": "string"}}, True),
        # Equality and range filters: the same condition only.
        ({"status": "FAILED"}, {"status": "FAILED"}, True),
        ({"status": "DONE"}, {"status": "FAILED"}, False),
        ({"n": {"$gt": 5}}, {"n": {"$gt": 5}}, True),
        ({"n": {"$gt": 6}}, {"n": {"$gt": 5}}, False),  # implied on a server; refused here
        # Every condition of a conjunction.
        ({"key": "k", "step": "s"}, {"key": {"$exists": True}, "step": {"$exists": True}}, True),
        ({"key": "k"}, {"$and": [EXISTS, {"step": {"$exists": True}}]}, False),
        # No filter: every query implies it.
        ({}, {}, True),
    ],
)
def test_implies(query: dict[str, Any], required: dict[str, Any], expected: bool) -> None:
    assert implies(query, required) is expected


def test_required_filter__is_the_partial_filter_or_exists_on_each_field_of_a_sparse_index() -> None:
    keys = (("due_at", 1),)
    assert Index(keys).required_filter() == {}
    assert Index(keys, sparse=True).required_filter() == {"due_at": {"$exists": True}}
    assert Index(keys, partial={"due_at": {"$type": "date"}}).required_filter() == {
        "due_at": {"$type": "date"}}
    assert implies({"due_at": {"$lte": 5}}, Index(keys, sparse=True).required_filter())
