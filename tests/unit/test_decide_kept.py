"""``decide`` keeps its last decision on the state and gives it again while no later time can
change it: whatever the order of the times it is asked at, it answers what deciding afresh does."""
from __future__ import annotations

import copy
import pickle
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from executions.engine import Claim, ExecutionState, ExecutionStatus, Finish, decide
from tests.unit.test_engine import PROPERTY, TODO, arbitrary_states, execution, maybe_times, times

E = ExecutionStatus


@st.composite
def timed_states(draw: st.DrawFn) -> ExecutionState:
    """Any state, with or without a deadline and pauses."""
    state = draw(arbitrary_states())
    holds = draw(st.sampled_from([frozenset(), frozenset({"execution"})]))
    return replace(state, deadline_at=draw(maybe_times), holds=holds)


def afresh(state: ExecutionState, now: int) -> object:
    return decide(replace(state), now)  # a new state: nothing kept on it


@PROPERTY
@given(timed_states(), st.lists(times, min_size=1, max_size=5))
def test_decide__asked_again_later_or_earlier__answers_as_deciding_afresh(state, asked_at):
    for now in asked_at:
        assert decide(state, now) == afresh(state, now)


@PROPERTY
@given(timed_states(), times, st.integers(0, 10**6))
def test_decide__asked_again_later__answers_as_deciding_afresh(state, now, later):
    decide(state, now)
    assert decide(state, now + later) == afresh(state, now + later)


def test_decide__a_claim_is_given_again_until_the_deadline_passes() -> None:
    state = replace(execution(E.RUNNING, TODO), deadline_at=1000)
    first = decide(state, 10)
    assert first == Claim(0, 1)
    assert decide(state, 999) is first  # kept: nothing between 10 and 999 can change it
    assert decide(state, 1000) != first  # the deadline passed: decided again
    assert decide(state, 1000) == afresh(state, 1000)


def test_decide__what_it_keeps_is_not_part_of_the_state() -> None:
    state = execution(E.RUNNING)
    assert decide(state, 5) == Finish(E.SUCCEEDED)
    assert state == execution(E.RUNNING) and hash(state) == hash(execution(E.RUNNING))
    for copied in (copy.deepcopy(state), copy.copy(state), pickle.loads(pickle.dumps(state))):
        assert "_decided" not in copied.__dict__
        assert copied == state


@PROPERTY
@given(timed_states(), times, maybe_times, st.sampled_from(list(E)))
def test_replace__is_dataclasses_replace_and_keeps_no_decision(state, now, deadline, status) -> None:
    from executions import state as states

    decide(state, now)
    changes = {"deadline_at": deadline, "status": status}
    fast = states.replace(state, **changes)
    assert fast == replace(state, **changes) and type(fast) is type(state)
    assert "_decided" not in fast.__dict__ and "_decided" in state.__dict__
    for step in state.steps[:1]:
        assert states.replace(step, attempt=7) == replace(step, attempt=7)


def test_replace__refuses_a_field_the_value_does_not_have() -> None:
    import pytest

    from executions import state as states

    with pytest.raises(TypeError, match="no field 'colour'"):
        states.replace(execution(E.RUNNING), colour="red")
