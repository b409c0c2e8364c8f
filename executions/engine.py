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
    COMPENSATION_KINDS,
    AttemptFailed,
    AttemptLost,
    Cancelled,
    CancelStep,
    CompensationAttemptFailed,
    CompensationAttemptLost,
    CompensationClaimed,
    CompensationFailed,
    CompensationRetried,
    CompensationSkipped,
    CompensationSucceeded,
    Created,
    Event,
    ExecutionCompensated,
    ExecutionFailed,
    ExecutionSucceeded,
    FailStep,
    Failure,
    Retried,
    RetryAt,
    RollbackStarted,
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
    COMPENSATING = "COMPENSATING"  #: rolled back: its completed steps' compensations run, newest first
    COMPENSATED = "COMPENSATED"  #: every compensation succeeded (or an operator skipped it)
    #: a compensation failed for good; an operator may retry or skip it
    COMPENSATION_FAILED = "COMPENSATION_FAILED"


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
        {ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED,
         ExecutionStatus.COMPENSATING}
    ),
    ExecutionStatus.FAILED: frozenset({ExecutionStatus.RUNNING, ExecutionStatus.COMPENSATING}),
    ExecutionStatus.SUCCEEDED: frozenset(),
    ExecutionStatus.CANCELLED: frozenset({ExecutionStatus.COMPENSATING}),
    ExecutionStatus.COMPENSATING: frozenset(
        {ExecutionStatus.COMPENSATED, ExecutionStatus.COMPENSATION_FAILED}
    ),
    ExecutionStatus.COMPENSATED: frozenset(),
    ExecutionStatus.COMPENSATION_FAILED: frozenset({ExecutionStatus.COMPENSATING}),
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
#: Execution statuses an operator may roll back from.
COMPENSABLE = frozenset({ExecutionStatus.FAILED, ExecutionStatus.CANCELLED})
TERMINAL = frozenset({ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED,
                      ExecutionStatus.COMPENSATED, ExecutionStatus.COMPENSATION_FAILED})
#: Statuses in which nothing happens until an operator acts (``decide`` is ``Idle``).
SETTLED = frozenset({ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.COMPENSATED,
                     ExecutionStatus.COMPENSATION_FAILED})
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
    #: A step: the retry policy of what undoes it (``None``: nothing does). A compensation: the
    #: index of the step it undoes.
    compensate: RetryPolicy | None = None
    undoes: int | None = None

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
    #: The rollback's compensations, in the order they run (empty until a rollback starts).
    compensations: tuple[StepState, ...] = ()
    #: What a step failing for good leads to: ``stop`` or ``compensate``.
    on_failure: str = "stop"

    def slot(self, index: int) -> StepState:
        """Return what runs at ``index``: the steps first, then the compensations (the index a
        :class:`Claim` or :class:`RecoverLost` names)."""
        n = len(self.steps)
        return self.steps[index] if index < n else self.compensations[index - n]

    def is_compensation(self, index: int) -> bool:
        return index >= len(self.steps)


# Decisions.


@dataclass(frozen=True)
class Claim:
    """Run attempt ``attempt`` of step ``step`` now (an index of ``ExecutionState.slot``: a
    compensation when past the steps)."""

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
class Rollback:
    """A step failed for good and the workflow compensates: start the compensations of ``plan``."""

    plan: tuple[int, ...]


@dataclass(frozen=True)
class Idle:
    """Nothing will ever happen without an operator (``reason`` says why)."""

    reason: str


Decision = Claim | Wait | RecoverLost | Finish | Rollback | Idle


def decide(state: ExecutionState, now: int) -> Decision:
    """Return what must happen next to ``state`` at time ``now`` (milliseconds)."""
    if state.status in SETTLED:
        return Idle("terminal")
    if state.status is ExecutionStatus.COMPENSATING:
        return _decide_rollback(state, now)
    cancelled = state.status is ExecutionStatus.CANCELLED
    for index, step in enumerate(state.steps):
        if step.status in DONE_STEP:
            continue
        if step.status is StepStatus.RUNNING:
            return _running(state, index, now)
        if cancelled or step.status is StepStatus.CANCELLED:
            return Idle("cancelled")
        if step.status is StepStatus.FAILED:
            plan = rollback_plan(state) if state.on_failure == "compensate" else ()
            return Rollback(plan) if plan else Finish(ExecutionStatus.FAILED)
        return _next_attempt(index, step, now)
    return Idle("cancelled") if cancelled else Finish(ExecutionStatus.SUCCEEDED)


