"""One attempt of one step: run its handler, classify its failure, cap its output, record it.

The handler's outcome (an output, or the exception it raised, or the timeout) becomes the attempt
record and the outcome write; what follows the failure (a retry, or the step failed) is the
engine's. Texts from the handler are scrubbed of the execution's secrets and cut to their bounds.
"""
from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import bson
from pymongo.errors import PyMongoError

from detflow_site import conf
from executions import engine, metrics, store, transitions
from executions.engine import StepStatus
from executions.locks import ExecutionLock
from executions.slots import StepSlot
from executions.store import Snapshot, now_ms, to_dt
from executions.watchdog import TimeoutInterrupt, Watchdog
from workflows import jsontext, masking, registry
from workflows.context import AttemptLog, Compensation, StepContext
from workflows.errors import (
    ExecutionOutputsTooLarge,
    OutputNotSerializable,
    OutputTooLarge,
    PermanentError,
)
from workflows.text import storable

logger = logging.getLogger("detflow.worker")

#: Longest traceback and error message stored per attempt, in characters (the tail is kept).
TRACEBACK_CHARS = 8000
MESSAGE_CHARS = 2000
#: Outcome writes re-read and retry this often when an operator's change moved the version on.
RECORD_TRIES = 5

#: What :meth:`Attempt.record` may write with an outcome: given the snapshot it writes from, the
#: slot whose outcome it is, the state the outcome leads to and the time, the events to add (the
#: next claim), or ``None``.
Then = Callable[[Snapshot, int, "engine.ExecutionState", int], "list[engine.Event] | None"]
#: What an output's lone surrogate (a file name that is not UTF-8) asks of its handler.
SURROGATE_HINT = ": decode such names with errors='replace' or os.fsencode them first"


