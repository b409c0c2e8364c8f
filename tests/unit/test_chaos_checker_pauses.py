"""The chaos checker's pause promise ("no start while held"), shown kept and broken by hand-built
histories.

The baseline is a pause as the engine writes it: s1 is claimed, an operator pauses the execution
while s1 runs, s1's outcome comes in (a running attempt ends while held), its workflow's pause
holds it too, the operator's resume lifts one hold and the workflow's resume the other, then s2
runs and the execution succeeds. Each test changes it the way a broken build would.
"""
from __future__ import annotations

import copy
from typing import Any

from detflow_site.chaos.checker import check, check_history, check_holds
from executions.events import (
    Created,
    Event,
    ExecutionSucceeded,
    Paused,
    StepClaimed,
    StepSucceeded,
    Unpaused,
    WaitEnded,
    WaitStarted,
)
from executions.store import to_dt
from executions.transitions import TIME_FIELDS

RETRY = {"max_attempts": 2, "initial_delay_s": 0.1, "multiplier": 2.0, "max_delay_s": 1.0, "jitter": 0.1}


def handler_step(name: str) -> dict[str, Any]:
    return {"name": name, "handler": "chaos.step", "retry": RETRY, "timeout_s": 2.0, "non_retryable": []}


DEFINITION = {"name": "held", "version": 1, "description": "",
              "steps": [handler_step("s1"), handler_step("s2")]}
#: s1, then a one-second sleep, then s2.
NAPPING = {**DEFINITION, "steps": [handler_step("s1"), {"name": "nap", "sleep": {"seconds": 1}},
                                   handler_step("s2")]}
T0 = 1_790_000_000_000
LEASE = T0 + 60_000


def claim(index: int, attempt: int, fence: int, name: str) -> Event:
    return StepClaimed(index, name, attempt, "w:1:1", fence, LEASE)


def pause(scope: str) -> Event:
    return Paused(scope, "chaos-nemesis", "chaos: paused for 1s")


def resume(scope: str) -> Event:
    return Unpaused(scope, "chaos-nemesis", "chaos: the pause is over")


BASELINE = [Created("chaos", "held", 1), claim(0, 1, 1, "s1"), pause("execution"),
            StepSucceeded(0, "s1", 1, 5), pause("workflow"), resume("execution"), resume("workflow"),
            claim(1, 1, 2, "s2"), StepSucceeded(1, "s2", 1, 5), ExecutionSucceeded()]


def history(events: list[Event]) -> list[dict[str, Any]]:
    """Number and time the events as the store does (one millisecond apart)."""
    entries = [e.fields() for e in events]
    for seq, entry in enumerate(entries, start=1):
        entry.update({k: to_dt(v) for k, v in entry.items() if k in TIME_FIELDS})
        entry["seq"] = seq
        entry["at"] = to_dt(T0 + seq)
    return entries


def doc(events: list[Event], status: str = "SUCCEEDED", steps: tuple[str, ...] = ("SUCCEEDED", "SUCCEEDED"),
        definition: dict[str, Any] = DEFINITION, **stored: Any) -> dict[str, Any]:
    """The stored execution of ``events`` (its steps' statuses as ``steps`` say)."""
    entries = history(events)
    specs = definition["steps"]
    return {"_id": "e1", "status": status, "definition": copy.deepcopy(definition), "events": entries,
            "event_seq": len(entries),
            "steps": [{"name": spec["name"], "status": step, "attempt": 1 if "handler" in spec else 0,
                       "budget_base": 0} for spec, step in zip(specs, steps, strict=True)],
            **stored}


def test_checker__a_pause_the_engine_honours_keeps_every_invariant() -> None:
    stored = doc(BASELINE)

    assert check_history(stored) == []
    assert check_holds(stored) == []
    findings = check([stored], [], [])
    assert findings.holds == {"execution": 1, "workflow": 1}
    assert findings.resumes == 2
    assert findings.ended_while_held == 1  # s1's outcome came while the operator's pause held it