def _decide_rollback(state: ExecutionState, now: int) -> Decision:
    """The compensations run in their plan's order, each after the one before it succeeded (or
    was skipped): strict order, as the steps (DESIGN invariant 1)."""
    n = len(state.steps)
    for k, undo in enumerate(state.compensations):
        if undo.status in DONE_STEP:
            continue
        if undo.status is StepStatus.RUNNING:
            return _running(state, n + k, now)
        if undo.status is StepStatus.FAILED:
            return Finish(ExecutionStatus.COMPENSATION_FAILED)
        return _next_attempt(n + k, undo, now)
    return Finish(ExecutionStatus.COMPENSATED)


def _running(state: ExecutionState, index: int, now: int) -> Decision:
    step = state.slot(index)
    lease = step.lease_expires_at if step.lease_expires_at is not None else now
    if now >= lease:
        return RecoverLost(index, failure(state, index, permanent=False, now=now))
    return Wait(lease, "lease")


def _next_attempt(index: int, step: StepState, now: int) -> Decision:
    retry_at = step.next_retry_at
    if step.status is StepStatus.RETRY_WAIT and retry_at is not None and now < retry_at:
        return Wait(retry_at, "retry")
    return Claim(index, step.attempt + 1)


def rollback_plan(state: ExecutionState, include_skipped: bool = False) -> tuple[int, ...]:
    """Return the steps a rollback undoes, in the order their compensations run: newest first,
    each that SUCCEEDED (or, when asked, that an operator SKIPPED) and names a compensation."""
    done = {StepStatus.SUCCEEDED, StepStatus.SKIPPED} if include_skipped else {StepStatus.SUCCEEDED}
    return tuple(i for i in reversed(range(len(state.steps)))
                 if state.steps[i].compensate is not None and state.steps[i].status in done)


def failure(state: ExecutionState, index: int, *, permanent: bool, now: int) -> Failure:
    """Return what follows a failed (or lost) attempt at ``index`` (a step or a compensation)."""
    step = state.slot(index)
    if state.status is ExecutionStatus.CANCELLED:
        return CancelStep()
    if permanent or step.used >= step.policy.max_attempts:
        return FailStep()
    name = f"{step.name}:compensate" if state.is_compensation(index) else step.name
    return RetryAt(now + backoff_ms(step.policy, state.id, name, step.used, step.attempt))


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
    step, at = _at(state, decision.step)
    if at is None:
        return [StepClaimed(decision.step, step.name, decision.attempt, worker, fence, lease_expires_at)]
    return [CompensationClaimed(_undoes(step), step.name, decision.attempt, worker, fence,
                                lease_expires_at, compensation_index=at)]


def succeeded(
    state: ExecutionState, index: int, output_json: str, record: Mapping[str, Any], now: int
) -> list[Event]:
    """Return the events of the running attempt at ``index`` succeeding (and the execution's end,
    after its last step or compensation)."""
    step, at = _at(state, index)
    duration = record.get("duration_ms")
    event = (StepSucceeded(index, step.name, step.attempt, duration, output_json=output_json,
                           record=record) if at is None else
             CompensationSucceeded(_undoes(step), step.name, step.attempt, duration,
                                   output_json=output_json, record=record, compensation_index=at))
    return _and_finish(state, [event], now)


def failed(
    state: ExecutionState, index: int, error_type: str, message: str, permanent: bool,
    record: Mapping[str, Any], now: int,
) -> list[Event]:
    """Return the events of the running attempt at ``index`` failing: a retry or the step failed
    as its policy says (and what follows: the execution's end, or its rollback)."""
    step, at = _at(state, index)
    then = failure(state, index, permanent=permanent, now=now)
    cut = message[:EVENT_MESSAGE_CHARS]
    event = (AttemptFailed(index, step.name, step.attempt, error_type, cut, permanent, then,
                           detail=message, record=record) if at is None else
             CompensationAttemptFailed(_undoes(step), step.name, step.attempt, error_type, cut,
                                       permanent, then, detail=message, record=record,
                                       compensation_index=at))
    return _and_finish(state, [event], now, cause=(step.name, error_type, cut))


