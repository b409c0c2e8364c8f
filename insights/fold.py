"""The fact sheet of a finished execution, computed from its stored history.

Pure: a stored execution document and its steps' baselines in, a :class:`FactSheet` out; no query,
no clock, no guess. The events are folded step by step into attempts, then the failure, the
cancellation, the slow steps and the logs that explain them are picked; ``insights.wording`` puts
the facts into sentences.
"""
from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from detflow_site.times import to_ms
from insights import wording
from insights.facts import (
    MIN_SAMPLES,
    SLOW_FACTOR,
    SLOW_MIN_EXCESS_MS,
    Attempt,
    AttemptLog,
    Baseline,
    Cancellation,
    FactSheet,
    Failure,
    OperatorAction,
    Step,
)

#: Attempts described per step (the newest), and log lines and traceback characters per attempt.
ATTEMPTS_SHOWN = 20
LOG_LINES_SHOWN = 30
TRACEBACK_CHARS = 2000
#: Attempts whose logs a sheet carries for the writers, at most.
LOGS_KEPT = 6


def compute(doc: Mapping[str, Any], baselines: Mapping[str, Baseline] | None = None) -> FactSheet:
    """Return the fact sheet of a stored execution, comparing its steps with ``baselines``."""
    baselines = baselines or {}
    events = sorted((e for e in doc.get("events") or () if isinstance(e.get("seq"), int)),
                    key=lambda e: e["seq"])
    specs = doc["definition"]["steps"]
    builders = [_StepBuilder(i, spec, stored)
                for i, (spec, stored) in enumerate(zip(specs, doc["steps"], strict=True))]
    operator: list[OperatorAction] = []
    cancel: dict[str, Any] | None = None
    terminal: dict[str, Any] | None = None
    for event in events:
        kind = event["type"]
        index = event.get("step_index")
        builder = builders[index] if isinstance(index, int) and 0 <= index < len(builders) else None
        if kind == "step_claimed" and builder:
            builder.claim(event)
        elif kind in ("step_succeeded", "attempt_failed", "attempt_lost") and builder:
            builder.close(event)
        elif kind in ("retried", "skipped") and builder:
            builder.operator(event)
            operator.append(OperatorAction("retry" if kind == "retried" else "skip", builder.name,
                                           event.get("by"), event.get("reason"), event["seq"]))
        elif kind == "cancelled":
            cancel = terminal = event
        elif kind in ("execution_succeeded", "execution_failed"):
            terminal = event
    steps = [b.build(baselines.get(b.name)) for b in builders]
    created = events[0] if events and events[0]["type"] == "created" else None
    duration = _ms_between(created, terminal) if created and terminal else None
    sheet = FactSheet(
        execution_id=str(doc["_id"]), workflow=doc["workflow"],
        workflow_version=int(doc["workflow_version"]), status=doc["status"],
        version=int(doc["version"]), duration_ms=duration,
        terminal_seq=terminal["seq"] if terminal else None, steps=tuple(steps), facts=(),
        failure=_failure(steps) if doc["status"] == "FAILED" else None,
        cancellation=_cancellation(cancel, steps) if cancel and doc["status"] == "CANCELLED" else None,
        slowest=_slowest(steps), slow_steps=tuple(s.name for s in steps if s.slow),
        operator=tuple(operator),
        running=tuple(s.name for s in steps if s.attempts and s.attempts[-1].outcome == "running"),
        input_json=str(doc.get("input_json") or "null"),
        event_seqs=frozenset(e["seq"] for e in events),
    )
    sheet = replace(sheet, logs=_logs(sheet, doc))
    return replace(sheet, facts=tuple(wording.facts(sheet)))


class _StepBuilder:
    def __init__(self, index: int, spec: Mapping[str, Any], stored: Mapping[str, Any]) -> None:
        self.index = index
        self.name = str(spec["name"])
        self.spec = spec
        self.stored = stored
        self.attempts: list[dict[str, Any]] = []
        self.budget_base = 0

    def claim(self, event: Mapping[str, Any]) -> None:
        at = _ms(event.get("at"))
        if self.attempts and self.attempts[-1].get("ended_ms") is not None and at is not None:
            self.attempts[-1]["waited_ms"] = at - self.attempts[-1]["ended_ms"]
        self.attempts.append({"n": int(event.get("attempt") or len(self.attempts) + 1),
                              "outcome": "running", "claim_seq": event["seq"], "started_ms": at,
                              "worker": event.get("worker")})

    def close(self, event: Mapping[str, Any]) -> None:
        n = int(event.get("attempt") or 0)
        if not self.attempts or self.attempts[-1]["n"] != n or self.attempts[-1]["outcome"] != "running":
            self.attempts.append({"n": n, "outcome": "running"})
        attempt = self.attempts[-1]
        at = _ms(event.get("at"))
        attempt.update(end_seq=event["seq"], ended_ms=at)
        kind = event["type"]
        if kind == "step_succeeded":
            attempt.update(outcome="succeeded", handler_ms=event.get("duration_ms"))
            return
        if kind == "attempt_lost":
            worker = event.get("worker") or attempt.get("worker")
            attempt.update(outcome="lost", error_type="AttemptLost",
                           message=f"the worker {worker!r} stopped before recording an outcome; "
                                   "its lease ran out")
        else:
            error_type = str(event.get("error_type") or "Error")
            attempt.update(outcome="timed_out" if error_type == "StepTimeout" else "failed",
                           error_type=error_type, message=str(event.get("message") or ""),
                           permanent=bool(event.get("permanent")))
        attempt["then"] = event.get("outcome")
        retry_at = _ms(event.get("next_retry_at"))
        if retry_at is not None and at is not None:
            attempt["retry_delay_ms"] = max(retry_at - at, 0)

    def operator(self, event: Mapping[str, Any]) -> None:
        if event["type"] == "retried":
            self.budget_base = max((a["n"] for a in self.attempts), default=0)

    def build(self, baseline: Baseline | None) -> Step:
        attempts = [Attempt(**a) for a in self.attempts]
        first = attempts[0] if attempts else None
        last = attempts[-1] if attempts else None
        elapsed = None
        if first and last and first.started_ms is not None and last.ended_ms is not None:
            elapsed = last.ended_ms - first.started_ms
        retry = self.spec.get("retry") or {}
        return Step(
            index=self.index, name=self.name, handler=str(self.spec.get("handler", "")),
            status=str(self.stored.get("status", "")),
            max_attempts=int(retry.get("max_attempts", 1)),
            timeout_s=float(self.spec.get("timeout_s", 0)),
            attempts=tuple(attempts[-ATTEMPTS_SHOWN:]),
            attempts_omitted=max(len(attempts) - ATTEMPTS_SHOWN, 0), budget_base=self.budget_base,
            elapsed_ms=elapsed, first_seq=first.claim_seq if first else None,
            last_seq=(last.end_seq or last.claim_seq) if last else None,
            baseline=baseline, slow=_is_slow(elapsed, baseline),
        )


