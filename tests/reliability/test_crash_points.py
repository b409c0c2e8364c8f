"""A worker crash at each boundary of a step's life is recovered by the sweeper, not by Dramatiq.

Each test runs a 3-step workflow on the real worker and crashes it once at one boundary, in the life
of step s1 or s2, both with every step a message of its own and with steps run back to back under
one message (the default), whose boundaries differ. The crash point is armed in the test before
the start, or by the handler of the step before (for a boundary up to the claim) or of the step
itself (after it), so that the crash falls exactly where the test says. The sweeper then finishes
the execution: after the claim by recording the attempt lost once its lease runs out, otherwise by
re-sending the due work whose message died with the worker. Dramatiq would hand the dead message
back only after minutes, far beyond these tests' timeouts.
"""
from __future__ import annotations

import json
from typing import Any

import pytest

from executions import faults, operations
from tests.conftest import wait_for, wait_terminal
from tests.handlers import LEDGER
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
#: the run, so a crash there leaves nothing to recover; s2's life starts at "loaded" (from the
#: snapshot the outcome write of s1 returned), with no message received and no lock taken.
RECOVERY_INLINE = {**RECOVERY, "released": None, "sent": None}
CASES = [
    *[pytest.param("message", point, step, id=f"message-{point}-{step}")
      for point in faults.POINTS for step in ("s1", "s2")],
    *[pytest.param("inline", point, step, id=f"inline-{point}-{step}")
      for point in faults.POINTS for step in ("s1", "s2")
      if not (step == "s2" and point in ("received", "locked"))],
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
    if recovery == "lost":
        # The claim survived the crash: its lease ran out, the sweeper recorded the attempt lost,
        # and attempt 2 ran the step.
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
