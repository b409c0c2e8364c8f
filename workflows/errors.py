"""Errors of definitions and handlers, under the root in ``detflow_site.errors``.

Handlers raise :class:`RetryableError` or :class:`PermanentError`; the engine records the others.
"""
from __future__ import annotations

from detflow_site.errors import DetflowError, InvalidArgument, NotFound


class DefinitionError(InvalidArgument):
    """A workflow definition is invalid; ``field`` names the offending field."""

    default_code = "invalid_definition"


class UnknownHandler(DefinitionError):
    """A definition names a handler that no loaded module registered."""

    default_code = "unknown_handler"

    def __init__(self, field: str, name: str, known: list[str]) -> None:
        listing = ", ".join(known) if known else "none are registered"
        super().__init__(field, f"unknown handler {name!r}; known handlers: {listing}")
        self.name = name
        self.known = known


class WorkflowNotFound(NotFound):
    """No workflow definition has that name (or version); the message lists what is registered.

    ``field`` is ``"workflow"``, or ``"version"`` when the workflow exists without that version.
    """

    default_code = "workflow_not_found"

    def __init__(self, message: str, field: str = "workflow") -> None:
        super().__init__(message)
        self.field = field


class HandlerError(DetflowError):
    """Base of the errors a handler raises to say how its failure should be treated. It takes
    arguments as any exception does (``PermanentError("card declined", code)``)."""

    def __init__(self, *args: object) -> None:
        super().__init__(str(args[0]) if len(args) == 1 else str(args) if args else "")
        self.args = args


class RetryableError(HandlerError):
    """A failure worth another attempt, within the step's retry policy."""


class PermanentError(HandlerError):
    """A failure that no retry can fix: the step fails at once."""


class OutputTooLarge(PermanentError):
    """A handler returned an output larger than ``DETFLOW_OUTPUT_CAP_BYTES``."""

    def __init__(self, size: int, cap: int) -> None:
        super().__init__(f"output is {size} bytes of JSON; the cap is {cap} bytes")
        self.size = size
        self.cap = cap


class ExecutionOutputsTooLarge(PermanentError):
    """The outputs of one execution's steps would together pass the per-execution cap."""

    def __init__(self, total: int, cap: int) -> None:
        super().__init__(f"the execution's step outputs would total {total} bytes of JSON; the cap "
                         f"for one execution is {cap} bytes (its document must stay far below "
                         "MongoDB's 16 MB limit)")
        self.total = total
        self.cap = cap


class OutputNotSerializable(PermanentError):
    """A handler returned something that is not JSON-serialisable."""


class LeaseLost(DetflowError):
    """The attempt's claim is no longer current: a successor owns the step, stop working."""
