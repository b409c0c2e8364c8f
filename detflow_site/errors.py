"""The root of detflow's one exception tree, and the kinds every app's errors are made of.

Every error detflow raises on purpose is a :class:`DetflowError`. Each class declares how a caller
sees it: ``status_code`` (the HTTP status the API answers), ``default_code`` (the stable code in the
body) and, for a bad argument, the ``field`` it names and the ``reason``. The apps' own errors
(``workflows.errors``, ``executions.errors``, ``insights.errors``) subclass the kinds here, so the
API's one exception handler renders any of them without knowing it. Plain Python only: the engine,
which imports nothing of Django, may raise these too.
"""
from __future__ import annotations

from collections.abc import Mapping


class DetflowError(Exception):
    """Root of every error detflow raises on purpose."""

    #: The HTTP status the API answers with.
    status_code = 400
    #: The stable code the API's error body carries.
    default_code = "detflow_error"
    #: The request field at fault, if one is.
    field: str | None = None

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        #: Why, in words, without the field's name in front.
        self.reason = message
        if code is not None:
            self.default_code = code

    def fields(self) -> dict[str, list[str]]:
        """Return the fields at fault, each with its reasons (``{}``: no field)."""
        return {self.field: [self.reason]} if self.field else {}

    def headers(self) -> Mapping[str, str]:
        """Return the answer's extra headers (``Retry-After``, ``WWW-Authenticate``)."""
        return {}


class InvalidArgument(DetflowError):
    """A caller's argument is unusable; ``field`` names it and ``reason`` says why."""

    default_code = "invalid"

    def __init__(self, field: str, reason: str, code: str | None = None) -> None:
        super().__init__(f"{field}: {reason}", code=code)
        self.field = field
        self.reason = reason


class NotFound(DetflowError):
    """What the caller names does not exist."""

    status_code = 404
    default_code = "not_found"


class Conflict(DetflowError):
    """The request is well formed, but the state it meets does not allow it now."""

    status_code = 409
    default_code = "conflict"


class PayloadTooLarge(DetflowError):
    """The request body is larger than detflow accepts."""

    status_code = 413
    default_code = "too_large"


class Unavailable(DetflowError):
    """A service detflow needs cannot be reached right now; nothing was changed, try again."""

    status_code = 503
    default_code = "unavailable"
    #: Seconds a client should wait before trying again.
    retry_after_s = 5

    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class StoreUnavailable(Unavailable):
    """MongoDB cannot be reached right now (a lost connection, an election, a timeout)."""

    default_code = "store_unavailable"


class StoreRefused(Conflict):
    """MongoDB refused a change for good (a document it will not store): trying again changes nothing."""

    default_code = "store_refused"


class RedisUnavailable(Unavailable):
    """Redis cannot be reached right now."""

    default_code = "redis_unavailable"
