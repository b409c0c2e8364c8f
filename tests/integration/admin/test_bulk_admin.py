"""Bulk operations in the admin: row selection and "all matching this filter" on the executions list,
the dry run and its confirmation, the operations' pages, the roles, bad input, the Paused badge."""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from executions import bulk, operations
from executions.store import now_ms, to_dt
from tests.conftest import wait_for, wait_terminal
from tests.integration.support import events_of, loaded

EXECUTIONS = "/admin/executions/execution/"
BULK = "/admin/executions/bulkoperation/"
NEW = BULK + "new/"


def failed(define: Any, count: int, name: str = "fails") -> list[str]:
    """Start ``count`` executions of ``name`` whose one step fails for good; return their ids once FAILED."""
    define(name, [{"handler": "test.permanent"}])
    ids = [operations.start(name, {"n": n})[0]["_id"] for n in range(count)]
    assert {d["status"] for d in wait_terminal(*ids, timeout=60)} == {"FAILED"}
    return ids


def retried_by(execution_id: str, op_id: str) -> list[dict[str, Any]]:
    return [e for e in events_of(loaded(execution_id), "retried") if e.get("bulk") == op_id]


def finished(op_id: str) -> dict[str, Any]:
    return wait_for(lambda: (o := bulk.get(op_id)) and o["status"] == bulk.SUCCEEDED and o,
                    timeout=60, what=f"bulk operation {op_id} to finish")


def versions(ids: list[str]) -> list[int]:
    return [loaded(i)["version"] for i in ids]


def confirmed(response: Any) -> str:
    """Return the id of the bulk operation a confirmation redirected to."""
    assert response.status_code == 302, response.content[:2000]
    found = re.fullmatch(BULK + r"(bulk_[0-9a-f]+)/", response["Location"])
    assert found, response["Location"]
    return found.group(1)


def test_selected_rows__dry_run_counts_them_then_confirm_retries_each_once(
    console_as: Callable[..., Client], define: Any, worker: Any,
) -> None:
    ids = failed(define, 4)
    chosen, left = sorted(ids[:3]), ids[3]
    operator = console_as("operator")
    listed = operator.get(EXECUTIONS + "?status=FAILED").content.decode()
    assert listed.count('name="ids"') == 4 and 'id="select-page"' in listed and 'id="bulk-form"' in listed
    assert f'href="{BULK}" id="bulk-operations-link"' in listed
    form = {"action": "retry", "reason": "upstream fixed", "scope": "selected", "ids": chosen}
    before = versions(ids)

    dry = operator.post(NEW, form)

    html = dry.content.decode()
    assert dry.status_code == 200, html[:2000]
    assert 'id="bulk-count"' in html and "<strong>3</strong>" in html
    assert all(i in html for i in chosen) and left not in html
    assert "3 of them are FAILED or COMPENSATION_FAILED" in html
    assert versions(ids) == before  # a dry run changes nothing

    op_id = confirmed(operator.post(NEW, {**form, "confirmed": "1"}))

    done = finished(op_id)
    assert (done["total"], done["done"], done["acted"], done["skipped"], done["failed"]) == (3, 3, 3, 0, 0)
    for execution_id in chosen:
        [event] = retried_by(execution_id, op_id)
        assert (event["by"], event["reason"]) == ("operator", "upstream fixed")
    assert events_of(loaded(left), "retried") == []
    page = operator.get(BULK + f"{op_id}/").content.decode()
    assert '<td id="bulk-acted">3</td>' in page and "3 selected executions" in page
    assert 'id="cancel-button"' not in page  # finished: nothing to cancel
    assert op_id in operator.get(BULK).content.decode()


def test_select_all_on_this_page__takes_every_row_of_the_page(
    console_as: Callable[..., Client], define: Any, worker: Any,
) -> None:
    ids = failed(define, 2)
    dry = console_as("operator").post(NEW, {"action": "retry", "reason": "r", "scope": "selected",
                                            "select_page": "1", "page_ids": ids})
    assert dry.status_code == 200 and "<strong>2</strong>" in dry.content.decode()