@dataclass
class Attempt:
    """One attempt of one step: its context, its watchdog, its outcome."""

    snap: Snapshot
    index: int
    worker: str
    started_ms: int = field(default_factory=now_ms)
    output_json: str | None = None
    error: BaseException | None = None
    timed_out: bool = False
    log: AttemptLog | None = None
    #: The secret input values this attempt's texts (log, error, traceback) are scrubbed of.
    secrets: set[str] = field(default_factory=set)
    #: Renews the lease from the claim until the outcome is recorded (or given up).
    watchdog: Watchdog | None = None

    @property
    def spec(self) -> Mapping[str, Any]:
        """The definition of what runs: the step's, or for a compensation what undoes its step."""
        return store.slot_spec(self.snap.doc, self.index)

    @property
    def fence(self) -> int:
        return self.snap.version

    def context(self, heartbeat: Any) -> StepContext:
        doc = self.snap.doc
        step = self.snap.state.slot(self.index)
        undoing = step.undoes is not None
        stored = doc["steps"][step.undoes if step.undoes is not None else self.index]
        ids = {"execution_id": doc["_id"], "step": step.name, "attempt": step.attempt,
               "worker": self.worker}
        if undoing:
            ids["compensation"] = True
        given = json.loads(stored.get("input_json") or doc["input_json"])
        self.secrets = masking.values(given, masking.paths_of(doc))
        self.log = AttemptLog(conf.get().LOG_LINES_CAP, ids, self.secrets)
        return StepContext(
            execution_id=doc["_id"],
            workflow=doc["workflow"],
            workflow_version=doc["workflow_version"],
            step=step.name,
            attempt=step.attempt,
            idempotency_key=f"{doc['_id']}:{step.name}" + (":compensate" if undoing else ""),
            input=given,
            # A compensation sees every output of the steps before the rollback, its own step's too.
            outputs=Outputs(doc["steps"] if undoing else doc["steps"][: self.index]),
            fencing_token=self.fence,
            log=self.log,
            _heartbeat=heartbeat,
            compensation=_compensation(doc, stored) if undoing else None,
        )

    def run(self, lock: ExecutionLock, lease_ms: int, slot: StepSlot | None = None) -> None:
        """Run the handler under the step's timeout, with the lease renewed while it runs."""
        timeout_s = float(self.spec["timeout_s"])
        watchdog = Watchdog(self.snap.state.id, store.slot_path(self.snap.doc, self.index), self.fence,
                            lock, lease_ms, timeout_s, slot)
        ctx = self.context(watchdog.beat)
        self.watchdog = watchdog
        try:
            handler = registry.get_handler(self.spec["handler"])
            watchdog.start()
            try:
                result = handler(ctx)
            finally:
                watchdog.settle()  # no interrupt from here on; the lease is renewed until recorded
            if time.monotonic() > watchdog.deadline:
                raise TimeoutInterrupt()
            self.output_json = _encode_output(result)
            total = store.data_bytes(self.snap.doc, self.index, output=self.output_json)
            if total > store.DATA_BYTES:
                self.output_json = None
                raise ExecutionOutputsTooLarge(total, store.DATA_BYTES)
        except TimeoutInterrupt:
            self.timed_out = True
        except Exception as exc:  # the handler's failure, whatever it is, is the attempt's outcome
            self.error = exc

    def record(self, then: Then | None = None) -> Snapshot | None:
        """Store the outcome; drop it if a successor claimed the step meanwhile (fencing).

        ``then``, given the snapshot written from, this slot and the state the outcome leads to
        (when it does not end the execution or start a rollback), returns events to write with it
        (the next step's claim), or ``None``."""
        snap = self.snap
        for _ in range(RECORD_TRIES):
            now = now_ms()
            record = self._record(now)
            try:
                if self.output_json is not None:
                    events = engine.succeeded(snap.state, self.index, self.output_json, record, now)
                else:
                    error_type, message, permanent = self._failure()
                    events = engine.failed(snap.state, self.index, error_type, message, permanent,
                                           record, now)
                if then is not None and isinstance(events, engine.Folded):
                    events = self._then(then, snap, events, now)
                result = transitions.commit(snap, events, now)
            except PyMongoError as exc:  # down past every retry: the lease's expiry recovers it
                logger.error("outcome of %s step %d not recorded, the store failed (%s: %s); the "
                             "lease will recover it", snap.state.id, self.index, type(exc).__name__, exc)
                return None
            if result is not None:
                self._count(record)
                return result
            doc = store.load_working(snap.state.id)
            current = store.slot_doc(doc, self.index) if doc is not None else {}
            if (
                doc is None
                or current.get("status") != StepStatus.RUNNING.value
                or (current.get("current") or {}).get("fence") != self.fence
            ):
                logger.warning(
                    "outcome of %s step %d attempt fenced %d dropped: the claim is no longer "
                    "current", snap.state.id, self.index, self.fence,
                )
                return None
            snap = Snapshot.of(doc)
        logger.error("outcome of %s step %d not recorded after %d tries; the lease will recover it",
                     snap.state.id, self.index, RECORD_TRIES)
        return None

    def _then(self, then: Then, snap: Snapshot, events: engine.Folded, now: int) -> engine.Folded:
        """``events`` and what ``then`` adds; ``events`` alone when ``then`` fails (a store read
        that failed over, say): what it would add is never worth the outcome."""
        try:
            more = then(snap, self.index, events.after, now)
        except Exception:
            logger.exception("what follows the outcome of %s step %d is left to a write of its own",
                             snap.state.id, self.index)
            return events
        return engine.joined(events, more) if more else events

    def _count(self, record: dict[str, Any]) -> None:
        workflow, step = self.snap.doc["workflow"], metrics.step_label(self.snap.state, self.index)
        metrics.STEP_ATTEMPTS.labels(workflow, step, record["outcome"]).inc()
        metrics.STEP_DURATION.labels(workflow, step).observe(record["duration_ms"] / 1000)

    def _failure(self) -> tuple[str, str, bool]:
        if self.timed_out:
            return "StepTimeout", f"attempt ran past timeout_s={self.spec['timeout_s']:g}", False
        exc = self.error
        assert exc is not None
        names = _type_names(type(exc))
        non_retryable = set(self.spec.get("non_retryable") or ())
        permanent = isinstance(exc, PermanentError) or bool(non_retryable & names)
        message = storable(masking.scrub(str(exc), self.secrets))
        return _type_name(type(exc)), message[:MESSAGE_CHARS], permanent

    def _record(self, now: int) -> dict[str, Any]:
        step = self.snap.state.slot(self.index)
        record: dict[str, Any] = {
            "n": step.attempt, "worker": self.worker, "fence": self.fence,
            "started_at": to_dt(self.started_ms), "ended_at": to_dt(now),
            "duration_ms": now - self.started_ms,
        }
        if self.output_json is not None:
            record["outcome"] = "succeeded"
        else:
            error_type, message, _ = self._failure()
            record.update(outcome="timed_out" if self.timed_out else "failed",
                          error_type=error_type, message=message)
            if self.error is not None:
                text = masking.scrub("".join(traceback.format_exception(self.error)), self.secrets)
                record["traceback"] = storable(text)[-TRACEBACK_CHARS:]
        if self.log is not None:
            record["logs"] = self.log.lines
            record["logs_dropped"] = self.log.dropped
        state = self.snap.state
        return bounded_record(record, store.record_bytes(store.record_slots(state)))


