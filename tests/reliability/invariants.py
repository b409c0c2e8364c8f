"""The invariants every reliability test checks, read from an execution's stored history.

DESIGN "Invariants": strict order, a SUCCEEDED step is never claimed again, attempts within the
retry budget (lost attempts included), one runner at a time, a contiguous history, a stored state
that matches it, and a history that replays cleanly through ``decide`` (``verify``). A rollback's
compensations are held to the same, as slots after the steps (``ExecutionState.slot``): strict
order among themselves (the plan's, newest step first), no forward step claimed once it started,
each committed once, and COMPENSATED only when every one SUCCEEDED or was SKIPPED.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from executions.audit import verify
from executions.events import COMPENSATION_KINDS
from tests.handlers import LEDGER

#: Events that close the running attempt of a step.
OUTCOMES = ("step_succeeded", "attempt_failed", "attempt_lost")
#: Statuses in which no step or compensation may still run.
ENDED = ("SUCCEEDED", "FAILED", "COMPENSATED", "COMPENSATION_FAILED")
DONE = ("SUCCEEDED", "SKIPPED")


def violations(doc: Mapping[str, Any]) -> list[str]:
    """Return every invariant the stored execution breaks (empty when it keeps them all)."""
    problems: list[str] = []
    events = doc["events"]
    seqs = [event["seq"] for event in events]
    if seqs != list(range(1, len(events) + 1)):
        problems.append(f"history is not contiguous from 1: sequence numbers {seqs}")
    if doc["event_seq"] != len(events):
        problems.append(f"event_seq is {doc['event_seq']} for {len(events)} events")
    problems += _history_problems(doc)
    problems += _attempt_record_problems(doc)
    if doc["status"] in ENDED:  # a cancelled execution's attempt may still run
        running = [s["name"] for s in _slots(doc) if s["status"] == "RUNNING" or "current" in s]
        if running:
            problems.append(f"{doc['status']} execution still has running step(s) {running}")
    if doc["status"] == "COMPENSATED":
        undone = [c["name"] for c in doc.get("compensations") or () if c["status"] not in DONE]
        if undone:
            problems.append(f"COMPENSATED with the compensation(s) of {undone} neither succeeded "
                            "nor skipped")
    problems += [f"verify: {divergence}" for divergence in verify(doc)]
    return problems


def assert_invariants(*docs: Mapping[str, Any]) -> None:
    """Fail, naming each broken invariant, unless every execution keeps them all."""
    report = [f"{doc['_id']}: {problem}" for doc in docs for problem in violations(doc)]
    assert report == [], "invariants broken:\n" + "\n".join(report)


def assert_each_attempt_ran_once(*docs: Mapping[str, Any]) -> None:
    """Fail unless every handler run in the ledger is the only run of its attempt, and every
    attempt that succeeded ran its handler (a crash before the handler may leave an attempt unrun)."""
    repeated = {key: runs for key, runs in LEDGER.items() if runs != 1}
    assert repeated == {}, f"attempts whose handler ran more than once: {repeated}"
    for doc in docs:
        for index, step in enumerate(_slots(doc)):
            key = f"{doc['_id']}:{step['name']}" + (":compensate" if index >= len(doc["steps"]) else "")
            for record in step["attempts"]:
                if record["outcome"] == "succeeded":
                    assert LEDGER[(key, record["n"])] == 1, f"{key} attempt {record['n']} never ran"


def _slots(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The stored steps, then the rollback's compensations (``ExecutionState.slot``'s order)."""
    return [*doc["steps"], *(doc.get("compensations") or ())]


def _slot_event(doc: Mapping[str, Any], event: Mapping[str, Any]) -> tuple[str, Any]:
    """Return the forward kind of ``event`` and the slot it is about (a compensation's is past the
    steps)."""
    kind = event["type"]
    if kind in COMPENSATION_KINDS:
        return COMPENSATION_KINDS[kind], len(doc["steps"]) + event["compensation_index"]
    return kind, event.get("step_index")


def _slot_specs(doc: Mapping[str, Any]) -> list[tuple[str, int]]:
    """Return each slot's name and ``max_attempts``: a compensation's are its step's name with
    ``:compensate`` and its own retry policy's."""
    specs = doc["definition"]["steps"]
    return [(s["name"], s["retry"]["max_attempts"]) for s in specs] + [
        (f"{c['name']}:compensate", specs[c["step_index"]]["compensate"]["retry"]["max_attempts"])
        for c in doc.get("compensations") or ()]


