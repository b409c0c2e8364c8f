"""The admin's executions list: filters, search and pages as index-backed MongoDB queries.

Every page reads at most ``page_size + 1`` documents through an index declared in
``Execution.meta``, and nothing counts the collection:

- The filters are the API's (``detflow_site.api.filters``): equalities on the leading fields of an
  index followed by ``(created_at, _id)``, which is both the order and the keyset cursor. A
  combination that no index leads with is refused with the combinations that are (a failed step
  implies ``status=FAILED``, which is then dropped).
- Search by id or idempotency key is an exact lookup (the ``_id`` index, the ``idempotency_key``
  index).
- Search by error text cannot be indexed (a regular expression on ``steps.error.message`` would
  make MongoDB read every document when nothing matches). It reads FAILED executions under the
  current filters through the same indexes, newest first, a window of ``SEARCH_WINDOW`` at a
  time, matches the text in the failed steps' errors here, and offers the next window: bounded
  work per request, whatever the collection holds.
- "Stuck" lists the executions overdue by more than the sweeper's grace (``due_at`` index), most
  overdue first.

A page also says whether a bulk operation may take "all matching this filter" (the filters alone: not
a search, nor the stuck list, nor no filter at all) and how many match, counted with a limit
(``MATCH_CAP``) through the list's own index.
"""
from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from detflow_site import conf
from detflow_site.api import filters
from executions import store
from executions.errors import InvalidArgument
from executions.models import Execution
from executions.store import now_ms, to_dt

#: Rows per page.
PAGE_SIZE = 50
#: FAILED executions one error-text search reads per request.
SEARCH_WINDOW = 500
#: Query parameters the list understands.
PARAMETERS = ("status", "workflow", "version", "failed_step", "created_after", "created_before",
              "ordering", "cursor", "q", "stuck")
#: The list's parameters a bulk operation's filter takes (``executions.bulk``, as the API's).
BULK_FILTERS = ("status", "workflow", "version", "failed_step", "created_after", "created_before")
#: Matching executions a page counts at most, for "all N matching this filter".
MATCH_CAP = 1000
#: Fields a row shows (``paused``: its badge), and what an error search reads besides.
ROW_FIELDS = {**dict.fromkeys(filters.SUMMARY_FIELDS, 1), "due_at": 1, "paused": 1}
ERROR_FIELDS = {**ROW_FIELDS, "steps.name": 1, "steps.status": 1, "steps.error": 1}
_HEX_ID = re.compile(r"[0-9a-f]{32}")
#: Query parameter name -> the stored field its equality filters.
_STORED = {"status": "status", "workflow": "workflow", "version": "workflow_version",
           "failed_step": "failed_step"}


@dataclass
class Page:
    """One page of the list."""

    rows: list[dict[str, Any]]
    #: Query string of the next page (``None`` on the last one).
    next_query: str | None = None
    #: What the page is, in words ("search: ...", "the 50 most overdue", ...).
    note: str = ""
    filters: dict[str, str] = field(default_factory=dict)
    #: The filter a bulk operation over "all matching" takes (``None``: not offered, ``bulk_refused``
    #: says why), and how many executions match it now (``MATCH_CAP`` at most).
    bulk_filter: dict[str, str] | None = None
    matching: int = 0
    bulk_refused: str = ""

    @property
    def matching_text(self) -> str:
        """``matching`` as the action bar shows it (``1000+`` at the cap)."""
        return f"{MATCH_CAP}+" if self.matching >= MATCH_CAP else str(self.matching)


def equality_prefixes() -> list[frozenset[str]]:
    """Return the sets of fields that lead an index of ``Execution`` just before ``created_at``."""
    found = []
    for spec in Execution._meta["index_specs"]:
        names = [name for name, _ in spec["fields"]]
        if "created_at" in names:
            found.append(frozenset(names[: names.index("created_at")]))
    return found


