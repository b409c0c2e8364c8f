"""The pure engine: ``decide``, ``failure``, backoff, ``evolve`` and the transition tables."""
from __future__ import annotations

import copy
import itertools
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from executions.backoff import backoff_ms, jitter_fraction
from executions.engine import (
    DONE_STEP,
    EXECUTION_TRANSITIONS,
    STEP_TRANSITIONS,
    CancelStep,
    Claim,
    ExecutionState,
    ExecutionStatus,
    FailStep,
    Finish,
    Idle,
    IllegalTransition,
    RecoverLost,
    Resume,
    RetryAt,
    StartWait,
    StepState,
    StepStatus,
    Wait,
    WakeUp,
    decide,
    due_at,
    evolve,
    failure,
    replay,
)
from workflows.spec import RetryPolicy

E, S = ExecutionStatus, StepStatus
NOW = 1_000_000
LEASE = 5_000
#: No jitter, so that expected delays can be written down: 1 s, 2 s, 4 s, ... capped at 60 s.
POLICY = RetryPolicy(max_attempts=3, initial_delay_s=1.0, multiplier=2.0, max_delay_s=60.0, jitter=0.0)
PROPERTY = settings(max_examples=200, deadline=None)


def step(status: StepStatus, attempt: int = 0, **fields: Any) -> StepState:
    return StepState(name="", status=status, policy=POLICY, attempt=attempt, **fields)


def execution(status: ExecutionStatus, *steps: StepState) -> ExecutionState:
    return ExecutionState("e1", status, tuple(replace(s, name=f"s{i}") for i, s in enumerate(steps)))


DONE, TODO = step(S.SUCCEEDED, 1), step(S.PENDING)

DECIDE_TABLE = [
    (execution(E.PENDING, TODO, TODO), Claim(0, 1)),
    (execution(E.RUNNING, DONE, TODO, TODO), Claim(1, 1)),
    (execution(E.RUNNING, DONE, step(S.SKIPPED, 3), TODO), Claim(2, 1)),
    (execution(E.RUNNING, DONE, step(S.PENDING, 3, budget_base=3), TODO), Claim(1, 4)),
    (execution(E.RUNNING, DONE, step(S.RUNNING, 1, lease_expires_at=NOW + 1), TODO), Wait(NOW + 1, "lease")),
    (execution(E.RUNNING, step(S.RUNNING, 1, lease_expires_at=NOW)), RecoverLost(0, RetryAt(NOW + 1000))),
    (execution(E.RUNNING, step(S.RUNNING, 1)), RecoverLost(0, RetryAt(NOW + 1000))),
    (execution(E.RUNNING, step(S.RUNNING, 2, lease_expires_at=NOW - 1)), RecoverLost(0, RetryAt(NOW + 2000))),
    (execution(E.RUNNING, step(S.RUNNING, 3, lease_expires_at=NOW - 1)), RecoverLost(0, FailStep())),
    (execution(E.RUNNING, step(S.RUNNING, 4, budget_base=3)), RecoverLost(0, RetryAt(NOW + 1000))),
    (execution(E.RUNNING, DONE, step(S.RETRY_WAIT, 1, next_retry_at=NOW + 5)), Wait(NOW + 5, "retry")),
    (execution(E.RUNNING, DONE, step(S.RETRY_WAIT, 1, next_retry_at=NOW)), Claim(1, 2)),
    (execution(E.RUNNING, DONE, step(S.RETRY_WAIT, 2)), Claim(1, 3)),
    (execution(E.RUNNING, DONE, step(S.FAILED, 3), TODO), Finish(E.FAILED)),
    (execution(E.RUNNING, DONE, step(S.SKIPPED, 1)), Finish(E.SUCCEEDED)),
    (execution(E.CANCELLED, DONE, step(S.RUNNING, 1, lease_expires_at=NOW + 9)), Wait(NOW + 9, "lease")),
    (execution(E.CANCELLED, DONE, step(S.RUNNING, 1, lease_expires_at=NOW)), RecoverLost(1, CancelStep())),
    (execution(E.CANCELLED, DONE, step(S.CANCELLED), step(S.CANCELLED)), Idle("cancelled")),
    (execution(E.CANCELLED, step(S.FAILED, 3), TODO), Idle("cancelled")),
    (execution(E.CANCELLED, DONE, DONE), Idle("cancelled")),
    (execution(E.SUCCEEDED, DONE, DONE), Idle("terminal")),
    (execution(E.FAILED, DONE, step(S.FAILED, 3)), Idle("terminal")),
]


