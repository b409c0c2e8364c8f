"""The engine's outcome functions: what happened in, typed events out, each entry of the history
built in this one place (the runner, the sweeper and the operator actions, dry runs too, call them)."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from executions import engine
from executions.backoff import backoff_ms
from executions.engine import (
    Claim,
    ExecutionState,
    ExecutionStatus,
    Finish,
    RecoverLost,
    StepState,
    StepStatus,
    decide,
)
from executions.events import Event, FailStep, RetryAt
from workflows.spec import RetryPolicy

E, S = ExecutionStatus, StepStatus
NOW = 1_000_000
POLICY = RetryPolicy(max_attempts=2, initial_delay_s=1.0, multiplier=2.0, max_delay_s=60.0, jitter=0.5)
RECORD = {"n": 1, "duration_ms": 12, "logs": ["x" * 50]}


def execution(status: ExecutionStatus, *steps: tuple[StepStatus, int]) -> ExecutionState:
    return ExecutionState("e1", status, tuple(
        StepState(name=f"s{i}", status=st, policy=POLICY, attempt=n) for i, (st, n) in enumerate(steps)))


RUNNING_FIRST = execution(E.RUNNING, (S.RUNNING, 1), (S.PENDING, 0))
RUNNING_LAST = execution(E.RUNNING, (S.SUCCEEDED, 1), (S.RUNNING, 1))
RUNNING_LAST_AGAIN = execution(E.RUNNING, (S.SUCCEEDED, 1), (S.RUNNING, 2))
CANCELLED_RUNNING = execution(E.CANCELLED, (S.RUNNING, 1), (S.CANCELLED, 0))
FAILED = execution(E.FAILED, (S.SUCCEEDED, 1), (S.FAILED, 2))


def entries(events: list[Event]) -> list[dict[str, Any]]:
    return [event.fields() for event in events]


OUTCOMES = [
    ("claim", engine.claimed(execution(E.PENDING, (S.PENDING, 0)), Claim(0, 1), "w", 2, NOW + 5000),
     [{"type": "step_claimed", "step_index": 0, "step": "s0", "attempt": 1, "worker": "w", "fence": 2,
       "lease_expires_at": NOW + 5000}]),
    ("success, a step follows", engine.succeeded(RUNNING_FIRST, 0, '{"a":1}', RECORD, NOW),
     [{"type": "step_succeeded", "step_index": 0, "step": "s0", "attempt": 1, "duration_ms": 12}]),
    ("success of the last step", engine.succeeded(RUNNING_LAST, 1, "null", RECORD, NOW),
     [{"type": "step_succeeded", "step_index": 1, "step": "s1", "attempt": 1, "duration_ms": 12},
      {"type": "execution_succeeded"}]),
    ("failure with budget left", engine.failed(RUNNING_LAST, 1, "OSError", "disk", False, RECORD, NOW),
     [{"type": "attempt_failed", "step_index": 1, "step": "s1", "attempt": 1, "error_type": "OSError",
       "message": "disk", "permanent": False, "outcome": "retry",
       "next_retry_at": NOW + backoff_ms(POLICY, "e1", "s1", 1, 1)}]),
    ("failure with the budget spent", engine.failed(RUNNING_LAST_AGAIN, 1, "OSError", "disk", False,
                                                    RECORD, NOW),
     [{"type": "attempt_failed", "step_index": 1, "step": "s1", "attempt": 2, "error_type": "OSError",
       "message": "disk", "permanent": False, "outcome": "failed"},
      {"type": "execution_failed"}]),
    ("permanent failure", engine.failed(RUNNING_FIRST, 0, "Bad", "no", True, RECORD, NOW),
     [{"type": "attempt_failed", "step_index": 0, "step": "s0", "attempt": 1, "error_type": "Bad",
       "message": "no", "permanent": True, "outcome": "failed"},
      {"type": "execution_failed"}]),
    ("failure of a cancelled execution", engine.failed(CANCELLED_RUNNING, 0, "Bad", "no", False, RECORD, NOW),
     [{"type": "attempt_failed", "step_index": 0, "step": "s0", "attempt": 1, "error_type": "Bad",
       "message": "no", "permanent": False, "outcome": "cancelled"}]),
    ("lost, then failed", engine.lost(RUNNING_LAST_AGAIN, RecoverLost(1, FailStep()), "w", NOW),
     [{"type": "attempt_lost", "step_index": 1, "step": "s1", "attempt": 2, "worker": "w",
       "outcome": "failed"},
      {"type": "execution_failed"}]),
    ("lost, then retried", engine.lost(RUNNING_FIRST, RecoverLost(0, RetryAt(NOW + 7)), None, NOW),
     [{"type": "attempt_lost", "step_index": 0, "step": "s0", "attempt": 1, "worker": None,
       "outcome": "retry", "next_retry_at": NOW + 7}]),
    ("finish", engine.finished(Finish(E.FAILED)), [{"type": "execution_failed"}]),
    ("cancel", engine.cancelled("ops", "why"), [{"type": "cancelled", "by": "ops", "reason": "why"}]),
    ("retry", engine.retried(FAILED, 1, "ops", "fixed", "[]", '{"n":2}'),
     [{"type": "retried", "step_index": 1, "step": "s1", "by": "ops", "reason": "fixed",
       "input_diff_json": "[]"}]),
    ("skip", engine.skipped(FAILED, 1, "ops", "not needed", '{"ok":true}'),
     [{"type": "skipped", "step_index": 1, "step": "s1", "by": "ops", "reason": "not needed"}]),
]


@pytest.mark.parametrize(("events", "expected"), [(e, x) for _, e, x in OUTCOMES],
                         ids=[name for name, _, _ in OUTCOMES])
def test_outcome__gives_the_history_entries__data_kept_out_of_them(
    events: list[Event], expected: list[dict[str, Any]]
) -> None:
    assert entries(events) == expected


@pytest.mark.parametrize("events", [e for _, e, _ in OUTCOMES], ids=[name for name, _, _ in OUTCOMES])
def test_outcome__events_are_frozen(events: list[Event]) -> None:
    with pytest.raises(AttributeError):
        events[0].step = "other"  # type: ignore[attr-defined]


def test_failed__keeps_the_whole_message_for_the_step__a_cut_for_the_history() -> None:
    [event] = engine.failed(RUNNING_FIRST, 0, "OSError", "x" * 2000, False, RECORD, NOW)
    assert event.fields()["message"] == "x" * engine.EVENT_MESSAGE_CHARS
    assert event.detail == "x" * 2000  # type: ignore[attr-defined]
    assert event.record == RECORD  # type: ignore[attr-defined]


def test_failed__agrees_with_what_the_engine_decides_for_a_lost_attempt() -> None:
    """A lost attempt and a failed one open the same retry: both follow ``engine.failure``."""
    lost = decide(replace(RUNNING_FIRST, steps=(replace(RUNNING_FIRST.steps[0], lease_expires_at=NOW),
                                                RUNNING_FIRST.steps[1])), NOW)
    assert isinstance(lost, RecoverLost)
    [failed] = engine.failed(RUNNING_FIRST, 0, "OSError", "disk", False, RECORD, NOW)
    assert failed.then == lost.then  # type: ignore[attr-defined]
    assert isinstance(lost.then, RetryAt)


def test_failed_step__names_the_step_an_operator_retries_or_skips() -> None:
    assert engine.failed_step(FAILED) == 1
    assert engine.failed_step(RUNNING_FIRST) is None
