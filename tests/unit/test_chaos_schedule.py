"""The chaos fault schedule: drawn from the seed alone."""
from __future__ import annotations

import pytest

from detflow_site.chaos.schedule import (
    EXECUTION_KINDS,
    GLOBAL_KINDS,
    KINDS,
    STORE_GLOBAL_KINDS,
    STORE_KINDS,
    expand,
    plan,
)
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


def test_expand__store_stands_for_every_store_kind_once() -> None:
    assert expand(("crash", "store", "store_election")) == ("crash", *STORE_KINDS)


def test_expand__names_the_unknown_kinds() -> None:
    with pytest.raises(ValueError, match=r"unknown fault kind\(s\) meteor, stor;"):
        expand(("stor", "store", "meteor"))


def test_plan__store_faults_stay_within_their_bounds() -> None:
    schedule = plan(8, 400, 4, kinds=("store",))
    counts = schedule.counts()
    assert set(counts) == set(STORE_KINDS)
    assert all(counts[k] == 1 for k in STORE_GLOBAL_KINDS)
    for fault in schedule.faults:
        if fault.kind in ("store_before", "store_after"):
            assert fault.execution is not None and 0 <= fault.execution < 400
            assert 1 <= fault.nth <= 8 and 1 <= fault.count <= 2  # two fenced writes a step
            continue
        assert fault.execution is None and 1.0 <= fault.at_s <= 4.0
        if fault.kind == "store_election":
            assert 2.0 <= fault.duration_s <= 5.0
        elif fault.kind == "store_latency":
            assert 0.001 <= fault.delay_s <= 0.005 and 3.0 <= fault.duration_s <= 8.0
        else:
            assert 0.3 <= fault.delay_s <= 1.0 and 20 <= fault.count <= 50
            assert 3.0 <= fault.duration_s <= 8.0


def test_plan__a_global_kind_added_leaves_the_other_faults_as_they_were() -> None:
    before = ("crash", "pause", "duplicate", "redis_kill", "redis_flush")
    with_latency = plan(11, 200, 5, kinds=(*before, "store_latency")).faults
    assert [f for f in with_latency if f.kind != "store_latency"] == list(plan(11, 200, 5, before).faults)