def _label(case: tuple[ExecutionState, object]) -> str:
    state, expected = case
    return f"{state.status}:{'/'.join(s.status for s in state.steps)}->{expected}"


@pytest.mark.parametrize(("state", "expected"), DECIDE_TABLE, ids=[_label(c) for c in DECIDE_TABLE])
def test_decide__returns_the_decision_each_legal_state_calls_for(state, expected):
    assert decide(state, NOW) == expected


@pytest.mark.parametrize(("state", "expected"), DECIDE_TABLE, ids=[_label(c) for c in DECIDE_TABLE])
def test_due_at__is_the_wait_time_now_for_work_and_none_when_idle(state, expected):
    want = expected.until if isinstance(expected, Wait) else None if isinstance(expected, Idle) else NOW
    assert due_at(state, NOW) == want


@pytest.mark.parametrize(
    ("state", "permanent", "expected"),
    [
        (execution(E.RUNNING, step(S.RUNNING, 1)), False, RetryAt(NOW + 1000)),
        (execution(E.RUNNING, step(S.RUNNING, 1)), True, FailStep()),
        (execution(E.RUNNING, step(S.RUNNING, 3)), False, FailStep()),
        (execution(E.RUNNING, step(S.RUNNING, 5, budget_base=3)), False, RetryAt(NOW + 2000)),
        (execution(E.CANCELLED, step(S.RUNNING, 1)), True, CancelStep()),
    ],
)
def test_failure__retries_within_budget_and_fails_when_permanent_or_exhausted(state, permanent, expected):
    assert failure(state, 0, permanent=permanent, now=NOW) == expected


# Backoff.


@pytest.mark.parametrize(
    ("used", "expected_ms"),
    [(0, 1000), (1, 1000), (2, 2000), (3, 4000), (6, 32000), (7, 60000), (100, 60000)],
)
def test_backoff_ms__grows_exponentially_up_to_max_delay(used, expected_ms):
    assert backoff_ms(POLICY, "e1", "s0", used, used) == expected_ms


def test_backoff_ms__is_the_same_for_equal_execution_step_and_attempt():
    policy = replace(POLICY, jitter=1.0)
    first = [backoff_ms(policy, "e1", "s0", 1, attempt) for attempt in range(1, 30)]
    assert first == [backoff_ms(policy, "e1", "s0", 1, attempt) for attempt in range(1, 30)]
    assert len(set(first)) > 20, "jitter should differ between attempts"
    assert backoff_ms(policy, "e2", "s0", 1, 1) != backoff_ms(policy, "e1", "s0", 1, 1)
    assert backoff_ms(policy, "e1", "s1", 1, 1) != backoff_ms(policy, "e1", "s0", 1, 1)


@pytest.mark.parametrize(
    "policy",
    [
        RetryPolicy(initial_delay_s=5e-324, multiplier=1e10, max_delay_s=60, jitter=0),
        RetryPolicy(initial_delay_s=1e-200, multiplier=1000, max_delay_s=604800, jitter=0),
        RetryPolicy(initial_delay_s=604800, multiplier=1000, max_delay_s=604800, jitter=0),
    ],
)
def test_backoff_ms__reaches_the_cap_without_overflow_for_extreme_policies(policy):
    assert backoff_ms(policy, "e1", "s0", 100, 100) == round(policy.max_delay_s * 1000)


policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 5),
    initial_delay_s=st.floats(0, 100),
    multiplier=st.floats(1, 10),
    max_delay_s=st.floats(0, 3600),
    jitter=st.floats(0, 1),
)