def lost(state: ExecutionState, decision: RecoverLost, worker: str | None, now: int) -> list[Event]:
    """Return the events of ``worker``'s attempt recorded lost, then what ``decision`` says."""
    step, at = _at(state, decision.step)
    event = (AttemptLost(decision.step, step.name, step.attempt, worker, decision.then) if at is None
             else CompensationAttemptLost(_undoes(step), step.name, step.attempt, worker, decision.then,
                                          compensation_index=at))
    message = f"lease of worker {worker!r} expired before an outcome was recorded"
    return _and_finish(state, [event], now, cause=(step.name, "AttemptLost", message))


def finished(decision: Finish) -> list[Event]:
    """Return the events of the execution ending as ``decision`` says."""
    return [{ExecutionStatus.SUCCEEDED: ExecutionSucceeded, ExecutionStatus.FAILED: ExecutionFailed,
             ExecutionStatus.COMPENSATED: ExecutionCompensated,
             ExecutionStatus.COMPENSATION_FAILED: CompensationFailed}[decision.status]()]


def rollback(
    state: ExecutionState, plan: tuple[int, ...], by: str | None, reason: str,
    cause: tuple[str | None, str, str],
) -> list[Event]:
    """Return the events of a rollback of ``plan`` (see :func:`rollback_plan`) starting for
    ``cause`` (``(step, error type, message)``), and of its end when there is nothing to undo."""
    started = RollbackStarted(list(plan), [state.steps[i].name for i in plan], by, reason, cause[0],
                              cause[1], cause[2][:EVENT_MESSAGE_CHARS])
    return [started] + ([] if plan else [ExecutionCompensated()])


def compensation_retried(state: ExecutionState, k: int, by: str, reason: str) -> list[Event]:
    """Return the events of an operator's retry of the failed compensation ``k``."""
    undo = state.compensations[k]
    return [CompensationRetried(_undoes(undo), undo.name, by, reason, "[]", compensation_index=k)]


def compensation_skipped(state: ExecutionState, k: int, by: str, reason: str) -> list[Event]:
    """Return the events of an operator's skip of the failed compensation ``k``."""
    undo = state.compensations[k]
    return [CompensationSkipped(_undoes(undo), undo.name, by, reason, compensation_index=k)]


def failed_compensation(state: ExecutionState) -> int | None:
    """Return the place of the compensation that failed for good (what an operator retries or skips)."""
    return next((k for k, c in enumerate(state.compensations) if c.status is StepStatus.FAILED), None)


def _at(state: ExecutionState, index: int) -> tuple[StepState, int | None]:
    """Return what runs at ``index`` and, for a compensation, its place in the plan."""
    n = len(state.steps)
    return state.slot(index), (index - n if index >= n else None)


def _undoes(step: StepState) -> int:
    assert step.undoes is not None
    return step.undoes


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


def _and_finish(
    state: ExecutionState, events: list[Event], now: int,
    cause: tuple[str | None, str, str] = (None, "", ""),
) -> list[Event]:
    decision = decide(replay(state, [e.fields() for e in events]), now)
    if isinstance(decision, Rollback):
        return events + rollback(state, decision.plan, None, "on_failure: compensate", cause)
    return events + finished(decision) if isinstance(decision, Finish) else events


# Events: the facts and decisions a history records, and how each changes the state.


def evolve(state: ExecutionState, event: Mapping[str, Any]) -> ExecutionState:
    """Return ``state`` after ``event``; raise :class:`IllegalTransition` for a forbidden change."""
    kind = event["type"]
    index = event.get("step_index")
    if kind in COMPENSATION_KINDS:
        return _evolve_compensation(state, COMPENSATION_KINDS[kind], event)
    if kind == "step_claimed":
        state = _step(state, index, status=StepStatus.RUNNING, attempt=event["attempt"],
                      next_retry_at=None, lease_expires_at=event["lease_expires_at"])
        if state.status is ExecutionStatus.PENDING:
            state = _status(state, ExecutionStatus.RUNNING)
        return state
    if kind in ("step_succeeded", "attempt_failed", "attempt_lost"):
        return _step(state, index, **_outcome(kind, event))
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
    if kind == "rollback_started":
        return _rollback(state, event["plan"])
    if kind == "execution_compensated":
        return _status(state, ExecutionStatus.COMPENSATED)
    if kind == "compensation_failed":
        return _status(state, ExecutionStatus.COMPENSATION_FAILED)
    if kind == "created":
        return state
    raise IllegalTransition(f"unknown event type {kind!r}")


