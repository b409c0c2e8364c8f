"""A worker crash at each boundary of a step's life is recovered by the sweeper, not by Dramatiq.

Each test runs a 3-step workflow on the real worker and crashes it once at one boundary, in the life
of step s1 or s2, both with every step a message of its own and with steps run back to back under
one message (the default), whose boundaries differ. The crash point is armed in the test before
the start, or by the handler of the step before (for a boundary up to the claim) or of the step
itself (after it), so that the crash falls exactly where the test says. A rollback's compensations
get the same: a crash at each boundary of the life of s2's compensation or s1's, when s3 fails for
good, armed by the handler before or by the compensation itself. The sweeper then finishes
the execution: after the claim by recording the attempt lost once its lease runs out, otherwise by
re-sending the due work whose message died with the worker. Dramatiq would hand the dead message
back only after minutes, far beyond these tests' timeouts.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from executions import faults, operations
from tests.conftest import wait_for, wait_terminal
from tests.handlers import LEDGER
from tests.reliability.handlers import REFUNDS, Refunds
from tests.reliability.invariants import assert_each_attempt_ran_once, assert_invariants

pytestmark = pytest.mark.usefixtures("audited")

#: Boundaries passed before the handler runs: arming one from a handler hits the next step's life.
UP_TO_CLAIM = ("received", "locked", "loaded", "claimed")
#: How each crash is recovered: the sweeper records a lost attempt, re-sends due work, or nothing
#: is needed (the next message was already sent).
RECOVERY = {
    "received": "resent", "locked": "resent", "loaded": "resent", "claimed": "lost",
    "handled": "lost", "recorded": "resent", "released": "resent", "sent": None,
}
RETRY = {"max_attempts": 3, "initial_delay_s": 0.05, "max_delay_s": 0.2}
#: Boundaries at which the crashing worker holds the execution's lock: a dead worker releases
#: nothing, so the lock is still there when the crash has left the runner.
LOCK_HELD = ("locked", "loaded", "claimed", "handled", "recorded")


@pytest.fixture
def lock_left(monkeypatch: pytest.MonkeyPatch, redis_client: Any) -> list[tuple[str, bool]]:
    """Return, for each simulated crash, its point and whether the execution's lock was still in
    Redis once the crash had passed out of the runner (the actor calls ``runner.advance``)."""
    from executions import runner

    seen: list[tuple[str, bool]] = []
    real_advance = runner.advance

    def advance(execution_id: str, worker: str | None = None) -> None:
        try:
            real_advance(execution_id, worker)
        except faults.SimulatedCrash as crash:
            seen.append((str(crash), bool(redis_client.exists(f"detflow:lock:{execution_id}"))))
            raise

    monkeypatch.setattr(runner, "advance", advance)
    return seen


def start_crashing(define: Any, point: str, step: str) -> str:
    """Start a 3-step execution that crashes at ``point`` in the life of ``step``."""
    define("crashy", [{"handler": "test.arm_crash", "retry": RETRY} for _ in range(3)])
    arm_in = {"s1": None, "s2": "s1"}[step] if point in UP_TO_CLAIM else step
    if arm_in is None:
        faults.arm(point)
    started, _ = operations.start("crashy", {"point": point, "arm_in": arm_in})
    return started["_id"]


def events(doc: dict[str, Any], kind: str) -> list[tuple[str, int]]:
    return [(e["step"], e["attempt"]) for e in doc["events"] if e["type"] == kind]


def test_crash_points__the_recovery_table_covers_every_boundary() -> None:
    assert tuple(RECOVERY) == faults.POINTS


#: Steps run back to back (the default): the lock is released and the next message sent once, after
#: the run, so a crash there leaves nothing to recover. s2's claim is written with s1's outcome, so
#: its life starts at "claimed" (no message received, no lock taken, no snapshot loaded), and a
#: crash once an outcome is recorded falls after the next step's claim: that step's first attempt
#: is recorded lost when its lease runs out ("next lost"), and it runs as attempt 2.
RECOVERY_INLINE = {**RECOVERY, "recorded": "next lost", "released": None, "sent": None}
CASES = [
    *[pytest.param("message", point, step, id=f"message-{point}-{step}")
      for point in faults.POINTS for step in ("s1", "s2")],
    *[pytest.param("inline", point, step, id=f"inline-{point}-{step}")
      for point in faults.POINTS for step in ("s1", "s2")
      if not (step == "s2" and point in ("received", "locked", "loaded"))],
]


@pytest.mark.parametrize(("mode", "point", "step"), CASES)
def test_crash_at__each_boundary__is_recovered_by_the_sweeper(
    mode: str, point: str, step: str, worker: Any, sweeper: Any, crashes: list[str], define: Any,
    settings: Any, lock_left: list[tuple[str, bool]],
) -> None:
    if mode == "message":  # every step a message of its own
        settings.DETFLOW = {**settings.DETFLOW, "INLINE_STEPS": "1"}
    execution_id = start_crashing(define, point, step)

    [doc] = wait_terminal(execution_id, timeout=20)
    # Run back to back, a crash at "released" or "sent" falls after the write that ended it.
    wait_for(lambda: crashes, what=f"the crash at {point!r} to fire")

    # The crash is counted as it is raised; the lock is looked at once it has left the runner.
    wait_for(lambda: lock_left, what=f"the crash at {point!r} to leave the runner")
    assert crashes == [point]
    assert [p for p, _ in lock_left] == [point]
    if point in LOCK_HELD:  # (after a release another worker may hold the lock again: not checked)
        assert lock_left == [(point, True)], "the dead worker released the lock it held"
    assert doc["status"] == "SUCCEEDED"
    assert [s["status"] for s in doc["steps"]] == ["SUCCEEDED"] * 3
    recovery = (RECOVERY if mode == "message" else RECOVERY_INLINE)[point]
    crashed = ["s1", "s2", "s3"].index(step)
    if recovery in ("lost", "next lost"):
        # The claim survived the crash: its lease ran out, the sweeper recorded the attempt lost,
        # and attempt 2 ran the step (the next one, when the crash fell after the outcome that
        # carried its claim; the crashed step's outcome was recorded).
        if recovery == "next lost":
            assert [(a["n"], a["outcome"]) for a in doc["steps"][crashed]["attempts"]] == [(1, "succeeded")]
            crashed, step = crashed + 1, ["s1", "s2", "s3"][crashed + 1]
        expected = [("s1", 1), ("s2", 1), ("s3", 1)]
        expected.insert(crashed + 1, (step, 2))
        assert events(doc, "step_claimed") == expected
        assert events(doc, "attempt_lost") == [(step, 1)]
        # A sweep is reported when it returns, which may be after its message finished the run.
        wait_for(lambda: execution_id in sweeper.lost(), what="the sweep that recorded it lost")
        record = doc["steps"][crashed]
        assert [(a["n"], a["outcome"]) for a in record["attempts"]] == [(1, "lost"), (2, "succeeded")]
        assert json.loads(record["output_json"]) == {"step": step, "attempt": 2}
        # At least once: a crash after the handler ran makes it run again, under a new attempt.
        runs = {n for (key, n) in LEDGER if key == f"{execution_id}:{step}"}
        assert runs == ({1, 2} if point == "handled" else {2})
    else:
        assert events(doc, "step_claimed") == [("s1", 1), ("s2", 1), ("s3", 1)]
        assert events(doc, "attempt_lost") == []
        if recovery == "resent":
            wait_for(lambda: execution_id in sweeper.resent(), what="the sweep that re-sent it")
    assert_invariants(doc)
    assert_each_attempt_ran_once(doc)


def test_crash_at__claimed_on_every_attempt__fails_the_step_within_its_budget(
    worker: Any, sweeper: Any, crashes: list[str], define: Any, settings: Any
) -> None:
    """Lost attempts count against the budget: three crashes after the claim fail the step, and
    no fourth attempt is ever claimed."""
    settings.DETFLOW = {**settings.DETFLOW, "LEASE_S": "0.5"}
    define("doomed", [{"handler": "test.echo", "retry": RETRY}, {"handler": "test.echo"}])
    faults.arm("claimed", times=RETRY["max_attempts"])
    started, _ = operations.start("doomed", {})

    [doc] = wait_terminal(started["_id"], timeout=20)

    assert crashes == ["claimed"] * 3
    assert doc["status"] == "FAILED"
    assert doc["failed_step"] == "s1"
    assert events(doc, "step_claimed") == [("s1", 1), ("s1", 2), ("s1", 3)]
    assert events(doc, "attempt_lost") == [("s1", 1), ("s1", 2), ("s1", 3)]
    assert [e["outcome"] for e in doc["events"] if e["type"] == "attempt_lost"] == [
        "retry", "retry", "failed"]
    assert dict(LEDGER) == {}
    assert_invariants(doc)


def test_crash_at__every_boundary_at_once__every_execution_recovers(
    worker: Any, sweeper: Any, crashes: list[str], define: Any
) -> None:
    """Every point armed at once, over several executions running together: whichever execution
    each crash falls in, all of them finish."""
    define("crowd", [{"handler": "test.echo", "retry": RETRY} for _ in range(3)])
    for point in faults.POINTS:
        faults.arm(point)
    ids = [operations.start("crowd", {"n": n})[0]["_id"] for n in range(6)]

    docs = wait_terminal(*ids, timeout=30)
    # The crash at "released" or "sent" may fall in the message that finished the last execution.
    wait_for(lambda: len(crashes) >= len(faults.POINTS), what="every armed crash to fire")

    assert sorted(crashes) == sorted(faults.POINTS)
    assert [d["status"] for d in docs] == ["SUCCEEDED"] * len(ids)
    assert_invariants(*docs)
    assert_each_attempt_ran_once(*docs)


# A compensation's life: the same boundaries, passed by the same runner for the slot past the
# steps that a rollback's Claim names. s3 fails for good, so s2's compensation runs, then s1's.

#: Each step's compensation: its handler asks a deduplicating gateway for a refund by the key.
UNDO = {"handler": "test.undo_arm_crash", "retry": RETRY, "timeout_s": 10}
#: The compensations in the order they run (the plan: newest step first).
PLAN = ("s2", "s1")


@pytest.fixture
def refunds() -> Iterator[Refunds]:
    """The gateway's refunds, none yet; the seam is installed before the worker runs anything (a
    handler arms the crash, and an attempt begun before the seam would pass unwatched)."""
    faults.install_seam()
    REFUNDS.reset()
    yield REFUNDS
    REFUNDS.reset()


def start_rolling_back(define: Any, point: str, undone: str) -> str:
    """Start a 3-step execution whose s3 fails for good and that crashes at ``point`` in the life
    of the compensation of ``undone``: armed by the handler that runs before that compensation
    (s3, then s2's compensation) for a boundary up to the claim, by the compensation's otherwise."""
    define("undoing", [
        {"handler": "test.arm_crash", "retry": RETRY, "compensate": UNDO},
        {"handler": "test.arm_crash", "retry": RETRY, "compensate": UNDO},
        {"handler": "test.arm_crash_then_fail", "retry": RETRY},
    ], on_failure="compensate")
    before = {"s2": "s3", "s1": "s2:compensate"}[undone]
    arm_in = before if point in UP_TO_CLAIM else f"{undone}:compensate"
    started, _ = operations.start("undoing", {"point": point, "arm_in": arm_in})
    return started["_id"]


def compensation_recovery(mode: str, point: str, undone: str) -> str | None:
    """How a crash in the life of ``undone``'s compensation is recovered: as a step's, except that
    the last compensation's outcome is written with the execution's end (nothing left to re-send)."""
    if point in ("released", "sent") and mode == "inline":
        return None
    if point in ("recorded", "released", "sent") and undone == PLAN[-1]:
        return None
    return (RECOVERY if mode == "message" else RECOVERY_INLINE)[point]


COMPENSATION_CASES = [
    *[pytest.param("message", point, undone, id=f"message-{point}-undo-{undone}")
      for point in faults.POINTS for undone in PLAN],
    # Back to back, both compensations run in the message that ran s3: none receives or locks,
    # and s1's is claimed with s2's outcome (nothing loaded).
    *[pytest.param("inline", point, undone, id=f"inline-{point}-undo-{undone}")
      for point in faults.POINTS for undone in PLAN if point not in ("received", "locked")
      and not (point == "loaded" and undone == PLAN[-1])],
]


def compensation_events(doc: dict[str, Any], kind: str) -> list[tuple[str, int]]:
    return events(doc, f"compensation_{kind}")


@pytest.mark.parametrize(("mode", "point", "undone"), COMPENSATION_CASES)
def test_crash_at__each_boundary_of_a_compensation__is_recovered_and_the_rollback_completes(
    mode: str, point: str, undone: str, refunds: Refunds, worker: Any, sweeper: Any,
    crashes: list[str], define: Any, settings: Any, lock_left: list[tuple[str, bool]],
) -> None:
    if mode == "message":
        settings.DETFLOW = {**settings.DETFLOW, "INLINE_STEPS": "1"}
    execution_id = start_rolling_back(define, point, undone)

    [doc] = wait_terminal(execution_id, timeout=20)
    wait_for(lambda: crashes, what=f"the crash at {point!r} to fire")
    wait_for(lambda: lock_left, what=f"the crash at {point!r} to leave the runner")

    assert crashes == [point]
    assert [p for p, _ in lock_left] == [point]
    if point in LOCK_HELD:
        assert lock_left == [(point, True)], "the dead worker released the lock it held"
    assert doc["status"] == "COMPENSATED"
    assert [s["status"] for s in doc["steps"]] == ["SUCCEEDED", "SUCCEEDED", "FAILED"]
    assert [(c["name"], c["status"]) for c in doc["compensations"]] == [
        ("s2", "SUCCEEDED"), ("s1", "SUCCEEDED")]
    # The forward steps ran once each, none after the rollback started.
    assert events(doc, "step_claimed") == [("s1", 1), ("s2", 1), ("s3", 1)]
    kinds = [e["type"] for e in doc["events"]]
    assert "step_claimed" not in kinds[kinds.index("rollback_started"):]
    recovery = compensation_recovery(mode, point, undone)
    crashed = PLAN.index(undone)
    if recovery == "next lost":  # recorded with the next compensation's claim: that one is lost
        assert [(a["n"], a["outcome"]) for a in doc["compensations"][crashed]["attempts"]] == [
            (1, "succeeded")]
        crashed, undone, recovery = crashed + 1, PLAN[crashed + 1], "lost"
    claims = [(name, 1) for name in PLAN]
    if recovery == "lost":
        claims.insert(crashed + 1, (undone, 2))
    # Strict reverse order: s1's compensation is claimed only after s2's succeeded.
    assert compensation_events(doc, "claimed") == claims
    succeeded = [(e["step"], e["seq"]) for e in doc["events"] if e["type"] == "compensation_succeeded"]
    assert [name for name, _ in succeeded] == list(PLAN), "each compensation committed once, in order"
    first_s1_claim = next(e["seq"] for e in doc["events"]
                          if e["type"] == "compensation_claimed" and e["step"] == "s1")
    assert succeeded[0][1] < first_s1_claim
    keys = {name: f"{execution_id}:{name}:compensate" for name in PLAN}
    if recovery == "lost":
        assert compensation_events(doc, "attempt_lost") == [(undone, 1)]
        wait_for(lambda: execution_id in sweeper.lost(), what="the sweep that recorded it lost")
        record = doc["compensations"][crashed]
        assert [(a["n"], a["outcome"]) for a in record["attempts"]] == [(1, "lost"), (2, "succeeded")]
        assert json.loads(record["output_json"])["key"] == keys[undone]
        # At least once: a crash after the refund was asked for asks again, with the same key.
        again = [(undone, 1), (undone, 2)] if point == "handled" else [(undone, 2)]  # ran, or not
        assert [r for r in refunds.requests if r[0] == keys[undone]] == [
            (keys[name], n) for name, n in again]
    else:
        assert compensation_events(doc, "attempt_lost") == []
        assert refunds.requests == [(keys[name], 1) for name in PLAN]
        if recovery == "resent":
            wait_for(lambda: execution_id in sweeper.resent(), what="the sweep that re-sent it")
    # Whatever the crash, the gateway applied each refund once.
    assert dict(refunds.applied) == {keys[name]: 1 for name in PLAN}
    assert_invariants(doc)
    assert_each_attempt_ran_once(doc)


@pytest.mark.parametrize("mode", ["message", "inline"])
def test_crash_between_a_compensations_side_effect_and_its_outcome__runs_it_again_with_the_same_key(
    mode: str, refunds: Refunds, worker: Any, sweeper: Any, crashes: list[str], define: Any,
    settings: Any,
) -> None:
    if mode == "message":
        settings.DETFLOW = {**settings.DETFLOW, "INLINE_STEPS": "1"}
    execution_id = start_rolling_back(define, "handled", "s2")

    [doc] = wait_terminal(execution_id, timeout=20)

    assert crashes == ["handled"]
    assert doc["status"] == "COMPENSATED"
    key = f"{execution_id}:s2:compensate"
    # The handler ran twice (attempts 1 and 2), both times with the key <id>:<step>:compensate ...
    assert [r for r in refunds.requests if r[0] == key] == [(key, 1), (key, 2)]
    assert LEDGER[(key, 1)] == LEDGER[(key, 2)] == 1
    # ... so a gateway that dedupes by key refunded once; the outcome was committed once.
    assert refunds.applied[key] == 1
    assert json.loads(doc["compensations"][0]["output_json"]) == {
        "undone": "s2", "key": key, "applied": False}
    assert compensation_events(doc, "succeeded") == [("s2", 2), ("s1", 1)]
    assert_invariants(doc)


def test_crash_at__every_boundary_at_once__every_rollback_completes(
    refunds: Refunds, worker: Any, sweeper: Any, crashes: list[str], define: Any
) -> None:
    """Every point armed at once over several executions rolling back together: whichever step or
    compensation each crash falls in, every execution ends COMPENSATED, each refund applied once."""
    define("undo-crowd", [
        {"handler": "test.echo", "retry": RETRY, "compensate": UNDO},
        {"handler": "test.echo", "retry": RETRY, "compensate": UNDO},
        {"handler": "test.permanent", "retry": RETRY},
    ], on_failure="compensate")
    for point in faults.POINTS:
        faults.arm(point)
    ids = [operations.start("undo-crowd", {"n": n})[0]["_id"] for n in range(6)]

    docs = wait_terminal(*ids, timeout=30)
    wait_for(lambda: len(crashes) >= len(faults.POINTS), what="every armed crash to fire")

    assert sorted(crashes) == sorted(faults.POINTS)
    assert [d["status"] for d in docs] == ["COMPENSATED"] * len(ids)
    assert dict(refunds.applied) == {f"{i}:{name}:compensate": 1 for i in ids for name in PLAN}
    assert_invariants(*docs)
    assert_each_attempt_ran_once(*docs)
