"""The chaos checker's rollback invariants, each shown broken by a hand-built history.

The baseline is a rollback as the engine writes it: s1 and s2 succeed, s3 fails for good, the
compensations of s2 then s1 run, the execution ends COMPENSATED. It keeps every invariant; each
test below changes it the way a broken build would and names the check that must report it.
"""
from __future__ import annotations

import copy
from typing import Any

from detflow_site.chaos.checker import check, check_history
from executions.events import (
    AttemptFailed,
    CompensationClaimed,
    CompensationSucceeded,
    Created,
    Event,
    ExecutionCompensated,
    FailStep,
    RollbackStarted,
    StepClaimed,
    StepSucceeded,
)
from executions.store import to_dt
from executions.transitions import TIME_FIELDS

RETRY = {"max_attempts": 2, "initial_delay_s": 0.1, "multiplier": 2.0, "max_delay_s": 1.0, "jitter": 0.1}
UNDO = {"handler": "chaos.undo", "retry": RETRY, "timeout_s": 2.0, "non_retryable": []}
#: Three compensating steps; s3 fails for good, so only s2 and s1 are undone (newest first).
DEFINITION = {"name": "undo", "version": 1, "description": "", "on_failure": "compensate",
              "steps": [{"name": name, "handler": "chaos.step", "retry": RETRY, "timeout_s": 2.0,
                         "non_retryable": [], "compensate": UNDO} for name in ("s1", "s2", "s3")]}
T0 = 1_790_000_000_000
LEASE = T0 + 60_000


def claim(index: int, attempt: int, fence: int, k: int | None = None) -> Event:
    name = DEFINITION["steps"][index]["name"]  # type: ignore[index]
    if k is None:
        return StepClaimed(index, name, attempt, "w:1:1", fence, LEASE)
    return CompensationClaimed(index, name, attempt, "w:1:1", fence, LEASE, compensation_index=k)


def success(index: int, attempt: int, k: int | None = None) -> Event:
    name = DEFINITION["steps"][index]["name"]  # type: ignore[index]
    if k is None:
        return StepSucceeded(index, name, attempt, 5)
    return CompensationSucceeded(index, name, attempt, 5, compensation_index=k)


ROLLBACK = RollbackStarted([1, 0], ["s2", "s1"], None, "on_failure: compensate", "s3",
                           "workflows.errors.PermanentError", "refused")
FORWARD = [Created("chaos", "undo", 1), claim(0, 1, 1), success(0, 1), claim(1, 1, 2), success(1, 1),
           claim(2, 1, 3),
           AttemptFailed(2, "s3", 1, "workflows.errors.PermanentError", "refused", True, FailStep())]
UNDOING = [claim(1, 1, 4, k=0), success(1, 1, k=0), claim(0, 1, 5, k=1), success(0, 1, k=1)]


def history(events: list[Event | dict[str, Any]]) -> list[dict[str, Any]]:
    """Number and time the events as the store does (one millisecond apart)."""
    entries = [e.fields() if isinstance(e, Event) else dict(e) for e in events]
    for seq, entry in enumerate(entries, start=1):
        entry.update({k: to_dt(v) for k, v in entry.items() if k in TIME_FIELDS})
        entry["seq"] = seq
        entry["at"] = to_dt(T0 + seq)
    return entries


def doc(events: list[Event | dict[str, Any]], status: str = "COMPENSATED",
        undo_status: tuple[str, str] = ("SUCCEEDED", "SUCCEEDED")) -> dict[str, Any]:
    """The stored execution of ``events``, its steps and compensations as the baseline ends them."""
    stored = history(events)
    return {
        "_id": "e1", "status": status, "definition": copy.deepcopy(DEFINITION),
        "events": stored, "event_seq": len(stored),
        "steps": [{"name": "s1", "status": "SUCCEEDED", "attempt": 1, "budget_base": 0},
                  {"name": "s2", "status": "SUCCEEDED", "attempt": 1, "budget_base": 0},
                  {"name": "s3", "status": "FAILED", "attempt": 1, "budget_base": 0}],
        "compensations": [
            {"step_index": 1, "name": "s2", "status": undo_status[0], "attempt": 1, "budget_base": 0},
            {"step_index": 0, "name": "s1", "status": undo_status[1],
             "attempt": 1 if undo_status[1] != "PENDING" else 0, "budget_base": 0}],
    }


BASELINE = [*FORWARD, ROLLBACK, *UNDOING, ExecutionCompensated()]


def checks(stored: dict[str, Any]) -> set[str]:
    return {v.check for v in check_history(stored)}


def test_checker__the_engines_own_rollback_keeps_every_invariant() -> None:
    assert check_history(doc(BASELINE)) == []


