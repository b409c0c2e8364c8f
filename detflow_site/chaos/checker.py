"""The chaos checker: reads final states, histories and the ledger, and lists every violation.

Checks DESIGN's invariants 1-6 on each history, that every execution ended, that histories are
contiguous and replay without divergence (``verify``), that each claimed attempt ran its handler at
most once and each recorded outcome had a run, that no step committed its side effect twice, that
no attempt was both recorded and recorded lost, and that no attempt whose handler committed its
effect was recorded lost unless a crash or a pause was planned for its execution (the store's
faults, elections included, end within a lease: an outcome they delay is late, never lost).

A rollback is held to the same, its compensations as slots after the steps (``ExecutionState.slot``;
ledger runs and side effects of a compensation are named ``<step>:compensate``), and to its own
promises: the plan names only steps that completed and have a compensation, newest first, every one
that succeeded; each compensation is claimed only after the ones before it in the plan SUCCEEDED or
were SKIPPED (strict reverse order); each commits its outcome once; no forward step is claimed once
the rollback started; COMPENSATED only when every compensation SUCCEEDED or was SKIPPED.

Sleeps, waits and signals (``check_waits``): each started wait ends exactly once (a signal taken, or
its ``wait_ended``), and every wait of a finished execution that started has ended; a signal is
taken at most once, only by a wait step for its name, while that step is WAITING; a signal's
Idempotency-Key is stored once per name; no step after a wait is claimed before the wait ended; a
WAITING step is never claimed, never has a lease or a running attempt (in the history or the
stored document).

Pauses (``check_holds``): while a hold is there (from a ``paused`` event to the ``resumed`` of its
scope, ``execution`` or ``workflow``, the state fold's ``holds``), nothing starts: no step or
compensation is claimed, no sleep or wait starts, no wait takes its signal or wakes, no rollback
starts (a running attempt's outcome, a lost attempt, a deadline and the end may still come); an
execution that has not ended holds nothing after the drain, and one that ended stores no hold.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from executions import audit, store
from executions.engine import (
    DONE_STEP,
    TERMINAL,
    ExecutionState,
    IllegalTransition,
    StepStatus,
    evolve,
    rollback_plan,
)
from executions.events import COMPENSATION_KINDS

#: Planned faults that may lose an attempt whose handler committed its effect: a worker that dies
#: after the handler ran, or stalls past its lease.
LOSING_KINDS = frozenset({"crash", "pause"})
#: Events that close a running attempt (their compensation kinds map onto them).
OUTCOMES = ("step_succeeded", "attempt_failed", "attempt_lost")
#: What a compensation's ledger runs and side effects are named after its step.
UNDO_SUFFIX = ":compensate"
#: Events of what a hold keeps from starting (``engine.decide`` turns these decisions idle): a claim,
#: a sleep or wait starting, a wait taking its signal or waking, a rollback starting.
STARTS = frozenset({"step_claimed", "compensation_claimed", "wait_started", "signal_consumed",
                    "wait_ended", "rollback_started"})


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
    #: Executions whose rollback started, and the compensations their plans named.
    rollbacks: int = 0
    compensations: int = 0
    #: Compensation attempts claimed, and those of them recorded lost.
    compensation_attempts: int = 0
    lost_compensations: int = 0
    #: Sleeps and waits started, signals stored and taken, waits that timed out.
    sleeps: int = 0
    waits: int = 0
    signals: int = 0
    signals_taken: int = 0
    timeouts: int = 0
    #: Holds set (``paused`` events) by scope (``execution``, ``workflow``), holds lifted
    #: (``resumed``), and attempts that ended (recorded or lost) while a hold was there.
    holds: Counter[str] = field(default_factory=Counter)
    resumes: int = 0
    ended_while_held: int = 0


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
        kinds_seen = Counter(e["type"] for e in doc["events"])
        findings.rollbacks += kinds_seen["rollback_started"] > 0
        findings.compensations += len(doc.get("compensations") or ())
        findings.compensation_attempts += kinds_seen["compensation_claimed"]
        findings.lost_compensations += kinds_seen["compensation_attempt_lost"]
        started = [e for e in doc["events"] if e["type"] == "wait_started"]
        findings.sleeps += sum(1 for e in started if e.get("kind") == "sleep")
        findings.waits += sum(1 for e in started if e.get("kind") == "wait")
        findings.signals += kinds_seen["signal_received"]
        findings.signals_taken += kinds_seen["signal_consumed"]
        findings.timeouts += sum(1 for e in doc["events"]
                                 if e["type"] == "wait_ended" and e.get("outcome") == "timed_out")
        findings.violations += check_history(doc)
        findings.violations += check_waits(doc)
        findings.violations += check_holds(doc, findings)
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
    claim: dict[int, tuple[int, int]] = {}  # slot -> (attempt, seq) of its current claim
    committed: Counter[int] = Counter()  # slot -> outcomes committed as succeeded
    last_fence = 0
    rollback: int | None = None  # seq of rollback_started
    for event in doc["events"]:
        seq = event.get("seq", 0)
        kind, index = slot_event(state, event)
        if kind == "rollback_started":
            if rollback is not None:
                flag("rollback plan", f"a second rollback (the first at event {rollback})", seq)
            rollback = seq
            found.extend(Violation(execution_id, "rollback plan", detail, (seq,))
                         for detail in _plan_problems(state, event.get("plan") or [], event.get("by")))
        elif kind == "step_claimed":
            step = state.slot(index) if _exists(state, index) else None
            if step is None:
                flag("legal transitions", f"{event['type']} of a step or compensation that does not "
                     f"exist (slot {index})", seq)
            elif state.is_compensation(index):
                k = index - len(state.steps)
                blocking = [c.name for c in state.compensations[:k] if c.status not in DONE_STEP]
                if blocking:
                    flag("rollback order", f"compensation of {step.name!r} claimed before the "
                         f"compensation(s) of {blocking} succeeded or were skipped", seq)
            else:
                if rollback is not None:
                    flag("forward after rollback", f"step {step.name!r} claimed after the rollback "
                         f"started (event {rollback})", seq)
                blocking = [s.name for s in state.steps[:index] if s.status not in DONE_STEP]
                if blocking:
                    flag("strict order", f"step {step.name!r} claimed before {blocking} finished", seq)
            if step is not None:
                what = _what(state, index)
                if step.status is StepStatus.SUCCEEDED:
                    flag("no re-run", f"succeeded {what} claimed again", seq)
                if event["attempt"] - step.budget_base > step.policy.max_attempts:
                    flag("attempt budget", f"{what} attempt {event['attempt']} exceeds "
                         f"max_attempts={step.policy.max_attempts}", seq)
            if event.get("fence", 0) <= last_fence:
                flag("one writer", f"claim fence {event.get('fence')} not above {last_fence}", seq)
            last_fence = event.get("fence", 0)
            claim[index] = (event["attempt"], seq)
        elif kind in OUTCOMES:
            current = claim.get(index)
            if current is None or current[0] != event.get("attempt"):
                flag("one runner", f"outcome of attempt {event.get('attempt')} of "
                     f"{_what(state, index)} recorded while attempt {current and current[0]} held "
                     "the claim", *(x for x in (current and current[1], seq) if x))
            if kind == "step_succeeded":
                committed[index] += 1
                if committed[index] > 1 and state.is_compensation(index):
                    flag("compensated once", f"{_what(state, index)} committed its outcome "
                         f"{committed[index]} times", seq)
        elif kind == "execution_compensated":
            undone = [c.name for c in state.compensations if c.status not in DONE_STEP]
            if undone:
                flag("compensated early", f"COMPENSATED while the compensation(s) of {undone} "
                     "neither succeeded nor were skipped", seq)
        try:
            state = evolve(state, audit.engine_event(event))
        except (IllegalTransition, KeyError, TypeError, IndexError) as exc:
            flag("legal transitions", f"{event['type']}: {exc}", seq)
            break
    if doc["status"] == "COMPENSATED":
        undone = [c.get("name") for c in doc.get("compensations") or ()
                  if c.get("status") not in {s.value for s in DONE_STEP}]
        if undone:
            flag("compensated early", f"stored COMPENSATED with the compensation(s) of {undone} "
                 "neither succeeded nor skipped")
    found.extend(Violation(execution_id, "verify", str(d), (d.seq,) if d.seq else ())
                 for d in audit.verify(doc))
    return found


def slot_event(state: ExecutionState, event: Mapping[str, Any]) -> tuple[str, int]:
    """Return ``event``'s forward kind and the slot it is about: a compensation's is past the steps
    (``ExecutionState.slot``), a step's is its index."""
    kind = event["type"]
    if kind in COMPENSATION_KINDS:
        return COMPENSATION_KINDS[kind], len(state.steps) + int(event.get("compensation_index", 0))
    return kind, event.get("step_index", -1)


