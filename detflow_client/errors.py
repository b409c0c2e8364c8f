"""What the client raises: one root, :class:`ClientError`, and the API's answers by status.

Every 4xx (and 503) answer of the API has one body, ``{"code", "detail", "fields"}``; an
:class:`ApiError` carries those three and the HTTP status. :func:`from_response` picks the subclass.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ClientError(Exception):
    """Anything the client raises."""


class ConnectionFailed(ClientError):
    """The server could not be reached, or did not answer within the client's timeout.

    A start that failed so may still have been stored: send it again with the same
    ``idempotency_key`` to get the same execution rather than a second one.
    """


class InvalidRequest(ClientError, ValueError):
    """The request cannot be sent as given (a header value with a newline, a malformed base URL);
    nothing reached the server."""


class Timeout(ClientError):
    """:meth:`~detflow_client.Client.wait` gave up before the execution reached a terminal status."""

    def __init__(self, execution_id: str, status: str, waited: float, execution: dict[str, Any]) -> None:
        super().__init__(f"execution {execution_id} is still {status} after {waited:.1f}s")
        #: The execution waited for.
        self.execution_id = execution_id
        #: Its status when the client gave up.
        self.status = status
        #: The execution as last read.
        self.execution = execution


class ApiError(ClientError):
    """The API refused the request: its HTTP ``status``, stable ``code``, ``detail`` and ``fields``."""

    def __init__(self, status: int, code: str, detail: str,
                 fields: Mapping[str, list[str]] | None = None, *, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        #: The HTTP status.
        self.status = status
        #: The API's stable code (``not_allowed``, ``unknown_field``...); ``http_<status>`` for an
        #: answer that is not the API's error body (a proxy's page, say).
        self.code = code
        #: The explanation for people.
        self.detail = detail
        #: The messages by request field (``{"input.items[2]": ["..."]}``); empty when no field is at fault.
        self.fields: dict[str, list[str]] = dict(fields or {})
        #: Seconds the server asked to wait before trying again (``Retry-After``), if it said.
        self.retry_after = retry_after


class BadRequest(ApiError):
    """400: the request is invalid; ``fields`` names what is wrong."""


class Unauthorized(ApiError):
    """401: no credentials, or a token the server does not know."""


class Forbidden(ApiError):
    """403: the token's user lacks the role for this request."""


class NotFound(ApiError):
    """404: no such execution (or workflow, or path)."""


class Conflict(ApiError):
    """409: the execution's state does not allow this now, or an ``Idempotency-Key`` was reused
    with another body."""


class PayloadTooLarge(ApiError):
    """413: the body is over the server's limit."""


class Throttled(ApiError):
    """429: too many starts; ``retry_after`` says when to try again."""


class ServerError(ApiError):
    """5xx: the server failed (a 503 is :class:`Unavailable`)."""


class Unavailable(ServerError):
    """503: MongoDB or Redis cannot be reached right now; nothing was changed, try again shortly."""


#: The subclass for each status the API answers with.
BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
    413: PayloadTooLarge, 429: Throttled, 503: Unavailable,
}


def from_response(status: int, body: Any, text: str, headers: Mapping[str, str]) -> ApiError:
    """Return the error for an answer with ``status``; ``body`` is its decoded JSON (``None`` if not JSON)."""
    kind = BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    retry_after = _seconds(headers.get("Retry-After"))
    if (isinstance(body, dict) and isinstance(body.get("code"), str) and isinstance(body.get("detail"), str)
            and isinstance(body.get("fields", {}), dict)):
        fields = {str(k): [str(m) for m in v] if isinstance(v, list) else [str(v)]
                  for k, v in body.get("fields", {}).items()}
        return kind(status, body["code"], body["detail"], fields, retry_after=retry_after)
    return kind(status, f"http_{status}", text.strip()[:500] or f"HTTP {status}", retry_after=retry_after)


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: the API sends seconds, a proxy might not
        return None
