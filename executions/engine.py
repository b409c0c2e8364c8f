"""The pure heart of detflow: ``decide(state, now)`` says what happens next, the outcome functions
(``claimed`` ... ``skipped``, ``rollback`` ...) turn what happened into typed events, and ``evolve``
(``executions.state``, re-exported here with the statuses and the state) applies events.

Nothing here does I/O, reads a clock or draws a random number (DESIGN invariant 7): times are
integer milliseconds passed in, and backoff jitter is a hash of (execution, step, attempt). The same
``evolve`` that writers use to compute a new state replays a stored history in ``verify``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from executions.backoff import backoff_ms
from executions.events import (
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
    DeadlinePassed,
    Event,
    ExecutionCompensated,
    ExecutionFailed,
    ExecutionSucceeded,
    FailStep,
    Failure,
    Paused,
    Retried,
    RetryAt,
    RollbackStarted,
    SignalConsumed,
    SignalReceived,
    Skipped,
    StepClaimed,
    StepSucceeded,
    Unpaused,
    WaitEnded,
    WaitStarted,
)

# The state and its changes, re-exported: callers read them here, beside the decisions.
from executions.state import CANCELLABLE as CANCELLABLE
from executions.state import COMPENSABLE as COMPENSABLE
from executions.state import DONE_STEP as DONE_STEP
from executions.state import EXECUTION_TRANSITIONS as EXECUTION_TRANSITIONS
from executions.state import PAUSABLE as PAUSABLE
from executions.state import SETTLED as SETTLED
from executions.state import STEP_TRANSITIONS as STEP_TRANSITIONS
from executions.state import TERMINAL as TERMINAL
from executions.state import ExecutionState as ExecutionState
from executions.state import ExecutionStatus as ExecutionStatus
from executions.state import IllegalTransition as IllegalTransition
from executions.state import SignalState as SignalState
from executions.state import StepState as StepState
from executions.state import StepStatus as StepStatus
from executions.state import evolve as evolve
from executions.state import replay as replay

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
class StartWait:
    """Step ``step`` sleeps or waits: start it (no worker holds it while it waits)."""

    step: int


@dataclass(frozen=True)
class Resume:
    """The waiting step ``step`` takes the signal ``signal`` (its place among the signals)."""

    step: int
    signal: int


@dataclass(frozen=True)
class WakeUp:
    """The waiting step ``step`` reached its ``wake_at``: a sleep ends, a wait times out (``ends``:
    ``succeeded``, ``failed`` or ``skipped``, as its ``on_timeout`` says)."""

    step: int
    ends: str


@dataclass(frozen=True)
class Expire:
    """The workflow's deadline passed: step ``step`` (not running) fails, and what its rule says
    follows."""

    step: int


@dataclass(frozen=True)
class Idle:
    """Nothing will ever happen without an operator (``reason`` says why)."""

    reason: str


Decision = Claim | Wait | RecoverLost | Finish | Rollback | StartWait | Resume | WakeUp | Expire | Idle
#: The decisions a worker carries out by writing events, with no handler to run.
Settle = Finish | Rollback | StartWait | Resume | WakeUp | Expire


def decide(state: ExecutionState, now: int) -> Decision:
    """Return what must happen next to ``state`` at time ``now`` (milliseconds).

    A state is decided on several times on its way through a worker (the write that makes it, to
    know when it is due; the run loop; the message that follows): the decision is kept on the
    state (a frozen value: it never changes) with its time, and given again while no later time
    can change it (:func:`_still`). No caller can tell it from deciding again.
    """
    decided = state.__dict__.get("_decided")
    if decided is not None and _still(state, decided, now):
        return decided[1]  # type: ignore[no-any-return]
    decision = _decide_at(state, now)
    object.__setattr__(state, "_decided", (now, decision))
    return decision


def _decide_at(state: ExecutionState, now: int) -> Decision:
    decision = _decide(state, now)
    deadline = state.deadline_at
    timed = deadline is not None and state.status in (ExecutionStatus.PENDING, ExecutionStatus.RUNNING)
    if timed and isinstance(decision, Claim | StartWait | Resume | WakeUp | Wait) \
            and not (isinstance(decision, Wait) and decision.reason == "lease"):
        assert deadline is not None
        if now >= deadline:
            return Expire(_current(state))  # a deadline holds whatever holds the execution
        if isinstance(decision, Wait) and deadline < decision.until:
            decision = Wait(deadline, decision.reason)
    if state.holds and (isinstance(decision, Claim | StartWait | Resume | WakeUp | Rollback)
                        or (isinstance(decision, Wait) and decision.reason != "lease")):
        # Paused: nothing starts; a running attempt ends (and a lost one is recorded) as it would.
        # Its deadline still passes.
        if timed and deadline is not None and not isinstance(decision, Rollback):
            return Wait(deadline, "deadline")
        return Idle("paused")
    return decision


def _current(state: ExecutionState) -> int:
    return next(i for i, s in enumerate(state.steps) if s.status not in DONE_STEP)


def _decide(state: ExecutionState, now: int) -> Decision:
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
            rule = state.on_deadline if state.deadline_failed == index else state.on_failure
            plan = rollback_plan(state) if rule == "compensate" else ()
            return Rollback(plan) if plan else Finish(ExecutionStatus.FAILED)
        if step.kind != "handler":
            return _waiting(state, index, step, now)
        if step.status is StepStatus.WAITING:
            return Idle("inconsistent: a handler's step cannot wait")
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


#: What a wait's timeout rule makes of its step.
TIMEOUT_ENDS = {"fail": "failed", "continue": "succeeded", "skip": "skipped"}


def _waiting(state: ExecutionState, index: int, step: StepState, now: int) -> Decision:
    """A sleep or a wait: start it, or end it (its signal came, or its time), or wait for either."""
    if step.status is not StepStatus.WAITING:
        return StartWait(index)
    if step.kind == "wait":
        k = state.signal_for(step)
        if k is not None:
            return Resume(index, k)
    wake = step.wake_at if step.wake_at is not None else now
    if now >= wake:
        return WakeUp(index, "succeeded" if step.kind == "sleep" else TIMEOUT_ENDS[step.on_timeout])
    return Wait(wake, "signal" if step.kind == "wait" else "sleep")


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


def compensation_retried(state: ExecutionState, k: int, by: str, reason: str,
                         bulk: str | None = None) -> list[Event]:
    """Return the events of an operator's retry of the failed compensation ``k``."""
    undo = state.compensations[k]
    return [CompensationRetried(_undoes(undo), undo.name, by, reason, "[]", compensation_index=k,
                                bulk=bulk)]