def _exists(state: ExecutionState, index: int) -> bool:
    return isinstance(index, int) and 0 <= index < len(state.steps) + len(state.compensations)


def _what(state: ExecutionState, index: int) -> str:
    if not _exists(state, index):
        return f"slot {index}"
    name = state.slot(index).name
    return f"compensation of {name!r}" if state.is_compensation(index) else f"step {name!r}"


def _plan_problems(state: ExecutionState, plan: list[int], by: str | None) -> list[str]:
    """What is wrong with a rollback ``plan`` started on ``state``: a step that never completed or
    has no compensation, an order other than newest first, or a succeeded step left out (an
    operator's plan may name skipped steps too; the engine's, on failure, never does)."""
    problems = []
    steps = state.steps
    wrong = [steps[i].name if 0 <= i < len(steps) else str(i) for i in plan
             if not 0 <= i < len(steps) or steps[i].status not in DONE_STEP or steps[i].compensate is None]
    if wrong:
        problems.append(f"plan names {wrong}, which never completed or have no compensation")
    if plan != sorted(set(plan), reverse=True):
        problems.append(f"plan {plan} is not the completed steps newest first")
    allowed = rollback_plan(state, include_skipped=by is not None)
    missed = [steps[i].name for i in rollback_plan(state) if i not in plan]
    if missed:
        problems.append(f"plan {plan} leaves out {missed}, which succeeded")
    elif not wrong and not set(plan) <= set(allowed):
        problems.append(f"plan {plan} names steps an on_failure rollback never undoes")
    return problems


