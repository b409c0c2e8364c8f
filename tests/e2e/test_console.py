"""Operators and viewers in the admin console, in a real browser, with real workers behind it."""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import wait_terminal
from tests.e2e.conftest import screenshot

pytestmark = pytest.mark.e2e

SCRIPT = "<script>window.__xss = 1; alert(1)</script>"


def failing_then_fine(define: Any) -> str:
    """Start an execution whose first step fails for good on its first attempt and succeeds on the
    next (``test.flaky``); return its id once it has FAILED."""
    from executions import operations

    define("e2e-flaky", [{"handler": "test.flaky", "retry": {"max_attempts": 1}}, {"handler": "test.echo"}])
    doc, _ = operations.start("e2e-flaky", {"succeed_on": 2})
    (done,) = wait_terminal(doc["_id"])
    assert done["status"] == "FAILED"
    return str(doc["_id"])


def test_operator__filters_failed_opens_one_retries_it_and_sees_it_succeed(
    signed_in: Callable[[str], Any], define: Any, pool: Any,
) -> None:
    from executions import operations

    execution_id = failing_then_fine(define)
    define("e2e-ok", [{"handler": "test.echo"}])
    (ok, _) = operations.start("e2e-ok", {"n": 1})
    wait_terminal(ok["_id"])
    page = signed_in("operator")
    page.wait_for_selector("#detflow-dashboard")
    assert page.locator("#detflow-dashboard .count-failed").inner_text() == "1"
    screenshot(page, "dashboard")

    page.click("a[href='/admin/executions/execution/']")
    page.click("#changelist-filter details[data-filter-title=status] >> text=FAILED")
    rows = page.locator("tr.execution-row")
    assert rows.count() == 1 and "FAILED" in rows.first.inner_text()
    screenshot(page, "executions-list")

    page.click(f"text={execution_id}")
    assert page.locator("#steps .step").count() == 2
    assert page.locator("#timeline svg rect.attempt.failed").count() == 1
    assert "test.flaky" in page.locator("#steps").inner_text()
    assert page.locator("#postmortem-source").inner_text().startswith("rules")
    assert "RetryableError" in page.locator("#postmortem").inner_text()
    screenshot(page, "execution")

    page.click("#actions a.action-retry")
    assert '"succeed_on": 2' in page.input_value("#id_input")  # the form holds the input it reads
    page.fill("#id_reason", "the upstream service is back")
    page.click("#preview-button")
    assert "FAILED → RUNNING" in page.locator("#preview").inner_text()
    page.click("#confirm")
    page.wait_for_url(f"**/admin/executions/execution/{execution_id}/")
    assert "recorded: type=retried" in page.locator(".messagelist").inner_text()
    (done,) = wait_terminal(execution_id)
    assert done["status"] == "SUCCEEDED"
    page.reload()
    assert "SUCCEEDED" in page.locator("#execution-status").inner_text()
    history = page.locator("#events").inner_text()
    assert "retried" in history and "the upstream service is back" in history
    assert page.locator("#timeline svg rect.attempt.succeeded").count() == 2
    # Failed until the operator's retry: drawn as a wait for an operator, not as a retry wait.
    assert page.locator("#timeline svg .operator-wait.retry").count() == 1
    assert page.locator("#timeline svg line.wait").count() == 0
    screenshot(page, "execution-retried")


def test_viewer__sees_no_action_and_a_forged_post_is_refused(
    signed_in: Callable[[str], Any], define: Any, pool: Any,
) -> None:
    from executions import store

    execution_id = failing_then_fine(define)
    page = signed_in("viewer")
    page.goto(f"/admin/executions/execution/{execution_id}/")
    assert page.locator("#steps").is_visible()
    assert page.locator("#actions").count() == 0
    for label in ("Retry", "Cancel", "Skip the failed step"):
        assert page.get_by_role("link", name=label, exact=True).count() == 0
    assert page.locator("#content form[method=post]").count() == 0
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    forged = page.request.post(f"/admin/executions/execution/{execution_id}/retry/",
                               form={"csrfmiddlewaretoken": token, "stage": "confirm", "reason": "forged"},
                               headers={"X-CSRFToken": token})
    assert forged.status == 403
    assert store.load(execution_id)["status"] == "FAILED"


def test_hostile_text__in_input_error_and_postmortem_renders_as_text(
    signed_in: Callable[[str], Any], define: Any, pool: Any,
) -> None:
    from executions import operations

    define("e2e-hostile", [{"handler": "test.fail_with"}])
    doc, _ = operations.start("e2e-hostile", {"message": SCRIPT})
    wait_terminal(doc["_id"])
    page = signed_in("operator")
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"/admin/executions/execution/{doc['_id']}/")
    for section in ("#input", "#steps", "#postmortem"):
        assert SCRIPT in page.locator(section).inner_text(), section
    page.goto(f"/admin/executions/execution/?q={doc['_id']}")
    page.goto("/admin/insights/insight/")
    assert re.search(r"rules", page.locator("#insight-list").inner_text())
    assert dialogs == []
    assert page.evaluate("window.__xss") is None
