"""The chaos checker's invariants of sleeps, waits and signals, each shown broken by a hand-built
history.

The baseline is what the engine writes for s1, a sleep, a wait for signal 'go' and s2: s1
succeeds, the sleep starts and wakes, a signal 'go' comes (once, with a key), the wait starts and
takes it, s2 runs, the execution succeeds. It keeps every invariant; each test below changes it
the way a broken build would and names the check that must report it.
"""
from __future__ import annotations

import copy
from typing import Any

from detflow_site.chaos.checker import check, check_history, check_waits
from executions.events import (
    Created,
    Event,
    ExecutionSucceeded,
    SignalConsumed,
    SignalReceived,
    StepClaimed,
    StepSucceeded,
    WaitEnded,
    WaitStarted,
)
from executions.store import to_dt
from executions.transitions import TIME_FIELDS

RETRY = {"max_attempts": 2, "initial_delay_s": 0.1, "multiplier": 2.0, "max_delay_s": 1.0, "jitter": 0.1}
HANDLER = {"handler": "chaos.step", "retry": RETRY, "timeout_s": 2.0, "non_retryable": []}
DEFINITION = {"name": "waits", "version": 1, "description": "", "steps": [
    {"name": "s1", **HANDLER},
    {"name": "nap", "handler": "detflow.sleep", "sleep": {"seconds": 1}},
    {"name": "approval", "handler": "detflow.wait",
     "wait": {"signal": "go", "timeout_s": 60, "on_timeout": "continue", "default_output": None}},
    {"name": "s2", **HANDLER},
]}
T0 = 1_790_000_000_000
LEASE = T0 + 60_000


def claim(index: int, fence: int, attempt: int = 1) -> Event:
    return StepClaimed(index, DEFINITION["steps"][index]["name"], attempt, "w:1:1", fence, LEASE)  # type: ignore[index]


def success(index: int, attempt: int = 1) -> Event:
    return StepSucceeded(index, DEFINITION["steps"][index]["name"], attempt, 5)  # type: ignore[index]


SLEEP = [WaitStarted(1, "nap", "sleep", None, T0 + 4),
         WaitEnded(1, "nap", "woke", "succeeded", "", output_json='{"slept_until": null}')]
SIGNAL = SignalReceived("go", 0, "k-1", "chaos", "", payload_json='{"ok": true}')
WAIT = [WaitStarted(2, "approval", "wait", "go", T0 + 60_000),
        SignalConsumed(2, "approval", "go", 0, output_json='{"ok": true}')]
BASELINE = [Created("chaos", "waits", 1), claim(0, 1), success(0), *SLEEP, SIGNAL, *WAIT,
            claim(3, 2), success(3), ExecutionSucceeded()]


def history(events: list[Event | dict[str, Any]]) -> list[dict[str, Any]]:
    """Number and time the events as the store does (one millisecond apart)."""
    entries = [e.fields() if isinstance(e, Event) else dict(e) for e in events]
    for seq, entry in enumerate(entries, start=1):
        entry.update({k: to_dt(v) for k, v in entry.items() if k in TIME_FIELDS})
        entry["seq"] = seq
        entry["at"] = to_dt(T0 + seq)
    return entries


def doc(events: list[Event | dict[str, Any]], status: str = "SUCCEEDED",
        signals: list[dict[str, Any]] | None = None, **step_fields: Any) -> dict[str, Any]:
    stored = history(events)
    steps = [{"name": s["name"], "status": "SUCCEEDED", "attempt": 1, "budget_base": 0}
             for s in DEFINITION["steps"]]  # type: ignore[attr-defined]
    steps[2].update(step_fields)
    return {"_id": "e1", "status": status, "definition": copy.deepcopy(DEFINITION), "events": stored,
            "event_seq": len(stored), "steps": steps,
            "signals": [{"name": "go", "key": "k-1", "by": "chaos", "payload_json": '{"ok": true}',
                         "consumed_by": "approval"}] if signals is None else signals}


