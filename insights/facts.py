"""The fact sheet of a finished execution: its data model.

A :class:`FactSheet` is what the writers may say about an execution: its steps and their attempts,
the failure or the cancellation, the rollback (what was undone, what could not be), its sleeps and
waits (how each ended: a signal taken, a timeout and its rule) and the signals it received, and the
facts in sentences. ``insights.fold.compute`` builds one
from a stored execution (pure); ``insights.wording`` says its facts in English. Every :class:`Fact`
names the event sequence numbers it rests on, so that a post-mortem can cite them and a reader can
check them in the history.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

#: A step is slow when it took more than ``SLOW_FACTOR`` times its baseline median, more than its
#: baseline p95 and at least ``SLOW_MIN_EXCESS_MS`` more than the median, over ``MIN_SAMPLES`` runs.
SLOW_FACTOR = 3.0
SLOW_MIN_EXCESS_MS = 500
MIN_SAMPLES = 5


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
    """A retry or a skip an operator recorded (of a step, or of a failed compensation)."""

    #: retry, skip, retry_compensation or skip_compensation.
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
class Wait:
    """A sleep, or a wait for a signal, of a step: from its ``wait_started`` to its end."""

    step: str
    index: int
    #: sleep or wait.
    kind: str
    signal: str | None
    start_seq: int
    started_ms: int | None
    #: When the sleep ends, or the wait times out.
    wake_at_ms: int | None
    #: woke (a sleep ended), signalled (a wait took its signal), timed_out, refused (a sleep's time
    #: could not be read), cancelled, or waiting (no end recorded yet).
    outcome: str
    #: What the end made of the step: succeeded, failed or skipped (``None`` while it waits).
    ends: str | None = None
    #: A wait's rule and timeout, as its definition says.
    on_timeout: str | None = None
    timeout_s: float | None = None
    end_seq: int | None = None
    ended_ms: int | None = None
    message: str | None = None
    #: The signal a wait took: its place, who sent it, why, when, and its ``signal_received``.
    signal_index: int | None = None
    signal_by: str | None = None
    signal_reason: str | None = None
    signal_ms: int | None = None
    signal_seq: int | None = None

    @property
    def waited_ms(self) -> int | None:
        if self.started_ms is None or self.ended_ms is None:
            return None
        return self.ended_ms - self.started_ms

    @property
    def seqs(self) -> tuple[int, ...]:
        return tuple(s for s in (self.start_seq, self.signal_seq, self.end_seq) if s is not None)


@dataclass(frozen=True)
class Signal:
    """A signal the execution received, and the step that took it (``None``: none did)."""

    name: str
    index: int
    by: str | None
    reason: str | None
    seq: int
    at_ms: int | None = None
    taken_by: str | None = None


@dataclass(frozen=True)
class Failure:
    """The step that failed the execution, and why it was not tried again."""

    step: str
    index: int
    #: permanent, retries_exhausted, timeout (the last attempt timed out), lost (its worker stopped),
    #: wait_timed_out (a wait whose on_timeout is fail saw no signal) or sleep_refused (a sleep whose
    #: time could not be read).
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
class Compensation:
    """One compensation of a rollback: what undoes a step, its attempts, and how it ended."""

    #: Its place in the plan (the order compensations run in: newest step first).
    place: int
    #: The step it undoes, by name and index.
    step: str
    step_index: int
    handler: str
    #: As stored: SUCCEEDED, SKIPPED, FAILED, PENDING, ...
    status: str
    #: undone (it SUCCEEDED), skipped (by an operator), failed (for good), not_reached (the rollback
    #: stopped before it), or, while the rollback runs, pending, running or retry_wait.
    outcome: str
    max_attempts: int
    timeout_s: float
    attempts: tuple[Attempt, ...] = ()
    attempts_omitted: int = 0
    budget_base: int = 0
    #: The last error of a failed compensation.
    error_type: str | None = None
    message: str | None = None
    #: Who skipped it, and why (``compensation_skipped``).
    by: str | None = None
    reason: str | None = None
    #: The event that settled it: its success, its skip, or the attempt that failed it for good.
    seq: int | None = None

    @property
    def budget(self) -> tuple[Attempt, ...]:
        return tuple(a for a in self.attempts if a.n > self.budget_base)

    @property
    def seqs(self) -> tuple[int, ...]:
        return tuple(s for s in (self.seq,) if s is not None)


@dataclass(frozen=True)
class Rollback:
    """Why an execution was rolled back, who asked, the plan, and each compensation's end."""

    #: Who asked: an operator, or ``None`` (the workflow's ``on_failure: compensate``).
    by: str | None
    reason: str
    #: The ``rollback_started`` event.
    seq: int | None
    #: What is undone: the step that failed for good (``None`` after a cancel), its error.
    cause_step: str | None
    cause_type: str
    cause_message: str
    #: The steps undone, in the order their compensations run.
    plan: tuple[str, ...]
    compensations: tuple[Compensation, ...]
    #: ``execution_compensated`` or the (last) ``compensation_failed`` event.
    end_seq: int | None = None

    def having(self, *outcomes: str) -> tuple[Compensation, ...]:
        """Return the compensations that ended with one of ``outcomes``, in plan order."""
        return tuple(c for c in self.compensations if c.outcome in outcomes)


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
    rollback: Rollback | None = None
    #: A FAILED or CANCELLED execution not rolled back: the steps an operator's compensate would
    #: undo (they succeeded and name a compensation), newest first.
    undoable: tuple[str, ...] = ()
    slowest: str | None = None
    slow_steps: tuple[str, ...] = ()
    operator: tuple[OperatorAction, ...] = ()
    #: The sleeps and waits, in the order they started, and every signal received, in arrival order.
    waits: tuple[Wait, ...] = ()
    signals: tuple[Signal, ...] = ()
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
