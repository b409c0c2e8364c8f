"""An execution's state as the engine sees it: statuses, the transition tables that bound them, and
``evolve``, which applies one history entry (``replay``: many) and refuses a forbidden change.

Pure: ``executions.engine`` decides from these, ``transitions.commit`` computes the state a write
leads to with ``replay``, and ``verify`` replays a stored history through the same code.
"""
from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from executions.events import COMPENSATION_KINDS
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
    #: a sleep or a wait: no worker holds it; it ends at ``wake_at`` (or, a wait, at its signal)
    WAITING = "WAITING"
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
    # PENDING and RETRY_WAIT -> FAILED: the workflow's deadline passed before the step (again) ran.
    StepStatus.PENDING: frozenset({StepStatus.RUNNING, StepStatus.WAITING, StepStatus.CANCELLED,
                                   StepStatus.FAILED}),
    StepStatus.RUNNING: frozenset(
        {StepStatus.SUCCEEDED, StepStatus.RETRY_WAIT, StepStatus.FAILED, StepStatus.CANCELLED}
    ),
    StepStatus.RETRY_WAIT: frozenset({StepStatus.RUNNING, StepStatus.CANCELLED, StepStatus.FAILED}),
    StepStatus.WAITING: frozenset(
        {StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED}
    ),
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


