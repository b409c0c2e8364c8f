"""Errors of executions, operator actions and API requests, under the root in ``detflow_site.errors``."""
from __future__ import annotations

from detflow_site.errors import Conflict, InvalidArgument, NotFound

#: ``InvalidArgument`` is one of the root's kinds; it is named here as well because the operator
#: actions raise it as theirs.
__all__ = ["ConcurrentChange", "ExecutionNotFound", "IdempotencyConflict", "InvalidArgument",
           "OperationNotAllowed"]


class ExecutionNotFound(NotFound):
    """No execution has that id."""

    default_code = "execution_not_found"


class OperationNotAllowed(Conflict):
    """The execution's state does not allow this operator action now."""

    default_code = "not_allowed"


class ConcurrentChange(Conflict):
    """The execution kept changing under the action; nothing was changed, try again."""

    default_code = "concurrent_change"


class IdempotencyConflict(Conflict):
    """An ``Idempotency-Key`` was used before with a different request body."""

    default_code = "idempotency_conflict"
