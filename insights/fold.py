"""The fact sheet of a finished execution, computed from its stored history.

Pure: a stored execution document and its steps' baselines in, a :class:`FactSheet` out; no query,
no clock, no guess. The events are folded step by step into attempts (a compensation's events into
its compensation, as its forward counterparts into a step; a sleep's or a wait's into a wait, the
signals into theirs), then the failure, the cancellation, the rollback, the slow steps and the logs
that explain them are picked; ``insights.wording`` puts the facts into sentences.
"""
from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from detflow_site.times import to_ms
from executions.events import COMPENSATION_KINDS
from insights import wording
from insights.facts import (
    MIN_SAMPLES,
    SLOW_FACTOR,
    SLOW_MIN_EXCESS_MS,
    Attempt,
    AttemptLog,
    Baseline,
    Cancellation,
    Compensation,
    FactSheet,
    Failure,
    OperatorAction,
    Rollback,
    Signal,
    Step,
    Wait,
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
    undoers = [_StepBuilder(k, _undo_spec(specs, stored), stored, name=str(stored.get("name", "")))
               for k, stored in enumerate(doc.get("compensations") or ())]
    operator: list[OperatorAction] = []
    skips: dict[int, Mapping[str, Any]] = {}
    cancel: dict[str, Any] | None = None
    terminal: dict[str, Any] | None = None
    started: dict[str, Any] | None = None
    waits = _Waits(specs)
    for event in events:
        kind = event["type"]
        waits.fold(event)
        if kind in COMPENSATION_KINDS:
            _compensation_event(event, undoers, operator, skips)
            continue
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
        elif kind == "rollback_started":
            started = event
        elif kind in ("execution_succeeded", "execution_failed", "execution_compensated",
                      "compensation_failed"):
            terminal = event
    steps = [b.build(baselines.get(b.name)) for b in builders]
    rollback = _rollback(doc, started, terminal, undoers, skips) if started or doc.get("rollback") else None
    status = doc["status"]
    created = events[0] if events and events[0]["type"] == "created" else None
    duration = _ms_between(created, terminal) if created and terminal else None
    failed_cause = rollback is not None and rollback.cause_step is not None
    sheet = FactSheet(
        execution_id=str(doc["_id"]), workflow=doc["workflow"],
        workflow_version=int(doc["workflow_version"]), status=status,
        version=int(doc["version"]), duration_ms=duration,
        terminal_seq=terminal["seq"] if terminal else None, steps=tuple(steps), facts=(),
        failure=_failure(steps, waits.waits) if status == "FAILED" or failed_cause else None,
        cancellation=(_cancellation(cancel, steps) if cancel and (status == "CANCELLED" or rollback)
                      else None),
        rollback=rollback,
        undoable=(_undoable(specs, steps) if status in ("FAILED", "CANCELLED") and rollback is None
                  else ()),
        slowest=_slowest(steps), slow_steps=tuple(s.name for s in steps if s.slow),
        operator=tuple(operator), waits=tuple(waits.waits), signals=tuple(waits.signals()),
        running=tuple(s.name for s in steps if s.attempts and s.attempts[-1].outcome == "running"),
        input_json=str(doc.get("input_json") or "null"),
        event_seqs=frozenset(e["seq"] for e in events),
    )
    sheet = replace(sheet, logs=_logs(sheet, doc))
    return replace(sheet, facts=tuple(wording.facts(sheet)))


def _undo_spec(specs: list[Mapping[str, Any]], stored: Mapping[str, Any]) -> Mapping[str, Any]:
    """Return the definition of a compensation: the ``compensate`` of the step it undoes."""
    index = stored.get("step_index")
    spec = specs[index] if isinstance(index, int) and 0 <= index < len(specs) else {}
    return {"handler": stored.get("handler", ""), **(spec.get("compensate") or {})}


def _compensation_event(event: Mapping[str, Any], undoers: list[_StepBuilder],
                        operator: list[OperatorAction], skips: dict[int, Mapping[str, Any]]) -> None:
    """Fold a compensation's event into it, as its forward counterpart folds into a step."""
    k = event.get("compensation_index")
    if not isinstance(k, int) or not 0 <= k < len(undoers):
        return
    builder, kind = undoers[k], COMPENSATION_KINDS[event["type"]]
    if kind == "step_claimed":
        builder.claim(event)
    elif kind in ("step_succeeded", "attempt_failed", "attempt_lost"):
        builder.close(event, kind)
    else:
        builder.operator(event, kind)
        if kind == "skipped":
            skips[k] = event
        operator.append(OperatorAction(f"{'retry' if kind == 'retried' else 'skip'}_compensation",
                                       builder.name, event.get("by"), event.get("reason"), event["seq"]))


def _rollback(doc: Mapping[str, Any], started: Mapping[str, Any] | None, end: Mapping[str, Any] | None,
              undoers: list[_StepBuilder], skips: Mapping[int, Mapping[str, Any]]) -> Rollback:
    """Return the rollback as the stored document records it (``rollback``, ``compensations``) and
    its history tells it (``rollback_started``, each compensation's events)."""
    stored = doc.get("rollback") or {}
    started = started or {}
    cause = stored.get("cause") or {}
    compensations = []
    for builder in undoers:
        run = builder.build(None)
        last = run.attempts[-1] if run.attempts else None
        status = run.status
        outcome = _UNDO_OUTCOMES.get(status, status.lower())
        if outcome == "not_reached" and run.attempts:  # reopened by an operator's retry
            outcome = "pending"
        skip = skips.get(builder.index) or {}
        error = builder.stored.get("error") or {}
        seq = skip.get("seq") if outcome == "skipped" else last.end_seq if last else None
        compensations.append(Compensation(
            place=builder.index, step=builder.name, step_index=int(builder.stored.get("step_index", -1)),
            handler=run.handler, status=status, outcome=outcome, max_attempts=run.max_attempts,
            timeout_s=run.timeout_s, attempts=run.attempts, attempts_omitted=run.attempts_omitted,
            budget_base=run.budget_base,
            error_type=(last.error_type if last and last.error_type else error.get("type"))
            if outcome == "failed" else None,
            message=(last.message if last and last.message else error.get("message"))
            if outcome == "failed" else None,
            by=skip.get("by"), reason=skip.get("reason"), seq=seq,
        ))
    plan = started.get("steps") or [c.step for c in compensations]
    return Rollback(
        by=stored.get("by", started.get("by")), reason=str(stored.get("reason", started.get("reason")) or ""),
        seq=started.get("seq"),
        cause_step=cause.get("step", started.get("cause_step")),
        cause_type=str(cause.get("error_type", started.get("cause_type")) or ""),
        cause_message=str(cause.get("message", started.get("cause_message")) or ""),
        plan=tuple(str(name) for name in plan), compensations=tuple(compensations),
        end_seq=end["seq"] if end and end["type"] in ("execution_compensated", "compensation_failed")
        else None,
    )


#: A compensation's outcome by its stored status (any other: the status in lower case; a PENDING one
#: with attempts, which an operator's retry reopened, is ``pending``).
_UNDO_OUTCOMES = {"SUCCEEDED": "undone", "SKIPPED": "skipped", "FAILED": "failed",
                  "PENDING": "not_reached"}


def _undoable(specs: list[Mapping[str, Any]], steps: list[Step]) -> tuple[str, ...]:
    return tuple(s.name for s in reversed(steps)
                 if s.status == "SUCCEEDED" and (specs[s.index].get("compensate") or None))


class _StepBuilder:
    def __init__(self, index: int, spec: Mapping[str, Any], stored: Mapping[str, Any],
                 name: str | None = None) -> None:
        self.index = index
        self.name = str(spec["name"]) if name is None else name
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

    def close(self, event: Mapping[str, Any], kind: str | None = None) -> None:
        """Record an attempt's outcome; ``kind`` is the event's forward type (a compensation's)."""
        n = int(event.get("attempt") or 0)
        if not self.attempts or self.attempts[-1]["n"] != n or self.attempts[-1]["outcome"] != "running":
            self.attempts.append({"n": n, "outcome": "running"})
        attempt = self.attempts[-1]
        at = _ms(event.get("at"))
        attempt.update(end_seq=event["seq"], ended_ms=at)
        kind = kind or event["type"]
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

    def operator(self, event: Mapping[str, Any], kind: str | None = None) -> None:
        if (kind or event["type"]) == "retried":
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


class _Waits:
    """Folds the events of sleeps, waits and signals into :class:`Wait` and :class:`Signal`."""

    def __init__(self, specs: list[Mapping[str, Any]]) -> None:
        self.specs = specs
        self.waits: list[Wait] = []
        self.open: dict[int, int] = {}  # step index -> its open wait's place in ``waits``
        self.received: dict[int, Mapping[str, Any]] = {}
        self.taken: dict[int, str] = {}

    def fold(self, event: Mapping[str, Any]) -> None:
        kind, index = event["type"], event.get("step_index")
        if kind == "wait_started" and isinstance(index, int) and 0 <= index < len(self.specs):
            rule = self.specs[index].get("wait") or {}
            self.open[index] = len(self.waits)
            self.waits.append(Wait(
                step=str(event.get("step") or self.specs[index]["name"]), index=index,
                kind=str(event.get("kind")), signal=event.get("signal"), start_seq=event["seq"],
                started_ms=_ms(event.get("at")), wake_at_ms=_ms(event.get("wake_at")), outcome="waiting",
                on_timeout=rule.get("on_timeout", "fail") if rule else None,
                timeout_s=float(rule["timeout_s"]) if "timeout_s" in rule else None))
        elif kind == "signal_received" and isinstance(event.get("signal_index"), int):
            self.received[event["signal_index"]] = event
        elif kind in ("signal_consumed", "wait_ended") and index in self.open:
            place = self.open.pop(index)
            ended: dict[str, Any] = {"end_seq": event["seq"], "ended_ms": _ms(event.get("at"))}
            if kind == "signal_consumed":
                k = event.get("signal_index")
                sent = self.received.get(k) if isinstance(k, int) else None
                if isinstance(k, int):
                    self.taken[k] = self.waits[place].step
                ended.update(outcome="signalled", ends="succeeded", signal_index=k)
                if sent:
                    ended.update(signal_by=sent.get("by"), signal_reason=sent.get("reason") or None,
                                 signal_ms=_ms(sent.get("at")), signal_seq=sent["seq"])
            else:
                ended.update(outcome=str(event.get("outcome")), ends=event.get("ends"),
                             message=event.get("message") or None)
            self.waits[place] = replace(self.waits[place], **ended)
        elif kind == "cancelled":
            for place in self.open.values():
                self.waits[place] = replace(self.waits[place], outcome="cancelled", end_seq=event["seq"],
                                            ended_ms=_ms(event.get("at")))
            self.open.clear()

    def signals(self) -> list[Signal]:
        return [Signal(name=str(e.get("name")), index=k, by=e.get("by"), reason=e.get("reason") or None,
                       seq=e["seq"], at_ms=_ms(e.get("at")), taken_by=self.taken.get(k))
                for k, e in sorted(self.received.items())]


def _failure(steps: list[Step], waits: list[Wait] | None = None) -> Failure | None:
    step = next((s for s in steps if s.status == "FAILED"), None)
    if step is None:
        return None
    wait = next((w for w in reversed(waits or []) if w.index == step.index and w.ends == "failed"), None)
    if wait is not None and wait.end_seq is not None:
        return Failure(
            step=step.name, index=step.index,
            kind="wait_timed_out" if wait.outcome == "timed_out" else "sleep_refused",
            error_type="WaitTimedOut" if wait.outcome == "timed_out" else "SleepUntilInvalid",
            message=wait.message or "", seq=wait.end_seq, attempts_used=0, max_attempts=0, outcomes={},
            seqs=wait.seqs, not_run=tuple(s.name for s in steps[step.index + 1:]),
        )
    if not step.attempts or step.attempts[-1].end_seq is None:
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
    at a cancel, the slow steps' attempts, then a failed compensation's budget and the failed
    attempts of the others; the newest first, at most ``LOGS_KEPT`` (compensations kept first)."""
    wanted: list[tuple[str, Mapping[str, Any], Attempt]] = []
    records = {(i, r.get("n")): r
               for i, stored in enumerate(doc["steps"]) for r in stored.get("attempts") or ()}
    for step in sheet.steps:
        if sheet.failure and step.name == sheet.failure.step:
            chosen = step.budget
        elif step.slow or (sheet.cancellation and step.name in sheet.cancellation.running):
            chosen = step.attempts
        elif step.status == "SUCCEEDED":
            chosen = tuple(a for a in step.attempts if a.outcome != "succeeded")
        else:
            chosen = ()
        wanted += [(step.name, records.get((step.index, a.n)) or {}, a) for a in chosen]
    if sheet.rollback:
        stored_undos = doc.get("compensations") or ()
        for undo in sheet.rollback.compensations:
            kept = stored_undos[undo.place].get("attempts") or () if undo.place < len(stored_undos) else ()
            by_n = {r.get("n"): r for r in kept}
            chosen = (undo.budget if undo.outcome == "failed"
                      else tuple(a for a in undo.attempts if a.outcome != "succeeded"))
            wanted += [(f"{undo.step}:compensate", by_n.get(a.n) or {}, a) for a in chosen]
    logs = []
    for label, record, attempt in reversed(wanted[-LOGS_KEPT:]):
        lines = [f"{line.get('level', '')} {line.get('message', '')}".strip()
                 for line in record.get("logs") or ()]
        dropped = int(record.get("logs_dropped") or 0) + max(len(lines) - LOG_LINES_SHOWN, 0)
        traceback = record.get("traceback")
        logs.append(AttemptLog(
            step=label, attempt=attempt.n, event_seq=attempt.end_seq, outcome=attempt.outcome,
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
