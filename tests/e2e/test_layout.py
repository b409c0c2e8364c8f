"""The executions list at the widths operators use: the table beside the filter panel, never under it."""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import screenshot

pytestmark = pytest.mark.e2e

#: The columns of the list, in order, after the row checkbox.
COLUMNS = ["execution", "status", "workflow", "started (utc)", "duration", "failed step", "idempotency key"]
LONG_KEY = "order-2026-12-02-customer-4f1c9a7e-" + "x" * 80


def some_executions(define: Any) -> None:
    """Store a FAILED execution with a long idempotency key and a long failed step's name, and a
    SUCCEEDED one (run here, no worker)."""
    from executions import operations, runner

    define("layout-workflow-with-a-long-name", [
        {"name": "charge-the-customers-card-after-checking", "handler": "test.permanent"},
        {"handler": "test.echo"},
    ])
    define("layout-ok", [{"handler": "test.echo"}])
    for workflow, key in (("layout-workflow-with-a-long-name", LONG_KEY), ("layout-ok", None)):
        doc, _ = operations.start(workflow, {"n": 1}, idempotency_key=key)
        runner.advance(doc["_id"], worker="test")


def box(page: Any, selector: str) -> dict[str, float]:
    found = page.locator(selector).first.bounding_box()
    assert found is not None, f"{selector} is not displayed"
    return dict(found)


@pytest.mark.parametrize("width", [1280, 1400, 1920])
def test_executions_list__at_width_sits_beside_the_filter_panel_with_every_column_on_one_line(
    signed_in: Callable[[str], Any], define: Any, width: int,
) -> None:
    some_executions(define)
    page = signed_in("operator")
    page.set_viewport_size({"width": width, "height": 900})
    page.goto("/admin/executions/execution/")
    assert page.locator("#bulk-bar").is_visible() and page.locator("input.bulk-select").count() == 2
    screenshot(page, f"executions-list-{width}")

    panel = box(page, "#changelist-filter")
    for region in ("#result_list", "#bulk-bar", "#toolbar", ".paginator"):
        found = box(page, region)
        assert found["x"] + found["width"] <= panel["x"], f"{region} runs under the panel: {found} {panel}"
    assert panel["x"] + panel["width"] <= width, "the filter panel leaves the window"

    headers = page.locator("#result_list thead th")
    names = [headers.nth(i).inner_text().strip().lower() for i in range(headers.count())]
    assert [n.rstrip(" ↓↑") for n in names[1:]] == COLUMNS
    results = box(page, "#changelist .results")
    for i in range(headers.count()):
        cell = headers.nth(i).bounding_box()
        assert cell is not None and cell["width"] >= (16 if i == 0 else 60), f"column {names[i]!r} is hidden"
        right = results["x"] + results["width"] + 0.5
        assert results["x"] <= cell["x"] and cell["x"] + cell["width"] <= right, \
            f"column {names[i]!r} is outside the visible table"

    rows = page.locator("tr.execution-row")
    line = page.evaluate("parseFloat(getComputedStyle(document.querySelector('#result_list td')).lineHeight)"
                         " || 18")
    for i in range(rows.count()):
        height = rows.nth(i).bounding_box()["height"]
        assert height < 2 * line + 12, f"row {i} wraps: {height}px high, lines of {line}px"

    key = page.locator(f"tr.execution-row td.idempotency-key[title='{LONG_KEY}']")
    assert key.count() == 1
    assert key.evaluate("e => e.scrollWidth > e.clientWidth"), "the long key is cut with an ellipsis"
    execution = page.locator("tr.execution-row th.execution-id a").first
    assert execution.get_attribute("title") == execution.inner_text()


def contrast(page: Any, selector: str, background_of: str) -> float:
    """Return the contrast ratio (WCAG) of ``selector``'s text on ``background_of``'s background."""

    def luminance(css: str) -> float:
        red, green, blue = (int(v) / 255 for v in re.findall(r"[\d.]+", css)[:3])
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (red, green, blue)]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    fore = page.eval_on_selector(selector, "e => getComputedStyle(e).color")
    back = page.eval_on_selector(background_of, "e => getComputedStyle(e).backgroundColor")
    light, dark = sorted((luminance(fore), luminance(back)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_workflow_page__header_text_is_legible_on_the_header(signed_in: Callable[[str], Any],
                                                             define: Any) -> None:
    define("layout-ok", [{"handler": "test.echo"}])
    page = signed_in("viewer")
    page.goto("/admin/workflows/workflow/layout-ok/")
    assert "registered" in page.locator("#version-1 h2 .quiet").inner_text()
    assert contrast(page, "#version-1 h2 .quiet", "#version-1 h2") >= 4.5


@pytest.mark.parametrize("width", [1280, 1920])
def test_dashboard__at_width_puts_its_panels_side_by_side_across_the_page(
    signed_in: Callable[[str], Any], define: Any, width: int,
) -> None:
    some_executions(define)
    page = signed_in("viewer")
    page.set_viewport_size({"width": width, "height": 900})
    page.goto("/admin/")
    screenshot(page, f"dashboard-{width}")
    panels = [box(page, f"#{name}") for name in ("detflow-dashboard", "detflow-failure-rates",
                                                 "detflow-slow-steps", "detflow-stuck")]
    assert panels[0]["y"] == panels[1]["y"] and panels[0]["x"] < panels[1]["x"], "two panels side by side"
    assert panels[1]["x"] >= panels[0]["x"] + panels[0]["width"], "the panels do not overlap"
    used = max(p["x"] + p["width"] for p in panels) - min(p["x"] for p in panels)
    assert used >= 0.8 * width, f"the dashboard uses {used}px of {width}px"
