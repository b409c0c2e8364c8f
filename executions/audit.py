"""The determinism audit: replay a stored history through the engine and compare (``verify``).

Each event that records a decision (a claim, a retry or failure, a lost attempt, the end of the
execution) is checked against what ``decide`` says for the state the earlier events build, at the
event's own time; each event must be a legal transition; the sequence numbers must have no gaps;
and the replayed state must match the stored one.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from executions import store
from executions.engine import (
    COMPENSABLE,
    Claim,
    ExecutionState,
    ExecutionStatus,
    Expire,
    Finish,
    IllegalTransition,
    RecoverLost,
    Resume,
    Rollback,
    StartWait,
    WakeUp,
    decide,
    evolve,
    failure,
    rollback_plan,
)
from executions.events import COMPENSATION_KINDS, outcome_fields
from executions.store import to_ms
from executions.transitions import TIME_FIELDS


@dataclass(frozen=True)
class Divergence:
    """One place where the stored history disagrees with the engine."""

    execution_id: str
    seq: int | None
    problem: str

    def __str__(self) -> str:
        where = f"event {self.seq}" if self.seq is not None else "final state"
        return f"{self.execution_id} {where}: {self.problem}"


def verify(doc: Mapping[str, Any]) -> list[Divergence]:
    """Return every divergence between a stored execution and a replay of its history."""
    execution_id = doc["_id"]
    found: list[Divergence] = []
    state = store.initial_state(execution_id, doc["definition"], store.to_ms(doc.get("deadline_at")))
    expected_seq = 1
    for stored_event in doc.get("events", []):
        seq = stored_event.get("seq")
        if seq != expected_seq:
            found.append(Divergence(execution_id, seq, f"expected sequence number {expected_seq}"))
        expected_seq = (seq or expected_seq) + 1
        event = engine_event(stored_event)
        problem = _check_decision(state, event)
        if problem:
            found.append(Divergence(execution_id, seq, problem))
        try:
            state = evolve(state, event)
        except (IllegalTransition, KeyError, TypeError, ValueError) as exc:
            found.append(Divergence(execution_id, seq, f"illegal event {event.get('type')!r}: {exc}"))
    found.extend(_check_final(execution_id, state, doc))
    if doc.get("event_seq") != expected_seq - 1:
        found.append(Divergence(execution_id, None,
                                f"event_seq is {doc.get('event_seq')}, history ends at {expected_seq - 1}"))
    return found


def verify_all(docs: Iterable[Mapping[str, Any]]) -> Iterator[tuple[str, list[Divergence]]]:
    """Yield ``(execution id, divergences)`` for each document."""
    for doc in docs:
        yield doc["_id"], verify(doc)


def _check_decision(state: ExecutionState, event: Mapping[str, Any]) -> str | None:
    kind = event.get("type")
    at = event.get("at")
    if not isinstance(at, int):
        return "event has no time"
    index = event.get("step_index")
    if kind in COMPENSATION_KINDS:
        # A compensation's decisions are checked as its step's would be, at its slot.
        k = event.get("compensation_index")
        if not isinstance(k, int):
            return f"compensation index {k!r} is not a number"
        kind, index = COMPENSATION_KINDS[str(kind)], len(state.steps) + k
    expected: Any
    actual: Any
    if kind == "rollback_started" and event.get("by") is None:
        actual = decide(state, at)
        expected = Rollback(tuple(event.get("plan") or ()))
    elif kind == "rollback_started":  # an operator's: a plan of steps that are done, newest first
        plan = tuple(event.get("plan") or ())
        if state.status not in COMPENSABLE:
            return f"an operator's rollback recorded on a {state.status} execution"
        if plan not in (rollback_plan(state), rollback_plan(state, include_skipped=True)):
            return (f"rollback plan {list(plan)} is not the completed steps with a compensation, newest "
                    "first (with or without the skipped ones)")
        return None
    elif kind == "wait_started":
        expected, actual = StartWait(index), decide(state, at)  # type: ignore[arg-type]
    elif kind == "deadline_passed":
        expected, actual = Expire(index), decide(state, at)  # type: ignore[arg-type]
    elif kind == "signal_consumed":
        expected = Resume(index, event.get("signal_index"))  # type: ignore[arg-type]
        actual = decide(state, at)
    elif kind == "wait_ended":
        actual = decide(state, at)
        if not isinstance(actual, WakeUp) or actual.step != index:
            return f"recorded the end of the wait of step {index}, engine decides {actual}"
        if event.get("outcome") != "refused" and actual.ends != event.get("ends"):
            return f"wait of step {index} recorded ending {event.get('ends')}, engine says {actual.ends}"
        return None
    elif kind == "step_claimed":
        expected = Claim(index, event.get("attempt"))  # type: ignore[arg-type]
        actual = decide(state, at)
    elif kind == "attempt_lost":
        actual = decide(state, at)
        if not isinstance(actual, RecoverLost) or actual.step != index:
            return f"recorded a lost attempt of step {index}, engine decides {actual}"
        engine_says, recorded = outcome_fields(actual.then), _recorded_outcome(event)
        if engine_says != recorded:
            return f"lost attempt recorded {recorded}, engine says {engine_says}"
        return None
    elif kind == "attempt_failed":
        if not isinstance(index, int) or not 0 <= index < len(state.steps) + len(state.compensations):
            return f"step index {index!r} out of range"
        then = failure(state, index, permanent=bool(event.get("permanent")), now=at)
        if outcome_fields(then) != _recorded_outcome(event):
            return f"failure recorded {_recorded_outcome(event)}, engine says {outcome_fields(then)}"
        return None
    elif kind in FINISHES:
        actual = decide(state, at)
        expected = Finish(FINISHES[kind])
    else:
        return None
    if actual != expected:
        return f"recorded {kind} ({_short(event)}), engine decides {actual}"
    return None


#: The events that end an execution, and the status each ends it as.
FINISHES = {"execution_succeeded": ExecutionStatus.SUCCEEDED, "execution_failed": ExecutionStatus.FAILED,
            "execution_compensated": ExecutionStatus.COMPENSATED,
            "compensation_failed": ExecutionStatus.COMPENSATION_FAILED}


def _check_final(execution_id: str, state: ExecutionState, doc: Mapping[str, Any]) -> list[Divergence]:
    found = []
    if state.status.value != doc.get("status"):
        found.append(Divergence(execution_id, None,
                                f"status is {doc.get('status')}, history gives {state.status}"))
    held = sorted(doc.get("paused") or ())
    if held != sorted(state.holds):
        found.append(Divergence(execution_id, None, f"paused by {held or 'nothing'}, history gives "
                                                    f"{sorted(state.holds) or 'nothing'}"))
    pairs = [("step", replayed, stored)
             for replayed, stored in zip(state.steps, doc.get("steps", []), strict=False)]
    stored_undo = doc.get("compensations") or []
    if len(stored_undo) != len(state.compensations):
        found.append(Divergence(execution_id, None, f"{len(stored_undo)} compensations stored, history "
                                                    f"gives {len(state.compensations)}"))
    pairs += [("compensation of", replayed, stored)
              for replayed, stored in zip(state.compensations, stored_undo, strict=False)]
    for what, replayed, stored in pairs:
        for name in ("status", "attempt", "budget_base"):
            want = getattr(replayed, name)
            got = stored.get(name)
            if (want.value if hasattr(want, "value") else want) != got:
                found.append(Divergence(execution_id, None,
                                        f"{what} {replayed.name!r} {name} is {got}, history gives {want}"))
    return found


def engine_event(event: Mapping[str, Any]) -> dict[str, Any]:
    converted = dict(event)
    converted["at"] = to_ms(event.get("at")) if event.get("at") is not None else None
    for name in TIME_FIELDS:
        if event.get(name) is not None:
            converted[name] = to_ms(event[name])
    return converted


def _recorded_outcome(event: Mapping[str, Any]) -> dict[str, Any]:
    recorded = {"outcome": event.get("outcome")}
    if event.get("outcome") == "retry":
        recorded["next_retry_at"] = event.get("next_retry_at")
    return recorded


def _short(event: Mapping[str, Any]) -> str:
    keys = ("step", "attempt", "outcome")
    return ", ".join(f"{k}={event[k]}" for k in keys if k in event)
