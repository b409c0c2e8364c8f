"""The pure engine's rollback: the plan, ``decide`` while compensating, the compensation events."""
from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from executions import engine
from executions.engine import (
    STEP_TRANSITIONS,
    Claim,
    ExecutionState,
    ExecutionStatus,
    FailStep,
    Finish,
    Idle,
    IllegalTransition,
    RecoverLost,
    RetryAt,
    Rollback,
    StepState,
    StepStatus,
    Wait,
    decide,
    evolve,
    replay,
    rollback_plan,
)
from workflows.spec import RetryPolicy

E, S = ExecutionStatus, StepStatus
NOW = 1_000_000
POLICY = RetryPolicy(max_attempts=3, initial_delay_s=1.0, multiplier=2.0, max_delay_s=60.0, jitter=0.0)
UNDO = RetryPolicy(max_attempts=2, initial_delay_s=0.5, multiplier=2.0, max_delay_s=60.0, jitter=0.0)


def step(status: StepStatus, attempt: int = 0, undo: bool = True, **fields: Any) -> StepState:
    return StepState(name="", status=status, policy=POLICY, attempt=attempt,
                     compensate=UNDO if undo else None, **fields)


def execution(status: ExecutionStatus, *steps: StepState, on_failure: str = "compensate",
              compensations: tuple[StepState, ...] = ()) -> ExecutionState:
    named = tuple(replace(s, name=f"s{i}") for i, s in enumerate(steps))
    return ExecutionState("e1", status, named, compensations=tuple(
        replace(c, name=f"s{c.undoes}", policy=UNDO) for c in compensations), on_failure=on_failure)


def undo(of: int, status: StepStatus = S.PENDING, attempt: int = 0, **fields: Any) -> StepState:
    return StepState(name="", status=status, policy=UNDO, attempt=attempt, undoes=of, **fields)


DONE, TODO, FAILED = step(S.SUCCEEDED, 1), step(S.PENDING), step(S.FAILED, 3)


def test_plan__is_the_succeeded_steps_with_a_compensation_newest_first():
    state = execution(E.RUNNING, DONE, step(S.SUCCEEDED, 1, undo=False), step(S.SKIPPED, 1), DONE, FAILED,
                      TODO)
    assert rollback_plan(state) == (3, 0)
    assert rollback_plan(state, include_skipped=True) == (3, 2, 0)


DECIDE_TABLE = [
    # A step failing for good rolls back when the workflow compensates and something is to undo.
    (execution(E.RUNNING, DONE, DONE, FAILED, TODO), Rollback((1, 0))),
    (execution(E.RUNNING, DONE, FAILED, on_failure="stop"), Finish(E.FAILED)),
    (execution(E.RUNNING, step(S.SUCCEEDED, 1, undo=False), FAILED), Finish(E.FAILED)),
    (execution(E.RUNNING, FAILED, TODO), Finish(E.FAILED)),
    # While compensating: strict plan order, each after the one before it.
    (execution(E.COMPENSATING, DONE, DONE, FAILED, compensations=(undo(1), undo(0))), Claim(3, 1)),
    (execution(E.COMPENSATING, DONE, DONE, FAILED, compensations=(undo(1, S.SUCCEEDED, 1), undo(0))),
     Claim(4, 1)),
    (execution(E.COMPENSATING, DONE, DONE, FAILED, compensations=(undo(1, S.SKIPPED, 2), undo(0))),
     Claim(4, 1)),
    (execution(E.COMPENSATING, DONE, FAILED,
               compensations=(undo(0, S.RETRY_WAIT, 1, next_retry_at=NOW + 7),)), Wait(NOW + 7, "retry")),
    (execution(E.COMPENSATING, DONE, FAILED,
               compensations=(undo(0, S.RUNNING, 1, lease_expires_at=NOW + 3),)), Wait(NOW + 3, "lease")),
    (execution(E.COMPENSATING, DONE, FAILED,
               compensations=(undo(0, S.RUNNING, 1, lease_expires_at=NOW),)),
     RecoverLost(2, RetryAt(NOW + 500))),
    (execution(E.COMPENSATING, DONE, FAILED,
               compensations=(undo(0, S.RUNNING, 2, lease_expires_at=NOW),)), RecoverLost(2, FailStep())),
    (execution(E.COMPENSATING, DONE, DONE, FAILED, compensations=(undo(1, S.FAILED, 2), undo(0))),
     Finish(E.COMPENSATION_FAILED)),
    (execution(E.COMPENSATING, DONE, FAILED, compensations=(undo(0, S.SUCCEEDED, 1),)),
     Finish(E.COMPENSATED)),
    (execution(E.COMPENSATED, DONE, FAILED, compensations=(undo(0, S.SUCCEEDED, 1),)), Idle("terminal")),
    (execution(E.COMPENSATION_FAILED, DONE, FAILED, compensations=(undo(0, S.FAILED, 2),)), Idle("terminal")),
]