def _history_problems(doc: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    specs = _slot_specs(doc)
    n = len(doc["steps"])
    done = [False] * len(specs)
    used = [0] * len(specs)
    last = [0] * len(specs)
    succeeded = [0] * len(specs)
    running: tuple[int, int] | None = None
    rollback: int | None = None  # the seq of rollback_started
    for event in doc["events"]:
        (kind, index), seq = _slot_event(doc, event), event["seq"]
        if kind == "rollback_started":
            if rollback is not None:
                problems.append(f"event {seq}: a second rollback (the first at event {rollback})")
            rollback = seq
            problems += _plan_problems(doc, event, done[:n])
        elif kind == "step_claimed":
            attempt = event["attempt"]
            name, budget = specs[index]
            if index < n and rollback is not None:
                problems.append(f"event {seq}: step {name} claimed after the rollback started "
                                f"(event {rollback})")
            first = n if index >= n else 0  # compensations keep their own order, after the steps
            unfinished = [specs[j][0] for j in range(first, index) if not done[j]]
            if unfinished:
                problems.append(f"event {seq}: {name} claimed before {unfinished} "
                                "succeeded or were skipped (strict order)")
            if done[index]:
                problems.append(f"event {seq}: {name} claimed again after it finished")
            if running is not None:
                problems.append(f"event {seq}: claimed while attempt {running} had no outcome "
                                "(one runner)")
            if attempt != last[index] + 1:
                problems.append(f"event {seq}: attempt {attempt} follows attempt {last[index]}")
            last[index] = attempt
            used[index] += 1
            if used[index] > budget:
                problems.append(f"event {seq}: attempt {used[index]} of {name}'s "
                                f"budget exceeds max_attempts={budget}")
            running = (index, attempt)
        elif kind in OUTCOMES:
            if running != (index, event["attempt"]):
                problems.append(f"event {seq}: {kind} of step {index} attempt {event['attempt']} "
                                f"while the running claim is {running}")
            running = None
            if kind == "step_succeeded":
                succeeded[index] += 1
                if succeeded[index] > 1:
                    problems.append(f"event {seq}: {specs[index][0]} committed its outcome "
                                    f"{succeeded[index]} times")
            done[index] = done[index] or kind == "step_succeeded"
        elif kind == "skipped":
            done[index] = True
        elif kind == "retried":
            used[index] = 0
        elif kind == "execution_compensated":
            undone = [specs[j][0] for j in range(n, len(specs)) if not done[j]]
            if undone:
                problems.append(f"event {seq}: compensated with {undone} neither succeeded nor "
                                "skipped")
    return problems


def _plan_problems(doc: Mapping[str, Any], event: Mapping[str, Any], done: list[bool]) -> list[str]:
    """A rollback's plan names only completed steps that have a compensation, newest first: every
    one that SUCCEEDED, as the stored compensations do."""
    specs = doc["definition"]["steps"]
    plan, seq = event["plan"], event["seq"]
    problems = []
    if plan != sorted(plan, reverse=True) or len(set(plan)) != len(plan):
        problems.append(f"event {seq}: rollback plan {plan} is not newest first")
    for index in plan:
        if not done[index] or "compensate" not in specs[index]:
            problems.append(f"event {seq}: rollback plan names {specs[index]['name']}, which did "
                            "not complete or has no compensation")
    missed = [specs[i]["name"] for i in range(len(specs))
              if done[i] and "compensate" in specs[i] and i not in plan
              and doc["steps"][i]["status"] == "SUCCEEDED"]
    if missed:
        problems.append(f"event {seq}: rollback plan {plan} leaves out {missed}")
    stored = [c["step_index"] for c in doc.get("compensations") or ()]
    if stored != plan:
        problems.append(f"event {seq}: rollback plan {plan}, compensations stored for {stored}")
    return problems


def _attempt_record_problems(doc: Mapping[str, Any]) -> list[str]:
    """Each stored attempt record belongs to the claim of that attempt (same worker and fence)."""
    problems: list[str] = []
    slotted = [(*_slot_event(doc, e), e) for e in doc["events"]]
    claims = {(index, e["attempt"]): e for kind, index, e in slotted if kind == "step_claimed"}
    closed = {(index, e["attempt"]): kind for kind, index, e in slotted if kind in OUTCOMES}
    kinds = {"succeeded": "step_succeeded", "failed": "attempt_failed", "timed_out": "attempt_failed",
             "lost": "attempt_lost"}
    for index, step in enumerate(_slots(doc)):
        numbers = [record["n"] for record in step["attempts"]]
        if numbers != sorted(set(numbers)):
            problems.append(f"{step['name']}: attempt records {numbers} repeat or go backwards")
        for record in step["attempts"]:
            claim = claims.get((index, record["n"]))
            if claim is None:
                problems.append(f"{step['name']}: attempt record {record['n']} has no claim")
                continue
            if (record["worker"], record["fence"]) != (claim["worker"], claim["fence"]):
                problems.append(f"{step['name']} attempt {record['n']}: recorded by "
                                f"{record['worker']} fence {record['fence']}, claimed by "
                                f"{claim['worker']} fence {claim['fence']}")
            if kinds[record["outcome"]] != closed.get((index, record["n"])):
                problems.append(f"{step['name']} attempt {record['n']}: record says "
                                f"{record['outcome']}, history says {closed.get((index, record['n']))}")
        if step["status"] == "SUCCEEDED":
            if not step["attempts"] or step["attempts"][-1]["outcome"] != "succeeded":
                problems.append(f"{step['name']} SUCCEEDED without a succeeded attempt record")
            if "output_json" not in step:
                problems.append(f"{step['name']} SUCCEEDED without an output")
    return problems