def compensation_skipped(state: ExecutionState, k: int, by: str, reason: str) -> list[Event]:
    """Return the events of an operator's skip of the failed compensation ``k``."""
    undo = state.compensations[k]
    return [CompensationSkipped(_undoes(undo), undo.name, by, reason, compensation_index=k)]


def wait_started(state: ExecutionState, decision: StartWait, wake_at: int) -> list[Event]:
    """Return the events of a sleep or wait step starting, to end at ``wake_at``."""
    step = state.steps[decision.step]
    return [WaitStarted(decision.step, step.name, step.kind, step.signal, wake_at)]


def sleep_refused(state: ExecutionState, decision: StartWait, message: str, now: int) -> list[Event]:
    """Return the events of a sleep whose time could not be read: started and failed at once (and
    what follows: the execution's end, or its rollback)."""
    step = state.steps[decision.step]
    started = WaitStarted(decision.step, step.name, step.kind, step.signal, now)
    after = replay(state, [started.fields()])
    ended = WaitEnded(decision.step, step.name, "refused", "failed", message[:EVENT_MESSAGE_CHARS])
    return [started, *_and_finish(after, [ended], now, cause=(step.name, "SleepUntilInvalid", message))]


def resumed(state: ExecutionState, decision: Resume, payload_json: str, now: int) -> list[Event]:
    """Return the events of a waiting step taking its signal, whose payload is its output."""
    step = state.steps[decision.step]
    assert step.signal is not None
    return _and_finish(state, [SignalConsumed(decision.step, step.name, step.signal, decision.signal,
                                              output_json=payload_json)], now)


def woke(state: ExecutionState, decision: WakeUp, output_json: str, now: int) -> list[Event]:
    """Return the events of a sleep ending or a wait timing out (``output_json``: the step's output,
    a sleep's or a timed-out wait's default) and what follows."""
    step = state.steps[decision.step]
    outcome = "woke" if step.kind == "sleep" else "timed_out"
    message = "" if step.kind == "sleep" else f"no signal {step.signal!r} came before the timeout"
    event = WaitEnded(decision.step, step.name, outcome, decision.ends, message, output_json=output_json)
    return _and_finish(state, [event], now, cause=(step.name, "WaitTimedOut", message))


def signalled(state: ExecutionState, name: str, key: str | None, by: str, reason: str,
              payload_json: str) -> list[Event]:
    """Return the events of a signal coming (kept until a wait step named for it takes it)."""
    return [SignalReceived(name, len(state.signals), key, by, reason, payload_json=payload_json)]


