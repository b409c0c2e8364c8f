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

A page of the filters holds ``page_size`` rows (one of ``PAGE_SIZES``) and pages both ways on the
keyset: "next" reads on from its last row, "previous" reads back from its first row in the reverse
order (``before``), each ``page_size + 1`` rows. It says how many executions match, counted with a
limit (``MATCH_CAP``: "1000+") through the list's own index, and whether a bulk operation may take
"all matching this filter" (the filters alone: not a search, nor the stuck list, nor no filter at
all).
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

#: Rows per page unless ``page_size`` says otherwise, and the sizes a page may have.
PAGE_SIZE = 50
PAGE_SIZES = (25, 50, 100, 200)
#: FAILED executions one error-text search reads per request.
SEARCH_WINDOW = 500
#: Query parameters the list understands.
PARAMETERS = ("status", "workflow", "version", "failed_step", "created_after", "created_before",
              "ordering", "cursor", "before", "q", "stuck", "page_size")
#: The list's parameters a bulk operation's filter takes (``executions.bulk``, as the API's).
BULK_FILTERS = ("status", "workflow", "version", "failed_step", "created_after", "created_before")
#: Matching executions a page counts at most, for "all N matching this filter".
MATCH_CAP = 1000
#: Fields a row shows (``paused``: its badge), and what an error search reads besides.
ROW_FIELDS = {**dict.fromkeys(filters.SUMMARY_FIELDS, 1), "due_at": 1, "paused": 1}
ERROR_FIELDS = {**ROW_FIELDS, "steps.name": 1, "steps.status": 1, "steps.error": 1}
_HEX_ID = re.compile(r"[0-9a-f]{32}")
#: A range every stored ``created_at`` is in: the unfiltered list counts through its index with it.
_EVER = {"$gte": dt.datetime(1970, 1, 1)}
#: Query parameter name -> the stored field its equality filters.
_STORED = {"status": "status", "workflow": "workflow", "version": "workflow_version",
           "failed_step": "failed_step"}


@dataclass
class Page:
    """One page of the list."""

    rows: list[dict[str, Any]]
    #: Query string of the next page (``None`` on the last one).
    next_query: str | None = None
    #: Query string of the previous page (``None`` on the first one, and where a page cannot go back).
    prev_query: str | None = None
    #: What the page is, in words ("search: ...", "the 50 most overdue", ...).
    note: str = ""
    filters: dict[str, str] = field(default_factory=dict)
    #: The filter a bulk operation over "all matching" takes (``None``: not offered, ``bulk_refused``
    #: says why), and how many executions match it now (``MATCH_CAP`` at most).
    bulk_filter: dict[str, str] | None = None
    matching: int = 0
    bulk_refused: str = ""
    #: Whether ``matching`` counts this list's match (a page of the filters; not a search, nor stuck).
    counted: bool = False
    page_size: int = PAGE_SIZE

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
    size = page_size(params)
    if params.get("stuck"):
        page = _stuck(size)
        page.bulk_refused = ("the stuck list is not a filter a bulk operation takes; "
                             "filter by status or workflow instead")
        return page
    if params.get("before") and params.get("cursor"):
        raise InvalidArgument("before", "give cursor (the next page) or before (the previous one), not both")
    api_params = {k: v for k, v in params.items() if k in filters.PARAMETERS and v != ""}
    if api_params.get("failed_step") and api_params.get("status") == "FAILED":
        del api_params["status"]  # implied: only a FAILED execution has a failed step
    query = filters.parse({**api_params, "page_size": str(size)})
    used = frozenset(_STORED[k] for k in _STORED if k in api_params)
    prefixes = [p for p in equality_prefixes() if p <= set(_STORED.values())]
    if used not in prefixes:
        combos = sorted(" + ".join(sorted(p)) or "none" for p in prefixes)
        raise InvalidArgument("filters", f"no index serves {' + '.join(sorted(used))} together; "
                                         f"filters that combine: {'; '.join(combos)}")
    text = params.get("q", "").strip()
    if text:
        if params.get("before"):
            raise InvalidArgument("before", "a search pages forward only; go back to its first page")
        found = _search(query, text, query_string)
        found.bulk_refused = ("a search (q) is not a filter a bulk operation takes; "
                              "clear the search to act on all that match the filters")
        found.page_size = size
        return found
    found = _keyset_page(query, params.get("before"), query_string)
    found.page_size, found.counted = size, True
    first_and_whole = found.next_query is None and found.prev_query is None and query.after is None
    if first_and_whole and not params.get("before"):
        found.matching = len(found.rows)  # the whole match is on this page
    else:
        found.matching = store.collection().count_documents(query.filter or {"created_at": _EVER},
                                                            limit=MATCH_CAP)
    bulk_filter = {k: params[k] for k in BULK_FILTERS if params.get(k)}
    if not bulk_filter:
        found.bulk_refused = "no filter is set; choose a status, a workflow or a date range first"
    else:
        found.bulk_filter = bulk_filter
    return found


def page_size(params: Mapping[str, str]) -> int:
    """Return the page size ``params`` ask for (``PAGE_SIZE`` by default); refuse any but ``PAGE_SIZES``."""
    text = params.get("page_size", "")
    if not text:
        return PAGE_SIZE
    if not text.isdigit() or int(text) not in PAGE_SIZES:
        raise InvalidArgument("page_size", f"must be one of {', '.join(map(str, PAGE_SIZES))}")
    return int(text)


def _keyset_page(query: filters.ExecutionQuery, before: str | None, query_string: Any) -> Page:
    """Return the page after ``query``'s cursor, or, ``before`` a row, the page that ends just
    before it (read in the reverse order from there, then turned round)."""
    if before:
        try:
            at = filters.decode_cursor(before)
        except InvalidArgument as exc:
            raise InvalidArgument("before", exc.reason) from None
        back = filters.ExecutionQuery(query.filter, not query.descending, query.page_size, at)
        rows, further = back.page(ROW_FIELDS)
        rows.reverse()
        if not rows:  # nothing before it any more (purged): the first page
            return _keyset_page(query, None, query_string)
        return Page(rows, query_string(cursor=filters.encode_cursor(rows[-1]), before=None),
                    prev_query=query_string(before=filters.encode_cursor(rows[0]), cursor=None)
                    if further else None)
    rows, cursor = query.page(ROW_FIELDS)
    prev_query = None
    if query.after is not None and rows:
        prev_query = query_string(before=filters.encode_cursor(rows[0]), cursor=None)
    return Page(rows, query_string(cursor=cursor, before=None) if cursor else None, prev_query=prev_query)


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


def _stuck(size: int) -> Page:
    grace = dt.timedelta(seconds=conf.get().SWEEP_GRACE_S)
    now = to_dt(now_ms())
    assert now is not None
    rows = list(store.collection().find({"due_at": {"$lt": now - grace}}, ROW_FIELDS)
                .sort("due_at", 1).limit(size))
    return Page(rows, None, f"the {size} most overdue executions: due more than "
                            f"{grace.total_seconds():g}s ago with no runner having taken them")


def _iso(value: dt.datetime) -> str:
    return value.isoformat(timespec="seconds") + "Z"
