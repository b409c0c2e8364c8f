"""Every query the console, the API, the sweeper and a start run is served by a declared index.

The queries are captured where they leave for MongoDB: at mongomock's collection and cursor methods
on the embedded store, by a pymongo ``CommandListener`` on a real MongoDB. Each filter and sort is
matched against the indexes declared (``detflow_site.indexes.declared``, and ``_id``): the equality
fields must be exactly an index's leading fields, the sort the fields right after them (in the
index's direction or its reverse), the range fields among those, and the filter must imply the
index's partial filter (MongoDB's planner ignores a partial index otherwise). mongomock cannot show
that a page stays fast at 100,000 executions by timing; this shows that no page reads beyond its
index range, and that no count runs without a limit. On a real MongoDB (``DETFLOW_MONGODB_URL``)
each query is also explained: no winning plan scans the collection.
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

from detflow_site.indexes import Index, implies
from detflow_site.times import now_ms as store_now_ms
from tests.conftest import mongo_commands_heard
from tests.integration.admin.conftest import failed_execution

EXECUTIONS = "/admin/executions/execution/"
BULK = "/admin/executions/bulkoperation/"
API = "/api/v1/"
#: Collections whose queries these tests record (the chaos collections are the chaos run's).
RECORDED = ("executions", "workflow_definitions", "insights")


@dataclass
class Query:
    collection: str
    command: str
    filter: dict[str, Any]
    sort: list[tuple[str, int]] = field(default_factory=list)
    #: A count with a limit (or any other query: their pages limit them).
    limited: bool = True
    #: The field a distinct returns the values of.
    key: str | None = None


def declared_indexes() -> dict[str, list[Index]]:
    """Return each collection's declared indexes, ``_id`` included."""
    from detflow_site import indexes

    return {name: [Index((("_id", 1),)), *wanted] for name, wanted in indexes.declared().items()}


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


def covered_by(declared: Index, query: Query) -> bool:
    """Return whether ``declared`` serves ``query``'s filter and sort."""
    if not implies(query.filter, declared.required_filter()):
        return False
    index = list(declared.keys)
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
    reads_key = bool(query.key and rest and rest[0][0] == query.key)  # a distinct may read its index
    if not equal and not ranges and not query.sort and not reads_key:
        return False  # nothing bounds it: the whole collection
    reach = max(len(query.sort), len(ranges))
    return ranges <= {name for name, _ in rest[:reach]}


def covered(query: Query, indexes: dict[str, list[Index]]) -> bool:
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
    find, sort, cursor_distinct = Collection.find, Cursor.sort, Cursor.distinct
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

    @functools.wraps(cursor_distinct)
    def cursor_distinguishing(self: Any, key: Any, session: Any = None) -> Any:
        if id(self) in by_cursor:  # mongoengine's distinct: a find, then its cursor's distinct
            by_cursor[id(self)].command, by_cursor[id(self)].key = "distinct", key
        return cursor_distinct(self, key, session)

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
        captured.add(Query(self.name, "distinct", dict(filter or {}), key=key))
        with captured.one_command():
            return distinct(self, key, filter, *args, **kwargs)

    monkeypatch.setattr(Collection, "find", finding)
    monkeypatch.setattr(Cursor, "sort", sorting)
    monkeypatch.setattr(Cursor, "distinct", cursor_distinguishing)
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
                               limited=name == "distinct" or bool(command.get("limit")),
                               key=command.get("key")))

    with mongo_commands_heard(started):
        yield


@pytest.fixture
def queries(monkeypatch: pytest.MonkeyPatch) -> Iterator[Captured]:
    """The MongoDB reads sent while the test runs."""
    from detflow_site import services

    captured = Captured()
    if services.is_embedded_store():
        _mongomock_capture(monkeypatch, captured)
        yield captured
    else:
        with _listener_capture(captured):
            yield captured


def _stages(plan: Any) -> Iterator[str]:
    if isinstance(plan, dict):
        if "stage" in plan:
            yield plan["stage"]
        for value in plan.values():
            yield from _stages(value)
    elif isinstance(plan, list):
        for value in plan:
            yield from _stages(value)