def test_checker__reports_a_step_claimed_while_the_execution_is_paused() -> None:
    # The claim of s2 comes before the operator's resume (what a worker that ignores holds does).
    early = [*BASELINE[:4], claim(1, 1, 2, "s2"), StepSucceeded(1, "s2", 1, 5), resume("execution"),
             ExecutionSucceeded()]
    found = check_holds(doc(early))

    [held] = found
    assert held.check == "no start while held"
    assert held.detail == "step_claimed of 's2' while paused by its execution (since event(s) 3)"
    assert held.events == (3, 5)
    # The engine's replay disagrees too, but only this check names the pause.
    assert "no start while held" not in {v.check for v in check_history(doc(early))}
    assert held in check([doc(early)], [], []).violations


def test_checker__reports_a_claim_while_the_workflow_still_holds_after_the_operators_resume() -> None:
    # The operator's resume lifts its own hold only: the workflow's still holds the execution.
    early = [*BASELINE[:6], claim(1, 1, 2, "s2"), StepSucceeded(1, "s2", 1, 5), resume("workflow"),
             ExecutionSucceeded()]

    [held] = check_holds(doc(early))
    assert held.detail == "step_claimed of 's2' while paused by its workflow (since event(s) 5)"
    assert held.events == (5, 7)


def test_checker__reports_a_sleep_started_and_ended_while_paused() -> None:
    napping = [Created("chaos", "held", 1), claim(0, 1, 1, "s1"), StepSucceeded(0, "s1", 1, 5),
               pause("workflow"), WaitStarted(1, "nap", "sleep", None, T0 + 1_000),
               WaitEnded(1, "nap", "woke", "succeeded", ""), resume("workflow"),
               claim(2, 1, 2, "s2"), StepSucceeded(2, "s2", 1, 5), ExecutionSucceeded()]
    found = check_holds(doc(napping, steps=("SUCCEEDED", "SUCCEEDED", "SUCCEEDED"), definition=NAPPING))

    assert [(v.check, v.events) for v in found] == [("no start while held", (4, 5)),
                                                    ("no start while held", (4, 6))]
    assert found[0].detail.startswith("wait_started of 'nap' while paused by its workflow")


def test_checker__a_sleep_started_after_the_resume_is_no_violation() -> None:
    napping = [Created("chaos", "held", 1), claim(0, 1, 1, "s1"), StepSucceeded(0, "s1", 1, 5),
               pause("workflow"), resume("workflow"), WaitStarted(1, "nap", "sleep", None, T0 + 1_000),
               WaitEnded(1, "nap", "woke", "succeeded", ""),
               claim(2, 1, 2, "s2"), StepSucceeded(2, "s2", 1, 5), ExecutionSucceeded()]

    assert check_holds(doc(napping, steps=("SUCCEEDED", "SUCCEEDED", "SUCCEEDED"), definition=NAPPING)) == []


def test_checker__reports_an_execution_left_paused_after_the_drain() -> None:
    never = BASELINE[:4]  # paused while s1 ran, s1 succeeded, never resumed
    stored = doc(never, status="RUNNING", steps=("SUCCEEDED", "PENDING"),
                 paused={"execution": {"by": "chaos-nemesis", "reason": "chaos", "at": to_dt(T0 + 3)}})

    [left] = check_holds(stored)
    assert left.check == "no hold left"
    assert left.detail == "still RUNNING and paused by its execution after the drain (never resumed)"
    assert left.events == (3,)
    assert "terminal" in {v.check for v in check_history(stored)}


def test_checker__an_execution_that_ends_while_paused_holds_nothing() -> None:
    # s2's running attempt ends while paused: the execution ends, and its end drops the hold.
    ending = [*BASELINE[:2], StepSucceeded(0, "s1", 1, 5), claim(1, 1, 2, "s2"), pause("execution"),
              StepSucceeded(1, "s2", 1, 5), ExecutionSucceeded()]
    stored = doc(ending)

    assert check_holds(stored) == []
    assert check_history(stored) == []


def test_checker__reports_an_ended_execution_that_still_stores_a_pause() -> None:
    ending = [*BASELINE[:2], StepSucceeded(0, "s1", 1, 5), claim(1, 1, 2, "s2"), pause("execution"),
              StepSucceeded(1, "s2", 1, 5), ExecutionSucceeded()]
    stored = doc(ending, paused={"execution": {"by": "chaos-nemesis", "reason": "chaos", "at": to_dt(T0)}})

    [left] = check_holds(stored)
    assert left.detail == "ended SUCCEEDED and still stores the pause(s) of ['execution']"
