"""The executions list's pages: a page size chosen from a few, next and previous on the keyset, and a
count of the match that stops at a cap."""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

EXECUTIONS = "/admin/executions/execution/"


def page(client: Client, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, response.content[:2000]
    return response.content.decode()


def shown(html: str) -> list[str]:
    """Return the ids of the rows of a list page, in order."""
    return re.findall(r'<th class="execution-id"><a href="[^"]*" title="([0-9a-f]+)"', html)


def link(html: str, element_id: str) -> str | None:
    found = re.search(rf'<a href="([^"]*)" id="{element_id}"', html)
    return None if found is None else EXECUTIONS + found.group(1).replace("&amp;", "&")


def matching(html: str) -> str:
    found = re.search(r'id="matching-count"[^>]*>([^<]*) matching<', html)
    assert found, "the list says how many match"
    return found.group(1)


@pytest.fixture
def five(define: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Five executions in the list's order, and page sizes of 2 and 3 (the default 2)."""
    from detflow_site.console import listing
    from executions import operations

    monkeypatch.setattr(listing, "PAGE_SIZES", (2, 3))
    monkeypatch.setattr(listing, "PAGE_SIZE", 2)
    define("ok", [{"handler": "test.echo"}])
    docs = [operations.start("ok", {"i": i})[0] for i in range(5)]
    # The list's order: newest first, and by id among those started in the same millisecond.
    return [d["_id"] for d in sorted(docs, key=lambda d: (d["created_at"], d["_id"]), reverse=True)]


def test_list__pages_forward_then_back_to_the_same_pages(console_as: Callable[..., Client],
                                                          five: list[str]) -> None:
    viewer = console_as("viewer")
    first = page(viewer, EXECUTIONS)
    assert shown(first) == five[:2] and link(first, "prev-page") is None and link(first, "first-page") is None
    second = page(viewer, link(first, "next-page") or "")
    assert shown(second) == five[2:4]
    third = page(viewer, link(second, "next-page") or "")
    assert shown(third) == five[4:] and link(third, "next-page") is None
    back = page(viewer, link(third, "prev-page") or "")
    assert shown(back) == five[2:4] and link(back, "next-page") and link(back, "first-page")
    start = page(viewer, link(back, "prev-page") or "")
    assert shown(start) == five[:2] and link(start, "prev-page") is None
    assert shown(page(viewer, link(start, "next-page") or "")) == five[2:4]


def test_list__page_size_is_chosen_from_the_offered_ones_and_kept_while_paging(
    console_as: Callable[..., Client], five: list[str],
) -> None:
    viewer = console_as("viewer")
    first = page(viewer, EXECUTIONS + "?workflow=ok&page_size=3")
    assert shown(first) == five[:3]
    assert '<strong class="page-size chosen">3</strong>' in first
    second = page(viewer, link(first, "next-page") or "")
    assert shown(second) == five[3:] and "page_size=3" in (link(second, "prev-page") or "")
    refused = page(viewer, EXECUTIONS + "?workflow=ok&page_size=1000")
    assert 'id="list-error"' in refused and "page_size: must be one of 2, 3" in refused
    assert shown(refused) == []


def test_list__counts_the_match_up_to_the_cap(console_as: Callable[..., Client], five: list[str],
                                              define: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from detflow_site.console import listing
    from tests.integration.admin.conftest import failed_execution

    failed_execution(define)
    viewer = console_as("viewer")
    assert matching(page(viewer, EXECUTIONS)) == "6"
    assert matching(page(viewer, EXECUTIONS + "?workflow=ok")) == "5"
    assert matching(page(viewer, EXECUTIONS + "?status=FAILED")) == "1"
    later = link(page(viewer, EXECUTIONS + "?workflow=ok"), "next-page") or ""
    assert matching(page(viewer, later)) == "5"
    monkeypatch.setattr(listing, "MATCH_CAP", 4)
    assert matching(page(viewer, EXECUTIONS)) == "4+"
    assert 'id="matching-count"' not in page(viewer, EXECUTIONS + "?q=ok")  # a search: no count


def test_list__refuses_a_bad_before_cursor_naming_it(console_as: Callable[..., Client]) -> None:
    html = page(console_as("viewer"), EXECUTIONS + "?before=not-a-cursor")
    assert 'id="list-error"' in html and "before: is not a cursor" in html
    cursor = "WzE3MDAwMDAwMDAwMDAsImZmIl0"
    html = page(console_as("viewer"), EXECUTIONS + f"?before={cursor}&cursor={cursor}")
    assert "give cursor (the next page) or before (the previous one), not both" in html
