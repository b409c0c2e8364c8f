"""The fact sheet of a finished execution: what happened, computed from its stored history.

Pure: a stored execution document and its steps' baselines in, a :class:`FactSheet` out; no query,
no clock, no guess. Every :class:`Fact` names the event sequence numbers it rests on, so that a
post-mortem can cite them and a reader can check them in the history.
"""
from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

#: A step is slow when it took more than ``SLOW_FACTOR`` times its baseline median, more than its
#: baseline p95 and at least ``SLOW_MIN_EXCESS_MS`` more than the median, over ``MIN_SAMPLES`` runs.
SLOW_FACTOR = 3.0
SLOW_MIN_EXCESS_MS = 500
MIN_SAMPLES = 5
#: Attempts described per step (the newest), and log lines and traceback characters per attempt.
ATTEMPTS_SHOWN = 20
LOG_LINES_SHOWN = 30
TRACEBACK_CHARS = 2000
#: Attempts whose logs a sheet carries for the writers, at most.
LOGS_KEPT = 6

_EPOCH = dt.datetime(1970, 1, 1)


@dataclass(frozen=True)
class Baseline:
    """How long a step took in recent successful executions of the same workflow version."""

    median_ms: int
    p95_ms: int
    samples: int


@dataclass(frozen=True)
class Attempt:
    """One attempt of a step, as its events tell it."""

    n: int
    #: succeeded, failed, timed_out, lost, or running (no outcome recorded yet).
    outcome: str
    claim_seq: int | None = None
    end_seq: int | None = None
    started_ms: int | None = None
    ended_ms: int | None = None
    worker: str | None = None
    error_type: str | None = None
    message: str | None = None
    permanent: bool = False
    #: What the engine decided after a failure: retry, failed or cancelled.
    then: str | None = None
    retry_delay_ms: int | None = None
    #: From this attempt's end to the next attempt's claim.
    waited_ms: int | None = None
    handler_ms: int | None = None

    @property
    def seqs(self) -> tuple[int, ...]:
        return tuple(s for s in (self.claim_seq, self.end_seq) if s is not None)


@dataclass(frozen=True)
class OperatorAction:
    """A retry or a skip an operator recorded."""

    action: str
    step: str
    by: str | None
    reason: str | None
    seq: int


@dataclass(frozen=True)
class Step:
    """One step: its attempts, how long it took, and its baseline."""

    index: int
    name: str
    handler: str
    status: str
    max_attempts: int
    timeout_s: float
    attempts: tuple[Attempt, ...] = ()
    #: Attempts not described (older than the newest ``ATTEMPTS_SHOWN``).
    attempts_omitted: int = 0
    #: Attempt numbers of the current budget start after this one (an operator's retry opens one).
    budget_base: int = 0
    #: From the first claim to the step's final outcome.
    elapsed_ms: int | None = None
    first_seq: int | None = None
    last_seq: int | None = None
    baseline: Baseline | None = None
    slow: bool = False

    @property
    def budget(self) -> tuple[Attempt, ...]:
        return tuple(a for a in self.attempts if a.n > self.budget_base)

    @property
    def seqs(self) -> tuple[int, ...]:
        return tuple(s for s in (self.first_seq, self.last_seq) if s is not None)


@dataclass(frozen=True)
class Failure:
    """The step that failed the execution, and why it was not tried again."""

    step: str
    index: int
    #: permanent, retries_exhausted, timeout (the last attempt timed out) or lost (its worker stopped).
    kind: str
    error_type: str
    message: str
    #: The event that failed the step for good.
    seq: int
    attempts_used: int
    max_attempts: int
    #: Outcomes of the attempts of the last budget: ``{"failed": 2, "lost": 1}``.
    outcomes: Mapping[str, int]
    seqs: tuple[int, ...]
    not_run: tuple[str, ...]


@dataclass(frozen=True)
class Cancellation:
    """Who cancelled, why, and what was running then."""

    by: str | None
    reason: str | None
    seq: int
    running: tuple[str, ...]
    #: ``(step, outcome, seq)`` of attempts that ended after the cancel.
    ended_after: tuple[tuple[str, str, int], ...]
    not_run: tuple[str, ...]


@dataclass(frozen=True)
class AttemptLog:
    """What an attempt left behind: its error, the tail of its traceback and its last log lines."""

    step: str
    attempt: int
    event_seq: int | None
    outcome: str
    error_type: str | None
    message: str | None
    traceback: str | None
    lines: tuple[str, ...]
    dropped: int


@dataclass(frozen=True)
class Fact:
    """One computed fact, in a sentence, with the events it rests on."""

    kind: str
    text: str
    seqs: tuple[int, ...]
    step: str | None = None