def test_all_matching__acts_on_exactly_the_filter_through_the_bulk_runner(
    console_as: Callable[..., Client], define: Any, worker: Any,
) -> None:
    matching = failed(define, 3, "fails")
    other_workflow = failed(define, 2, "other")
    define("ok", [{"handler": "test.echo"}])
    succeeded = [operations.start("ok", {})[0]["_id"]]
    wait_terminal(*succeeded)
    operator = console_as("operator")
    listed = operator.get(EXECUTIONS + "?status=FAILED&workflow=fails").content.decode()
    assert 'id="scope-filter"' in listed and "all 3 matching this filter" in listed
    form = {"action": "retry", "reason": "bad deploy", "scope": "filter", "status": "FAILED",
            "workflow": "fails"}

    dry = operator.post(NEW, form)
    assert dry.status_code == 200 and "<strong>3</strong>" in dry.content.decode()
    op_id = confirmed(operator.post(NEW, {**form, "confirmed": "1"}))

    done = finished(op_id)
    assert (done["total"], done["acted"], done["skipped"], done["failed"]) == (3, 3, 0, 0)
    assert done["filter"] == {"status": "FAILED", "workflow": "fails"} and done["by"] == "operator"
    assert [len(retried_by(i, op_id)) for i in matching] == [1, 1, 1]
    assert all(events_of(loaded(i), "retried") == [] for i in other_workflow + succeeded)


def test_all_matching__is_not_offered_for_a_search_or_without_a_filter(
    console_as: Callable[..., Client], define: Any, worker: Any,
) -> None:
    [execution_id] = failed(define, 1)
    operator = console_as("operator")
    searched = operator.get(EXECUTIONS + f"?q={execution_id}").content.decode()
    unfiltered = operator.get(EXECUTIONS).content.decode()
    assert 'id="scope-filter"' not in searched and "a search (q) is not a filter" in searched
    assert 'id="scope-filter"' not in unfiltered and "no filter is set" in unfiltered
    # A forged "all matching" with a search is refused too.
    refused = operator.post(NEW, {"action": "retry", "reason": "r", "scope": "filter", "q": "x",
                                  "status": "FAILED"})
    assert refused.status_code == 400 and "q: a search" in refused.content.decode()


def test_viewer__sees_no_checkboxes_and_may_not_post(console_as: Callable[..., Client], define: Any,
                                                     worker: Any) -> None:
    ids = failed(define, 2)
    viewer = console_as("viewer")
    listed = viewer.get(EXECUTIONS + "?status=FAILED").content.decode()
    assert ids[0] in listed and 'name="ids"' not in listed and 'id="bulk-form"' not in listed
    stored = bulk.collection().count_documents({})
    before = versions(ids)

    for form in ({"action": "retry", "reason": "r", "scope": "selected", "ids": ids},
                 {"action": "retry", "reason": "r", "scope": "selected", "ids": ids, "confirmed": "1"}):
        assert viewer.post(NEW, form).status_code == 403

    assert bulk.collection().count_documents({}) == stored and versions(ids) == before


ONE = ["0" * 32]


@pytest.mark.parametrize(("form", "named"), [
    ({"action": "retry", "reason": "  ", "scope": "selected", "ids": ONE}, "reason: is required"),
    ({"action": "delete", "reason": "r", "scope": "selected", "ids": ONE}, "action: &#x27;delete&#x27;"),
    ({"action": "retry", "reason": "r", "scope": "selected"}, "ids: no execution is selected"),
    ({"action": "retry", "reason": "r", "scope": "selected", "ids": ["../x"]},
     "ids: &#x27;../x&#x27; is not"),
    ({"action": "retry", "reason": "r", "scope": "selected", "ids": [f"{n:032x}" for n in range(201)]},
     "ids: at most 200"),
    ({"action": "retry", "reason": "r", "scope": "everything"}, "scope: choose"),
    ({"action": "retry", "reason": "r", "scope": "filter"}, "filter: no filter is set"),
    ({"action": "retry", "reason": "r", "scope": "filter", "status": "BROKEN"}, "status: &#x27;BROKEN&#x27;"),
    ({"action": "cancel", "reason": "r", "scope": "filter", "version": "2"}, "version: needs workflow"),
], ids=["no-reason", "unknown-action", "empty-selection", "bad-id", "too-many", "bad-scope",
        "no-filter", "bad-status", "version-alone"])