def _is_slow(elapsed: int | None, baseline: Baseline | None) -> bool:
    if elapsed is None or baseline is None or baseline.samples < MIN_SAMPLES:
        return False
    return (elapsed > SLOW_FACTOR * baseline.median_ms and elapsed > baseline.p95_ms
            and elapsed - baseline.median_ms >= SLOW_MIN_EXCESS_MS)


def _failure(steps: list[Step]) -> Failure | None:
    step = next((s for s in steps if s.status == "FAILED"), None)
    if step is None or not step.attempts or step.attempts[-1].end_seq is None:
        return None
    last = step.attempts[-1]
    budget = step.budget
    if last.permanent:
        kind = "permanent"
    elif last.outcome == "timed_out":
        kind = "timeout"
    elif last.outcome == "lost":
        kind = "lost"
    else:
        kind = "retries_exhausted"
    assert last.end_seq is not None
    return Failure(
        step=step.name, index=step.index, kind=kind, error_type=last.error_type or "Error",
        message=last.message or "", seq=last.end_seq, attempts_used=len(budget),
        max_attempts=step.max_attempts, outcomes=dict(Counter(a.outcome for a in budget)),
        seqs=tuple(a.end_seq for a in budget if a.end_seq is not None),
        not_run=tuple(s.name for s in steps[step.index + 1:]),
    )


def _cancellation(event: Mapping[str, Any], steps: list[Step]) -> Cancellation:
    seq = event["seq"]
    running, ended_after = [], []
    for step in steps:
        for attempt in step.attempts:
            if attempt.claim_seq is not None and attempt.claim_seq < seq and (
                attempt.end_seq is None or attempt.end_seq > seq
            ):
                running.append(step.name)
                if attempt.end_seq is not None:
                    ended_after.append((step.name, attempt.outcome, attempt.end_seq))
    return Cancellation(
        by=event.get("by"), reason=event.get("reason"), seq=seq, running=tuple(running),
        ended_after=tuple(ended_after),
        not_run=tuple(s.name for s in steps if not s.attempts),
    )


def _slowest(steps: list[Step]) -> str | None:
    timed = [s for s in steps if s.elapsed_ms is not None]
    return max(timed, key=lambda s: s.elapsed_ms or 0).name if timed else None


def _logs(sheet: FactSheet, doc: Mapping[str, Any]) -> tuple[AttemptLog, ...]:
    """Pick the attempts whose logs explain the outcome: the failing budget, the attempt running
    at a cancel, the slow steps' attempts; the newest first, at most ``LOGS_KEPT``."""
    wanted: list[tuple[Step, Attempt]] = []
    for step in sheet.steps:
        if sheet.failure and step.name == sheet.failure.step:
            wanted += [(step, a) for a in step.budget]
        elif step.slow or (sheet.cancellation and step.name in sheet.cancellation.running):
            wanted += [(step, a) for a in step.attempts]
        elif step.status == "SUCCEEDED" and any(a.outcome != "succeeded" for a in step.attempts):
            wanted += [(step, a) for a in step.attempts if a.outcome != "succeeded"]
    records = {
        (i, r.get("n")): r
        for i, stored in enumerate(doc["steps"]) for r in stored.get("attempts") or ()
    }
    logs = []
    for step, attempt in reversed(wanted[-LOGS_KEPT:]):
        record = records.get((step.index, attempt.n)) or {}
        lines = [f"{line.get('level', '')} {line.get('message', '')}".strip()
                 for line in record.get("logs") or ()]
        dropped = int(record.get("logs_dropped") or 0) + max(len(lines) - LOG_LINES_SHOWN, 0)
        traceback = record.get("traceback")
        logs.append(AttemptLog(
            step=step.name, attempt=attempt.n, event_seq=attempt.end_seq, outcome=attempt.outcome,
            error_type=attempt.error_type, message=record.get("message") or attempt.message,
            traceback=traceback[-TRACEBACK_CHARS:] if isinstance(traceback, str) else None,
            lines=tuple(lines[-LOG_LINES_SHOWN:]), dropped=dropped,
        ))
    return tuple(logs)


def _ms(value: Any) -> int | None:
    if isinstance(value, dt.datetime):
        return to_ms(value)
    return value if isinstance(value, int) else None


def _ms_between(start: Mapping[str, Any], end: Mapping[str, Any]) -> int | None:
    a, b = _ms(start.get("at")), _ms(end.get("at"))
    return None if a is None or b is None else b - a