def _outcome(kind: str, event: Mapping[str, Any]) -> dict[str, Any]:
    """Return the change an attempt's outcome makes to its step (or compensation)."""
    if kind == "step_succeeded":
        return {"status": StepStatus.SUCCEEDED, "lease_expires_at": None}
    status = {"retry": StepStatus.RETRY_WAIT, "failed": StepStatus.FAILED,
              "cancelled": StepStatus.CANCELLED}[event["outcome"]]
    return {"status": status, "lease_expires_at": None, "next_retry_at": event.get("next_retry_at")}


def _rollback(state: ExecutionState, plan: Any) -> ExecutionState:
    if state.compensations:
        raise IllegalTransition("a rollback has started already")
    if not isinstance(plan, list):
        raise IllegalTransition(f"rollback plan {plan!r} is not a list")
    undo = []
    for i in plan:
        step = state.steps[_index(state, i)]
        if step.compensate is None or step.status not in DONE_STEP:
            raise IllegalTransition(f"step {step.name!r} ({step.status}) has nothing to undo")
        undo.append(StepState(name=step.name, status=StepStatus.PENDING, policy=step.compensate, undoes=i))
    if len(set(plan)) != len(plan) or list(plan) != sorted(plan, reverse=True):
        raise IllegalTransition(f"rollback plan {plan!r} is not newest step first, each once")
    return replace(_status(state, ExecutionStatus.COMPENSATING), compensations=tuple(undo))


def _evolve_compensation(state: ExecutionState, kind: str, event: Mapping[str, Any]) -> ExecutionState:
    """Apply a compensation's event: its forward counterpart's change, made to the compensation."""
    k = event.get("compensation_index")
    if not isinstance(k, int) or not 0 <= k < len(state.compensations):
        raise IllegalTransition(f"compensation index {k!r} is out of range")
    if state.compensations[k].undoes != event.get("step_index"):
        raise IllegalTransition(f"compensation {k} does not undo step {event.get('step_index')!r}")
    slot = len(state.steps) + k
    if kind == "step_claimed":
        if state.status is not ExecutionStatus.COMPENSATING:
            raise IllegalTransition(f"a compensation is claimed in a {state.status} execution")
        return _step(state, slot, status=StepStatus.RUNNING, attempt=event["attempt"],
                     next_retry_at=None, lease_expires_at=event["lease_expires_at"])
    if kind in ("step_succeeded", "attempt_failed", "attempt_lost"):
        return _step(state, slot, **_outcome(kind, event))
    undo = state.compensations[k]
    if kind == "retried":
        state = _step(state, slot, status=StepStatus.PENDING, budget_base=undo.attempt)
    else:
        state = _step(state, slot, status=StepStatus.SKIPPED)
    return _status(state, ExecutionStatus.COMPENSATING)


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
    """Change the step (or, past the steps, the compensation) at ``index``."""
    n = len(state.steps)
    if isinstance(index, int) and n <= index < n + len(state.compensations):
        step = state.compensations[index - n]
    else:
        index = _index(state, index)
        step = state.steps[index]
    status = changes.get("status", step.status)
    if "status" in changes and status not in STEP_TRANSITIONS[step.status]:
        what = "compensation of" if index >= n else "step"
        raise IllegalTransition(f"{what} {step.name!r} {step.status} -> {status} is not allowed")
    if index >= n:
        undo = list(state.compensations)
        undo[index - n] = replace(step, **changes)
        return replace(state, compensations=tuple(undo))
    steps = list(state.steps)
    steps[index] = replace(step, **changes)
    return replace(state, steps=tuple(steps))


def due_at(state: ExecutionState, now: int) -> int | None:
    """Return when ``state`` next needs a worker (``None``: never without an operator)."""
    decision = decide(state, now)
    if isinstance(decision, Wait):
        return decision.until
    return None if isinstance(decision, Idle) else now