def expired(state: ExecutionState, decision: Expire, now: int) -> list[Event]:
    """Return the events of the workflow's deadline passing (and what follows: the execution's
    end, or its rollback)."""
    step = state.steps[decision.step]
    assert state.deadline_at is not None
    event = DeadlinePassed(decision.step, step.name, state.deadline_at, state.on_deadline)
    return _and_finish(state, [event], now,
                       cause=(step.name, "DeadlineExceeded", deadline_message(state.deadline_at)))


def deadline_message(deadline_at: int) -> str:
    return f"the workflow's deadline passed (at {deadline_at} ms since the epoch) before the step ended"


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


def cancelled(by: str, reason: str, bulk: str | None = None) -> list[Event]:
    """Return the events of an operator's cancel (by the bulk operation ``bulk``, when one)."""
    return [Cancelled(by, reason, bulk=bulk)]


def paused(scope: str, by: str, reason: str, bulk: str | None = None) -> list[Event]:
    """Return the events of a pause of ``scope`` (``execution`` or ``workflow``)."""
    return [Paused(scope, by, reason, bulk=bulk)]


def unpaused(scope: str, by: str, reason: str, bulk: str | None = None) -> list[Event]:
    """Return the events of the pause of ``scope`` lifted."""
    return [Unpaused(scope, by, reason, bulk=bulk)]


def retried(
    state: ExecutionState, index: int, by: str, reason: str, input_diff_json: str,
    input_json: str | None = None, bulk: str | None = None,
) -> list[Event]:
    """Return the events of an operator's retry of the failed step ``index``."""
    return [Retried(index, state.steps[index].name, by, reason, input_diff_json, input_json=input_json,
                    bulk=bulk)]


def skipped(state: ExecutionState, index: int, by: str, reason: str, output_json: str) -> list[Event]:
    """Return the events of an operator's skip of the failed step ``index``."""
    return [Skipped(index, state.steps[index].name, by, reason, output_json=output_json)]


def failed_step(state: ExecutionState) -> int | None:
    """Return the index of the step that failed for good (what an operator retries or skips)."""
    return next((i for i, s in enumerate(state.steps) if s.status is StepStatus.FAILED), None)


class Folded(list[Event]):
    """Events, with what the engine worked out from them: their history entries and the state they
    lead ``base`` to (a writer that commits them from ``base`` takes these rather than replay them
    again; the decision on that state is kept on it, see :func:`decide`)."""

    def __init__(self, events: list[Event], base: ExecutionState, entries: list[dict[str, Any]],
                 after: ExecutionState) -> None:
        super().__init__(events)
        self.base, self.entries, self.after = base, entries, after


def joined(events: Folded, more: list[Event]) -> Folded:
    """Return ``events`` and then ``more`` (events on the state ``events`` lead to), folded: one
    write commits both (an outcome and the next step's claim)."""
    entries = [e.fields() for e in more]
    return Folded(list(events) + more, events.base, events.entries + entries,
                  replay(events.after, entries))


def _and_finish(
    state: ExecutionState, events: list[Event], now: int,
    cause: tuple[str | None, str, str] = (None, "", ""),
) -> list[Event]:
    entries = [e.fields() for e in events]
    after = replay(state, entries)
    decision = decide(after, now)
    if isinstance(decision, Rollback):
        return events + rollback(state, decision.plan, None, "on_failure: compensate", cause)
    if isinstance(decision, Finish):
        return events + finished(decision)
    return Folded(events, state, entries, after)


def due_at(state: ExecutionState, now: int) -> int | None:
    """Return when ``state`` next needs a worker (``None``: never without an operator)."""
    return due(decide(state, now), now)


def due(decision: Decision, now: int) -> int | None:
    """Return when the state ``decision`` was made for at ``now`` next needs a worker."""
    if isinstance(decision, Wait):
        return decision.until
    return None if isinstance(decision, Idle) else now


#: Decisions that stay what they are as time passes, as long as no deadline passes meanwhile (a
#: wait ends, a lease runs out, a lost attempt's retry time moves with the clock; these do not).
_LASTING = (Claim, StartWait, Resume, WakeUp, Finish, Rollback)


def _still(state: ExecutionState, decided: tuple[int, Decision], now: int) -> bool:
    """Tell whether ``decide(state, now)`` is the decision ``decided`` made for ``state`` at an
    earlier time: a claim, the start or end of a wait, the execution's end or rollback, with no
    deadline passed between (each of these depends on the state alone, or on a time already past)."""
    at, decision = decided
    if now < at or not isinstance(decision, _LASTING):
        return False
    deadline = state.deadline_at
    return deadline is None or now < deadline or isinstance(decision, Finish | Rollback)
