"""``GET executions/``: query parameters checked and turned into one index-backed MongoDB query.

Each filter is an equality on the leading fields of an index declared in ``Execution.meta``, and
the order is the index's trailing ``(created_at, _id)``, so a page reads ``page_size + 1``
documents whatever the collection's size. The cursor is the last row's ``(created_at, _id)``.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.utils.dateparse import parse_date, parse_datetime

from detflow_site.api.serializers import MAX_VERSION
from detflow_site.errors import InvalidArgument
from detflow_site.times import naive_utc, to_dt, to_ms
from executions import store
from executions.engine import ExecutionStatus

#: Rows per page unless ``page_size`` says otherwise, and the most it may say.
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
#: ``ordering`` values: newest first (the default) or oldest first.
ORDERINGS = ("-created_at", "created_at")
PARAMETERS = ("status", "workflow", "version", "created_after", "created_before", "failed_step",
              "ordering", "cursor", "page_size")
#: Fields the list shows; the rest (steps, events) stays in MongoDB.
SUMMARY_FIELDS = ("workflow", "workflow_version", "status", "idempotency_key", "failed_step",
                  "failed_compensation", "created_at", "updated_at", "finished_at")


@dataclass(frozen=True)
class ExecutionQuery:
    """A checked ``GET executions/`` request."""

    filter: dict[str, Any]
    descending: bool
    page_size: int
    after: tuple[int, str] | None

    def find(self) -> dict[str, Any]:
        """Return the MongoDB filter, the cursor's position included."""
        if self.after is None:
            return self.filter
        at, last_id = to_dt(self.after[0]), self.after[1]
        op = "$lt" if self.descending else "$gt"
        return {"$and": [self.filter, {"$or": [{"created_at": {op: at}},
                                               {"created_at": at, "_id": {op: last_id}}]}]}

    def sort(self) -> list[tuple[str, int]]:
        direction = -1 if self.descending else 1
        return [("created_at", direction), ("_id", direction)]

    def page(self, projection: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
        """Return this page's rows (``page_size`` at most, of ``page_size + 1`` read) with the fields
        ``projection`` names, and the cursor of the next page (``None`` on the last one)."""
        rows = list(store.collection().find(self.find(), projection).sort(self.sort())
                    .limit(self.page_size + 1))
        if len(rows) <= self.page_size:
            return rows, None
        rows = rows[: self.page_size]
        return rows, encode_cursor(rows[-1])


def parse(params: Mapping[str, str]) -> ExecutionQuery:
    """Check the query parameters; raise :class:`InvalidArgument` naming the first bad one."""
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise InvalidArgument(unknown[0], f"unknown parameter; allowed: {', '.join(PARAMETERS)}",
                              "unknown_field")
    found: dict[str, Any] = {}
    if "status" in params:
        found["status"] = _choice(params, "status", [s.value for s in ExecutionStatus])
    for name in ("workflow", "failed_step"):
        if name in params:
            found[name] = _name(params, name)
    if "version" in params:
        if "workflow" not in params:
            raise InvalidArgument("version", "needs workflow: versions are numbered per workflow", "invalid")
        found["workflow_version"] = integer(params, "version", 1, MAX_VERSION)
    created: dict[str, dt.datetime] = {}
    if "created_after" in params:
        created["$gte"] = _datetime(params, "created_after")
    if "created_before" in params:
        created["$lt"] = _datetime(params, "created_before")
    if created:
        found["created_at"] = created
    ordering = _choice(params, "ordering", list(ORDERINGS)) if "ordering" in params else ORDERINGS[0]
    page_size = integer(params, "page_size", 1, MAX_PAGE_SIZE) if "page_size" in params else PAGE_SIZE
    after = decode_cursor(params["cursor"]) if "cursor" in params else None
    return ExecutionQuery(found, ordering.startswith("-"), page_size, after)


def encode_cursor(doc: Mapping[str, Any]) -> str:
    """Return the cursor that continues after ``doc``."""
    text = json.dumps([to_ms(doc["created_at"]), doc["_id"]], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(value: str) -> tuple[int, str]:
    try:
        text = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        at, last_id = json.loads(text)
        if isinstance(at, bool) or not isinstance(at, int) or not isinstance(last_id, str):
            raise ValueError
        to_dt(at)
    except (binascii.Error, ValueError, TypeError, OverflowError, UnicodeDecodeError):
        raise InvalidArgument("cursor", "is not a cursor this API returned; use the `next` link as it is",
                              "invalid") from None
    return at, last_id


def _choice(params: Mapping[str, str], name: str, allowed: list[str]) -> str:
    value = params[name]
    if value not in allowed:
        raise InvalidArgument(name, f"{value!r} is not one of: {', '.join(allowed)}", "invalid_choice")
    return value


def _name(params: Mapping[str, str], name: str) -> str:
    value = params[name]
    if not value or len(value) > 100:
        raise InvalidArgument(name, "must be 1 to 100 characters", "invalid")
    return value


def integer(params: Mapping[str, str], name: str, low: int, high: int) -> int:
    """Return query parameter ``name`` as an integer from ``low`` to ``high``."""
    value = params[name]
    if not (value.isascii() and value.isdigit() and len(value) <= 19 and low <= int(value) <= high):
        raise InvalidArgument(name, f"must be an integer from {low} to {high}", "invalid")
    return int(value)


def _datetime(params: Mapping[str, str], name: str) -> dt.datetime:
    value = params[name]
    try:
        parsed = parse_datetime(value)
        if parsed is None and (day := parse_date(value)) is not None:
            parsed = dt.datetime.combine(day, dt.time())
        if parsed is None:
            raise ValueError
        parsed = naive_utc(parsed)
    except (ValueError, OverflowError):
        raise InvalidArgument(name, f"{value!r} is not an ISO 8601 date-time such as 2025-01-31T12:00:00Z",
                              "invalid") from None
    return parsed.replace(microsecond=parsed.microsecond // 1000 * 1000)
