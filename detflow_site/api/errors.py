"""The API's one exception handler: every refusal converted once to a ``DetflowError``, rendered once.

Every 4xx (and 503) answer has the same body: ``{"code": <stable code>, "detail": <text>, "fields":
{<field>: [<message>, ...]}}``. A ``DetflowError`` carries its status, code, fields and headers
(``detflow_site.errors``); what DRF, Django, pymongo and redis raise is converted by :data:`CONVERSIONS`,
the one table of foreign errors. Anything else is a bug and stays a 500.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pymongo.errors
import redis.exceptions
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404
from rest_framework import exceptions
from rest_framework.response import Response

from detflow_site.errors import (
    DetflowError,
    NotFound,
    PayloadTooLarge,
    RedisUnavailable,
    StoreRefused,
    StoreUnavailable,
)
from executions import store


class Refused(DetflowError):
    """A refusal DRF or Django raised, with the status, code, fields and headers it carries."""

    def __init__(self, status: int, code: str, detail: str, fields: dict[str, list[str]] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail, code=code)
        self.status_code = status
        self._fields = fields or {}
        self._headers = dict(headers or {})

    def fields(self) -> dict[str, list[str]]:
        return self._fields

    def headers(self) -> Mapping[str, str]:
        return self._headers


def _invalid(exc: exceptions.ValidationError) -> DetflowError:
    fields = flatten(exc.detail)
    codes = flatten(exc.get_codes())
    code = next((c[0] for c in codes.values() if c), "invalid")
    detail = "; ".join(f"{name}: {' '.join(msgs)}" if name else " ".join(msgs)
                       for name, msgs in fields.items())
    fields.pop("", None)
    return Refused(400, code, detail, fields)


def _drf(exc: exceptions.APIException) -> DetflowError:
    codes = exc.get_codes()
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))  # type: ignore[attr-defined]
    return Refused(exc.status_code, codes if isinstance(codes, str) else exc.default_code, str(exc.detail),
                   headers=headers)


def _store(exc: pymongo.errors.PyMongoError) -> DetflowError:
    if store.transient(exc):
        return StoreUnavailable("MongoDB cannot be reached right now; nothing was changed. "
                                "Try again shortly.")
    # Refused for good (a document the server will not store, say): trying again changes nothing.
    server_code = getattr(exc, "code", None)
    return StoreRefused(f"MongoDB refused the change ({type(exc).__name__}"
                        f"{f', code {server_code}' if server_code else ''}); nothing was changed")


Kinds = type[BaseException] | tuple[type[BaseException], ...]
#: Foreign errors and their conversion, the first match taken: the only place the API knows them.
CONVERSIONS: list[tuple[Kinds, Callable[[Any], DetflowError]]] = [
    (exceptions.ValidationError, _invalid),
    (exceptions.APIException, _drf),
    (Http404, lambda exc: NotFound(str(exc) or "Not found.")),
    (PermissionDenied, lambda exc: Refused(403, "permission_denied", str(exc) or "Permission denied.")),
    (RequestDataTooBig, lambda exc: PayloadTooLarge(str(exc))),
    (SuspiciousOperation, lambda exc: Refused(400, "bad_request", str(exc))),
    (pymongo.errors.PyMongoError, _store),
    ((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError),
     lambda exc: RedisUnavailable("Redis cannot be reached right now. Try again shortly.")),
]


def convert(exc: BaseException) -> DetflowError | None:
    """Return ``exc`` as a ``DetflowError``; ``None`` for what no refusal explains (a bug)."""
    if isinstance(exc, DetflowError):
        return exc
    for kind, conversion in CONVERSIONS:
        if isinstance(exc, kind):
            return conversion(exc)
    return None


def render(error: DetflowError) -> Response:
    """Return the API's error answer for ``error``."""
    return Response({"code": error.default_code, "detail": str(error), "fields": error.fields()},
                    status=error.status_code, headers=dict(error.headers()))


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Render ``exc`` as the API's error body; ``None`` (a 500) for anything unexpected."""
    error = convert(exc)
    return None if error is None else render(error)


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
