"""The API's own errors, and the one handler that renders every error as JSON.

Every 4xx answer has the same body: ``{"code": <stable code>, "detail": <text>, "fields":
{<field>: [<message>, ...]}}``. ``DetflowError`` subclasses carry their status and code; DRF's
exceptions carry theirs; Django's 404 and 403 are mapped here; an unreachable MongoDB or Redis is a
503 with ``Retry-After``. Anything else is a bug and stays a 500.
"""
from __future__ import annotations

from typing import Any

import pymongo.errors
import redis.exceptions
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response

from executions import store
from executions.errors import InvalidArgument
from workflows.errors import DetflowError


class PayloadTooLarge(DetflowError):
    """The request body is larger than the API accepts."""

    status_code = 413
    default_code = "too_large"


class IdempotencyConflict(DetflowError):
    """An ``Idempotency-Key`` was used before with a different request body."""

    status_code = 409
    default_code = "idempotency_conflict"


class FieldError(InvalidArgument):
    """A request field is unusable, with a code more precise than ``invalid``."""

    def __init__(self, field: str, reason: str, code: str) -> None:
        super().__init__(field, reason)
        self.default_code = code


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Render ``exc`` as the API's error body; ``None`` (a 500) for anything unexpected."""
    headers: dict[str, str] = {}
    if isinstance(exc, DetflowError):
        code, detail, fields = exc.default_code, str(exc), _detflow_fields(exc)
        status_code = exc.status_code
    elif isinstance(exc, exceptions.ValidationError):
        fields = flatten(exc.detail)
        codes = flatten(exc.get_codes())
        code = next((c[0] for c in codes.values() if c), "invalid")
        detail = "; ".join(f"{name}: {' '.join(msgs)}" if name else " ".join(msgs)
                           for name, msgs in fields.items())
        fields.pop("", None)
        status_code = status.HTTP_400_BAD_REQUEST
    elif isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else exc.default_code
        detail, fields, status_code = str(exc.detail), {}, exc.status_code
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))  # type: ignore[attr-defined]
    elif isinstance(exc, Http404):
        code, detail, fields, status_code = "not_found", str(exc) or "Not found.", {}, 404
    elif isinstance(exc, PermissionDenied):
        code, detail, fields, status_code = "permission_denied", str(exc) or "Permission denied.", {}, 403
    elif isinstance(exc, RequestDataTooBig):
        code, detail, fields, status_code = "too_large", str(exc), {}, 413
    elif isinstance(exc, SuspiciousOperation):
        code, detail, fields, status_code = "bad_request", str(exc), {}, 400
    elif isinstance(exc, pymongo.errors.PyMongoError) and store.transient(exc):
        code, fields, status_code = "store_unavailable", {}, 503
        detail = "MongoDB cannot be reached right now; nothing was changed. Try again shortly."
        headers["Retry-After"] = "5"
    elif isinstance(exc, pymongo.errors.PyMongoError):
        # Refused for good (a document the server will not store, say): trying again changes nothing.
        server_code = getattr(exc, "code", None)
        code, fields, status_code = "store_refused", {}, 409
        detail = (f"MongoDB refused the change ({type(exc).__name__}"
                  f"{f', code {server_code}' if server_code else ''}); nothing was changed")
    elif isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        code, fields, status_code = "redis_unavailable", {}, 503
        detail = "Redis cannot be reached right now. Try again shortly."
        headers["Retry-After"] = "5"
    else:
        return None
    return Response({"code": code, "detail": detail, "fields": fields}, status=status_code,
                    headers=headers)


def flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """Return DRF's nested error detail as ``{"a.b[0].c": [messages]}`` (``""``: not a field)."""
    if isinstance(detail, dict):
        out: dict[str, list[str]] = {}
        for key, value in detail.items():
            name = "" if key in ("non_field_errors", "detail") and not prefix else key
            out.update(flatten(value, f"{prefix}.{name}" if prefix and name else prefix or name))
        return out
    if isinstance(detail, list) and any(isinstance(item, (dict, list)) for item in detail):
        out = {}
        for index, item in enumerate(detail):
            out.update(flatten(item, f"{prefix}[{index}]"))
        return out
    items = detail if isinstance(detail, list) else [detail]
    return {prefix: [str(item) for item in items]} if items else {}


def _detflow_fields(exc: DetflowError) -> dict[str, list[str]]:
    field = getattr(exc, "field", None)
    return {field: [str(getattr(exc, "reason", exc))]} if field else {}
