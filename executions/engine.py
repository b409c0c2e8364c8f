"""The pure heart of detflow: ``decide(state, now)`` says what happens next, ``evolve`` applies events.

Nothing here does I/O, reads a clock or draws a random number (DESIGN invariant 7): times are
integer milliseconds passed in, and backoff jitter is a hash of (execution, step, attempt). The same
``evolve`` that writers use to compute a new state replays a stored history in ``verify``.
"""
from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

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


def backoff_ms(policy: RetryPolicy, execution_id: str, step: str, used: int, attempt: int) -> int:
    """Return the delay after the ``used``-th failed attempt of a budget, in milliseconds.

    ``initial_delay_s * multiplier ** (used - 1)``, capped at ``max_delay_s``, less a fraction of up
    to ``jitter`` drawn from a hash of (execution, step, attempt): never above the cap.
    """
    exponent = max(used - 1, 0)
    initial, cap = policy.initial_delay_s, policy.max_delay_s
    if initial <= 0 or cap <= 0:
        base = 0.0
    elif policy.multiplier > 1 and exponent * math.log(policy.multiplier) >= math.log(cap) - math.log(
        initial
    ):
        base = cap
    else:
        base = min(cap, initial * policy.multiplier**exponent)
    return round(base * (1 - policy.jitter * jitter_fraction(execution_id, step, attempt)) * 1000)


def jitter_fraction(execution_id: str, step: str, attempt: int) -> float:
    """Return a number in [0, 1) that depends only on (execution, step, attempt)."""
    digest = hashlib.sha256(f"{execution_id}:{step}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


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
