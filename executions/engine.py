"""The pure heart of detflow: ``decide(state, now)`` says what happens next, the outcome functions
(``claimed`` ... ``skipped``) turn what happened into typed events, ``evolve`` applies events.

Nothing here does I/O, reads a clock or draws a random number (DESIGN invariant 7): times are
integer milliseconds passed in, and backoff jitter is a hash of (execution, step, attempt). The same
``evolve`` that writers use to compute a new state replays a stored history in ``verify``.
"""
from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from executions.backoff import backoff_ms
from executions.events import (
    AttemptFailed,
    AttemptLost,
    Cancelled,
    CancelStep,
    Created,
    Event,
    ExecutionFailed,
    ExecutionSucceeded,
    FailStep,
    Failure,
    Retried,
    RetryAt,
    Skipped,
    StepClaimed,
    StepSucceeded,
)
from workflows.spec import RetryPolicy


class ExecutionStatus(enum.StrEnum):
    PENDING = "PENDING"  #: stored; no step claimed yet
    RUNNING = "RUNNING"  #: a step has been claimed and the execution has not finished
    SUCCEEDED = "SUCCEEDED"  #: every step succeeded or was skipped
    FAILED = "FAILED"  #: a step failed for good; an operator may retry or skip it
    CANCELLED = "CANCELLED"  #: an operator cancelled it; no further step starts


class StepStatus(enum.StrEnum):
    PENDING = "PENDING"  #: not started yet, or reopened by an operator's retry
    RUNNING = "RUNNING"  #: claimed by a worker whose lease has not run out
    RETRY_WAIT = "RETRY_WAIT"  #: an attempt failed; the next one is due at ``next_retry_at``
    SUCCEEDED = "SUCCEEDED"  #: its output is stored; it is never claimed again
    FAILED = "FAILED"  #: failed for good (permanent error or budget exhausted)
    SKIPPED = "SKIPPED"  #: an operator skipped it with an output of their choosing
    CANCELLED = "CANCELLED"  #: its execution was cancelled before the step finished


#: Every legal change of an execution's status.
EXECUTION_TRANSITIONS: Mapping[ExecutionStatus, frozenset[ExecutionStatus]] = {
    ExecutionStatus.PENDING: frozenset({ExecutionStatus.RUNNING, ExecutionStatus.CANCELLED}),
    ExecutionStatus.RUNNING: frozenset(
        {ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED}
    ),
    ExecutionStatus.FAILED: frozenset({ExecutionStatus.RUNNING}),
    ExecutionStatus.SUCCEEDED: frozenset(),
    ExecutionStatus.CANCELLED: frozenset(),
}

#: Every legal change of a step's status.
STEP_TRANSITIONS: Mapping[StepStatus, frozenset[StepStatus]] = {
    StepStatus.PENDING: frozenset({StepStatus.RUNNING, StepStatus.CANCELLED}),
    StepStatus.RUNNING: frozenset(
        {StepStatus.SUCCEEDED, StepStatus.RETRY_WAIT, StepStatus.FAILED, StepStatus.CANCELLED}
    ),
    StepStatus.RETRY_WAIT: frozenset({StepStatus.RUNNING, StepStatus.CANCELLED}),
    StepStatus.FAILED: frozenset({StepStatus.PENDING, StepStatus.SKIPPED}),
    StepStatus.SUCCEEDED: frozenset(),
    StepStatus.SKIPPED: frozenset(),
    StepStatus.CANCELLED: frozenset(),
}

#: Execution statuses an operator may cancel from.
CANCELLABLE = frozenset({ExecutionStatus.PENDING, ExecutionStatus.RUNNING})
TERMINAL = frozenset({ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED})
DONE_STEP = frozenset({StepStatus.SUCCEEDED, StepStatus.SKIPPED})


class IllegalTransition(ValueError):
    """An event asks for a change the transition tables forbid."""


@dataclass(frozen=True)
class StepState:
    """What the engine knows of one step."""

    name: str
    status: StepStatus
    policy: RetryPolicy
    #: Attempts started, over every budget.
    attempt: int = 0
    #: ``attempt`` when the current budget opened (0, or the count at an operator's retry).
    budget_base: int = 0
    next_retry_at: int | None = None
    lease_expires_at: int | None = None

    @property
    def used(self) -> int:
        """Attempts used in the current budget."""
        return self.attempt - self.budget_base


@dataclass(frozen=True)
class ExecutionState:
    """What the engine knows of one execution."""

    id: str
    status: ExecutionStatus
    steps: tuple[StepState, ...]


# Decisions.


@dataclass(frozen=True)
class Claim:
    """Run attempt ``attempt`` of step ``step`` now."""

    step: int
    attempt: int


