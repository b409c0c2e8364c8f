"""The invariants every reliability test checks, read from an execution's stored history.

DESIGN "Invariants": strict order, a SUCCEEDED step is never claimed again, attempts within the
retry budget (lost attempts included), one runner at a time, a contiguous history, a stored state
that matches it, and a history that replays cleanly through ``decide`` (``verify``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from executions.audit import verify
from tests.handlers import LEDGER

#: Events that close the running attempt of a step.
OUTCOMES = ("step_succeeded", "attempt_failed", "attempt_lost")


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
    if doc["status"] in ("SUCCEEDED", "FAILED"):  # a cancelled execution's attempt may still run
        running = [s["name"] for s in doc["steps"] if s["status"] == "RUNNING" or "current" in s]
        if running:
            problems.append(f"{doc['status']} execution still has running step(s) {running}")
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
        for step in doc["steps"]:
            key = f"{doc['_id']}:{step['name']}"
            for record in step["attempts"]:
                if record["outcome"] == "succeeded":
                    assert LEDGER[(key, record["n"])] == 1, f"{key} attempt {record['n']} never ran"


def _history_problems(doc: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    specs = doc["definition"]["steps"]
    done = [False] * len(specs)
    used = [0] * len(specs)
    last = [0] * len(specs)
    running: tuple[int, int] | None = None
    for event in doc["events"]:
        kind, seq, index = event["type"], event["seq"], event.get("step_index")
        if kind == "step_claimed":
            attempt = event["attempt"]
            unfinished = [specs[j]["name"] for j in range(index) if not done[j]]
            if unfinished:
                problems.append(f"event {seq}: {specs[index]['name']} claimed before {unfinished} "
                                "succeeded or were skipped (strict order)")
            if done[index]:
                problems.append(f"event {seq}: {specs[index]['name']} claimed again after it finished")
            if running is not None:
                problems.append(f"event {seq}: claimed while attempt {running} had no outcome "
                                "(one runner)")
            if attempt != last[index] + 1:
                problems.append(f"event {seq}: attempt {attempt} follows attempt {last[index]}")
            last[index] = attempt
            used[index] += 1
            if used[index] > specs[index]["retry"]["max_attempts"]:
                problems.append(f"event {seq}: attempt {used[index]} of {specs[index]['name']}'s "
                                f"budget exceeds max_attempts={specs[index]['retry']['max_attempts']}")
            running = (index, attempt)
        elif kind in OUTCOMES:
            if running != (index, event["attempt"]):
                problems.append(f"event {seq}: {kind} of step {index} attempt {event['attempt']} "
                                f"while the running claim is {running}")
            running = None
            done[index] = done[index] or kind == "step_succeeded"
        elif kind == "skipped":
            done[index] = True
        elif kind == "retried":
            used[index] = 0
    return problems


def _attempt_record_problems(doc: Mapping[str, Any]) -> list[str]:
    """Each stored attempt record belongs to the claim of that attempt (same worker and fence)."""
    problems: list[str] = []
    claims = {(e["step_index"], e["attempt"]): e for e in doc["events"] if e["type"] == "step_claimed"}
    closed = {(e["step_index"], e["attempt"]): e["type"] for e in doc["events"] if e["type"] in OUTCOMES}
    kinds = {"succeeded": "step_succeeded", "failed": "attempt_failed", "timed_out": "attempt_failed",
             "lost": "attempt_lost"}
    for index, step in enumerate(doc["steps"]):
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
