"""Start, list (filters, order, cursor pages), read one execution and its history."""
from __future__ import annotations

import datetime as dt
import itertools
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from detflow_site.api import filters
from executions import operations, runner, store
from executions.models import Execution
from tests.conftest import wait_terminal
from tests.integration.api.conftest import assert_error, failed_execution

API = "/api/v1/"


def ids(page: dict[str, Any]) -> list[str]:
    return [row["id"] for row in page["results"]]


def test_start__stores_a_pending_execution_and_answers_201(operator: Any, define: Any) -> None:
    define("pay", [{"handler": "test.echo"}, {"handler": "test.echo"}])

    response = operator.post(API + "executions/", {"workflow": "pay", "input": {"order": 42}},
                             format="json")

    body = response.json()
    assert response.status_code == 201
    assert (body["workflow"], body["workflow_version"], body["status"]) == ("pay", 1, "PENDING")
    assert (body["input"], body["created_by"], body["idempotency_key"]) == ({"order": 42}, "operator", None)
    assert [(s["name"], s["status"], s["attempt"]) for s in body["steps"]] == [
        ("s1", "PENDING", 0), ("s2", "PENDING", 0)]
    assert store.load(body["id"])["status"] == "PENDING"


def test_start__pins_the_requested_version(operator: Any, define: Any) -> None:
    define("pay", [{"handler": "test.echo"}])
    define("pay", [{"handler": "test.echo"}, {"handler": "test.echo"}])

    latest = operator.post(API + "executions/", {"workflow": "pay"}, format="json").json()
    pinned = operator.post(API + "executions/", {"workflow": "pay", "version": 1}, format="json").json()
    missing = operator.post(API + "executions/", {"workflow": "pay", "version": 3}, format="json")

    assert (latest["workflow_version"], len(latest["steps"]), latest["input"]) == (2, 2, None)
    assert (pinned["workflow_version"], len(pinned["steps"])) == (1, 1)
    body = assert_error(missing, 400, "unknown_workflow", "version")
    assert "its versions: 1, 2" in body["detail"]


def test_start__unknown_workflow_names_the_known_ones(operator: Any, define: Any) -> None:
    define("pay", [{"handler": "test.echo"}])
    define("mail", [{"handler": "test.echo"}])

    response = operator.post(API + "executions/", {"workflow": "payy"}, format="json")

    body = assert_error(response, 400, "unknown_workflow", "workflow")
    assert "known workflows: mail, pay" in body["fields"]["workflow"][0]
    assert store.collection().count_documents({}) == 0


@pytest.mark.parametrize("workflow", ["file-processing", "own-receiver"])
def test_start__a_server_path_for_files_receive_is_refused(
    operator: Any, define: Any, workflow: str
) -> None:
    from workflows.builtin import ensure_file_processing

    ensure_file_processing()
    define("own-receiver", [{"name": "files.receive", "handler": "files.receive"}])

    response = operator.post(API + "executions/", {"workflow": workflow, "input": {"path": "/etc/passwd"}},
                             format="json")

    assert_error(response, 400, "forbidden", "input.path")
    assert store.collection().count_documents({}) == 0


def test_start__a_path_is_plain_data_for_other_handlers(operator: Any, define: Any) -> None:
    define("pay", [{"handler": "test.echo"}])

    response = operator.post(API + "executions/", {"workflow": "pay", "input": {"path": "/a/b"}},
                             format="json")

    assert response.status_code == 201


def test_detail__shows_steps_attempts_outputs_and_errors(viewer: Any, define: Any) -> None:
    eid = failed_execution(define)

    body = viewer.get(API + f"executions/{eid}/").json()

    assert (body["id"], body["status"], body["failed_step"]) == (eid, "FAILED", "s1")
    first, second = body["steps"]
    assert (first["status"], first["attempt"], first["error"]["type"]) == (
        "FAILED", 1, "workflows.errors.PermanentError")
    [attempt] = first["attempts"]
    assert (attempt["n"], attempt["worker"], attempt["outcome"]) == (1, "test", "failed")
    assert "PermanentError" in attempt["traceback"]
    assert second["status"] == "PENDING" and second["attempts"] == [] and second["output"] is None
    assert body["event_count"] == len(store.load(eid)["events"])