def page(params: Mapping[str, str], query_string: Any) -> Page:
    """Return the page ``params`` ask for; raise :class:`InvalidArgument` naming a bad parameter.

    ``query_string(**changes)`` returns the current query string with ``changes`` applied (``None``
    removes a parameter).
    """
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise InvalidArgument(unknown[0], f"unknown parameter; allowed: {', '.join(PARAMETERS)}")
    if params.get("stuck"):
        page = _stuck()
        page.bulk_refused = ("the stuck list is not a filter a bulk operation takes; "
                             "filter by status or workflow instead")
        return page
    api_params = {k: v for k, v in params.items() if k in filters.PARAMETERS and v != ""}
    if api_params.get("failed_step") and api_params.get("status") == "FAILED":
        del api_params["status"]  # implied: only a FAILED execution has a failed step
    query = filters.parse({**api_params, "page_size": str(PAGE_SIZE)})
    used = frozenset(_STORED[k] for k in _STORED if k in api_params)
    prefixes = [p for p in equality_prefixes() if p <= set(_STORED.values())]
    if used not in prefixes:
        combos = sorted(" + ".join(sorted(p)) or "none" for p in prefixes)
        raise InvalidArgument("filters", f"no index serves {' + '.join(sorted(used))} together; "
                                         f"filters that combine: {'; '.join(combos)}")
    text = params.get("q", "").strip()
    if text:
        found = _search(query, text, query_string)
        found.bulk_refused = ("a search (q) is not a filter a bulk operation takes; "
                              "clear the search to act on all that match the filters")
        return found
    rows, cursor = query.page(ROW_FIELDS)
    found = Page(rows, query_string(cursor=cursor) if cursor else None)
    bulk_filter = {k: params[k] for k in BULK_FILTERS if params.get(k)}
    if not bulk_filter:
        found.bulk_refused = "no filter is set; choose a status, a workflow or a date range first"
    else:
        found.bulk_filter = bulk_filter
        if cursor is None and query.after is None:
            found.matching = len(rows)  # the whole match is on this page
        else:
            found.matching = store.collection().count_documents(query.filter, limit=MATCH_CAP)
    return found


def _search(query: filters.ExecutionQuery, text: str, query_string: Any) -> Page:
    exact: list[dict[str, Any]] = []
    if query.after is None:
        if _HEX_ID.fullmatch(text):
            exact += store.collection().find({"_id": text}, ROW_FIELDS).limit(1)
        exact += (store.collection().find({"idempotency_key": text}, ROW_FIELDS)
                  .sort([("created_at", -1), ("_id", -1)]).limit(PAGE_SIZE))
    if "status" in query.filter and query.filter["status"] != "FAILED":
        return Page(exact, None, f"exact id or idempotency key {text!r}; error text is searched in "
                                 "FAILED executions only")
    failed = {**query.filter} if "failed_step" in query.filter else {**query.filter, "status": "FAILED"}
    scan = filters.ExecutionQuery(failed, query.descending, SEARCH_WINDOW, query.after)
    window = list(store.collection().find(scan.find(), ERROR_FIELDS).sort(scan.sort()).limit(SEARCH_WINDOW))
    needle = text.casefold()
    seen = {row["_id"] for row in exact}
    matches = [row for row in window if row["_id"] not in seen and _error_matches(row, needle)]
    next_query = None
    if len(window) == SEARCH_WINDOW:
        next_query = query_string(cursor=filters.encode_cursor(window[-1]))
    span = ""
    if window:
        span = f" (created {_iso(window[0]['created_at'])} to {_iso(window[-1]['created_at'])})"
    note = (f"exact id or idempotency key {text!r}, and error text in {len(window)} FAILED executions"
            f"{span}" + ("; the next page searches further" if next_query else ""))
    return Page(exact + matches, next_query, note)


def _error_matches(row: dict[str, Any], needle: str) -> bool:
    for step in row.get("steps") or []:
        error = step.get("error") or {}
        text = f"{error.get('type')}: {error.get('message')}".casefold()
        if step.get("status") == "FAILED" and needle in text:
            return True
    return False


def _stuck() -> Page:
    grace = dt.timedelta(seconds=conf.get().SWEEP_GRACE_S)
    now = to_dt(now_ms())
    assert now is not None
    rows = list(store.collection().find({"due_at": {"$lt": now - grace}}, ROW_FIELDS)
                .sort("due_at", 1).limit(PAGE_SIZE))
    return Page(rows, None, f"the {PAGE_SIZE} most overdue executions: due more than "
                            f"{grace.total_seconds():g}s ago with no runner having taken them")


def _iso(value: dt.datetime) -> str:
    return value.isoformat(timespec="seconds") + "Z"
