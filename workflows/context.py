"""What a handler receives: :class:`StepContext`, with its recorded log and its heartbeat."""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from workflows import masking
from workflows.text import storable

logger = logging.getLogger("detflow.handler")

#: Longest log line kept; the rest of a line is cut.
LINE_CHARS = 500


class AttemptLog:
    """A logger whose lines are recorded on the attempt (the newest ``cap`` kept, the rest counted).

    Every line also goes to the ``detflow.handler`` logger with the attempt's ids.
    """

    def __init__(self, cap: int, ids: Mapping[str, Any], secrets: Iterable[str] = ()) -> None:
        self.cap = cap
        self.lines: list[dict[str, Any]] = []
        self.dropped = 0
        self._ids = dict(ids)
        #: Secret input values, replaced by ``[secret]`` in every line before it is kept or logged.
        self._secrets = tuple(secrets)

    def log(self, level: int, message: str, *args: Any) -> None:
        """Record one line at ``level`` (``%``-style arguments, as :mod:`logging`)."""
        text = message % args if args else str(message)
        if self._secrets:
            text = masking.scrub(text, self._secrets)
        text = storable(text)[:LINE_CHARS]
        self.lines.append({
            "at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
            "level": logging.getLevelName(level),
            "message": text,
        })
        if len(self.lines) > self.cap:
            excess = len(self.lines) - self.cap
            del self.lines[:excess]
            self.dropped += excess
        logger.log(level, "%s", text, extra=self._ids)

    def debug(self, message: str, *args: Any) -> None:
        self.log(logging.DEBUG, message, *args)

    def info(self, message: str, *args: Any) -> None:
        self.log(logging.INFO, message, *args)

    def warning(self, message: str, *args: Any) -> None:
        self.log(logging.WARNING, message, *args)

    def error(self, message: str, *args: Any) -> None:
        self.log(logging.ERROR, message, *args)


@dataclass(frozen=True)
class Compensation:
    """What a compensation handler undoes, and why."""

    #: The output of the step it undoes (what that step did: a charge id, a reservation).
    step_output: Any
    #: The failure that started the rollback: ``{"step", "error_type", "message"}`` (for an
    #: operator's rollback of a cancelled execution, ``error_type`` is ``Cancelled``).
    cause: Mapping[str, Any]
    #: Who asked for the rollback (``None``: the workflow's ``on_failure``), and why.
    by: str | None = None
    reason: str = ""


@dataclass
class StepContext:
    """Everything a handler may know about the attempt it runs in."""

    execution_id: str
    workflow: str
    workflow_version: int
    step: str
    #: 1 for the first attempt of this step, counting every attempt the step ever had.
    attempt: int
    #: ``<execution id>:<step name>``: the same for every attempt; deduplicate side effects by it.
    idempotency_key: str
    #: The execution's input (or the input an operator gave this step when retrying it).
    input: Any
    #: Outputs of the steps before this one, by step name.
    outputs: Mapping[str, Any]
    #: The execution ``version`` this attempt's claim wrote; larger for every later claim.
    fencing_token: int
    log: AttemptLog
    _heartbeat: Callable[[], None] = field(repr=False, default=lambda: None)
    #: For a compensation handler, what it undoes and why; ``None`` for a step's own handler. Its
    #: ``idempotency_key`` is then ``<execution id>:<step name>:compensate`` and ``outputs`` holds
    #: every step's output, its own step's too.
    compensation: Compensation | None = None

    def heartbeat(self) -> None:
        """Renew the attempt's lease now; raise ``LeaseLost`` when a successor owns the step."""
        self._heartbeat()