def _named(event: Mapping[str, Any]) -> str:
    """Return the name a ledger run or side effect of ``event``'s slot carries."""
    return event["step"] + (UNDO_SUFFIX if event["type"] in COMPENSATION_KINDS else "")


def _kind(event: Mapping[str, Any]) -> str:
    return COMPENSATION_KINDS.get(event["type"], event["type"])


def _check_ledger(
    doc: Mapping[str, Any],
    runs: Counter[tuple[str, str, int]],
    effects: Counter[tuple[str, str]],
) -> list[Violation]:
    execution_id = doc["_id"]
    found = []
    claimed = {(_named(e), e["attempt"]): e["seq"] for e in doc["events"]
               if _kind(e) == "step_claimed"}
    recorded = {(_named(e), e["attempt"]): e["seq"] for e in doc["events"]
                if _kind(e) in ("step_succeeded", "attempt_failed")}
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
    runs_handler = ["sleep" not in d and "wait" not in d for d in doc["definition"]["steps"]]
    slots = [("step", s["name"], s) for i, s in enumerate(doc["steps"]) if runs_handler[i]] + [
        ("compensation", c["name"] + UNDO_SUFFIX, c) for c in doc.get("compensations") or ()]
    for what, name, stored in slots:
        count = effects[(execution_id, name)]
        if count > 1:
            found.append(Violation(execution_id, "side effects",
                                   f"{what} {name!r} committed its side effect {count} times"))
        if stored["status"] == StepStatus.SUCCEEDED.value and count == 0:
            found.append(Violation(execution_id, "side effects",
                                   f"{what} {name!r} succeeded without its side effect"))
    return found


