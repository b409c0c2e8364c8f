"""Every query the console's list pages, dashboard and execution page run is served by a declared index.

The queries are captured where they leave for MongoDB: at mongomock's collection and cursor methods
on the embedded store, by a pymongo ``CommandListener`` on a real MongoDB. Each filter and sort is
matched against the indexes declared in the documents' ``meta`` (and ``_id``): the equality fields
must be exactly an index's leading fields, the sort the fields right after them (in the index's
direction or its reverse), and the range fields among those. mongomock cannot show that a page
stays fast at 100,000 executions by timing; this shows that no page reads beyond its index range,
and that no count runs without a limit.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.test import Client

from tests.conftest import mongo_commands_heard
from tests.integration.admin.conftest import failed_execution

EXECUTIONS = "/admin/executions/execution/"


@dataclass
class Query:
    collection: str
    command: str
    filter: dict[str, Any]
    sort: list[tuple[str, int]] = field(default_factory=list)
    #: A count with a limit (or any other query: their pages limit them).
    limited: bool = True


def declared_indexes() -> dict[str, list[list[tuple[str, int]]]]:
    """Return each collection's indexes as key lists, ``_id`` included."""
    from executions.models import Execution
    from insights.models import Insight
    from workflows.models import WorkflowDefinition

    found = {}
    for document in (Execution, WorkflowDefinition, Insight):
        specs = [list(spec["fields"]) for spec in document._meta["index_specs"]]
        found[document._get_collection_name()] = [[("_id", 1)], *specs]
    return found


def _fields(query: dict[str, Any]) -> tuple[set[str], set[str]]:
    """Return the equality fields and the range fields of a filter."""
    equal: set[str] = set()
    ranges: set[str] = set()
    for key, value in query.items():
        if key == "$and":
            for part in value:
                more_equal, more_ranges = _fields(part)
                equal |= more_equal
                ranges |= more_ranges
        elif key == "$or":  # a keyset cursor: ranges on the sort fields
            for part in value:
                ranges |= set().union(*_fields(part))
        elif isinstance(value, dict) and any(op.startswith("$") for op in value):
            (equal if set(value) <= {"$eq", "$in"} else ranges).add(key)
        else:
            equal.add(key)
    return equal, ranges - equal


def covered_by(index: list[tuple[str, int]], query: Query) -> bool:
    """Return whether ``index`` serves ``query``'s filter and sort."""
    equal, ranges = _fields(query.filter)
    names = [name for name, _ in index]
    if len(equal) > len(names) or set(names[: len(equal)]) != equal:
        return False
    rest = index[len(equal):]
    if query.sort:
        head = rest[: len(query.sort)]
        if [n for n, _ in head] != [n for n, _ in query.sort]:
            return False
        same = all(d == qd for (_, d), (_, qd) in zip(head, query.sort, strict=True))
        reverse = all(d == -qd for (_, d), (_, qd) in zip(head, query.sort, strict=True))
        if not (same or reverse):
            return False
    if not equal and not ranges and not query.sort:
        return False  # nothing bounds it: the whole collection
    reach = max(len(query.sort), len(ranges))
    return ranges <= {name for name, _ in rest[:reach]}


def covered(query: Query, indexes: dict[str, list[list[tuple[str, int]]]]) -> bool:
    return any(covered_by(index, query) for index in indexes.get(query.collection, []))


def _sort(value: Any, direction: Any = None) -> list[tuple[str, int]]:
    if value is None:
        return []
    if isinstance(value, str):
        return [(value, direction or 1)]
    items = value.items() if isinstance(value, dict) else value
    return [(name, int(d)) for name, d in items]


def _pipeline(collection: str, command: str, pipeline: list[dict[str, Any]]) -> Query:
    query = Query(collection, command, {})
    for stage in pipeline:
        if "$match" in stage and not query.filter and not query.sort:
            query.filter = stage["$match"]
        elif "$sort" in stage and not query.sort:
            query.sort = _sort(stage["$sort"])
    return query


class Captured:
    def __init__(self) -> None:
        self.queries: list[Query] = []
        self._guard = threading.Lock()
        self.local = threading.local()

    def add(self, query: Query) -> Query:
        if not getattr(self.local, "inside", False):
            with self._guard:
                self.queries.append(query)
        return query

    @contextlib.contextmanager
    def one_command(self) -> Iterator[None]:
        """Capture nothing more while one command runs (mongomock's own calls are not commands)."""
        outer = getattr(self.local, "inside", False)
        self.local.inside = True
        try:
            yield
        finally:
            self.local.inside = outer


def _mongomock_capture(monkeypatch: pytest.MonkeyPatch, captured: Captured) -> None:
    from mongomock.collection import Collection, Cursor

    by_cursor: dict[int, Query] = {}
    find, sort = Collection.find, Cursor.sort
    count, aggregate, distinct = Collection.count_documents, Collection.aggregate, Collection.distinct

    @functools.wraps(find)
    def finding(self: Any, filter: Any = None, *args: Any, **kwargs: Any) -> Any:
        query = captured.add(Query(self.name, "find", dict(filter or {}), _sort(kwargs.get("sort"))))
        with captured.one_command():
            cursor = find(self, filter, *args, **kwargs)
        by_cursor[id(cursor)] = query
        return cursor

    @functools.wraps(sort)
    def sorting(self: Any, key_or_list: Any, direction: Any = None) -> Any:
        if id(self) in by_cursor:
            by_cursor[id(self)].sort = _sort(key_or_list, direction)
        return sort(self, key_or_list, direction)

    @functools.wraps(count)
    def counting(self: Any, filter: Any, **kwargs: Any) -> Any:
        captured.add(Query(self.name, "count", dict(filter), limited="limit" in kwargs))
        with captured.one_command():
            return count(self, filter, **kwargs)

    @functools.wraps(aggregate)
    def aggregating(self: Any, pipeline: Any, *args: Any, **kwargs: Any) -> Any:
        captured.add(_pipeline(self.name, "aggregate", list(pipeline)))
        with captured.one_command():
            return aggregate(self, pipeline, *args, **kwargs)

    @functools.wraps(distinct)
    def distinguishing(self: Any, key: Any, filter: Any = None, *args: Any, **kwargs: Any) -> Any:
        captured.add(Query(self.name, "distinct", dict(filter or {})))
        with captured.one_command():
            return distinct(self, key, filter, *args, **kwargs)

    monkeypatch.setattr(Collection, "find", finding)
    monkeypatch.setattr(Cursor, "sort", sorting)
    monkeypatch.setattr(Collection, "count_documents", counting)
    monkeypatch.setattr(Collection, "aggregate", aggregating)
    monkeypatch.setattr(Collection, "distinct", distinguishing)