def test_checker__reports_a_compensation_claimed_before_the_one_before_it_in_the_plan_succeeded() -> None:
    # s1's compensation runs first: the plan says s2's (the newer step) comes first.
    swapped = [claim(0, 1, 4, k=1), success(0, 1, k=1), claim(1, 1, 5, k=0), success(1, 1, k=0)]
    found = check_history(doc([*FORWARD, ROLLBACK, *swapped, ExecutionCompensated()]))

    [order] = [v for v in found if v.check == "rollback order"]
    assert "compensation of 's1' claimed before the compensation(s) of ['s2']" in order.detail
    assert order.events == (9,)


def test_checker__reports_a_compensation_committed_twice() -> None:
    # A second outcome of the same claim (what a write without its fence lets through).
    twice = [claim(1, 1, 4, k=0), success(1, 1, k=0), success(1, 1, k=0), *UNDOING[2:]]
    found = check_history(doc([*FORWARD, ROLLBACK, *twice, ExecutionCompensated()]))

    [once] = [v for v in found if v.check == "compensated once"]
    assert once.detail == "compensation of 's2' committed its outcome 2 times"
    assert once.events == (11,)


def test_checker__reports_a_compensation_claimed_again_after_it_succeeded() -> None:
    again = [*UNDOING[:2], claim(1, 2, 5, k=0)]
    assert "no re-run" in checks(doc([*FORWARD, ROLLBACK, *again], status="COMPENSATING"))


def test_checker__reports_a_plan_that_undoes_a_step_that_never_succeeded() -> None:
    # s3 failed: its compensation must not run, though its definition names one.
    plan = RollbackStarted([2, 1, 0], ["s3", "s2", "s1"], None, "on_failure: compensate", "s3",
                           "workflows.errors.PermanentError", "refused")
    found = check_history(doc([*FORWARD, plan]))

    details = [v.detail for v in found if v.check == "rollback plan"]
    assert any("plan names ['s3'], which never completed" in d for d in details), details


def test_checker__reports_a_plan_out_of_reverse_order_or_missing_a_succeeded_step() -> None:
    oldest_first = RollbackStarted([0, 1], ["s1", "s2"], None, "on_failure: compensate", "s3", "E", "m")
    missing = RollbackStarted([1], ["s2"], None, "on_failure: compensate", "s3", "E", "m")

    out_of_order = [v.detail for v in check_history(doc([*FORWARD, oldest_first]))
                    if v.check == "rollback plan"]
    left_out = [v.detail for v in check_history(doc([*FORWARD, missing]))
                if v.check == "rollback plan"]

    assert out_of_order == ["plan [0, 1] is not the completed steps newest first"]
    assert left_out == ["plan [1] leaves out ['s1'], which succeeded"]


def test_checker__reports_a_forward_step_claimed_after_the_rollback_started() -> None:
    found = check_history(doc([*FORWARD, ROLLBACK, claim(2, 2, 4), *UNDOING, ExecutionCompensated()]))

    [forward] = [v for v in found if v.check == "forward after rollback"]
    assert forward.detail == "step 's3' claimed after the rollback started (event 8)"
    assert forward.events == (9,)


def test_checker__reports_compensated_before_every_compensation_succeeded() -> None:
    early = doc([*FORWARD, ROLLBACK, *UNDOING[:2], ExecutionCompensated()],
                undo_status=("SUCCEEDED", "PENDING"))

    details = [v.detail for v in check_history(early) if v.check == "compensated early"]

    assert details == [
        "COMPENSATED while the compensation(s) of ['s1'] neither succeeded nor were skipped",
        "stored COMPENSATED with the compensation(s) of ['s1'] neither succeeded nor skipped"]


def test_checker__counts_a_compensations_runs_and_side_effects_apart_from_its_steps() -> None:
    stored = doc(BASELINE)
    runs = [{"execution_id": "e1", "step": step, "attempt": 1}
            for step in ("s1", "s2", "s3", "s2:compensate", "s1:compensate")]
    effects = [{"execution_id": "e1", "step": step, "attempt": 1}
               for step in ("s1", "s2", "s2:compensate", "s1:compensate")]

    clean = check([stored], runs, effects)
    doubled = check([stored], runs, [*effects, {"execution_id": "e1", "step": "s2:compensate",
                                                "attempt": 1}])
    missing = check([stored], runs, effects[:3])

    assert clean.violations == []
    assert (clean.rollbacks, clean.compensations, clean.compensation_attempts) == (1, 2, 2)
    assert [v.detail for v in doubled.violations] == [
        "compensation 's2:compensate' committed its side effect 2 times"]
    assert [v.detail for v in missing.violations] == [
        "compensation 's1:compensate' succeeded without its side effect"]