def has_query_planner() -> bool:
    """Whether the store plans queries: a MongoDB server does; the embedded store does not, nor
    ``runstore``, which serves it over the wire (it answers explain with CommandNotFound). Without a
    planner the index match above is the whole check."""
    from detflow_site import indexes, services

    if services.is_embedded_store():
        return False
    build = indexes.collection("executions").database.client.admin.command("buildInfo")
    return build.get("gitVersion") != "detflow-runstore"


def assert_explained_without_collection_scans(recorded: list[Query]) -> None:
    """On a MongoDB server, explain each query (as a find of its filter and sort): no COLLSCAN."""
    from detflow_site import indexes

    if not has_query_planner():
        return
    scans = []
    for query in recorded:
        collection = indexes.collection(query.collection)
        if query.command == "distinct":
            plan = collection.database.command(
                "explain", {"distinct": query.collection, "key": query.key, "query": query.filter},
            )["queryPlanner"]["winningPlan"]
        else:
            cursor = collection.find(query.filter)
            if query.sort:
                cursor = cursor.sort(query.sort)
            plan = cursor.explain()["queryPlanner"]["winningPlan"]
        if "COLLSCAN" in set(_stages(plan)):
            scans.append((query, plan))
    assert scans == []


def test_coverage__refuses_queries_no_index_serves() -> None:
    indexes = declared_indexes()
    refused = [
        Query("executions", "find", {"input_json": "x"}),
        Query("executions", "find", {"status": "FAILED", "failed_step": "s1"}),
        Query("executions", "find", {"status": "FAILED"}, [("updated_at", -1)]),
        Query("executions", "find", {}),
        Query("executions", "count", {"updated_at": {"$gte": 1}}, [], limited=True),
        Query("insights", "find", {"source": "rules"}, [("_id", -1)]),
        # The partial index on failed_step holds failed executions only: a null or a $ne is not enough.
        Query("executions", "find", {"failed_step": None}, [("created_at", -1), ("_id", -1)]),
        Query("executions", "find", {"failed_step": {"$ne": "s1"}}, [("created_at", -1), ("_id", -1)]),
    ]
    assert [q for q in refused if covered(q, indexes)] == []
    served = [
        Query("executions", "find", {"status": "FAILED"}, [("created_at", -1), ("_id", -1)]),
        Query("executions", "find", {"workflow": "w", "created_at": {"$gte": 1}},
              [("created_at", 1), ("_id", 1)]),
        Query("executions", "find", {"due_at": {"$lt": 1}}, [("due_at", 1)]),
        Query("insights", "find", {}, [("_id", -1)]),
        Query("executions", "find", {"idempotency_key": "k"}, [("created_at", -1), ("_id", -1)]),
        Query("executions", "find", {"workflow": "w", "idempotency_key": "k"}),
        Query("executions", "find", {"workflow": "w", "failed_step": "s1"},
              [("created_at", -1), ("_id", -1)]),
    ]
    assert [q for q in served if not covered(q, indexes)] == []


def test_coverage__a_partial_index_serves_only_the_queries_that_imply_its_filter() -> None:
    keys = (("idempotency_key", 1), ("created_at", -1), ("_id", -1))
    search = Query("executions", "find", {"idempotency_key": "order-1"}, [("created_at", -1), ("_id", -1)])
    typed = {"executions": [Index(keys, partial={"idempotency_key": {"$type": "string"}})]}
    existing = {"executions": [Index(keys, partial={"idempotency_key": {"$exists": True}})]}
    assert not covered(search, typed)  # what the planner did with the $type filter: a scan
    assert covered(search, existing)
    carried = Query("executions", "find", {"idempotency_key": "order-1",
                                           "$and": [{"idempotency_key": {"$type": "string"}}]},
                    [("created_at", -1), ("_id", -1)])
    assert covered(carried, typed)


def test_declared_partial_filters__are_exists_on_a_field_the_index_holds() -> None:
    for name, wanted in declared_indexes().items():
        for index in wanted:
            if index.partial is not None:
                fields = {field for field, _ in index.keys}
                assert all(condition == {"$exists": True} and field in fields
                           for field, condition in index.partial.items()), (name, index.describe())


