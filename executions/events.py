"""The events of an execution's history as typed values: what follows a failure, and each change.

The engine builds them (``executions.engine``: ``claimed``, ``succeeded``, ``failed``, ``lost``,
``finished``, ``cancelled``, ``retried``, ``skipped``); ``transitions.commit`` stores them. An event's
:meth:`~Event.fields` are what its history entry holds; a field marked :data:`DATA` goes into the
execution's document beside it (an output, an edited input, the attempt record) and never into the
history. Pure: nothing here does I/O.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

# What follows a failed (or lost) attempt.


@dataclass(frozen=True)
class RetryAt:
    """The failed step runs again at ``at``."""

    at: int


@dataclass(frozen=True)
class FailStep:
    """The step fails for good, and its execution with it."""


@dataclass(frozen=True)
class CancelStep:
    """The step ends as cancelled: its execution was cancelled while it ran."""


Failure = RetryAt | FailStep | CancelStep


def outcome_fields(then: Failure) -> dict[str, Any]:
    """Return how a history entry records what follows a failure."""
    if isinstance(then, RetryAt):
        return {"outcome": "retry", "next_retry_at": then.at}
    if isinstance(then, FailStep):
        return {"outcome": "failed"}
    assert isinstance(then, CancelStep)
    return {"outcome": "cancelled"}


#: Metadata of a field the document stores beside the event, never in the history.
DATA: Mapping[str, bool] = {"data": True}


def _data(default: Any = None) -> Any:
    return field(default=default, metadata=DATA, repr=False, compare=False)


#: Metadata of a history field left out of the entry while it is ``None`` (so that older entries,
#: which never had it, read the same).
OPTIONAL: Mapping[str, bool] = {"optional": True}


def _optional() -> Any:
    return field(default=None, metadata=OPTIONAL, kw_only=True)


class Event:
    """An entry of the history; ``type`` names its kind as stored."""

    type: ClassVar[str]

    def fields(self) -> dict[str, Any]:
        """Return the history entry of this event (without its ``seq`` and time)."""
        entry: dict[str, Any] = {"type": self.type}
        for f in fields(self):  # type: ignore[arg-type]
            if f.metadata.get("data"):
                continue
            value = getattr(self, f.name)
            if value is None and f.metadata.get("optional"):
                continue
            if f.name == "then":
                entry.update(outcome_fields(value))
            else:
                entry[f.name] = value
        return entry


@dataclass(frozen=True)
class Created(Event):
    """The execution was stored."""

    type: ClassVar[str] = "created"
    by: str | None
    workflow: str
    workflow_version: int


@dataclass(frozen=True)
class StepClaimed(Event):
    """A worker claimed attempt ``attempt`` of a step, until ``lease_expires_at``; its writes are
    fenced by ``fence``."""

    type: ClassVar[str] = "step_claimed"
    step_index: int
    step: str
    attempt: int
    worker: str
    fence: int
    lease_expires_at: int


@dataclass(frozen=True)
class StepSucceeded(Event):
    """The running attempt succeeded with ``output_json``."""

    type: ClassVar[str] = "step_succeeded"
    step_index: int
    step: str
    attempt: int
    duration_ms: int | None
    output_json: str = _data("")
    record: Mapping[str, Any] = _data()


@dataclass(frozen=True)
class AttemptFailed(Event):
    """The running attempt failed; ``then`` follows. ``message`` is the history's cut of ``detail``,
    which the step keeps as its last error."""

    type: ClassVar[str] = "attempt_failed"
    step_index: int
    step: str
    attempt: int
    error_type: str
    message: str
    permanent: bool
    then: Failure
    detail: str = _data("")
    record: Mapping[str, Any] = _data()


@dataclass(frozen=True)
class AttemptLost(Event):
    """The running attempt of ``worker`` outlived its lease; ``then`` follows."""

    type: ClassVar[str] = "attempt_lost"
    step_index: int
    step: str
    attempt: int
    worker: str | None
    then: Failure


@dataclass(frozen=True)
class ExecutionSucceeded(Event):
    """Every step succeeded or was skipped."""

    type: ClassVar[str] = "execution_succeeded"


@dataclass(frozen=True)
class ExecutionFailed(Event):
    """A step failed for good."""

    type: ClassVar[str] = "execution_failed"


@dataclass(frozen=True)
class Cancelled(Event):
    """An operator cancelled the execution."""

    type: ClassVar[str] = "cancelled"
    by: str
    reason: str
    #: The bulk operation that did it, when one did.
    bulk: str | None = _optional()


@dataclass(frozen=True)
class Retried(Event):
    """An operator reopened the failed step with a new budget (and, given ``input_json``, its own
    input; ``input_diff_json`` records the difference)."""

    type: ClassVar[str] = "retried"
    step_index: int
    step: str
    by: str
    reason: str
    input_diff_json: str
    input_json: str | None = _data()
    #: The bulk operation that did it, when one did.
    bulk: str | None = _optional()


@dataclass(frozen=True)
class Skipped(Event):
    """An operator skipped the failed step, ``output_json`` standing in for its output."""

    type: ClassVar[str] = "skipped"
    step_index: int
    step: str
    by: str
    reason: str
    output_json: str = _data("")


@dataclass(frozen=True)
class Paused(Event):
    """An operator paused the execution (``scope`` ``execution``), or its workflow was paused
    (``workflow``): no further step starts while a pause holds it; a running attempt may finish."""

    type: ClassVar[str] = "paused"
    scope: str
    by: str
    reason: str
    bulk: str | None = _optional()


@dataclass(frozen=True)
class Unpaused(Event):
    """The pause of ``scope`` was lifted: the execution goes on (unless the other scope holds it)."""

    type: ClassVar[str] = "resumed"
    scope: str
    by: str
    reason: str
    bulk: str | None = _optional()


@dataclass(frozen=True)
class DeadlinePassed(Event):
    """The workflow's deadline (``deadline_at``) passed: step ``step_index``, waiting to start (or
    to run again, or in a sleep or wait), fails; then the execution fails or, ``on_deadline``
    ``compensate``, is rolled back."""

    type: ClassVar[str] = "deadline_passed"
    step_index: int
    step: str
    deadline_at: int
    on_deadline: str


# Rollback: the compensations of completed steps, newest first. A compensation's events are its
# forward counterparts' with the compensation's place in the plan (``compensation_index``) beside the
# step it undoes (``step_index``); the engine replays them onto the compensation, not the step.


@dataclass(frozen=True)
class RollbackStarted(Event):
    """The execution is rolled back: the compensations of steps ``plan`` (indexes, in the order they
    run) start, for ``cause`` (the failure, or an operator's request: ``by`` and ``reason``)."""

    type: ClassVar[str] = "rollback_started"
    plan: list[int]
    steps: list[str]
    by: str | None
    reason: str
    cause_step: str | None
    cause_type: str
    cause_message: str


@dataclass(frozen=True)
class CompensationClaimed(StepClaimed):
    """A worker claimed an attempt of a compensation."""

    type: ClassVar[str] = "compensation_claimed"
    compensation_index: int = field(default=0, kw_only=True)


@dataclass(frozen=True)
class CompensationSucceeded(StepSucceeded):
    """A compensation's running attempt succeeded: its step is undone."""

    type: ClassVar[str] = "compensation_succeeded"
    compensation_index: int = field(default=0, kw_only=True)


@dataclass(frozen=True)
class CompensationAttemptFailed(AttemptFailed):
    """A compensation's running attempt failed; ``then`` follows."""

    type: ClassVar[str] = "compensation_attempt_failed"
    compensation_index: int = field(default=0, kw_only=True)


@dataclass(frozen=True)
class CompensationAttemptLost(AttemptLost):
    """A compensation's running attempt outlived its lease; ``then`` follows."""

    type: ClassVar[str] = "compensation_attempt_lost"
    compensation_index: int = field(default=0, kw_only=True)


@dataclass(frozen=True)
class CompensationRetried(Retried):
    """An operator reopened the failed compensation with a new budget."""

    type: ClassVar[str] = "compensation_retried"
    compensation_index: int = field(default=0, kw_only=True)


@dataclass(frozen=True)
class CompensationSkipped(Event):
    """An operator skipped the failed compensation: its step stays as it is, the rollback goes on."""

    type: ClassVar[str] = "compensation_skipped"
    step_index: int
    step: str
    by: str
    reason: str
    compensation_index: int = field(default=0, kw_only=True)


@dataclass(frozen=True)
class ExecutionCompensated(Event):
    """Every compensation of the plan succeeded (or an operator skipped it)."""

    type: ClassVar[str] = "execution_compensated"


@dataclass(frozen=True)
class CompensationFailed(Event):
    """A compensation failed for good: the rollback stops until an operator retries or skips it."""

    type: ClassVar[str] = "compensation_failed"


#: The forward kind each compensation kind replays as.
COMPENSATION_KINDS: Mapping[str, str] = {
    CompensationClaimed.type: StepClaimed.type,
    CompensationSucceeded.type: StepSucceeded.type,
    CompensationAttemptFailed.type: AttemptFailed.type,
    CompensationAttemptLost.type: AttemptLost.type,
    CompensationRetried.type: Retried.type,
    CompensationSkipped.type: Skipped.type,
}


# Sleeps, waits and signals: steps that run no handler. Their times are the engine's (``wake_at``).


@dataclass(frozen=True)
class WaitStarted(Event):
    """A sleep or a wait step started: it ends at ``wake_at`` (a wait: or at its signal)."""

    type: ClassVar[str] = "wait_started"
    step_index: int
    step: str
    kind: str
    signal: str | None
    wake_at: int


@dataclass(frozen=True)
class SignalReceived(Event):
    """A signal came (it waits for its wait step if none waits yet); ``payload_json`` is its data."""

    type: ClassVar[str] = "signal_received"
    name: str
    signal_index: int
    key: str | None
    by: str
    reason: str
    payload_json: str = _data("null")


@dataclass(frozen=True)
class SignalConsumed(Event):
    """A waiting step took the signal ``signal_index``: its payload is the step's output."""

    type: ClassVar[str] = "signal_consumed"
    step_index: int
    step: str
    name: str
    signal_index: int
    output_json: str = _data("null")


@dataclass(frozen=True)
class WaitEnded(Event):
    """A sleep ended (``outcome`` ``woke``), a wait timed out (``timed_out``) or a sleep's time could
    not be read (``refused``); the step ``ends`` ``succeeded``, ``failed`` or ``skipped``."""

    type: ClassVar[str] = "wait_ended"
    step_index: int
    step: str
    outcome: str
    ends: str
    message: str
    output_json: str = _data("null")