@contextlib.contextmanager
def _listener_capture(captured: Captured) -> Iterator[None]:
    def started(event: Any) -> None:
        command, name = event.command, event.command_name
        if name == "find":
            captured.add(Query(command["find"], name, dict(command.get("filter") or {}),
                               _sort(command.get("sort"))))
        elif name == "aggregate":
            pipeline = list(command["pipeline"])
            query = _pipeline(command["aggregate"], name, pipeline)
            if any("$group" in s for s in pipeline) and any("$limit" in s for s in pipeline):
                query.command = "count"
            elif any("$group" in s and s["$group"].get("n") == {"$sum": 1} for s in pipeline):
                query.command, query.limited = "count", False
            captured.add(query)
        elif name in ("count", "distinct"):
            captured.add(Query(command[name], name, dict(command.get("query") or {}),
                               limited=bool(command.get("limit"))))

    with mongo_commands_heard(started):
        yield


@pytest.fixture
def queries(monkeypatch: pytest.MonkeyPatch) -> Iterator[Captured]:
    """The MongoDB reads sent while the test runs."""
    from detflow_site import services
    from executions import store
    from insights import service
    from workflows.models import WorkflowDefinition

    for collection in (store.collection(), service.collection(), WorkflowDefinition._get_collection()):
        collection.find_one({"_id": None})  # indexes are ensured on first use, outside the capture
    captured = Captured()
    if services.is_embedded_store():
        _mongomock_capture(monkeypatch, captured)
        yield captured
    else:
        with _listener_capture(captured):
            yield captured


def test_coverage__refuses_queries_no_index_serves() -> None:
    indexes = declared_indexes()
    refused = [
        Query("executions", "find", {"input_json": "x"}),
        Query("executions", "find", {"status": "FAILED", "failed_step": "s1"}),
        Query("executions", "find", {"status": "FAILED"}, [("updated_at", -1)]),
        Query("executions", "find", {}),
        Query("executions", "count", {"updated_at": {"$gte": 1}}, [], limited=True),
        Query("insights", "find", {"source": "rules"}, [("_id", -1)]),
    ]
    assert [q for q in refused if covered(q, indexes)] == []
    served = [
        Query("executions", "find", {"status": "FAILED"}, [("created_at", -1), ("_id", -1)]),
        Query("executions", "find", {"workflow": "w", "created_at": {"$gte": 1}},
              [("created_at", 1), ("_id", 1)]),
        Query("executions", "find", {"due_at": {"$lt": 1}}, [("due_at", 1)]),
        Query("insights", "find", {}, [("_id", -1)]),
    ]
    assert [q for q in served if not covered(q, indexes)] == []


def test_console_pages__run_only_indexed_queries_and_bounded_counts(
    console_as: Callable[..., Client], define: Any, queries: Captured,
) -> None:
    from executions import operations
    from insights import service

    failed = failed_execution(define)
    service.postmortem(failed)
    define("ok", [{"handler": "test.echo"}])
    keyed, _ = operations.start("ok", {}, idempotency_key="order-1")
    viewer = console_as("viewer")
    queries.queries.clear()

    urls = ["/admin/", "/admin/executions/", "/admin/workflows/workflow/",
            "/admin/workflows/workflow/fails/", "/admin/insights/insight/",
            f"/admin/insights/insight/?after={'f' * 24}", EXECUTIONS + f"{failed}/"]
    lists = ["", "status=FAILED", "workflow=fails", "workflow=fails&status=FAILED",
             "workflow=fails&version=1", "workflow=fails&version=1&status=FAILED", "failed_step=s1",
             "workflow=fails&failed_step=s1", "status=FAILED&created_after=2020-01-01",
             "workflow=fails&created_after=2020-01-01&created_before=2100-01-01", "ordering=created_at",
             f"q={failed}", "q=order-1", "q=processed", "workflow=fails&q=processed", "stuck=1",
             "status=RUNNING&q=processed", "cursor=WzE3MDAwMDAwMDAwMDAsImZmIl0"]
    urls += [f"{EXECUTIONS}?{q}" for q in lists]
    for url in urls:
        response = viewer.get(url)
        assert response.status_code == 200, (url, response.content[:1000])

    indexes = declared_indexes()
    assert {q.collection for q in queries.queries} >= {"executions", "workflow_definitions", "insights"}
    unserved = [q for q in queries.queries if not covered(q, indexes)]
    assert unserved == []
    unbounded = [q for q in queries.queries if q.command == "count" and not q.limited]
    assert unbounded == []
    commands = {(q.collection, q.command) for q in queries.queries}
    assert {("executions", "find"), ("executions", "count"), ("insights", "find")} <= commands
    assert keyed["_id"]