def test_console_pages__run_only_indexed_queries_and_bounded_counts(
    console_as: Callable[..., Client], define: Any, queries: Captured,
) -> None:
    from detflow_site.api import filters
    from executions import bulk, operations
    from insights import service

    failed = failed_execution(define)
    service.postmortem(failed)
    define("ok", [{"handler": "test.echo"}])
    keyed, _ = operations.start("ok", {}, idempotency_key="order-1")
    op = bulk.store_op("retry", {"workflow": "fails"}, "test", "ops")
    bulk.cancel(op["_id"])
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
             "status=RUNNING&q=processed", "cursor=WzE3MDAwMDAwMDAwMDAsImZmIl0",
             # A filter's later page counts "all matching" (with a limit) for the bulk action bar.
             "status=FAILED&cursor=WzE3MDAwMDAwMDAwMDAsImZmIl0",
             # The previous page (read back from its first row) and a chosen page size, each counted.
             "before=WzE3MDAwMDAwMDAwMDAsImZmIl0", "status=FAILED&before=WzQxMDAwMDAwMDAwMDAsImZmIl0",
             "workflow=fails&page_size=25&cursor=WzQxMDAwMDAwMDAwMDAsImZmIl0", "page_size=200"]
    urls += [f"{EXECUTIONS}?{q}" for q in lists]
    # Bulk operations: the list (newest first, and a later page) and one operation's page.
    urls += [BULK, f"{BULK}?cursor={filters.encode_cursor(op)}", f"{BULK}{op['_id']}/"]
    for url in urls:
        response = viewer.get(url)
        assert response.status_code == 200, (url, response.content[:1000])

    indexes = declared_indexes()
    assert {q.collection for q in queries.queries} >= {"executions", "workflow_definitions", "insights",
                                                       "bulk_operations"}
    unserved = [q for q in queries.queries if not covered(q, indexes)]
    assert unserved == []
    unbounded = [q for q in queries.queries if q.command == "count" and not q.limited]
    assert unbounded == []
    commands = {(q.collection, q.command) for q in queries.queries}
    assert {("executions", "find"), ("executions", "count"), ("insights", "find"),
            ("bulk_operations", "find")} <= commands
    assert keyed["_id"]
    assert_explained_without_collection_scans(list(queries.queries))


def _api_sweeper_and_start(client: Any, define: Any) -> None:
    """Run every read the API serves, a start with and without a key (repeated), and a sweep."""
    from executions import operations, store, sweeper
    from insights import service

    failed = failed_execution(define)
    service.postmortem(failed)
    define("ok", [{"handler": "test.echo"}])
    first, created = operations.start("ok", {}, idempotency_key="order-1")
    again, created_again = operations.start("ok", {}, idempotency_key="order-1")
    assert (created, created_again, again["_id"]) == (True, False, first["_id"])
    operations.start("ok", {})
    for _ in range(2):
        response = client.post(API + "executions/", {"workflow": "ok", "input": {}}, format="json",
                               HTTP_IDEMPOTENCY_KEY="order-2")
        assert response.status_code in (200, 201), response.content[:1000]
    # A workflow's pause: a start held by it, the workers' read of the paused workflows, a resume
    # lifting the holds (and the sweep finishing resumes).
    from executions import controls

    operations.pause_workflow("ok", "ann", "maintenance")
    held, _ = operations.start("ok", {})
    assert set(store.load(held["_id"])["paused"]) == {"workflow"}
    assert "ok" in controls.paused_workflows(fresh=True)
    assert operations.resume_workflow("ok", "ann", "done").released == 1
    sweeper.sweep(grace_s=0)
    from detflow_site import retention

    retention.purge(store_now_ms())  # a purge pass reads each workflow's finished executions
    lists = ["", "status=FAILED", "workflow=fails", "workflow=fails&status=FAILED",
             "workflow=fails&version=1", "workflow=fails&version=1&status=FAILED", "failed_step=s1",
             "workflow=fails&failed_step=s1", "status=FAILED&created_after=2020-01-01",
             "created_after=2020-01-01&created_before=2100-01-01", "ordering=created_at",
             "page_size=1", "cursor=WzE3MDAwMDAwMDAwMDAsImZmIl0",
             "workflow=fails&cursor=WzE3MDAwMDAwMDAwMDAsImZmIl0&ordering=created_at"]
    urls = [API + f"executions/?{q}" for q in lists]
    urls += [API + f"executions/{failed}/{tail}" for tail in ("", "events/", "diagnosis/", "insight/")]
    urls += [API + f"executions/{failed}/events/?after=1", API + "workflows/", API + "workflows/fails/",
             API + "workflows/fails/versions/1/", API + "workflows/nope/", API + "handlers/"]
    for url in urls:
        response = client.get(url)
        assert response.status_code in (200, 404), (url, response.content[:1000])
        assert response.status_code == 200 or url.endswith("nope/"), (url, response.content[:1000])


