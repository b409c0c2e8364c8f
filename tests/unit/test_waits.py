"""The pure engine's sleeps, waits and signals: ``decide`` on them, their events, their replay."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from executions import engine
from executions.engine import (
    Claim,
    ExecutionState,
    ExecutionStatus,
    Finish,
    IllegalTransition,
    Resume,
    SignalState,
    StartWait,
    StepState,
    StepStatus,
    Wait,
    WakeUp,
    decide,
    evolve,
    replay,
)
from workflows.spec import RetryPolicy

E, S = ExecutionStatus, StepStatus
NOW = 1_000_000
POLICY = RetryPolicy()


def step(status: StepStatus = S.PENDING, kind: str = "handler", **fields: Any) -> StepState:
    if kind == "wait":
        fields.setdefault("signal", "approved")
    return StepState(name="", status=status, policy=POLICY, kind=kind, **fields)


def execution(
    status: ExecutionStatus, *steps: StepState, signals: tuple[SignalState, ...] = ()
) -> ExecutionState:
    return ExecutionState("e1", status, tuple(replace(s, name=f"s{i}") for i, s in enumerate(steps)),
                          signals=signals)


DONE = step(S.SUCCEEDED, attempt=1)
APPROVED = SignalState("approved")

DECIDE_TABLE = [
    (execution(E.PENDING, step(kind="sleep")), StartWait(0)),
    (execution(E.RUNNING, DONE, step(kind="wait")), StartWait(1)),
    (execution(E.RUNNING, DONE, step(S.WAITING, "sleep", wake_at=NOW + 5)), Wait(NOW + 5, "sleep")),
    (execution(E.RUNNING, DONE, step(S.WAITING, "sleep", wake_at=NOW)), WakeUp(1, "succeeded")),
    (execution(E.RUNNING, step(S.WAITING, "wait", wake_at=NOW + 5)), Wait(NOW + 5, "signal")),
    (execution(E.RUNNING, step(S.WAITING, "wait", wake_at=NOW + 5), signals=(APPROVED,)), Resume(0, 0)),
    # A signal taken, or of another name, does not end the wait; the first one not taken does.
    (execution(E.RUNNING, step(S.WAITING, "wait", wake_at=NOW + 5),
               signals=(SignalState("approved", True), SignalState("other"), APPROVED)), Resume(0, 2)),
    (execution(E.RUNNING, step(S.WAITING, "wait", wake_at=NOW + 5),
               signals=(SignalState("approved", True), SignalState("other"))), Wait(NOW + 5, "signal")),
    # The timeout: as on_timeout says (a signal that came in time wins over it).
    (execution(E.RUNNING, step(S.WAITING, "wait", wake_at=NOW)), WakeUp(0, "failed")),
    (execution(E.RUNNING, step(S.WAITING, "wait", wake_at=NOW, on_timeout="continue")),
     WakeUp(0, "succeeded")),
    (execution(E.RUNNING, step(S.WAITING, "wait", wake_at=NOW, on_timeout="skip")), WakeUp(0, "skipped")),
    (execution(E.RUNNING, step(S.WAITING, "wait", wake_at=NOW), signals=(APPROVED,)), Resume(0, 0)),
    # Strict order: a wait later in the workflow does not take its signal early.
    (execution(E.RUNNING, step(S.PENDING), step(kind="wait"), signals=(APPROVED,)), Claim(0, 1)),
    (execution(E.CANCELLED, step(S.CANCELLED, "wait")), engine.Idle("cancelled")),
]


@pytest.mark.parametrize(("state", "expected"), DECIDE_TABLE)
def test_decide__waits_table(state, expected):
    assert decide(state, NOW) == expected


def test_wait__signal_received_before_the_wait_is_taken_when_it_starts():
    state = execution(E.RUNNING, DONE, step(kind="wait"), step())
    sent = engine.signalled(state, "approved", "k1", "ops", "", '{"ok":1}')
    state = replay(state, [e.fields() for e in sent])
    assert state.signals == (APPROVED,)
    started = engine.wait_started(state, StartWait(1), NOW + 10_000)
    state = replay(state, [e.fields() for e in started])
    assert state.steps[1].status is S.WAITING and decide(state, NOW) == Resume(1, 0)
    taken = engine.resumed(state, Resume(1, 0), '{"ok":1}', NOW)
    state = replay(state, [e.fields() for e in taken])
    assert state.steps[1].status is S.SUCCEEDED and state.signals == (SignalState("approved", True),)
    assert decide(state, NOW) == Claim(2, 1)


def test_wait__timing_out_with_fail_fails_the_execution_in_the_same_write():
    state = execution(E.RUNNING, DONE, step(S.WAITING, "wait", wake_at=NOW))
    events = engine.woke(state, WakeUp(1, "failed"), "null", NOW)
    assert [e.type for e in events] == ["wait_ended", "execution_failed"]
    assert events[0].fields()["message"] == "no signal 'approved' came before the timeout"
    assert replay(state, [e.fields() for e in events]).status is E.FAILED


def test_sleep__whose_time_cannot_be_read_fails_at_once():
    state = execution(E.RUNNING, DONE, step(kind="sleep"))
    events = engine.sleep_refused(state, StartWait(1), "sleep until input.at: nothing is there", NOW)
    assert [e.type for e in events] == ["wait_started", "wait_ended", "execution_failed"]
    after = replay(state, [e.fields() for e in events])
    assert after.status is E.FAILED and after.steps[1].status is S.FAILED


@pytest.mark.parametrize("event", [
    {"type": "wait_started", "step_index": 0, "wake_at": NOW},  # a handler's step
    {"type": "signal_consumed", "step_index": 1, "signal_index": 0},  # no such signal
    {"type": "wait_ended", "step_index": 1, "ends": "retry"},
    {"type": "signal_received", "name": "approved", "signal_index": 3},  # not the next one
])
def test_evolve__refuses_what_waits_cannot_do(event):
    state = execution(E.RUNNING, step(S.PENDING), step(S.WAITING, "wait", wake_at=NOW))
    with pytest.raises(IllegalTransition):
        evolve(state, event)


def test_evolve__refuses_a_signal_to_a_finished_execution():
    with pytest.raises(IllegalTransition):
        evolve(execution(E.SUCCEEDED, DONE),
               {"type": "signal_received", "name": "approved", "signal_index": 0})


def test_cancel__ends_a_wait():
    state = evolve(execution(E.RUNNING, step(S.WAITING, "wait", wake_at=NOW)), {"type": "cancelled"})
    assert state.steps[0].status is S.CANCELLED and state.steps[0].wake_at is None


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_waits__every_wait_takes_one_signal_of_its_name_or_its_timeout_and_the_history_replays(data):
    """Random workflows of handlers, sleeps and waits, signals sent at random moments (some before
    their wait, some twice): each wait ends by exactly one of its signal or its timeout, never
    before the steps before it are done, and the history replays to the same state."""
    kinds = data.draw(st.lists(st.sampled_from(["handler", "sleep", "wait"]), min_size=1, max_size=6))
    rules = st.sampled_from(["fail", "continue", "skip"])
    first = execution(E.PENDING, *(step(kind=k, on_timeout=data.draw(rules)) if k == "wait" else step(kind=k)
                                   for k in kinds))
    state, events, now = first, [], NOW

    def apply(built: list[Any]) -> None:
        nonlocal state
        for e in built:
            state = evolve(state, e.fields())
            events.append(e.fields())

    for _ in range(200):
        if state.status not in engine.TERMINAL and data.draw(st.integers(0, 3)) == 0:
            apply(engine.signalled(state, "approved", None, "ops", "", "{}"))
        decision = decide(state, now)
        if isinstance(decision, Claim):
            apply(engine.claimed(state, decision, "w", len(events) + 1, now + 5000))
            apply(engine.succeeded(state, decision.step, "{}", {}, now))
        elif isinstance(decision, StartWait):
            apply(engine.wait_started(state, decision, now + data.draw(st.integers(0, 5000))))
        elif isinstance(decision, Resume):
            assert all(s.status is S.SUCCEEDED or s.status is S.SKIPPED for s in state.steps[: decision.step])
            apply(engine.resumed(state, decision, "{}", now))
        elif isinstance(decision, WakeUp):
            wake_at = state.steps[decision.step].wake_at
            assert wake_at is not None and now >= wake_at
            apply(engine.woke(state, decision, "null", now))
        elif isinstance(decision, Wait):
            now = decision.until if data.draw(st.booleans()) else now + 1
        elif isinstance(decision, Finish):
            apply(engine.finished(decision))
        else:
            break
    else:
        pytest.fail("the execution never settled")
    assert state.status in (E.SUCCEEDED, E.FAILED)
    taken = sum(1 for s in state.signals if s.consumed)
    resumed = sum(1 for e in events if e["type"] == "signal_consumed")
    timed_out = sum(1 for e in events if e["type"] == "wait_ended" and e["outcome"] == "timed_out")
    waits_done = sum(1 for s, k in zip(state.steps, kinds, strict=True)
                     if k == "wait" and s.status is not S.PENDING)
    assert taken == resumed and resumed + timed_out == waits_done
    assert replay(first, events) == state
