"""The chaos checker: reads final states, histories and the ledger, and lists every violation.

Checks DESIGN's invariants 1-6 on each history, that every execution ended, that histories are
contiguous and replay without divergence (``verify``), that each claimed attempt ran its handler at
most once and each recorded outcome had a run, that no step committed its side effect twice, that
no attempt was both recorded and recorded lost, and that no attempt whose handler committed its
effect was recorded lost unless a crash or a pause was planned for its execution (the store's
faults, elections included, end within a lease: an outcome they delay is late, never lost).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from executions import audit, store
from executions.engine import DONE_STEP, TERMINAL, IllegalTransition, StepStatus, evolve

#: Planned faults that may lose an attempt whose handler committed its effect: a worker that dies
#: after the handler ran, or stalls past its lease.
LOSING_KINDS = frozenset({"crash", "pause"})


@dataclass(frozen=True)
class Violation:
    """One broken promise, with the events that show it."""

    execution_id: str
    check: str
    detail: str
    events: tuple[int, ...] = ()

    def __str__(self) -> str:
        where = f" (events {', '.join(map(str, self.events))})" if self.events else ""
        return f"{self.execution_id} [{self.check}] {self.detail}{where}"


@dataclass
class Findings:
    """What the checker found over one run."""

    violations: list[Violation] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    lost_attempts: int = 0


def check(
    docs: Iterable[Mapping[str, Any]],
    runs: Iterable[Mapping[str, Any]],
    committed: Iterable[Mapping[str, Any]],
    planned: Mapping[str, Collection[str]] | None = None,
) -> Findings:
    """Check executions against their ledger runs and committed side effects; ``planned`` gives
    the fault kinds planned for each execution id."""
    findings = Findings()
    runs_by_attempt: Counter[tuple[str, str, int]] = Counter(
        (r["execution_id"], r["step"], r["attempt"]) for r in runs
    )
    effects = list(committed)
    effects_by_step: Counter[tuple[str, str]] = Counter((e["execution_id"], e["step"]) for e in effects)
    committed_attempts = {(e["execution_id"], e["step"], e.get("attempt")) for e in effects}
    for doc in docs:
        findings.statuses[doc["status"]] += 1
        findings.lost_attempts += sum(1 for e in doc["events"] if e["type"] == "attempt_lost")
        findings.violations += check_history(doc)
        findings.violations += _check_ledger(doc, runs_by_attempt, effects_by_step)
        kinds = (planned or {}).get(doc["_id"], ())
        findings.violations += _check_lost(doc, committed_attempts, LOSING_KINDS.isdisjoint(kinds))
    return findings


def check_history(doc: Mapping[str, Any]) -> list[Violation]:
    """Check one execution's history against invariants 1-6 and the engine's replay."""
    execution_id = doc["_id"]
    found: list[Violation] = []

    def flag(check: str, detail: str, *seqs: int) -> None:
        found.append(Violation(execution_id, check, detail, tuple(seqs)))

    if doc["status"] not in TERMINAL or doc.get("due_at") is not None:
        flag("terminal", f"still {doc['status']} after the drain (due {doc.get('due_at')})")
    seqs = [e.get("seq") for e in doc["events"]]
    if seqs != list(range(1, len(seqs) + 1)):
        flag("contiguous", f"event sequence numbers are {_gaps(seqs)}")
    state = store.initial_state(execution_id, doc["definition"])
    claim: dict[int, tuple[int, int]] = {}  # step index -> (attempt, seq) of its current claim
    last_fence = 0
    for event in doc["events"]:
        seq, kind, index = event.get("seq", 0), event["type"], event.get("step_index")
        if kind == "step_claimed":
            step = state.steps[index]
            blocking = [s.name for s in state.steps[:index] if s.status not in DONE_STEP]
            if blocking:
                flag("strict order", f"step {step.name!r} claimed before {blocking} finished", seq)
            if step.status is StepStatus.SUCCEEDED:
                flag("no re-run", f"succeeded step {step.name!r} claimed again", seq)
            if event["attempt"] - step.budget_base > step.policy.max_attempts:
                flag("attempt budget", f"step {step.name!r} attempt {event['attempt']} exceeds "
                     f"max_attempts={step.policy.max_attempts}", seq)
            if event.get("fence", 0) <= last_fence:
                flag("one writer", f"claim fence {event.get('fence')} not above {last_fence}", seq)
            last_fence = event.get("fence", 0)
            claim[index] = (event["attempt"], seq)
        elif kind in ("step_succeeded", "attempt_failed", "attempt_lost"):
            current = claim.get(index)
            if current is None or current[0] != event.get("attempt"):
                flag("one runner", f"outcome of attempt {event.get('attempt')} of step "
                     f"{event.get('step')!r} recorded while attempt {current and current[0]} held "
                     "the claim", *(x for x in (current and current[1], seq) if x))
        try:
            state = evolve(state, audit.engine_event(event))
        except (IllegalTransition, KeyError, TypeError, IndexError) as exc:
            flag("legal transitions", f"{kind}: {exc}", seq)
            break
    found.extend(Violation(execution_id, "verify", str(d), (d.seq,) if d.seq else ())
                 for d in audit.verify(doc))
    return found


def _check_ledger(
    doc: Mapping[str, Any],
    runs: Counter[tuple[str, str, int]],
    effects: Counter[tuple[str, str]],
) -> list[Violation]:
    execution_id = doc["_id"]
    found = []
    claimed = {(e["step"], e["attempt"]): e["seq"] for e in doc["events"]
               if e["type"] == "step_claimed"}
    recorded = {(e["step"], e["attempt"]): e["seq"] for e in doc["events"]
                if e["type"] in ("step_succeeded", "attempt_failed")}
    for (run_execution, step, attempt), count in runs.items():
        if run_execution != execution_id:
            continue
        if (step, attempt) not in claimed:
            found.append(Violation(execution_id, "ledger", f"handler of {step!r} ran as attempt "
                                   f"{attempt}, which was never claimed"))
        if count > 1:
            found.append(Violation(execution_id, "one runner", f"attempt {attempt} of {step!r} ran "
                                   f"its handler {count} times", (claimed.get((step, attempt), 0),)))
    for (step, attempt), seq in recorded.items():
        if runs[(execution_id, step, attempt)] == 0:
            found.append(Violation(execution_id, "ledger", f"outcome of attempt {attempt} of "
                                   f"{step!r} recorded, but its handler never ran", (seq,)))
    for step in doc["steps"]:
        count = effects[(execution_id, step["name"])]
        if count > 1:
            found.append(Violation(execution_id, "side effects",
                                   f"step {step['name']!r} committed its side effect {count} times"))
        if step["status"] == StepStatus.SUCCEEDED.value and count == 0:
            found.append(Violation(execution_id, "side effects",
                                   f"step {step['name']!r} succeeded without its side effect"))
    return found


def _check_lost(
    doc: Mapping[str, Any], committed: Collection[tuple[str, str, Any]], nothing_loses: bool
) -> list[Violation]:
    """Flag an attempt both recorded and recorded lost, and (``nothing_loses``: no crash or pause
    was planned) an attempt recorded lost whose handler committed its effect."""
    execution_id = doc["_id"]
    found = []
    outcomes = {(e["step"], e["attempt"]): e["seq"] for e in doc["events"]
                if e["type"] in ("step_succeeded", "attempt_failed")}
    for event in doc["events"]:
        if event["type"] != "attempt_lost":
            continue
        step, attempt, seq = event["step"], event["attempt"], event["seq"]
        if (step, attempt) in outcomes:
            found.append(Violation(execution_id, "lost and recorded", f"attempt {attempt} of "
                                   f"{step!r} was recorded and recorded lost",
                                   tuple(sorted((outcomes[(step, attempt)], seq)))))
        if nothing_loses and (execution_id, step, attempt) in committed:
            found.append(Violation(execution_id, "success lost", f"attempt {attempt} of {step!r} "
                                   "committed its effect and was recorded lost, with no crash or "
                                   "pause planned", (seq,)))
    return found


def _gaps(seqs: list[Any]) -> str:
    shown = ", ".join(map(str, seqs[:12]))
    return f"[{shown}{', ...' if len(seqs) > 12 else ''}] ({len(seqs)} events)"
