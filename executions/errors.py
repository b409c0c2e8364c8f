"""Errors of executions and operator actions (part of the hierarchy rooted in ``workflows.errors``)."""
from __future__ import annotations

from workflows.errors import DetflowError


class ExecutionNotFound(DetflowError):
    """No execution has that id."""

    status_code = 404
    default_code = "execution_not_found"


class InvalidArgument(DetflowError):
    """A caller's argument is unusable; ``field`` names it."""

    default_code = "invalid"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class OperationNotAllowed(DetflowError):
    """The execution's state does not allow this operator action now."""

    status_code = 409
    default_code = "not_allowed"


class ConcurrentChange(DetflowError):
    """The execution kept changing under the action; nothing was changed, try again."""

    status_code = 409
    default_code = "concurrent_change"