@dataclass(frozen=True)
class Wait:
    """Nothing to do before ``until``: a retry delay or a live lease (``reason``)."""

    until: int
    reason: str


@dataclass(frozen=True)
class RecoverLost:
    """The running attempt of ``step`` outlived its lease: record it lost, then ``then``."""

    step: int
    then: Failure


@dataclass(frozen=True)
class Finish:
    """Every step is settled: the execution ends as ``status``."""

    status: ExecutionStatus


@dataclass(frozen=True)
class Idle:
    """Nothing will ever happen without an operator (``reason`` says why)."""

    reason: str


Decision = Claim | Wait | RecoverLost | Finish | Idle


def decide(state: ExecutionState, now: int) -> Decision:
    """Return what must happen next to ``state`` at time ``now`` (milliseconds)."""
    if state.status in (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED):
        return Idle("terminal")
    cancelled = state.status is ExecutionStatus.CANCELLED
    for index, step in enumerate(state.steps):
        if step.status in DONE_STEP:
            continue
        if step.status is StepStatus.RUNNING:
            lease = step.lease_expires_at if step.lease_expires_at is not None else now
            if now >= lease:
                return RecoverLost(index, failure(state, index, permanent=False, now=now))
            return Wait(lease, "lease")
        if cancelled or step.status is StepStatus.CANCELLED:
            return Idle("cancelled")
        if step.status is StepStatus.FAILED:
            return Finish(ExecutionStatus.FAILED)
        retry_at = step.next_retry_at
        if step.status is StepStatus.RETRY_WAIT and retry_at is not None and now < retry_at:
            return Wait(retry_at, "retry")
        return Claim(index, step.attempt + 1)
    return Idle("cancelled") if cancelled else Finish(ExecutionStatus.SUCCEEDED)


def failure(state: ExecutionState, index: int, *, permanent: bool, now: int) -> Failure:
    """Return what follows a failed (or lost) attempt of step ``index`` at ``now``."""
    step = state.steps[index]
    if state.status is ExecutionStatus.CANCELLED:
        return CancelStep()
    if permanent or step.used >= step.policy.max_attempts:
        return FailStep()
    return RetryAt(now + backoff_ms(step.policy, state.id, step.name, step.used, step.attempt))


# Outcomes into events: the one place each event is built. The runner, the sweeper and the
# operator actions (their dry runs too) call these; ``transitions.commit`` stores what they return.

#: Longest error message a history entry keeps, in characters (the step keeps more).
EVENT_MESSAGE_CHARS = 300


def created(by: str | None, workflow: str, version: int) -> list[Event]:
    """Return the events of a new execution."""
    return [Created(by, workflow, version)]


def claimed(
    state: ExecutionState, decision: Claim, worker: str, fence: int, lease_expires_at: int
) -> list[Event]:
    """Return the events of ``worker`` claiming what ``decision`` says, fenced by ``fence`` (the
    version the claim's write makes)."""
    step = state.steps[decision.step]
    return [StepClaimed(decision.step, step.name, decision.attempt, worker, fence, lease_expires_at)]


def succeeded(
    state: ExecutionState, index: int, output_json: str, record: Mapping[str, Any], now: int
) -> list[Event]:
    """Return the events of step ``index``'s running attempt succeeding (and the execution's end,
    after its last step)."""
    step = state.steps[index]
    return _and_finish(state, [StepSucceeded(index, step.name, step.attempt, record.get("duration_ms"),
                                             output_json=output_json, record=record)], now)


def failed(
    state: ExecutionState, index: int, error_type: str, message: str, permanent: bool,
    record: Mapping[str, Any], now: int,
) -> list[Event]:
    """Return the events of step ``index``'s running attempt failing: a retry or the step failed
    as its policy says (and the execution's end with it)."""
    step = state.steps[index]
    then = failure(state, index, permanent=permanent, now=now)
    return _and_finish(state, [AttemptFailed(index, step.name, step.attempt, error_type,
                                             message[:EVENT_MESSAGE_CHARS], permanent, then,
                                             detail=message, record=record)], now)


def lost(state: ExecutionState, decision: RecoverLost, worker: str | None, now: int) -> list[Event]:
    """Return the events of ``worker``'s attempt recorded lost, then what ``decision`` says."""
    step = state.steps[decision.step]
    return _and_finish(state, [AttemptLost(decision.step, step.name, step.attempt, worker,
                                           decision.then)], now)


def finished(decision: Finish) -> list[Event]:
    """Return the events of the execution ending as ``decision`` says."""
    return [ExecutionSucceeded() if decision.status is ExecutionStatus.SUCCEEDED else ExecutionFailed()]