@dataclass(frozen=True)
class FactSheet:
    """Everything the writers may say about an execution."""

    execution_id: str
    workflow: str
    workflow_version: int
    status: str
    #: The execution's ``version`` the sheet was computed from.
    version: int
    duration_ms: int | None
    terminal_seq: int | None
    steps: tuple[Step, ...]
    facts: tuple[Fact, ...]
    failure: Failure | None = None
    cancellation: Cancellation | None = None
    slowest: str | None = None
    slow_steps: tuple[str, ...] = ()
    operator: tuple[OperatorAction, ...] = ()
    #: Steps with an attempt that had no outcome yet when the sheet was computed.
    running: tuple[str, ...] = ()
    logs: tuple[AttemptLog, ...] = ()
    input_json: str = "null"
    #: Sequence numbers of every stored event: what evidence may cite.
    event_seqs: frozenset[int] = field(default_factory=frozenset)

    @property
    def notable(self) -> bool:
        """Whether the execution needs a post-mortem without being asked: it did not succeed, or a
        step was slow."""
        return self.status != "SUCCEEDED" or bool(self.slow_steps)

    def as_dict(self) -> dict[str, Any]:
        """Return the sheet as JSON-ready data (without the logs, which stay in the execution)."""
        data = asdict(replace(self, logs=(), event_seqs=frozenset()))
        for name in ("logs", "event_seqs", "input_json"):
            data.pop(name)
        return json.loads(json.dumps(data))


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
    return replace(sheet, facts=tuple(_facts(sheet)))


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


def _facts(sheet: FactSheet) -> list[Fact]:
    facts = [_outcome(sheet)]
    if sheet.failure:
        facts.append(_failure_fact(sheet.failure, sheet.steps[sheet.failure.index]))
    if sheet.cancellation:
        facts.append(_cancel_fact(sheet.cancellation))
    for step in sheet.steps:
        if len(step.attempts) > 1 or any(a.outcome not in ("succeeded", "running") for a in step.attempts):
            facts.append(Fact("retry_pattern", f"step {step.name!r}: {retry_pattern(step)}",
                              _seqs(a.end_seq for a in step.attempts), step.name))
    lost = [(s, a) for s in sheet.steps for a in s.attempts if a.outcome == "lost"]
    if lost:
        facts.append(Fact(
            "lost_attempts",
            f"{len(lost)} attempt(s) lost ({', '.join(f'{s.name} #{a.n}' for s, a in lost)}): their "
            "workers stopped before recording an outcome, and each was recorded lost when its "
            "lease ran out",
            _seqs(a.end_seq for _, a in lost)))
    for action in sheet.operator:
        verb = "retried" if action.action == "retry" else "skipped"
        facts.append(Fact("operator_action",
                          f"{action.by or 'an operator'} {verb} step {action.step!r}"
                          + (f" ({action.reason!r})" if action.reason else ""),
                          (action.seq,), action.step))
    for step in sheet.steps:
        if step.elapsed_ms is not None:
            facts.append(Fact("duration", f"step {step.name!r} took {seconds(step.elapsed_ms)}"
                              + _against(step), step.seqs, step.name))
    if sheet.slowest:
        step = next(s for s in sheet.steps if s.name == sheet.slowest)
        share = (f" of {seconds(sheet.duration_ms)} in all" if sheet.duration_ms else "")
        facts.append(Fact("slowest_step", f"the slowest step was {step.name!r}: "
                          f"{seconds(step.elapsed_ms)}{share}", step.seqs, step.name))
    for step in sheet.steps:
        if step.slow and step.baseline and step.elapsed_ms is not None:
            waited = sum(a.waited_ms or 0 for a in step.attempts)
            facts.append(Fact(
                "slow_step",
                f"step {step.name!r} is far above its baseline: {seconds(step.elapsed_ms)} against a "
                f"median of {seconds(step.baseline.median_ms)} "
                f"({step.elapsed_ms / max(step.baseline.median_ms, 1):.1f}x) and a p95 of "
                f"{seconds(step.baseline.p95_ms)}"
                + (f"; {seconds(waited)} of it waiting between attempts" if waited else ""),
                step.seqs, step.name))
    for name in sheet.running:
        step = next(s for s in sheet.steps if s.name == name)
        facts.append(Fact("still_running", f"step {name!r} attempt {step.attempts[-1].n} had no "
                          "outcome yet when these facts were computed",
                          _seqs([step.attempts[-1].claim_seq]), name))
    return facts