def test_api_sweeper_and_start__run_only_indexed_queries(define: Any, queries: Captured, db: None) -> None:
    from rest_framework.test import APIClient

    from executions import roles

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + roles.grant("operator", roles.OPERATORS))
    queries.queries.clear()
    _api_sweeper_and_start(client, define)

    indexes = declared_indexes()
    recorded = list(queries.queries)
    assert {q.collection for q in recorded} >= set(RECORDED)
    assert [q for q in recorded if not covered(q, indexes)] == []
    assert [q for q in recorded if q.command == "count" and not q.limited] == []
    duplicate = Query("executions", "find", {"workflow": "ok", "idempotency_key": "order-1"})
    assert any(q.filter == duplicate.filter for q in recorded), "the repeated start looked nothing up"
    assert_explained_without_collection_scans(recorded)


def test_every_declared_index__serves_a_query_the_console_api_sweeper_or_a_start_runs(
    console_as: Callable[..., Client], define: Any, queries: Captured,
) -> None:
    from rest_framework.test import APIClient

    from executions import roles

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + roles.grant("operator", roles.OPERATORS))
    _api_sweeper_and_start(client, define)
    viewer = console_as("viewer")
    for url in ["/admin/", "/admin/workflows/workflow/", "/admin/workflows/workflow/fails/",
                "/admin/insights/insight/", EXECUTIONS + "?workflow=fails&failed_step=s1",
                EXECUTIONS + "?q=order-1", EXECUTIONS + "?stuck=1"]:
        assert viewer.get(url).status_code == 200, url

    from detflow_site import indexes

    idle = [(name, index.describe()) for name, wanted in indexes.declared().items() if name in RECORDED
            for index in wanted if not any(q.collection == name and covered_by(index, q)
                                           for q in queries.queries)]
    assert idle == []


def test_pause_and_schedule_pages__run_only_indexed_queries(
    console_as: Callable[..., Client], define: Any, queries: Captured,
) -> None:
    from executions import controls, operations, schedules

    define("paced", [{"handler": "test.echo"}])
    schedule = schedules.create("paced", "*/5 * * * *")
    operations.pause_workflow("paced", "ann", "maintenance")
    try:
        held, _ = operations.start("paced", {})
        operator = console_as("operator")
        queries.queries.clear()
        for url in ["/admin/executions/schedule/", "/admin/workflows/workflow/paced/",
                    f"{EXECUTIONS}{held['_id']}/", f"{EXECUTIONS}{held['_id']}/pause/"]:
            response = operator.get(url)
            assert response.status_code == 200, (url, response.content[:1000])
        for url, form in [(f"{EXECUTIONS}{held['_id']}/pause/", {"stage": "preview", "reason": "r"}),
                          ("/admin/workflows/workflow/paced/resume/", {"reason": "done"}),
                          (f"/admin/executions/schedule/{schedule['_id']}/pause/", {})]:
            response = operator.post(url, form)
            assert response.status_code in (200, 302), (url, response.content[:1000])
    finally:
        controls.collection().delete_many({"_id": "paced"})
        controls.paused_workflows(fresh=True)
        schedules.collection().delete_many({"_id": schedule["_id"]})

    recorded = list(queries.queries)
    assert {q.collection for q in recorded} >= {"schedules", "workflow_controls", "executions"}
    assert [q for q in recorded if not covered(q, declared_indexes())] == []
    assert [q for q in recorded if q.command == "count" and not q.limited] == []
    assert_explained_without_collection_scans(recorded)