def _check_lost(
    doc: Mapping[str, Any], committed: Collection[tuple[str, str, Any]], nothing_loses: bool
) -> list[Violation]:
    """Flag an attempt both recorded and recorded lost, and (``nothing_loses``: no crash or pause
    was planned) an attempt recorded lost whose handler committed its effect."""
    execution_id = doc["_id"]
    found = []
    outcomes = {(_named(e), e["attempt"]): e["seq"] for e in doc["events"]
                if _kind(e) in ("step_succeeded", "attempt_failed")}
    for event in doc["events"]:
        if _kind(event) != "attempt_lost":
            continue
        step, attempt, seq = _named(event), event["attempt"], event["seq"]
        if (step, attempt) in outcomes:
            found.append(Violation(execution_id, "lost and recorded", f"attempt {attempt} of "
                                   f"{step!r} was recorded and recorded lost",
                                   tuple(sorted((outcomes[(step, attempt)], seq)))))
        if nothing_loses and (execution_id, step, attempt) in committed:
            found.append(Violation(execution_id, "success lost", f"attempt {attempt} of {step!r} "
                                   "committed its effect and was recorded lost, with no crash or "
                                   "pause planned", (seq,)))
    return found


def check_waits(doc: Mapping[str, Any]) -> list[Violation]:
    """Check one execution's sleeps, waits and signals (the module's docstring lists the promises)."""
    execution_id = doc["_id"]
    found: list[Violation] = []

    def flag(check: str, detail: str, *seqs: int) -> None:
        found.append(Violation(execution_id, check, detail, tuple(seqs)))

    specs = doc["definition"]["steps"]
    names = [s.get("name") for s in specs]
    waiting: dict[int, int] = {}  # step index -> seq of the wait_started of its open wait
    ended: Counter[int] = Counter()  # step index -> ends recorded for its waits
    received: dict[int, str] = {}  # signal index -> name
    taken: dict[int, int] = {}  # signal index -> seq of the signal_consumed that took it
    keys: dict[tuple[str, str], int] = {}  # (name, key) -> seq of the first signal_received with it
    for event in doc["events"]:
        kind, seq, index = event["type"], event.get("seq", 0), event.get("step_index")
        spec = specs[index] if isinstance(index, int) and 0 <= index < len(specs) else {}
        if kind == "wait_started":
            if index in waiting:
                flag("wait ends once", f"step {event.get('step')!r} started a wait while its wait of "
                     f"event {waiting[index]} was still open", seq)
            waiting[index] = seq
        elif kind in ("signal_consumed", "wait_ended"):
            if index not in waiting:
                flag("wait ends once", f"{kind} of step {event.get('step')!r}, which was not waiting "
                     f"(its waits ended {ended[index]} time(s) already)", seq)
            waiting.pop(index, None)
            ended[index] += 1
            if kind == "signal_consumed":
                k = event.get("signal_index")
                name = event.get("name")
                if k in taken:
                    flag("signal taken once", f"signal {k} taken again by step {event.get('step')!r} "
                         f"(first at event {taken[k]})", taken[k], seq)
                elif isinstance(k, int):
                    taken[k] = seq
                wanted = (spec.get("wait") or {}).get("signal")
                if wanted is None or received.get(k) != wanted or name != wanted:
                    flag("signal taken by its wait", f"signal {k} ({received.get(k)!r}) taken by step "
                         f"{event.get('step')!r}, which waits for {wanted!r}", seq)
        elif kind == "signal_received":
            k, name, key = event.get("signal_index"), event.get("name"), event.get("key")
            if isinstance(k, int):
                received[k] = name
            if key is not None:
                if (name, key) in keys:
                    flag("signal key once", f"signal {name!r} with Idempotency-Key {key!r} stored "
                         f"again (first at event {keys[(name, key)]})", keys[(name, key)], seq)
                keys.setdefault((name, key), seq)
        elif kind in ("step_claimed", *OUTCOMES):
            if index in waiting:
                flag("waiting holds nothing", f"{kind} of step {event.get('step')!r} while it was "
                     f"WAITING (since event {waiting[index]})", seq)
            if kind == "step_claimed":
                open_before = [names[i] for i in waiting if isinstance(i, int) and isinstance(index, int)
                               and i < index]
                if open_before:
                    flag("claimed during a wait", f"step {event.get('step')!r} claimed before the "
                         f"wait of {open_before} ended", seq)
    if doc["status"] in {s.value for s in TERMINAL} and doc["status"] != "CANCELLED" and waiting:
        flag("wait ends once", f"finished {doc['status']} with the wait of "
             f"{[names[i] for i in waiting]} never ended", *waiting.values())
    stored = doc.get("signals") or []
    stored_keys = Counter((s.get("name"), s.get("key")) for s in stored if s.get("key") is not None)
    for (name, key), count in stored_keys.items():
        if count > 1:
            flag("signal key once", f"signal {name!r} with Idempotency-Key {key!r} stored {count} times")
    for k, signal in enumerate(stored):
        by = signal.get("consumed_by")
        if by is not None:
            taker: Mapping[str, Any] = next((s for s in specs if s.get("name") == by), {})
            if (taker.get("wait") or {}).get("signal") != signal.get("name"):
                flag("signal taken by its wait", f"stored signal {k} ({signal.get('name')!r}) taken by "
                     f"{by!r}, which does not wait for it")
            if k not in taken:
                flag("signal taken once", f"stored signal {k} names {by!r} as its taker; no event took it")
    for step in doc["steps"]:
        if step.get("status") == StepStatus.WAITING.value:
            held = [f for f in ("lease_expires_at", "current", "lock") if f in step]
            if held:
                flag("waiting holds nothing", f"WAITING step {step.get('name')!r} stores {held}")
    return found