def _outcome(sheet: FactSheet) -> Fact:
    took = f" after {seconds(sheet.duration_ms)}" if sheet.duration_ms is not None else ""
    seqs = _seqs([sheet.terminal_seq])
    if sheet.status == "FAILED" and sheet.failure:
        f = sheet.failure
        return Fact("outcome", f"FAILED{took}: step {f.step!r} failed for good on attempt "
                    f"{f.attempts_used} of {f.max_attempts}", seqs, f.step)
    if sheet.status == "CANCELLED" and sheet.cancellation:
        return Fact("outcome", f"CANCELLED{took} by {sheet.cancellation.by or 'an operator'}", seqs)
    attempts = sum(len(s.attempts) + s.attempts_omitted for s in sheet.steps)
    ran = sum(1 for s in sheet.steps if s.attempts)
    return Fact("outcome", f"{sheet.status}{took}: {ran} step(s) ran, {attempts} attempt(s) in all", seqs)


def _failure_fact(f: Failure, step: Step) -> Fact:
    why = {
        "permanent": "the error is permanent (a PermanentError, or a type listed in the step's "
                     "non_retryable), so it was not retried",
        "retries_exhausted": f"every attempt of its budget (max_attempts={f.max_attempts}) failed",
        "timeout": f"the last attempt of its budget (max_attempts={f.max_attempts}) ran past "
                   f"timeout_s={step.timeout_s:g}",
        "lost": f"the last attempt of its budget (max_attempts={f.max_attempts}) was lost: its "
                "worker stopped before recording an outcome",
    }[f.kind]
    rest = f"; steps not run: {', '.join(f.not_run)}" if f.not_run else ""
    return Fact("failing_step", f"step {f.step!r} (handler {step.handler}) failed with {f.error_type}: "
                f"{f.message!r} on attempt {f.attempts_used}; {why}{rest}", (f.seq,), f.step)


def _cancel_fact(c: Cancellation) -> Fact:
    text = f"cancelled by {c.by or 'an operator'}" + (f" ({c.reason!r})" if c.reason else "")
    text += (f" while step(s) {', '.join(c.running)} ran" if c.running
             else " before any step was running")
    for step, outcome, seq in c.ended_after:
        text += f"; {step} ended {outcome} after the cancel (event {seq})"
    if c.not_run:
        text += f"; steps never run: {', '.join(c.not_run)}"
    return Fact("cancelled", text, (c.seq, *(seq for _, _, seq in c.ended_after)))


def retry_pattern(step: Step) -> str:
    """Describe a step's attempts in one line: each outcome, the delays, the time spent waiting."""
    parts = []
    for a in step.attempts:
        what = {"succeeded": "succeeded", "running": "had no outcome yet",
                "lost": "lost (its worker stopped)"}.get(a.outcome)
        if what is None:
            what = f"{a.error_type}: {_clip(a.message or '', 80)!r}"
        if a.then == "retry" and a.retry_delay_ms is not None:
            what += f", retry after {seconds(a.retry_delay_ms)}"
        elif a.then == "failed":
            what += ", failed for good"
        parts.append(f"#{a.n} {what}")
    total = len(step.attempts) + step.attempts_omitted
    waited = sum(a.waited_ms or 0 for a in step.attempts)
    text = f"{total} attempt(s) (max_attempts={step.max_attempts}"
    text += f", a new budget from attempt {step.budget_base + 1})" if step.budget_base else ")"
    if step.attempts_omitted:
        text += f", the first {step.attempts_omitted} not shown"
    text += ": " + "; ".join(parts)
    if waited:
        text += f"; {seconds(waited)} spent waiting between attempts"
    return text


def _against(step: Step) -> str:
    b = step.baseline
    if b is None or b.samples == 0:
        return "; no successful run of this version to compare with"
    text = (f"; baseline of this version: median {seconds(b.median_ms)}, p95 {seconds(b.p95_ms)} "
            f"over {b.samples} successful run(s)")
    if step.elapsed_ms is not None and b.median_ms > 0:
        text += f" ({step.elapsed_ms / b.median_ms:.1f}x the median)"
    if b.samples < MIN_SAMPLES:
        text += f"; too few runs (fewer than {MIN_SAMPLES}) to call it slow"
    return text


def seconds(ms: int | None) -> str:
    """Return a duration in milliseconds as ``'850 ms'``, ``'1.25 s'`` or ``'12.5 s'``."""
    if ms is None:
        return "an unknown time"
    if ms < 1000:
        return f"{ms} ms"
    return f"{ms / 1000:.2f} s" if ms < 10_000 else f"{ms / 1000:.1f} s"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _seqs(values: Any) -> tuple[int, ...]:
    return tuple(v for v in values if isinstance(v, int))


def _ms(value: Any) -> int | None:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return (value - _EPOCH) // dt.timedelta(milliseconds=1)
    return value if isinstance(value, int) else None


def _ms_between(start: Mapping[str, Any], end: Mapping[str, Any]) -> int | None:
    a, b = _ms(start.get("at")), _ms(end.get("at"))
    return None if a is None or b is None else b - a