@pytest.mark.parametrize(("state", "expected"), DECIDE_TABLE)
def test_decide__rollback_table(state, expected):
    assert decide(state, NOW) == expected


def test_failed_attempt__of_the_last_try_starts_the_rollback_in_the_same_write():
    state = execution(E.RUNNING, DONE, DONE, step(S.RUNNING, 3))
    events = engine.failed(state, 2, "Declined", "card declined", False, {}, NOW)
    assert [e.type for e in events] == ["attempt_failed", "rollback_started"]
    started = events[1]
    assert (started.plan, started.steps, started.cause_step, started.cause_type) == (
        [1, 0], ["s1", "s0"], "s2", "Declined")
    after = replay(state, [e.fields() for e in events])
    assert after.status is E.COMPENSATING
    assert [(c.undoes, c.status) for c in after.compensations] == [(1, S.PENDING), (0, S.PENDING)]


def test_compensation_events__name_the_step_they_undo_and_their_place_in_the_plan():
    state = execution(E.COMPENSATING, DONE, DONE, FAILED, compensations=(undo(1, S.SUCCEEDED, 1), undo(0)))
    claim = engine.claimed(state, Claim(4, 1), "w", 9, NOW + 5)
    assert claim[0].fields() == {"type": "compensation_claimed", "step_index": 0, "step": "s0", "attempt": 1,
                                 "worker": "w", "fence": 9, "lease_expires_at": NOW + 5,
                                 "compensation_index": 1}
    running = replay(state, [claim[0].fields()])
    assert running.compensations[1].status is S.RUNNING and running.steps[0].status is S.SUCCEEDED
    done = engine.succeeded(running, 4, "{}", {"duration_ms": 3}, NOW)
    assert [e.type for e in done] == ["compensation_succeeded", "execution_compensated"]
    assert replay(running, [e.fields() for e in done]).status is E.COMPENSATED


def test_compensation_failing_for_good__stops_the_rollback_until_an_operator_acts():
    state = execution(E.COMPENSATING, DONE, DONE, FAILED,
                      compensations=(undo(1, S.RUNNING, 2), undo(0)))
    events = engine.failed(state, 3, "Refused", "refund refused", False, {}, NOW)
    assert [e.type for e in events] == ["compensation_attempt_failed", "compensation_failed"]
    stuck = replay(state, [e.fields() for e in events])
    assert stuck.status is E.COMPENSATION_FAILED and engine.failed_compensation(stuck) == 0
    retried = replay(stuck, [e.fields() for e in engine.compensation_retried(stuck, 0, "op", "fixed")])
    assert retried.status is E.COMPENSATING and decide(retried, NOW) == Claim(3, 3)
    assert retried.compensations[0].used == 0  # a new budget
    skipped = replay(stuck, [e.fields() for e in engine.compensation_skipped(stuck, 0, "op", "by hand")])
    assert skipped.status is E.COMPENSATING and decide(skipped, NOW) == Claim(4, 1)


@pytest.mark.parametrize("event", [
    {"type": "rollback_started", "plan": [0, 1]},  # oldest first
    {"type": "rollback_started", "plan": [1, 1]},
    {"type": "rollback_started", "plan": [2]},  # the failed step never succeeded
    {"type": "rollback_started", "plan": [9]},
    {"type": "rollback_started", "plan": "0"},
    {"type": "compensation_claimed", "compensation_index": 0, "step_index": 0, "attempt": 1,
     "lease_expires_at": NOW},  # no rollback has started
])
def test_evolve__refuses_a_rollback_that_breaks_its_rules(event):
    with pytest.raises(IllegalTransition):
        evolve(execution(E.RUNNING, DONE, DONE, FAILED), event)


def test_evolve__refuses_a_second_rollback_and_a_compensation_of_another_step():
    state = execution(E.COMPENSATING, DONE, DONE, FAILED, compensations=(undo(1), undo(0)))
    with pytest.raises(IllegalTransition):
        evolve(state, {"type": "rollback_started", "plan": [1, 0]})
    with pytest.raises(IllegalTransition):
        evolve(state, {"type": "compensation_claimed", "compensation_index": 0, "step_index": 0,
                       "attempt": 1, "lease_expires_at": NOW})