def _compensation(doc: Mapping[str, Any], stored: Mapping[str, Any]) -> Compensation:
    rollback = doc.get("rollback") or {}
    output = stored.get("output_json")
    return Compensation(step_output=json.loads(output) if output is not None else None,
                        cause=dict(rollback.get("cause") or {}), by=rollback.get("by"),
                        reason=rollback.get("reason", ""))


class Outputs(Mapping[str, Any]):
    """Earlier steps' outputs by name, each parsed from JSON on first access."""

    def __init__(self, steps: list[dict[str, Any]]) -> None:
        self._raw = {s["name"]: s["output_json"] for s in steps if "output_json" in s}
        self._parsed: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._parsed:
            self._parsed[name] = json.loads(self._raw[name])
        return self._parsed[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


def bounded_record(record: dict[str, Any], cap: int) -> dict[str, Any]:
    """Return the attempt record cut to ``cap`` bytes: its oldest log lines dropped (and counted)
    first, then the head of its traceback, then the tail of its message."""
    if len(bson.encode(record)) <= cap:
        return record
    record = dict(record)
    lines = list(record.get("logs") or [])
    while lines and len(bson.encode({**record, "logs": lines})) > cap:
        cut = max(len(lines) // 4, 1)
        record["logs_dropped"] = record.get("logs_dropped", 0) + cut
        lines = lines[cut:]
    record["logs"] = lines
    while record.get("traceback") and len(bson.encode(record)) > cap:
        text = record["traceback"]
        record["traceback"] = "...\n" + text[len(text) // 4 + 4:] if len(text) > 64 else ""
    while len(record.get("message") or "") > 80 and len(bson.encode(record)) > cap:
        record["message"] = record["message"][: len(record["message"]) * 3 // 4] + "..."
    return record


def _encode_output(result: Any) -> str:
    try:
        return jsontext.capped(result, conf.get().OUTPUT_CAP_BYTES)
    except jsontext.JSONTooLarge as exc:
        raise OutputTooLarge(exc.size, exc.cap) from None
    except jsontext.NotJSON as exc:
        hint = SURROGATE_HINT if "lone surrogate" in str(exc) else ""
        raise OutputNotSerializable(f"output {exc}{hint}") from None


def _type_name(kind: type) -> str:
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _type_names(kind: type) -> set[str]:
    names: set[str] = set()
    for base in kind.__mro__:
        names.update((base.__qualname__, f"{base.__module__}.{base.__qualname__}"))
    return names
