"""``/api/v1/bulk-operations/``: retry or cancel every execution a filter matches (operators).

The filter takes the executions list's filters (``status``, ``workflow``, ``version``,
``failed_step``, ``created_after``, ``created_before``), checked by the same code as the list. A dry
run answers the exact count and a sample; a real one stores the operation and a worker runs it
(``executions.bulk``), its progress read at ``GET bulk-operations/{id}/``.
"""
from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from detflow_site.api import filters
from detflow_site.errors import NotFound
from detflow_site.times import to_ms
from executions import bulk
from executions.errors import InvalidArgument

FIELDS = ("action", "filter", "reason", "dry_run")
#: The list's parameters that page or order it: a bulk operation takes every match.
PAGING = ("ordering", "cursor", "page_size")


def shown(doc: dict[str, Any]) -> dict[str, Any]:
    """Return a bulk operation as the API shows it (times in epoch milliseconds)."""
    out = {k: v for k, v in doc.items() if k not in ("_id", "filter", "lease_owner", "bound")}
    out["id"] = doc["_id"]
    for name in ("created_at", "updated_at", "lease_expires_at"):
        out[name] = to_ms(doc.get(name))
    out["created_until"] = to_ms(doc.get("bound"))
    return out


def _query(raw: Any) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidArgument("filter", "must be a JSON object of the executions list's filters")
    for name, value in raw.items():
        if name in PAGING:
            raise InvalidArgument(f"filter.{name}", "a bulk operation takes every matching execution; "
                                                    "it is not paged or ordered")
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise InvalidArgument(f"filter.{name}", "must be text (or a number, for version)")
    try:
        return filters.parse({k: str(v) for k, v in raw.items()}).filter
    except InvalidArgument as exc:
        raise InvalidArgument(f"filter.{exc.field}", exc.reason, exc.default_code) from None


class BulkOperationListView(APIView):
    @extend_schema(operation_id="bulk_operations_create", request=OpenApiTypes.OBJECT,
                   responses=OpenApiTypes.OBJECT,
                   summary="Retry or cancel every execution a filter matches (a dry run counts them)")
    def post(self, request: Request) -> Response:
        body = request.data
        if not isinstance(body, dict):
            raise InvalidArgument("body", "must be a JSON object")
        unknown = sorted(set(body) - set(FIELDS))
        if unknown:
            raise InvalidArgument(unknown[0], f"is not a field; the fields are {', '.join(FIELDS)}")
        action, dry_run = body.get("action"), body.get("dry_run", False)
        if not isinstance(action, str):
            raise InvalidArgument("action", f"is required: one of {', '.join(bulk.ACTIONS)}")
        if not isinstance(dry_run, bool):
            raise InvalidArgument("dry_run", "must be true or false")
        query = _query(body.get("filter"))
        if dry_run:
            return Response({"action": action, "dry_run": True, **bulk.plan(action, query)})
        reason = body.get("reason")
        if not isinstance(reason, str):
            raise InvalidArgument("reason", "a reason is required")
        doc = bulk.create(action, query, reason, request.user.get_username())
        return Response(shown(doc), status=status.HTTP_202_ACCEPTED)


def _found(op_id: str) -> dict[str, Any]:
    doc = bulk.get(op_id)
    if doc is None:
        raise NotFoundOp(f"bulk operation {op_id} does not exist")
    return doc


class NotFoundOp(NotFound):
    default_code = "bulk_operation_not_found"


class BulkOperationDetailView(APIView):
    @extend_schema(operation_id="bulk_operations_retrieve", request=None, responses=OpenApiTypes.OBJECT,
                   summary="A bulk operation's progress")
    def get(self, request: Request, op_id: str) -> Response:
        return Response(shown(_found(op_id)))


class BulkOperationCancelView(APIView):
    @extend_schema(operation_id="bulk_operations_cancel", request=None, responses=OpenApiTypes.OBJECT,
                   summary="Stop a bulk operation before its next batch")
    def post(self, request: Request, op_id: str) -> Response:
        _found(op_id)
        return Response(shown(bulk.cancel(op_id) or _found(op_id)))