def checks(stored: dict[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for v in check_waits(stored):
        found.setdefault(v.check, []).append(v.detail)
    return found


def test_checker__the_engines_own_sleep_wait_and_signal_keep_every_invariant() -> None:
    stored = doc(BASELINE)
    assert check_waits(stored) == []
    assert check_history(stored) == []
    findings = check([stored], [], [])
    # (no ledger runs: only the handler steps' missing side effects are reported, not the waits')
    assert {v.detail for v in findings.violations if v.check == "side effects"} == {
        "step 's1' succeeded without its side effect", "step 's2' succeeded without its side effect"}
    assert (findings.sleeps, findings.waits, findings.signals, findings.signals_taken,
            findings.timeouts) == (1, 1, 1, 1, 0)


def test_checker__reports_a_wait_that_ends_twice() -> None:
    # The signal taken, then the timeout recorded too (a wake-up that did not read the state).
    twice = [*BASELINE[:8], WaitEnded(2, "approval", "timed_out", "succeeded", ""), *BASELINE[8:]]
    found = checks(doc(twice))
    assert any("wait_ended of step 'approval', which was not waiting" in d for d in found["wait ends once"])


def test_checker__reports_a_wait_of_a_finished_execution_that_never_ended() -> None:
    never = [*BASELINE[:7], *BASELINE[8:]]
    found = checks(doc(never, signals=[{"name": "go", "key": "k-1", "payload_json": "null"}]))
    assert found["wait ends once"] == ["finished SUCCEEDED with the wait of ['approval'] never ended"]
    assert found["claimed during a wait"] == ["step 's2' claimed before the wait of ['approval'] ended"]


def test_checker__reports_a_signal_taken_twice() -> None:
    # A second wait of the same step (an operator's retry) takes the signal already taken.
    again = [*BASELINE[:8], WaitStarted(2, "approval", "wait", "go", T0 + 60_000),
             SignalConsumed(2, "approval", "go", 0), *BASELINE[8:]]
    found = checks(doc(again))
    assert found["signal taken once"] == ["signal 0 taken again by step 'approval' (first at event 8)"]


def test_checker__reports_a_signal_taken_by_a_step_that_does_not_wait_for_it() -> None:
    other = SignalReceived("stop", 0, None, "chaos", "")
    taken = [*BASELINE[:5], other, WAIT[0], SignalConsumed(2, "approval", "stop", 0), *BASELINE[8:]]
    found = checks(doc(taken, signals=[{"name": "stop", "key": None, "payload_json": "null",
                                        "consumed_by": "approval"}]))
    assert found["signal taken by its wait"] == [
        "signal 0 ('stop') taken by step 'approval', which waits for 'go'",
        "stored signal 0 ('stop') taken by 'approval', which does not wait for it"]


def test_checker__reports_a_repeated_idempotency_key_stored_twice() -> None:
    repeated = [*BASELINE[:6], SignalReceived("go", 1, "k-1", "chaos", ""), *BASELINE[6:]]
    signals = [{"name": "go", "key": "k-1", "payload_json": "null", "consumed_by": "approval"},
               {"name": "go", "key": "k-1", "payload_json": "null"}]
    found = checks(doc(repeated, signals=signals))
    assert found["signal key once"] == [
        "signal 'go' with Idempotency-Key 'k-1' stored again (first at event 6)",
        "signal 'go' with Idempotency-Key 'k-1' stored 2 times"]


def test_checker__reports_the_next_step_claimed_before_the_wait_ended() -> None:
    early = [*BASELINE[:7], claim(3, 2), BASELINE[7], success(3), ExecutionSucceeded()]
    found = checks(doc(early))
    assert found == {"claimed during a wait": ["step 's2' claimed before the wait of ['approval'] ended"]}


def test_checker__reports_a_waiting_step_that_is_claimed_or_holds_a_lease() -> None:
    # The waiting step claimed like a handler step (a worker holding it while it waits).
    claimed = [*BASELINE[:7], claim(2, 2), *BASELINE[7:]]
    found = checks(doc(claimed))
    assert found["waiting holds nothing"] == ["step_claimed of step 'approval' while it was WAITING "
                                              "(since event 7)"]
    # A stored WAITING step with a lease and a running attempt.
    asleep = doc([*BASELINE[:7]], status="RUNNING", signals=[])
    asleep["steps"][2] = {"name": "approval", "status": "WAITING", "attempt": 1,
                          "lease_expires_at": to_dt(LEASE), "current": {"attempt": 1}}
    assert checks(asleep)["waiting holds nothing"] == [
        "WAITING step 'approval' stores ['lease_expires_at', 'current']"]