@PROPERTY
@given(policies, st.text(max_size=20), st.text(max_size=20), st.integers(0, 100), st.integers(0, 10**6))
def test_backoff_ms__stays_within_jitter_band_and_never_above_the_cap(policy, eid, name, used, attempt):
    delay = backoff_ms(policy, eid, name, used, attempt)
    base_ms = min(policy.max_delay_s, policy.initial_delay_s * policy.multiplier ** max(used - 1, 0)) * 1000
    assert base_ms * (1 - policy.jitter) - 1 <= delay <= base_ms + 1
    assert delay <= round(policy.max_delay_s * 1000)
    assert 0 <= jitter_fraction(eid, name, attempt) < 1


# Properties of decide over generated states.

times = st.integers(0, 10**7)
#: Cheaper to draw than ``policies``; the states below need varied budgets more than varied delays.
state_policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 5),
    initial_delay_s=st.sampled_from([0.0, 0.05, 1.0, 30.0]),
    jitter=st.sampled_from([0.0, 0.1, 1.0]),
)
statuses, execution_statuses = st.sampled_from(S), st.sampled_from(E)
not_done = st.sampled_from([S.PENDING, S.RUNNING, S.RETRY_WAIT, S.FAILED, S.CANCELLED])
maybe_times, small = st.none() | times, st.integers(0, 5)
done_steps = st.lists(st.builds(step, st.sampled_from(sorted(DONE_STEP)), st.integers(1, 5)), max_size=4)


@st.composite
def current_steps(draw: st.DrawFn) -> StepState:
    """One step that is not done, with attempts consistent with its status."""
    status, policy = draw(not_done), draw(state_policies)
    if status is S.RETRY_WAIT and policy.max_attempts == 1:
        policy = replace(policy, max_attempts=2)  # a RETRY_WAIT step has an attempt left
    top = {S.PENDING: 0, S.RETRY_WAIT: policy.max_attempts - 1}.get(status, policy.max_attempts)
    used = draw(st.integers(0 if status in (S.PENDING, S.CANCELLED) else 1, top))
    base = draw(small)
    return StepState(
        "", status, policy, attempt=base + used, budget_base=base,
        next_retry_at=draw(times) if status is S.RETRY_WAIT else None,
        lease_expires_at=draw(maybe_times) if status is S.RUNNING else None,
    )


maybe_current = st.lists(current_steps(), max_size=1)


@st.composite
def consistent_states(draw: st.DrawFn) -> ExecutionState:
    """Done steps, then at most one step in any other status, then pending steps."""
    steps = [*draw(done_steps), *draw(maybe_current), *[TODO] * draw(small)]
    return execution(draw(execution_statuses), *(steps or [TODO]))


@st.composite
def arbitrary_steps(draw: st.DrawFn) -> StepState:
    base = draw(small)
    kind = draw(st.sampled_from(["handler", "handler", "sleep", "wait"]))
    return StepState(
        "", draw(statuses), draw(state_policies), attempt=base + draw(small), budget_base=base,
        next_retry_at=draw(maybe_times), lease_expires_at=draw(maybe_times), kind=kind,
        signal="go" if kind == "wait" else None, wake_at=draw(maybe_times),
    )


arbitrary_step_lists = st.lists(arbitrary_steps(), min_size=1, max_size=6)


@st.composite
def arbitrary_states(draw: st.DrawFn) -> ExecutionState:
    """Steps in any status, in any order, with any attempt counts."""
    return execution(draw(execution_statuses), *draw(arbitrary_step_lists))


@PROPERTY
@given(arbitrary_states(), times)
def test_decide__only_acts_on_a_step_once_every_earlier_step_is_done(state, now):
    decision = decide(state, now)
    if isinstance(decision, Claim | RecoverLost | StartWait | Resume | WakeUp):
        assert all(s.status in DONE_STEP for s in state.steps[: decision.step])


@PROPERTY
@given(arbitrary_states(), times)
def test_decide__never_claims_a_succeeded_or_running_step(state, now):
    decision = decide(state, now)
    if isinstance(decision, Claim):
        assert state.steps[decision.step].status in (S.PENDING, S.RETRY_WAIT)
        assert state.steps[decision.step].kind == "handler"  # a sleep or a wait is never claimed
        assert decision.attempt == state.steps[decision.step].attempt + 1
    if isinstance(decision, RecoverLost):
        assert state.steps[decision.step].status is S.RUNNING


