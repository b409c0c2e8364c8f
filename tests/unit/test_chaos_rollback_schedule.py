"""The chaos schedule's rollbacks: which executions roll back, and the faults aimed at them."""
from __future__ import annotations

from detflow_site.chaos.schedule import HANDLER_KINDS, compensated, plan


def test_plan__rollbacks_are_drawn_from_the_seed_and_fail_after_a_step_to_undo() -> None:
    schedule = plan(7, 200, 5, rollbacks=0.25)

    assert schedule == plan(7, 200, 5, rollbacks=0.25)
    assert 30 <= len(schedule.rollbacks) <= 70
    assert all(1 <= fails_at < 5 for _, fails_at in schedule.rollbacks)
    assert plan(7, 200, 5).rollbacks == ()


def test_plan__at_least_one_execution_rolls_back_when_asked() -> None:
    assert len(plan(1, 1, 2, rollbacks=0.01).rollbacks) == 1
    assert plan(1, 5, 1, rollbacks=1.0).rollbacks == ()  # one step: nothing before it to undo


def test_plan__executions_that_do_not_roll_back_keep_their_faults() -> None:
    with_rollbacks = plan(11, 200, 5, rollbacks=0.3)
    rolling = {index for index, _ in with_rollbacks.rollbacks}
    without = plan(11, 200, 5)

    assert [f for f in with_rollbacks.faults if f.execution not in rolling] == [
        f for f in without.faults if f.execution not in rolling]


def test_plan__faults_of_a_rollback_hit_its_compensations_or_the_steps_that_run() -> None:
    schedule = plan(3, 400, 5, rollbacks=1.0)
    fails_at = dict(schedule.rollbacks)
    undo_faults = crash_in_rollback = 0
    for fault in schedule.faults:
        if fault.execution is None:
            continue
        last = fails_at[fault.execution]
        undone = [i for i in compensated(5) if i < last]
        if fault.kind in HANDLER_KINDS:
            assert fault.step is not None
            if fault.undo:
                undo_faults += 1
                assert fault.step in undone
            else:
                assert fault.step <= last
        if fault.kind == "crash":
            assert 1 <= fault.nth <= last + 1 + len(undone)
            crash_in_rollback += fault.nth > last + 1
    assert undo_faults > 0 and crash_in_rollback > 0
    assert 1 not in compensated(5) and compensated(2) == (0, 1)
