"""The chaos fault schedule: drawn from the seed alone."""
from __future__ import annotations

import pytest

from executions.chaos.schedule import EXECUTION_KINDS, GLOBAL_KINDS, KINDS, plan
from executions.faults import POINTS


def test_plan__same_seed_gives_the_same_schedule() -> None:
    assert plan(11, 200, 5).describe() == plan(11, 200, 5).describe()


def test_plan__another_seed_gives_another_schedule() -> None:
    assert plan(11, 200, 5).describe() != plan(12, 200, 5).describe()


def test_plan__plants_every_kind_at_least_once() -> None:
    counts = plan(3, len(EXECUTION_KINDS), 4).counts()
    assert set(counts) == set(KINDS)
    assert all(counts[k] == 1 for k in GLOBAL_KINDS)


def test_plan__targets_stay_within_the_run() -> None:
    schedule = plan(5, 50, 3)
    for fault in schedule.faults:
        if fault.kind in GLOBAL_KINDS:
            assert fault.execution is None
            continue
        assert fault.execution is not None and 0 <= fault.execution < 50
        if fault.kind == "crash":
            assert fault.point in POINTS and 1 <= fault.nth <= 3
        if fault.step is not None:
            assert 0 <= fault.step < 3


def test_plan__only_the_chosen_kinds() -> None:
    counts = plan(5, 50, 3, kinds=("hang", "redis_flush")).counts()
    assert set(counts) == {"hang", "redis_flush"}


def test_plan__rejects_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        plan(1, 10, 2, kinds=("crash", "meteor"))
