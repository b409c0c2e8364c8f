"""The admin console through Django's test client: pages, filters, search, actions and roles."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from tests.integration.admin.conftest import failed_execution

EXECUTIONS = "/admin/executions/execution/"
SCRIPT = "<script>alert(1)</script>"


def page(client: Client, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, response.content[:2000]
    return response.content.decode()


def test_index__lists_the_document_pages_and_the_dashboard(console_as: Callable[..., Client],
                                                           define: Any) -> None:
    failed_execution(define)
    html = page(console_as("viewer"), "/admin/")
    for link in (EXECUTIONS, "/admin/workflows/workflow/", "/admin/insights/insight/"):
        assert f'href="{link}"' in html
    assert 'id="detflow-dashboard"' in html
    assert 'class="count-failed">1<' in html
    assert "?workflow=fails&amp;status=FAILED&amp;created_after=" in html


def test_console__needs_a_role(console_as: Callable[..., Client], client: Client) -> None:
    assert client.get(EXECUTIONS).status_code == 302  # to the login page
    nobody = console_as("nobody")
    assert nobody.get(EXECUTIONS).status_code == 403
    assert EXECUTIONS not in page(nobody, "/admin/")


def test_list__filters_by_status_and_failed_step(console_as: Callable[..., Client], define: Any) -> None:
    from executions import operations

    failed = failed_execution(define)
    define("ok", [{"handler": "test.echo"}])
    pending, _ = operations.start("ok", {})
    viewer = console_as("viewer")
    html = page(viewer, EXECUTIONS + "?status=FAILED")
    assert failed in html and pending["_id"] not in html
    html = page(viewer, EXECUTIONS + "?workflow=fails&failed_step=s1&status=FAILED")
    assert failed in html
    html = page(viewer, EXECUTIONS + "?workflow=ok")
    assert failed not in html and pending["_id"] in html


def test_list__refuses_a_filter_combination_no_index_serves(console_as: Callable[..., Client]) -> None:
    html = page(console_as("viewer"), EXECUTIONS + "?status=FAILED&failed_step=s1&workflow=w&version=1")
    assert 'id="list-error"' in html and "filters that combine" in html


def test_list__pages_with_a_cursor_and_no_count(console_as: Callable[..., Client], define: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from detflow_site.console import listing
    from executions import operations

    monkeypatch.setattr(listing, "PAGE_SIZE", 2)
    define("ok", [{"handler": "test.echo"}])
    ids = [operations.start("ok", {"i": i})[0]["_id"] for i in range(3)]
    viewer = console_as("viewer")
    first = page(viewer, EXECUTIONS)
    assert sum(i in first for i in ids) == 2 and 'id="next-page"' in first
    next_url = first.split('id="next-page"')[0].rsplit('href="', 1)[1].split('"')[0].replace("&amp;", "&")
    second = page(viewer, EXECUTIONS + next_url)
    assert sum(i in second for i in ids) == 1 and 'id="next-page"' not in second


def test_list__searches_id_idempotency_key_and_error_text(console_as: Callable[..., Client],
                                                          define: Any) -> None:
    from executions import operations

    failed = failed_execution(define)
    define("ok", [{"handler": "test.echo"}])
    keyed, _ = operations.start("ok", {}, idempotency_key="order-42")
    viewer = console_as("viewer")
    assert failed in page(viewer, EXECUTIONS + f"?q={failed}")
    html = page(viewer, EXECUTIONS + "?q=order-42")
    assert keyed["_id"] in html and failed not in html
    html = page(viewer, EXECUTIONS + "?q=never+be+processed")
    assert failed in html and keyed["_id"] not in html and "FAILED executions" in html


def test_execution_page__shows_steps_attempts_timeline_events_diagnosis_and_postmortem(
    console_as: Callable[..., Client], define: Any,
) -> None:
    failed = failed_execution(define)
    html = page(console_as("viewer"), EXECUTIONS + f"{failed}/")
    assert 'id="steps"' in html and "PermanentError: the input can never be processed" in html
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="detflow-timeline"' in html
    assert 'class="attempt failed"' in html
    assert 'id="event-1"' in html and "attempt_failed" in html
    assert "failed for good; the execution waits for an operator" in html
    assert 'id="postmortem-source">rules' in html
    assert 'href="#event-' in html.split('id="postmortem-evidence"')[1]


def test_execution_page__escapes_input_errors_and_postmortems(console_as: Callable[..., Client],
                                                              define: Any) -> None:
    from executions import operations, runner

    define("hostile", [{"handler": "test.fail_with"}])
    doc, _ = operations.start("hostile", {"message": SCRIPT})
    runner.advance(doc["_id"], worker="w1")
    html = page(console_as("operator"), EXECUTIONS + f"{doc['_id']}/")
    assert SCRIPT not in html
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    for section in ("input", "steps", "postmortem", "timeline"):
        assert escaped in html.split(f'id="{section}"')[1], section


def test_viewer__sees_no_action_and_a_forged_post_is_refused(console_as: Callable[..., Client],
                                                             define: Any) -> None:
    from executions import store

    failed = failed_execution(define)
    viewer = console_as("viewer")
    assert 'id="actions"' not in page(viewer, EXECUTIONS + f"{failed}/")
    assert viewer.get(EXECUTIONS + f"{failed}/retry/").status_code == 403
    forged = viewer.post(EXECUTIONS + f"{failed}/retry/", {"stage": "confirm", "reason": "forged"})
    assert forged.status_code == 403
    assert store.load(failed)["status"] == "FAILED"


def test_action__needs_the_csrf_token(console_as: Callable[..., Client], define: Any) -> None:
    from executions import store

    failed = failed_execution(define)
    operator = console_as("operator", csrf_checks=True)
    response = operator.post(EXECUTIONS + f"{failed}/retry/", {"stage": "confirm", "reason": "x"})
    assert response.status_code == 403
    assert store.load(failed)["status"] == "FAILED"


def test_retry__previews_then_records_the_event_with_reason_and_edited_input(
    console_as: Callable[..., Client], define: Any,
) -> None:
    from executions import store

    failed = failed_execution(define)
    operator = console_as("operator")
    html = page(operator, EXECUTIONS + f"{failed}/")
    assert f'href="{EXECUTIONS}{failed}/retry/"' in html
    form = {"stage": "preview", "reason": "fixed upstream", "input": '{"n": 2}'}
    preview = operator.post(EXECUTIONS + f"{failed}/retry/", form).content.decode()
    assert "FAILED &rarr; RUNNING" in preview and 'id="confirm"' in preview
    assert store.load(failed)["status"] == "FAILED"  # a dry run changes nothing
    done = operator.post(EXECUTIONS + f"{failed}/retry/", {**form, "stage": "confirm"})
    assert done.status_code == 302
    doc = store.load(failed)
    event = doc["events"][-1]
    assert (event["type"], event["by"], event["reason"]) == ("retried", "operator", "fixed upstream")
    assert '"new":2' in event["input_diff_json"]
    assert "retried" in page(operator, done["Location"])


def test_actions__say_what_is_wrong_without_changing_anything(console_as: Callable[..., Client],
                                                              define: Any) -> None:
    from executions import store

    failed = failed_execution(define)
    operator = console_as("operator")
    no_reason = operator.post(EXECUTIONS + f"{failed}/skip/", {"stage": "confirm", "reason": " "})
    assert no_reason.status_code == 400 and "a reason is required" in no_reason.content.decode()
    bad_json = operator.post(EXECUTIONS + f"{failed}/skip/",
                             {"stage": "confirm", "reason": "r", "output": "{nope"})
    assert bad_json.status_code == 400 and "is not JSON" in bad_json.content.decode()
    cancel = operator.post(EXECUTIONS + f"{failed}/cancel/", {"stage": "confirm", "reason": "r"})
    assert cancel.status_code == 400 and "only PENDING or RUNNING" in cancel.content.decode()
    assert store.load(failed)["status"] == "FAILED"


def test_skip_and_cancel__record_their_events(console_as: Callable[..., Client], define: Any) -> None:
    from executions import operations, store

    failed = failed_execution(define)
    operator = console_as("operator")
    operator.post(EXECUTIONS + f"{failed}/skip/", {"stage": "confirm", "reason": "not needed",
                                                   "output": '{"skipped": true}'})
    skipped = store.load(failed)
    assert next(e for e in skipped["events"] if e["type"] == "skipped")["reason"] == "not needed"
    assert skipped["steps"][0]["output_json"] == '{"skipped":true}'
    define("ok", [{"handler": "test.echo"}])
    pending, _ = operations.start("ok", {})
    operator.post(EXECUTIONS + f"{pending['_id']}/cancel/", {"stage": "confirm", "reason": "withdrawn"})
    assert store.load(pending["_id"])["status"] == "CANCELLED"


def test_workflow_page__shows_policies_worst_case_and_version_statistics(
    console_as: Callable[..., Client], define: Any,
) -> None:
    failed_execution(define)
    html = page(console_as("viewer"), "/admin/workflows/workflow/fails/")
    # s1: 3 attempts of 60 s and delays of 0.05 s and 0.1 s; s2 the same: 2 x 180.15 s.
    assert 'class="worst-case">360.3 s<' in html
    assert "1 executions" in html and "success rate 0.0 %" in html
    assert page(console_as("viewer"), "/admin/workflows/workflow/nothing/", 404)


def test_execution_page__a_step_that_succeeded_shows_no_error_its_failed_attempt_keeps_it(
    console_as: Callable[..., Client], define: Any, worker: Any,
) -> None:
    from executions import operations, store
    from tests.conftest import wait_terminal

    define("flaky-once", [{"handler": "test.flaky"}])
    eid = operations.start("flaky-once", {"succeed_on": 2})[0]["_id"]
    wait_terminal(eid)
    # A document stored before the error moved to its attempt still carries it on the step.
    store.collection().update_one({"_id": eid}, {"$set": {"steps.0.error": {
        "type": "workflows.errors.RetryableError", "message": "transient failure on attempt 1"}}})

    html = page(console_as("viewer"), f"/admin/executions/execution/{eid}/")
    step = html.split('id="step-0"', 1)[1].split('class="step"', 1)[0]

    assert '<p class="errortext">' not in step.split("<table", 1)[0]  # none under the badge
    assert "transient failure on attempt 1" in step  # the failed attempt's row keeps it


def test_workflow_page__shows_the_input_schema(console_as: Callable[..., Client], define: Any) -> None:
    define("typed", [{"handler": "test.echo"}], input_schema={"type": "object", "required": ["amount"]})
    define("untyped", [{"handler": "test.echo"}])

    typed = page(console_as("viewer"), "/admin/workflows/workflow/typed/")
    untyped = page(console_as("viewer"), "/admin/workflows/workflow/untyped/")

    assert 'id="input-schema-1"' in typed and "&quot;required&quot;: [\n    &quot;amount&quot;" in typed
    assert "Any input (no input schema)" in untyped and 'id="input-schema-1"' not in untyped


def test_insights_page__lists_postmortems_with_source_and_execution(console_as: Callable[..., Client],
                                                                   define: Any) -> None:
    from insights import service

    failed = failed_execution(define)
    service.postmortem(failed)
    html = page(console_as("viewer"), "/admin/insights/insight/")
    assert f'href="{EXECUTIONS}{failed}/#postmortem"' in html and 'class="source">rules<' in html


def test_dashboard__is_cached_between_loads(console_as: Callable[..., Client], define: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.cache import cache

    from detflow_site.console import aggregates

    failed_execution(define)
    computed = []
    original = aggregates._dashboard
    monkeypatch.setattr(aggregates, "_dashboard", lambda now: computed.append(now) or original(now))
    viewer = console_as("viewer")
    page(viewer, "/admin/")
    assert cache.get(aggregates.DASHBOARD_KEY) is not None
    page(viewer, "/admin/")
    assert len(computed) == 1
