"""``/api/v1/bulk-operations/``: operators retry or cancel by the list's filters; a dry run counts;
progress is readable; 400s name the field, viewers get 403."""
from __future__ import annotations

from typing import Any

from executions import bulk
from tests.conftest import wait_for
from tests.integration.api.conftest import assert_error
from tests.integration.test_bulk import failed_executions, retried_by

URL = "/api/v1/bulk-operations/"


def test_bulk_api__dry_run_then_retry_by_filter(operator: Any, viewer: Any, worker: Any, define: Any) -> None:
    failed = failed_executions(define, 30)
    body = {"action": "retry", "filter": {"workflow": "fails", "status": "FAILED"}, "reason": "fixed"}

    dry = operator.post(URL, {**body, "dry_run": True}, format="json")
    assert dry.status_code == 200, dry.json()
    assert (dry.json()["count"], dry.json()["sample"]) == (30, sorted(failed)[: bulk.SAMPLE])

    made = operator.post(URL, body, format="json")
    assert made.status_code == 202, made.json()
    op_id = made.json()["id"]
    assert (made.json()["action"], made.json()["total"], made.json()["by"]) == ("retry", 30, "operator")

    done = wait_for(lambda: (got := viewer.get(f"{URL}{op_id}/").json())["status"] == bulk.SUCCEEDED
                    and got, timeout=60, what="the bulk retry to finish")
    assert (done["done"], done["acted"], done["failed"]) == (30, 30, 0)
    assert [retried_by(i, op_id) for i in failed] == [1] * 30
    assert operator.post(f"{URL}{op_id}/cancel/").json()["status"] == bulk.SUCCEEDED  # it ended: kept


def test_bulk_api__bad_requests_name_the_field(operator: Any, viewer: Any) -> None:
    ok = {"action": "retry", "filter": {"status": "FAILED"}, "reason": "fixed"}
    stored = bulk.collection().count_documents({})
    assert_error(operator.post(URL, {**ok, "action": "rerun"}, format="json"), 400, "invalid", "action")
    assert_error(operator.post(URL, {**ok, "reason": " "}, format="json"), 400, "invalid", "reason")
    assert_error(operator.post(URL, {k: v for k, v in ok.items() if k != "reason"}, format="json"),
                 400, "invalid", "reason")
    assert_error(operator.post(URL, {**ok, "filter": {"status": "BROKEN"}}, format="json"), 400,
                 "invalid_choice", "filter.status")
    assert_error(operator.post(URL, {**ok, "filter": {"colour": "red"}}, format="json"), 400,
                 "unknown_field", "filter.colour")
    assert_error(operator.post(URL, {**ok, "filter": {"cursor": "x"}}, format="json"), 400, "invalid",
                 "filter.cursor")
    assert_error(operator.post(URL, {**ok, "filter": {"status": {"$ne": 1}}}, format="json"), 400,
                 "invalid", "filter.status")
    assert_error(operator.post(URL, {**ok, "filter": []}, format="json"), 400, "invalid", "filter")
    assert_error(operator.post(URL, {**ok, "dry_run": "yes"}, format="json"), 400, "invalid", "dry_run")
    assert_error(operator.post(URL, {**ok, "extra": 1}, format="json"), 400, "invalid", "extra")
    assert viewer.post(URL, ok, format="json").status_code == 403
    assert_error(viewer.get(f"{URL}bulk_nope/"), 404, "bulk_operation_not_found")
    assert bulk.collection().count_documents({}) == stored  # nothing refused was stored