def check_holds(doc: Mapping[str, Any], findings: Findings | None = None) -> list[Violation]:
    """Check that nothing started in one execution while a pause held it, and that no hold is left
    (the module's docstring lists the promises); count its holds into ``findings``."""
    execution_id = doc["_id"]
    found: list[Violation] = []
    counts = findings if findings is not None else Findings()
    state = store.initial_state(execution_id, doc["definition"])
    since: dict[str, int] = {}  # scope -> seq of the paused event that set its hold
    for event in doc["events"]:
        kind, seq = event["type"], event.get("seq", 0)
        held = sorted(state.holds)
        if held and kind in STARTS:
            what = event.get("step") or event.get("steps")
            paused_at = [since[h] for h in held if h in since]
            found.append(Violation(execution_id, "no start while held", f"{kind} of {what!r} while "
                                   f"paused by its {' and '.join(held)} (since event(s) "
                                   f"{', '.join(map(str, paused_at))})", (*paused_at, seq)))
        if held and _kind(event) in OUTCOMES:
            counts.ended_while_held += 1
        try:
            state = evolve(state, audit.engine_event(event))
        except (IllegalTransition, KeyError, TypeError, IndexError):
            return found  # ``check_history`` reports the illegal transition
        if kind == "paused":
            counts.holds[str(event.get("scope"))] += 1
            since[str(event.get("scope"))] = seq
        elif kind == "resumed":
            counts.resumes += 1
        since = {scope: at for scope, at in since.items() if scope in state.holds}
    ended = doc["status"] in {s.value for s in TERMINAL}
    if state.holds and not ended:
        found.append(Violation(execution_id, "no hold left", f"still {doc['status']} and paused by its "
                               f"{' and '.join(sorted(state.holds))} after the drain (never resumed)",
                               tuple(since[h] for h in sorted(state.holds) if h in since)))
    if ended and doc.get("paused"):
        found.append(Violation(execution_id, "no hold left", f"ended {doc['status']} and still stores "
                               f"the pause(s) of {sorted(doc['paused'])}"))
    return found


def _gaps(seqs: list[Any]) -> str:
    shown = ", ".join(map(str, seqs[:12]))
    return f"[{shown}{', ...' if len(seqs) > 12 else ''}] ({len(seqs)} events)"