def test_detail__succeeded_steps_show_their_outputs(viewer: Any, define: Any, worker: Any) -> None:
    define("echo", [{"handler": "test.echo"}])
    started, _ = operations.start("echo", {"n": 7})
    wait_terminal(started["_id"])

    [step] = viewer.get(API + f"executions/{started['_id']}/").json()["steps"]

    assert step["output"] == {"step": "s1", "input": {"n": 7}, "seen": []}
    assert step["output_bytes"] > 0 and step["attempts"][0]["logs"][0]["message"] == "echo attempt 1"


def test_detail__unknown_execution_is_404(viewer: Any) -> None:
    assert_error(viewer.get(API + "executions/nope/"), 404, "execution_not_found")
    assert_error(viewer.get(API + "executions/nope/events/"), 404, "execution_not_found")
    assert_error(viewer.get(API + "executions/nope/diagnosis/"), 404, "execution_not_found")


def test_events__pages_through_the_history_in_order(viewer: Any, define: Any) -> None:
    eid = failed_execution(define)
    history = store.load(eid)["events"]

    first = viewer.get(API + f"executions/{eid}/events/?limit=2").json()
    second = viewer.get(first["next"]).json()
    rest = viewer.get(API + f"executions/{eid}/events/?after=4").json()

    assert [e["seq"] for e in first["results"]] == [1, 2]
    assert first["results"][0]["type"] == "created" and first["results"][0]["by"] is None
    assert [e["seq"] for e in second["results"]] == [3, 4]
    assert [e["seq"] for e in rest["results"]] == [e["seq"] for e in history[4:]]
    assert rest["next"] is None
    assert first["results"][1]["lease_expires_at"].endswith("Z")


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "after=-1", "after=x", "colour=red"])
def test_events__bad_parameters_are_400_naming_them(viewer: Any, define: Any, query: str) -> None:
    eid = failed_execution(define)

    response = viewer.get(API + f"executions/{eid}/events/?{query}")

    assert_error(response, 400, "unknown_field" if query.startswith("colour") else "invalid",
                 query.split("=")[0])


# Listing.