@PROPERTY
@given(consistent_states(), times)
def test_decide__keeps_attempts_within_the_budget(state, now):
    decision = decide(state, now)
    if isinstance(decision, Claim):
        claimed = state.steps[decision.step]
        assert decision.attempt - claimed.budget_base <= claimed.policy.max_attempts
    if isinstance(decision, RecoverLost) and isinstance(decision.then, RetryAt):
        lost = state.steps[decision.step]
        assert lost.used < lost.policy.max_attempts


@PROPERTY
@given(arbitrary_states(), times)
def test_decide__gives_the_same_decision_for_the_same_state_and_time(state, now):
    decision = decide(state, now)
    assert decide(copy.deepcopy(state), now) == decision
    if isinstance(decision, Wait):
        assert decision.until > now
    if isinstance(decision, RecoverLost) and isinstance(decision.then, RetryAt):
        assert decision.then.at >= now


def _outcome(then: object) -> dict[str, Any]:
    if isinstance(then, RetryAt):
        return {"outcome": "retry", "next_retry_at": then.at}
    return {"outcome": "failed" if isinstance(then, FailStep) else "cancelled"}


@PROPERTY
@given(st.lists(policies, min_size=1, max_size=4), st.data())
def test_decide__driven_to_the_end_keeps_order_budgets_and_legal_transitions(step_policies, data):
    first = ExecutionState("e1", E.PENDING, tuple(StepState(f"s{i}", S.PENDING, p)
                                                  for i, p in enumerate(step_policies)))
    state, now, events, succeeded = first, 0, [], set()
    claims = [0] * len(step_policies)
    operator_actions, cancel_at = 2, data.draw(st.none() | st.integers(0, 12))

    def apply(event: dict[str, Any]) -> None:
        nonlocal state
        state = evolve(state, event)  # raises IllegalTransition if decide asked for one
        events.append(event)

    for turn in range(1000):
        if turn == cancel_at and state.status in (E.PENDING, E.RUNNING):
            apply({"type": "cancelled"})
        decision = decide(state, now)
        if isinstance(decision, Claim):
            i = decision.step
            assert all(s.status in DONE_STEP for s in state.steps[:i]) and i not in succeeded
            claims[i] += 1
            assert claims[i] <= state.steps[i].policy.max_attempts
            apply({"type": "step_claimed", "step_index": i, "attempt": decision.attempt,
                   "lease_expires_at": now + LEASE})
            result = data.draw(st.sampled_from(["succeeded", "retryable", "permanent", "lost"]))
            if result == "succeeded":
                apply({"type": "step_succeeded", "step_index": i})
                succeeded.add(i)
            elif result != "lost":
                then = failure(state, i, permanent=result == "permanent", now=now)
                apply({"type": "attempt_failed", "step_index": i, **_outcome(then)})
            now += data.draw(st.integers(0, 2 * LEASE))
        elif isinstance(decision, Wait):
            assert decision.until > now
            now = decision.until
        elif isinstance(decision, RecoverLost):
            apply({"type": "attempt_lost", "step_index": decision.step, **_outcome(decision.then)})
        elif isinstance(decision, Finish):
            apply({"type": f"execution_{decision.status.lower()}"})
        elif state.status is E.FAILED and operator_actions and data.draw(st.booleans()):
            operator_actions -= 1
            failed = next(i for i, s in enumerate(state.steps) if s.status is S.FAILED)
            kind = data.draw(st.sampled_from(["retried", "skipped"]))
            claims[failed] = 0
            apply({"type": kind, "step_index": failed})
        else:
            break
    else:
        pytest.fail("the execution never settled")
    assert state.status in (E.SUCCEEDED, E.FAILED, E.CANCELLED)
    assert all(s.status is not S.RUNNING for s in state.steps)
    assert replay(first, events) == state


# The transition tables, walked exhaustively through the events that request each change.