COMPENSATION_EVENTS: dict[StepStatus, dict[str, Any]] = {
    S.RUNNING: {"type": "compensation_claimed", "attempt": 2, "lease_expires_at": NOW},
    S.SUCCEEDED: {"type": "compensation_succeeded"},
    S.RETRY_WAIT: {"type": "compensation_attempt_failed", "outcome": "retry", "next_retry_at": NOW},
    S.FAILED: {"type": "compensation_attempt_lost", "outcome": "failed"},
    S.PENDING: {"type": "compensation_retried"},
    S.SKIPPED: {"type": "compensation_skipped"},
}


@pytest.mark.parametrize(("source", "target"), list(itertools.product(S, COMPENSATION_EVENTS)))
def test_evolve__accepts_exactly_the_compensation_changes_in_the_table(source, target):
    status = E.COMPENSATION_FAILED if target in (S.PENDING, S.SKIPPED) else E.COMPENSATING
    state = execution(status, DONE, FAILED, compensations=(undo(0, source, 1),))
    event = {**COMPENSATION_EVENTS[target], "compensation_index": 0, "step_index": 0}
    if target in STEP_TRANSITIONS[source]:
        assert evolve(state, event).compensations[0].status is target
    else:
        with pytest.raises(IllegalTransition):
            evolve(state, event)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_rollback__runs_compensations_in_strict_reverse_order_of_the_steps_that_succeeded(data):
    """Random outcomes (failures, lost leases, operator retries and skips of compensations): every
    compensation claimed undoes a step that SUCCEEDED, in strict reverse order, each succeeding at
    most once; the execution settles COMPENSATED, COMPENSATION_FAILED or SUCCEEDED, and the history
    replays to the same state."""
    n = data.draw(st.integers(1, 6))
    undoable = [data.draw(st.booleans()) for _ in range(n)]
    first = execution(E.PENDING, *(step(S.PENDING, undo=u) for u in undoable))
    state, events, now = first, [], NOW
    claimed_undo: list[int] = []
    succeeded_undo: list[int] = []
    actions = 3

    def apply(event: dict[str, Any]) -> None:
        nonlocal state
        state = evolve(state, event)
        events.append(event)

    for _ in range(400):
        decision = decide(state, now)
        if isinstance(decision, Claim):
            slot = state.slot(decision.step)
            if state.is_compensation(decision.step):
                assert slot.undoes is not None and state.steps[slot.undoes].status is S.SUCCEEDED
                claimed_undo.append(slot.undoes)
            events_ = engine.claimed(state, decision, "w", len(events) + 1, now + 5000)
            for e in events_:
                apply(e.fields())
            result = data.draw(st.sampled_from(["ok", "ok", "fail", "permanent", "lost"]))
            if result == "ok":
                out = engine.succeeded(state, decision.step, "{}", {}, now)
                if state.is_compensation(decision.step):
                    succeeded_undo.append(state.slot(decision.step).undoes or 0)
            elif result == "lost":
                now += 6000
                continue
            else:
                out = engine.failed(state, decision.step, "E", "m", result == "permanent", {}, now)
            for e in out:
                apply(e.fields())
            now += data.draw(st.integers(0, 3000))
        elif isinstance(decision, Wait):
            now = decision.until
        elif isinstance(decision, RecoverLost):
            for e in engine.lost(state, decision, "w", now):
                apply(e.fields())
        elif isinstance(decision, Finish):
            for e in engine.finished(decision):
                apply(e.fields())
        elif isinstance(decision, Rollback):
            for e in engine.rollback(state, decision.plan, None, "r", ("s", "E", "m")):
                apply(e.fields())
        elif state.status is E.COMPENSATION_FAILED and actions:
            actions -= 1
            k = engine.failed_compensation(state)
            assert k is not None
            build = data.draw(st.sampled_from([engine.compensation_retried, engine.compensation_skipped]))
            for e in build(state, k, "op", "r"):
                apply(e.fields())
        else:
            break
    else:
        pytest.fail("the execution never settled")
    assert state.status in (E.SUCCEEDED, E.FAILED, E.COMPENSATED, E.COMPENSATION_FAILED)
    done = [i for i in reversed(range(n)) if undoable[i] and state.steps[i].status is S.SUCCEEDED]
    if state.status in (E.COMPENSATED, E.COMPENSATION_FAILED):
        assert [c.undoes for c in state.compensations] == done
        # Strict reverse order: each compensation's claims come after the one before it settled.
        assert claimed_undo == sorted(claimed_undo, reverse=True)
        assert len(succeeded_undo) == len(set(succeeded_undo))
    else:
        assert not state.compensations and not claimed_undo
    assert replay(first, events) == state