@pytest.fixture
def many(define: Any) -> list[dict[str, Any]]:
    """Twelve executions of two workflows (two versions of one), three FAILED, with tied times."""
    define("pay", [{"handler": "test.echo"}])
    define("mail", [{"handler": "test.permanent"}])
    define("pay", [{"handler": "test.echo"}, {"handler": "test.echo"}])
    started = []
    for n in range(12):
        name, version = [("pay", 1), ("pay", 2), ("mail", 1)][n % 3]
        doc, _ = operations.start(name, {"n": n}, version=version)
        started.append(doc)
    # Four executions per created_at millisecond: the cursor must break ties by id.
    base = dt.datetime(2025, 3, 1, 12, 0, 0)
    for n, doc in enumerate(started):
        store.collection().update_one({"_id": doc["_id"]},
                                      {"$set": {"created_at": base + dt.timedelta(seconds=n // 4)}})
    for doc in started:
        if doc["workflow"] == "mail":
            runner.advance(doc["_id"], worker="test")
    return list(store.collection().find({}))


def walk(client: Any, query: str) -> list[str]:
    """Follow ``next`` links from the first page; return every id in order."""
    seen: list[str] = []
    page = client.get(API + f"executions/?{query}").json()
    while True:
        seen += ids(page)
        if page["next"] is None:
            return seen
        assert "cursor" in parse_qs(urlsplit(page["next"]).query)
        page = client.get(page["next"]).json()


def expected_order(docs: list[dict[str, Any]], descending: bool = True) -> list[str]:
    return [d["_id"] for d in sorted(docs, key=lambda d: (d["created_at"], d["_id"]), reverse=descending)]


@pytest.mark.parametrize("page_size", [1, 3, 5, 12, 200])
def test_list__cursor_pages_cover_every_execution_once_in_order(
    viewer: Any, many: list[dict[str, Any]], page_size: int
) -> None:
    newest_first = walk(viewer, f"page_size={page_size}")
    oldest_first = walk(viewer, f"page_size={page_size}&ordering=created_at")

    assert newest_first == expected_order(many)
    assert oldest_first == expected_order(many, descending=False)


@pytest.mark.parametrize(
    ("query", "keep"),
    [
        ("status=FAILED", lambda d: d["status"] == "FAILED"),
        ("status=PENDING", lambda d: d["status"] == "PENDING"),
        ("workflow=pay", lambda d: d["workflow"] == "pay"),
        ("workflow=pay&version=1", lambda d: (d["workflow"], d["workflow_version"]) == ("pay", 1)),
        ("workflow=pay&status=PENDING&version=2", lambda d: d["workflow_version"] == 2),
        ("failed_step=s1", lambda d: d.get("failed_step") == "s1"),
        ("created_after=2025-03-01T12:00:01Z",
         lambda d: d["created_at"] >= dt.datetime(2025, 3, 1, 12, 0, 1)),
        ("created_before=2025-03-01T14:00:02%2B02:00",
         lambda d: d["created_at"] < dt.datetime(2025, 3, 1, 12, 0, 2)),
        ("created_after=2025-03-01T12:00:01Z&created_before=2025-03-01T12:00:02Z&workflow=mail",
         lambda d: d["workflow"] == "mail" and d["created_at"] == dt.datetime(2025, 3, 1, 12, 0, 1)),
        ("created_after=2025-03-02", lambda d: False),
    ],
)
def test_list__filters_keep_what_they_say(viewer: Any, many: list[dict[str, Any]], query: str,
                                          keep: Any) -> None:
    assert walk(viewer, f"{query}&page_size=2") == expected_order([d for d in many if keep(d)])


@pytest.mark.parametrize(
    ("query", "field", "code"),
    [
        ("status=DONE", "status", "invalid_choice"),
        ("ordering=workflow", "ordering", "invalid_choice"),
        ("version=1", "version", "invalid"),
        ("workflow=pay&version=0", "version", "invalid"),
        ("workflow=pay&version=99999999999999999999999", "version", "invalid"),
        ("created_after=yesterday", "created_after", "invalid"),
        ("created_before=2025-02-30T00:00:00Z", "created_before", "invalid"),
        ("page_size=0", "page_size", "invalid"),
        ("page_size=201", "page_size", "invalid"),
        ("cursor=not-a-cursor", "cursor", "invalid"),
        ("cursor=WzEsMl0", "cursor", "invalid"),
        ("workflow=", "workflow", "invalid"),
        ("sort=created_at", "sort", "unknown_field"),
    ],
)
def test_list__bad_parameters_are_400_naming_the_parameter(viewer: Any, query: str, field: str,
                                                            code: str) -> None:
    assert_error(viewer.get(API + f"executions/?{query}"), 400, code, field)


def test_list__every_filter_combination_is_served_by_an_index_in_its_order() -> None:
    indexes = [[name for name, _ in spec["fields"]] for spec in Execution._meta["index_specs"]]
    values = {"status": "FAILED", "workflow": "pay", "version": "1", "failed_step": "s1",
              "created_after": "2025-01-01"}
    for n in range(len(values) + 1):
        for names in itertools.combinations(values, n):
            if "version" in names and "workflow" not in names:
                continue
            query = filters.parse({name: values[name] for name in names})
            equal = {k for k in query.filter if k != "created_at"}
            assert [name for name, _ in query.sort()] == ["created_at", "_id"]
            assert any(
                fields[-2:] == ["created_at", "_id"] and set(fields[:-2]) <= equal
                and (bool(fields[:-2]) or not equal)
                for fields in indexes
            ), f"no index serves {sorted(equal)} in (created_at, _id) order"


def test_start__the_built_in_file_processing_needs_no_registration(operator: Any) -> None:
    from workflows.models import WorkflowDefinition

    assert WorkflowDefinition.objects(name="file-processing").count() == 0  # a fresh deployment

    response = operator.post("/api/v1/executions/", {"workflow": "file-processing", "input": {
        "name": "a.txt", "content_b64": "aGkK"}}, format="json")

    assert response.status_code == 201, response.content
    assert (response.json()["workflow"], response.json()["workflow_version"]) == ("file-processing", 1)