def replace(value: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` for the engine's frozen values, without its per-call walk over the
    fields and ``__init__`` (half the cost of folding an event): a copy of ``value``'s fields with
    ``changes``. Not what ``engine.decide`` kept on a state (``_decided``): a new state decides afresh."""
    names = _FIELDS.get(type(value))
    if names is None:
        names = _FIELDS[type(value)] = frozenset(f.name for f in fields(value))
    if not names.issuperset(changes):
        raise TypeError(f"{type(value).__name__} has no field {sorted(set(changes) - names)[0]!r}")
    new = object.__new__(type(value))
    attrs = new.__dict__
    attrs.update(value.__dict__)
    attrs.pop("_decided", None)
    attrs.update(changes)
    return new


_FIELDS: dict[type, frozenset[str]] = {}


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
    #: ``handler``, ``sleep`` or ``wait``; a wait's signal and what its timeout does.
    kind: str = "handler"
    signal: str | None = None
    on_timeout: str = "fail"
    #: A WAITING step ends at this time (a sleep's end, a wait's timeout).
    wake_at: int | None = None

    @property
    def used(self) -> int:
        """Attempts used in the current budget."""
        return self.attempt - self.budget_base


@dataclass(frozen=True)
class SignalState:
    """A signal sent to the execution: its name, and whether a wait step took it."""

    name: str
    consumed: bool = False


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
    #: The signals sent to it, in the order they came (a wait takes the first of its name not taken).
    signals: tuple[SignalState, ...] = ()
    #: The pauses that hold it (``execution``: an operator's; ``workflow``: its workflow's): while
    #: any holds, no step, wait or compensation starts. Lifted when the execution ends.
    holds: frozenset[str] = frozenset()
    #: When the workflow's deadline passes (``None``: none, or passed already), and what it does.
    deadline_at: int | None = None
    on_deadline: str = "fail"
    #: The step the deadline failed (its failure follows ``on_deadline``, not ``on_failure``) until
    #: an operator retries or skips it.
    deadline_failed: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        # What ``engine.decide`` keeps on a state (its last decision) is not part of its value:
        # a copy or a pickle leaves it behind, and decides afresh.
        return {k: v for k, v in self.__dict__.items() if k != "_decided"}

    def signal_for(self, step: StepState) -> int | None:
        """Return the place of the first signal a waiting ``step`` may take, if one came."""
        return next((k for k, s in enumerate(self.signals) if s.name == step.signal and not s.consumed),
                    None)

    def slot(self, index: int) -> StepState:
        """Return what runs at ``index``: the steps first, then the compensations (the index a
        :class:`Claim` or :class:`RecoverLost` names)."""
        n = len(self.steps)
        return self.steps[index] if index < n else self.compensations[index - n]

    def is_compensation(self, index: int) -> bool:
        return index >= len(self.steps)


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
            if step.status in (StepStatus.PENDING, StepStatus.RETRY_WAIT, StepStatus.WAITING):
                state = _step(state, i, status=StepStatus.CANCELLED, next_retry_at=None, wake_at=None)
        return state
    if kind in ("wait_started", "signal_consumed", "wait_ended"):
        return _evolve_wait(state, kind, event)
    if kind == "signal_received":
        if state.status in SETTLED or state.status is ExecutionStatus.CANCELLED:
            raise IllegalTransition(f"a signal came to a {state.status} execution")
        if event.get("signal_index") != len(state.signals):
            raise IllegalTransition(f"signal index {event.get('signal_index')!r} is not the next one")
        return replace(state, signals=(*state.signals, SignalState(event["name"])))
    if kind == "retried":
        step = state.steps[_index(state, index)]
        state = _step(state, index, status=StepStatus.PENDING, budget_base=step.attempt)
        return replace(_status(state, ExecutionStatus.RUNNING), deadline_failed=None)
    if kind == "skipped":
        state = _step(state, index, status=StepStatus.SKIPPED)
        return replace(_status(state, ExecutionStatus.RUNNING), deadline_failed=None)
    if kind == "rollback_started":
        return _rollback(state, event["plan"])
    if kind == "execution_compensated":
        return _status(state, ExecutionStatus.COMPENSATED)
    if kind == "compensation_failed":
        return _status(state, ExecutionStatus.COMPENSATION_FAILED)
    if kind == "deadline_passed":
        i = _index(state, index)
        if state.deadline_at is None:
            raise IllegalTransition("a deadline passed in an execution that has none")
        state = _step(state, i, status=StepStatus.FAILED, next_retry_at=None, wake_at=None)
        if state.status is ExecutionStatus.PENDING:
            state = _status(state, ExecutionStatus.RUNNING)
        # Past the deadline its rule decides what this failure leads to, and the deadline is spent:
        # an operator's retry after it runs without one.
        return replace(state, deadline_at=None, deadline_failed=i)
    if kind in ("paused", "resumed"):
        return _hold(state, kind, event.get("scope"))
    if kind == "created":
        return state
    raise IllegalTransition(f"unknown event type {kind!r}")


#: What a wait's end does to its step.
WAIT_ENDS = {"succeeded": StepStatus.SUCCEEDED, "failed": StepStatus.FAILED, "skipped": StepStatus.SKIPPED}


def _evolve_wait(state: ExecutionState, kind: str, event: Mapping[str, Any]) -> ExecutionState:
    index = _index(state, event.get("step_index"))
    step = state.steps[index]
    if step.kind == "handler":
        raise IllegalTransition(f"step {step.name!r} runs a handler: it neither sleeps nor waits")
    if kind == "wait_started":
        state = _step(state, index, status=StepStatus.WAITING, wake_at=event["wake_at"],
                      attempt=step.attempt + 1)
        return _status(state, ExecutionStatus.RUNNING) if state.status is ExecutionStatus.PENDING else state
    if kind == "signal_consumed":
        k = event.get("signal_index")
        if not isinstance(k, int) or not 0 <= k < len(state.signals) or state.signals[k].consumed \
                or state.signals[k].name != step.signal:
            raise IllegalTransition(f"signal {k!r} cannot be taken by step {step.name!r}")
        signals = list(state.signals)
        signals[k] = replace(signals[k], consumed=True)
        state = replace(state, signals=tuple(signals))
        return _step(state, index, status=StepStatus.SUCCEEDED, wake_at=None)
    ends = WAIT_ENDS.get(event.get("ends"))  # type: ignore[arg-type]
    if ends is None:
        raise IllegalTransition(f"a wait cannot end as {event.get('ends')!r}")
    return _step(state, index, status=ends, wake_at=None)


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


#: What may pause an execution.
HOLD_SCOPES = frozenset({"execution", "workflow"})
#: Execution statuses a pause may hold (one that has ended has nothing to hold).
PAUSABLE = frozenset({ExecutionStatus.PENDING, ExecutionStatus.RUNNING, ExecutionStatus.COMPENSATING})


def _hold(state: ExecutionState, kind: str, scope: Any) -> ExecutionState:
    if scope not in HOLD_SCOPES:
        raise IllegalTransition(f"a pause's scope cannot be {scope!r}")
    if kind == "paused":
        if state.status not in PAUSABLE:
            raise IllegalTransition(f"a {state.status} execution cannot be paused")
        if scope in state.holds:
            raise IllegalTransition(f"the execution is paused by its {scope} already")
        return replace(state, holds=state.holds | {scope})
    if scope not in state.holds:
        raise IllegalTransition(f"the execution is not paused by its {scope}")
    return replace(state, holds=state.holds - {scope})


def _status(state: ExecutionState, status: ExecutionStatus) -> ExecutionState:
    if status not in EXECUTION_TRANSITIONS[state.status]:
        raise IllegalTransition(f"execution {state.status} -> {status} is not allowed")
    if status in SETTLED or status is ExecutionStatus.CANCELLED:
        return replace(state, status=status, holds=frozenset())  # an ended execution holds nothing
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