def test_bad_input__answers_a_400_page_naming_the_field_and_stores_nothing(
    console_as: Callable[..., Client], form: dict[str, Any], named: str,
) -> None:
    operator = console_as("operator")
    stored = bulk.collection().count_documents({})

    for stage in ({}, {"confirmed": "1"}):
        response = operator.post(NEW, {**form, **stage})
        html = response.content.decode()
        assert response.status_code == 400, html[:2000]
        assert 'id="bulk-error"' in html and named in html, html[:3000]

    assert bulk.collection().count_documents({}) == stored


def test_operation_pages__list_newest_first_and_cancel_an_open_one(
    console_as: Callable[..., Client], define: Any,
) -> None:
    from detflow_site.api import filters

    older = bulk.store_op("retry", {"workflow": "a"}, "first", "ann")
    dated = bulk.store_op("retry", filters.parse({"created_after": "2020-01-01"}).filter, "third", "cy")
    bulk.cancel(dated["_id"])
    newer = bulk.store_op("cancel", {"_id": {"$in": ["0" * 32]}}, "second", "bob")
    # A second earlier, so the order does not rest on the ids of two made in one millisecond.
    bulk.collection().update_one({"_id": older["_id"]},
                                 {"$set": {"created_at": to_dt(now_ms() - 1000)}})
    viewer, operator = console_as("viewer"), console_as("operator")

    listed = viewer.get(BULK).content.decode()
    assert listed.index(newer["_id"]) < listed.index(older["_id"])
    assert "workflow=a" in listed and "1 selected execution" in listed
    assert "created_at &gt;= 2020-01-01T00:00:00Z" in listed
    assert 'id="cancel-button"' not in viewer.get(BULK + f"{older['_id']}/").content.decode()
    assert 'id="cancel-button"' in operator.get(BULK + f"{older['_id']}/").content.decode()
    assert viewer.post(BULK + f"{older['_id']}/cancel/").status_code == 403
    assert bulk.get(older["_id"])["status"] == bulk.PENDING  # type: ignore[index]

    cancelled = operator.post(BULK + f"{older['_id']}/cancel/")

    assert cancelled.status_code == 302 and cancelled["Location"] == BULK + f"{older['_id']}/"
    assert bulk.get(older["_id"])["status"] == bulk.CANCELLED  # type: ignore[index]
    assert bulk.get(newer["_id"])["status"] == bulk.PENDING  # type: ignore[index]
    assert viewer.get(BULK + "bulk_nope/").status_code == 404
    assert viewer.get(BULK + "?cursor=garbage").status_code == 400
    bulk.cancel(newer["_id"])


def test_paused_badge__shows_on_a_paused_executions_row(console_as: Callable[..., Client],
                                                        define: Any) -> None:
    define("slow", [{"handler": "test.echo"}])
    paused, _ = operations.start("slow", {})
    running, _ = operations.start("slow", {})
    operations.pause(paused["_id"], "ann", "disk full")

    html = console_as("viewer").get(EXECUTIONS + "?workflow=slow").content.decode()

    row = r'<tr class="execution-row[^"]*">(?:(?!</tr>).)*{}(?:(?!</tr>).)*</tr>'
    rows = {i: re.search(row.format(i), html, re.S) for i in (paused["_id"], running["_id"])}
    assert all(rows.values()), html[:3000]
    assert "Paused" in rows[paused["_id"]].group(0)  # type: ignore[union-attr]
    assert "itself: by ann, disk full" in rows[paused["_id"]].group(0)  # type: ignore[union-attr]
    assert "Paused" not in rows[running["_id"]].group(0)  # type: ignore[union-attr]


def test_all_matching__counts_past_the_page_and_stops_counting_at_the_cap(
    console_as: Callable[..., Client], define: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from detflow_site.console import listing
    from executions import runner

    define("fails", [{"handler": "test.permanent"}])
    for n in range(listing.PAGE_SIZE + 5):
        runner.advance(operations.start("fails", {"n": n})[0]["_id"], worker="test")
    operator = console_as("operator")

    listed = operator.get(EXECUTIONS + "?status=FAILED").content.decode()
    monkeypatch.setattr(listing, "MATCH_CAP", listing.PAGE_SIZE + 2)
    capped = operator.get(EXECUTIONS + "?status=FAILED").content.decode()

    assert listed.count('name="ids"') == listing.PAGE_SIZE
    assert f"all {listing.PAGE_SIZE + 5} matching this filter" in listed
    assert f"all {listing.PAGE_SIZE + 2}+ matching this filter" in capped