STEP_EVENTS: dict[StepStatus, dict[str, Any]] = {
    S.RUNNING: {"type": "step_claimed", "attempt": 2, "lease_expires_at": NOW},
    S.SUCCEEDED: {"type": "step_succeeded"},
    S.RETRY_WAIT: {"type": "attempt_failed", "outcome": "retry", "next_retry_at": NOW},
    S.FAILED: {"type": "attempt_lost", "outcome": "failed"},
    S.CANCELLED: {"type": "attempt_failed", "outcome": "cancelled"},
    S.PENDING: {"type": "retried"},
    S.SKIPPED: {"type": "skipped"},
    S.WAITING: {"type": "wait_started", "wake_at": NOW},
}
EXECUTION_EVENTS: dict[ExecutionStatus, dict[str, Any]] = {
    E.RUNNING: {"type": "retried", "step_index": 0},
    E.SUCCEEDED: {"type": "execution_succeeded"},
    E.FAILED: {"type": "execution_failed"},
    E.CANCELLED: {"type": "cancelled"},
    E.COMPENSATING: {"type": "rollback_started", "plan": []},
    E.COMPENSATED: {"type": "execution_compensated"},
    E.COMPENSATION_FAILED: {"type": "compensation_failed"},
}


def test_transition_tables__have_an_event_for_every_reachable_status():
    assert set(STEP_EVENTS) == set(S) == set(STEP_TRANSITIONS)
    assert set(EXECUTION_TRANSITIONS) == set(E)
    # No event moves an execution back to PENDING, and the table agrees.
    assert set(EXECUTION_EVENTS) == set(E) - {E.PENDING}
    assert not any(E.PENDING in targets for targets in EXECUTION_TRANSITIONS.values())


@pytest.mark.parametrize(("source", "target"), list(itertools.product(S, S)))
def test_evolve__accepts_exactly_the_step_changes_in_the_table(source, target):
    # Retry and skip also move the execution from FAILED to RUNNING: start there so only the step matters.
    # A wait starts only on a step that sleeps or waits (evolve refuses it for a handler's step).
    kind = "sleep" if target is S.WAITING else "handler"
    state = execution(E.FAILED if target in (S.PENDING, S.SKIPPED) else E.RUNNING, step(source, 1, kind=kind))
    event = {**STEP_EVENTS[target], "step_index": 0}
    if target in STEP_TRANSITIONS[source]:
        assert evolve(state, event).steps[0].status is target
    else:
        with pytest.raises(IllegalTransition):
            evolve(state, event)


@pytest.mark.parametrize(("source", "target"), list(itertools.product(E, EXECUTION_EVENTS)))
def test_evolve__accepts_exactly_the_execution_changes_in_the_table(source, target):
    state = execution(source, step(S.FAILED, 1))  # every event here leaves a FAILED step legal
    if target in EXECUTION_TRANSITIONS[source]:
        assert evolve(state, EXECUTION_EVENTS[target]).status is target
    else:
        with pytest.raises(IllegalTransition):
            evolve(state, EXECUTION_EVENTS[target])


def test_evolve__first_claim_starts_the_execution():
    after = evolve(execution(E.PENDING, TODO), {**STEP_EVENTS[S.RUNNING], "step_index": 0})
    assert (after.status, after.steps[0].attempt, after.steps[0].lease_expires_at) == (E.RUNNING, 2, NOW)


def test_evolve__cancel_ends_waiting_steps_and_leaves_a_running_one_to_finish():
    state = execution(E.RUNNING, DONE, step(S.RUNNING, 1), step(S.RETRY_WAIT, 1, next_retry_at=NOW), TODO)
    after = evolve(state, {"type": "cancelled"})
    assert after.status is E.CANCELLED
    assert [s.status for s in after.steps] == [S.SUCCEEDED, S.RUNNING, S.CANCELLED, S.CANCELLED]
    assert after.steps[2].next_retry_at is None


def test_evolve__operator_retry_opens_a_new_budget():
    after = evolve(execution(E.FAILED, step(S.FAILED, 3)), {"type": "retried", "step_index": 0})
    assert (after.status, after.steps[0].status, after.steps[0].used) == (E.RUNNING, S.PENDING, 0)
    assert decide(after, NOW) == Claim(0, 4)


@pytest.mark.parametrize(
    "event", [{"type": "exploded"}, {"type": "step_succeeded", "step_index": 1}, {"type": "step_succeeded"}]
)
def test_evolve__rejects_unknown_events_and_missing_steps(event):
    with pytest.raises(IllegalTransition):
        evolve(execution(E.RUNNING, step(S.RUNNING, 1)), event)