def cancelled(by: str, reason: str) -> list[Event]:
    """Return the events of an operator's cancel."""
    return [Cancelled(by, reason)]


def retried(
    state: ExecutionState, index: int, by: str, reason: str, input_diff_json: str,
    input_json: str | None = None,
) -> list[Event]:
    """Return the events of an operator's retry of the failed step ``index``."""
    return [Retried(index, state.steps[index].name, by, reason, input_diff_json, input_json=input_json)]


def skipped(state: ExecutionState, index: int, by: str, reason: str, output_json: str) -> list[Event]:
    """Return the events of an operator's skip of the failed step ``index``."""
    return [Skipped(index, state.steps[index].name, by, reason, output_json=output_json)]


def failed_step(state: ExecutionState) -> int | None:
    """Return the index of the step that failed for good (what an operator retries or skips)."""
    return next((i for i, s in enumerate(state.steps) if s.status is StepStatus.FAILED), None)


def _and_finish(state: ExecutionState, events: list[Event], now: int) -> list[Event]:
    decision = decide(replay(state, [e.fields() for e in events]), now)
    return events + finished(decision) if isinstance(decision, Finish) else events


# Events: the facts and decisions a history records, and how each changes the state.


def evolve(state: ExecutionState, event: Mapping[str, Any]) -> ExecutionState:
    """Return ``state`` after ``event``; raise :class:`IllegalTransition` for a forbidden change."""
    kind = event["type"]
    index = event.get("step_index")
    if kind == "step_claimed":
        state = _step(state, index, status=StepStatus.RUNNING, attempt=event["attempt"],
                      next_retry_at=None, lease_expires_at=event["lease_expires_at"])
        if state.status is ExecutionStatus.PENDING:
            state = _status(state, ExecutionStatus.RUNNING)
        return state
    if kind == "step_succeeded":
        return _step(state, index, status=StepStatus.SUCCEEDED, lease_expires_at=None)
    if kind in ("attempt_failed", "attempt_lost"):
        status = {"retry": StepStatus.RETRY_WAIT, "failed": StepStatus.FAILED,
                  "cancelled": StepStatus.CANCELLED}[event["outcome"]]
        return _step(state, index, status=status, lease_expires_at=None,
                     next_retry_at=event.get("next_retry_at"))
    if kind == "execution_succeeded":
        return _status(state, ExecutionStatus.SUCCEEDED)
    if kind == "execution_failed":
        return _status(state, ExecutionStatus.FAILED)
    if kind == "cancelled":
        state = _status(state, ExecutionStatus.CANCELLED)
        for i, step in enumerate(state.steps):
            if step.status in (StepStatus.PENDING, StepStatus.RETRY_WAIT):
                state = _step(state, i, status=StepStatus.CANCELLED, next_retry_at=None)
        return state
    if kind == "retried":
        step = state.steps[_index(state, index)]
        state = _step(state, index, status=StepStatus.PENDING, budget_base=step.attempt)
        return _status(state, ExecutionStatus.RUNNING)
    if kind == "skipped":
        state = _step(state, index, status=StepStatus.SKIPPED)
        return _status(state, ExecutionStatus.RUNNING)
    if kind == "created":
        return state
    raise IllegalTransition(f"unknown event type {kind!r}")


def replay(state: ExecutionState, events: Iterable[Mapping[str, Any]]) -> ExecutionState:
    """Fold ``events`` into ``state``."""
    for event in events:
        state = evolve(state, event)
    return state


def _status(state: ExecutionState, status: ExecutionStatus) -> ExecutionState:
    if status not in EXECUTION_TRANSITIONS[state.status]:
        raise IllegalTransition(f"execution {state.status} -> {status} is not allowed")
    return replace(state, status=status)


def _index(state: ExecutionState, index: Any) -> int:
    if not isinstance(index, int) or not 0 <= index < len(state.steps):
        raise IllegalTransition(f"step index {index!r} is out of range")
    return index


def _step(state: ExecutionState, index: Any, **changes: Any) -> ExecutionState:
    index = _index(state, index)
    step = state.steps[index]
    status = changes.get("status", step.status)
    if "status" in changes and status not in STEP_TRANSITIONS[step.status]:
        raise IllegalTransition(f"step {step.name!r} {step.status} -> {status} is not allowed")
    steps = list(state.steps)
    steps[index] = replace(step, **changes)
    return replace(state, steps=tuple(steps))


def due_at(state: ExecutionState, now: int) -> int | None:
    """Return when ``state`` next needs a worker (``None``: never without an operator)."""
    decision = decide(state, now)
    if isinstance(decision, Wait):
        return decision.until
    return None if isinstance(decision, Idle) else now
