"""Auto-refresh in the admin: the data comes to the operator, and never over a form being filled."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import wait_for, wait_terminal

pytestmark = pytest.mark.e2e

WAIT = {"signal": "go", "timeout_s": 60}


def waiting(define: Any) -> str:
    """Start an execution whose first step waits for the signal ``go``; return its id once it waits."""
    from executions import operations, store

    define("e2e-refresh", [{"name": "approval", "wait": WAIT}, {"handler": "test.echo"}])
    doc, _ = operations.start("e2e-refresh", {"n": 1})
    wait_for(lambda: store.load(doc["_id"])["steps"][0]["status"] == "WAITING", what="the wait to start")
    return str(doc["_id"])


def release(execution_id: str) -> None:
    from executions import operations

    operations.signal(execution_id, "go", {"ok": True}, by="test", reason="released by the test")
    (done,) = wait_terminal(execution_id)
    assert done["status"] == "SUCCEEDED"


def ticks(page: Any) -> int:
    return int(page.locator("#auto-refresh-bar").get_attribute("data-ticks"))


def wait_ticks(page: Any, more: int) -> None:
    """Wait until the refresh has come round ``more`` more times."""
    target = ticks(page) + more
    page.wait_for_function(f"Number(document.getElementById('auto-refresh-bar').dataset.ticks) >= {target}")


def test_list__refresh_pauses_over_a_half_filled_form_and_shows_the_change_once_it_is_left(
    signed_in: Callable[[str], Any], define: Any, pool: Any,
) -> None:
    execution_id = waiting(define)
    page = signed_in("operator")
    page.goto("/admin/executions/execution/")
    toggle = page.locator("#auto-refresh")
    assert not toggle.is_checked() and page.locator("#auto-refresh-state").inner_text() == "off"
    toggle.check()
    row = page.locator("tr.execution-row", has=page.locator(f"a[title='{execution_id}']"))
    assert "RUNNING" in row.inner_text()
    row.locator("input.bulk-select").check()
    page.fill("#bulk-reason", "half typ")
    page.locator("#content h1").click()  # the focus leaves the form; what was typed stays
    release(execution_id)
    swaps = page.locator("#auto-refresh-bar").get_attribute("data-swaps")
    wait_ticks(page, 2)
    assert "paused: a form on this page is being filled" in page.locator("#auto-refresh-state").inner_text()
    assert page.locator("#auto-refresh-bar").get_attribute("data-swaps") == swaps
    assert "RUNNING" in row.inner_text()
    assert row.locator("input.bulk-select").is_checked()
    assert page.input_value("#bulk-reason") == "half typ"

    row.locator("input.bulk-select").uncheck()
    page.fill("#bulk-reason", "")
    page.focus("#searchbar")  # a field with the focus holds it too, even empty
    wait_ticks(page, 1)
    assert "paused: a field has the focus" in page.locator("#auto-refresh-state").inner_text()
    assert "RUNNING" in row.inner_text()
    page.locator("#content h1").click()
    page.wait_for_function(f"""document.querySelector("a[title='{execution_id}']")
        .closest('tr').classList.contains('status-succeeded')""")
    assert "updated" in page.locator("#auto-refresh-state").inner_text()


def test_execution_page__turns_succeeded_without_a_reload_with_the_toggle_remembered(
    signed_in: Callable[[str], Any], define: Any, pool: Any,
) -> None:
    execution_id = waiting(define)
    page = signed_in("operator")
    page.goto("/admin/executions/execution/")
    page.locator("#auto-refresh").check()
    page.goto(f"/admin/executions/execution/{execution_id}/")
    assert page.locator("#auto-refresh").is_checked(), "the toggle is remembered from the list"
    assert "RUNNING" in page.locator("#execution-status").inner_text()
    page.evaluate("window.__same_page = 1")
    release(execution_id)
    page.wait_for_function("document.getElementById('execution-status').innerText.includes('SUCCEEDED')")
    assert page.evaluate("window.__same_page") == 1, "the page was not reloaded"
    assert page.locator("#timeline svg").count() == 1 and "approval" in page.locator("#steps").inner_text()

    page.locator("#auto-refresh").uncheck()
    page.reload()
    assert not page.locator("#auto-refresh").is_checked()
