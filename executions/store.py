"""Raw access to stored executions: loading documents, and the state the engine sees in them.

Hot paths read plain dicts through pymongo (or mongomock) rather than mongoengine objects: one
``find_one`` per load, no per-field conversion. Times are stored as BSON dates, which keep
milliseconds, and the engine works in integer milliseconds, so a stored time round-trips exactly
(``detflow_site.times``, re-exported here).
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pymongo.collection import Collection
from pymongo.errors import AutoReconnect, ExecutionTimeout, PyMongoError, WriteConcernError

from detflow_site import conf
from detflow_site.times import now_ms as now_ms  # re-exported: the engine reads store.now_ms
from detflow_site.times import to_dt as to_dt
from detflow_site.times import to_ms as to_ms
from executions.engine import ExecutionState, ExecutionStatus, SignalState, StepState, StepStatus
from executions.models import Execution
from workflows.spec import RetryPolicy

T = TypeVar("T")


#: How long a write keeps retrying a store error that may pass: longer than a replica set's
#: election (10-12 s), shorter than the default lease, so that an outcome outlives a failover.
PATIENCE_S = 20.0
#: The first wait between two tries of a write, doubled after each, at most ``MAX_BACKOFF_S``.
FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 2.0


def transient(exc: BaseException) -> bool:
    """Tell whether a store error may pass if the call is tried again: a lost connection, a
    primary stepping down, a timeout, a write concern not met in time, or what the server labels
    retryable. Whether a write that failed so was applied is unknown (an ambiguous write)."""
    if isinstance(exc, AutoReconnect | ExecutionTimeout | WriteConcernError):
        return True
    if isinstance(exc, PyMongoError):
        return bool(getattr(exc, "timeout", False)) or exc.has_error_label("RetryableWriteError")
    return False


def patiently(call: Callable[[], T]) -> T:
    """Return ``call()``, trying it again on a transient store error with backoff for up to
    ``PATIENCE_S`` (for reads: a write has its own loop, which tells an ambiguous write apart)."""
    deadline = time.monotonic() + PATIENCE_S
    delay = FIRST_BACKOFF_S
    while True:
        try:
            return call()
        except PyMongoError as exc:
            if not transient(exc) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)


def collection() -> Collection:
    """Return the executions collection (its indexes: ``manage.py ensure_indexes``)."""
    return Execution._get_collection()


#: Set by ``executions.faults.break_("fence")`` only (the tests of the chaos checker): the fenced
#: write below drops its ``version`` condition, to show that the checker notices what it prevents.
fence_broken = False


def update_fenced(query: dict[str, Any], update: dict[str, Any]) -> bool:
    """Send a version-matched update (``query`` names the ``version`` it moves on); return whether
    it changed the execution."""
    if fence_broken:
        query = {k: v for k, v in query.items() if k != "version"}
    return collection().update_one(query, update).modified_count == 1


#: Events an execution's document holds at most before its oldest ``HISTORY_CHUNK`` move out to
#: the history collection (by the same fenced write that adds the next ones): the working
#: document stays small for any history, and every reader sees the whole of it (:func:`load`).
EVENTS_KEPT = 400
HISTORY_CHUNK = 200
#: Bytes of events (BSON) an execution's document holds at most before its oldest move out.
EVENTS_BYTES = 1024 * 1024
#: ... and at most while the history refuses to take them (each write then tries the move again):
#: past it a write fails as the store failed, rather than let the document grow on.
EVENTS_BYTES_MAX = EVENTS_BYTES * 3 // 2
#: Step outputs and the inputs operators gave steps (a retry's edited input), of one execution
#: together, in bytes of JSON, at most: with the caps below it keeps the document far below 16 MiB.
DATA_BYTES = 8 * 1024 * 1024


def data_bytes(doc: dict[str, Any], index: int, *, output: str | None = None,
               input: str | None = None) -> int:
    """Return the bytes of the step outputs, step inputs and signal payloads a working document
    would hold with the output or input (JSON text) at ``index`` (a step, or past the steps a
    compensation) replaced by the one given."""
    total = sum(s.get("payload_bytes", 0) for s in doc.get("signals") or ())
    for at, step in enumerate([*(doc.get("steps") or []), *(doc.get("compensations") or [])]):
        out_bytes = step.get("output_bytes", 0)
        in_json = step.get("input_json") or ""
        if at == index:
            out_bytes = len(output.encode()) if output is not None else out_bytes
            in_json = input if input is not None else in_json
        total += out_bytes + len(in_json.encode())
    return total


#: Largest attempt record, in bytes of BSON (``attempt.bounded_record`` cuts one to its share).
RECORD_BYTES = 16 * 1024
#: All attempt records an execution keeps together, in bytes at most: each step (and each compensation
#: a step names: ``record_slots``) has an equal share
#: and keeps as many of its newest records as the share holds (``DETFLOW_ATTEMPTS_KEPT`` at most,
#: one at least, cut to the share when it is smaller than ``RECORD_BYTES``).
RECORDS_BUDGET = 2 * 1024 * 1024


def record_slots(state: ExecutionState) -> int:
    """Return how many places of an execution keep attempt records: its steps, and a compensation
    for each step that names one (counted from the start, so that the shares never change)."""
    return len(state.steps) + sum(1 for step in state.steps if step.compensate is not None)


def record_bytes(steps: int) -> int:
    """Return the largest attempt record of an execution of ``steps`` steps, in bytes."""
    return min(RECORD_BYTES, RECORDS_BUDGET // max(steps, 1))


def records_kept(steps: int) -> int:
    """Return how many attempt records each step of an execution of ``steps`` steps keeps."""
    share = RECORDS_BUDGET // (max(steps, 1) * record_bytes(steps))
    return max(1, min(conf.get().ATTEMPTS_KEPT, share))


#: The collection of moved-out events: one document per chunk, ``{_id: "<execution id>:<first
#: seq>", execution_id, first_seq, last_seq, events}``; written once, never changed.
HISTORY = "execution_history"


#: What :func:`history` returns instead of the real collection while the store fault seam is
#: installed (``detflow_site.chaos.storefaults.installed``, which for the executions collection takes
#: the place mongoengine caches it in); ``None``, the real collection, everywhere else.
history_stand_in: Any = None


def history() -> Collection:
    """Return the collection of events moved out of executions' documents."""
    if history_stand_in is not None:
        return history_stand_in  # type: ignore[no-any-return]
    return Execution._get_db()[HISTORY]


#: What a worker, the sweeper and an operator action read: everything but the history and the
#: attempt records, which no decision needs (the event count is ``event_seq``) and which make up
#: most of a long execution's document.
#: Bulk operations an execution's document names (the newest; one that acted on it is never retried
#: on it again, see ``executions.bulk``).
BULK_KEPT = 50
WORKING_FIELDS = {"events": 0, "steps.attempts": 0, "compensations.attempts": 0}


def load(execution_id: str) -> dict[str, Any] | None:
    """Return the stored document of an execution with its whole history, or ``None``."""
    doc = collection().find_one({"_id": execution_id})
    return None if doc is None else with_history(doc)


def with_history(doc: dict[str, Any]) -> dict[str, Any]:
    """Return ``doc`` with the events moved out of it put back in front of those it holds."""
    moved = doc.get("history_seq", 0)
    if not moved:
        return doc
    chunks = history().find({"execution_id": doc["_id"], "first_seq": {"$lte": moved}}).sort("first_seq", 1)
    older = [e for chunk in chunks for e in chunk["events"] if e["seq"] <= moved]
    return {**doc, "events": older + list(doc.get("events") or [])}


def events_after(execution_id: str, after: int, limit: int) -> list[dict[str, Any]] | None:
    """Return up to ``limit`` events with ``seq > after``, oldest first, reading only the chunks of
    history that hold them; ``None`` when the execution does not exist."""
    doc = collection().find_one({"_id": execution_id}, {"events": 1, "history_seq": 1})
    if doc is None:
        return None
    moved = doc.get("history_seq", 0)
    found: list[dict[str, Any]] = []
    if after < moved:
        # Chunks hold HISTORY_CHUNK events at most: those after ``after`` start at most one chunk
        # before it, and ``limit`` events span at most this many chunks (a chunk may be shorter).
        chunks = (history().find({"execution_id": execution_id,
                                  "first_seq": {"$gt": after - HISTORY_CHUNK, "$lte": moved}})
                  .sort("first_seq", 1))
        for chunk in chunks:
            found += [e for e in chunk["events"] if after < e["seq"] <= moved]
            if len(found) >= limit:
                break
    found += [e for e in doc.get("events") or [] if e["seq"] > after]
    return found[:limit]


def load_working(execution_id: str) -> dict[str, Any] | None:
    """Return an execution without its history and attempt records (see ``WORKING_FIELDS``)."""
    return collection().find_one({"_id": execution_id}, WORKING_FIELDS)


def initial_state(execution_id: str, definition: Mapping[str, Any],
                  deadline_at: int | None = None) -> ExecutionState:
    """Return the state of a new execution of the given (pinned) definition (whose deadline, if
    its workflow sets one, passes at ``deadline_at``)."""
    return ExecutionState(
        id=execution_id,
        status=ExecutionStatus.PENDING,
        steps=tuple(StepState(name=s["name"], status=StepStatus.PENDING, policy=_policy(s),
                              compensate=_undo_policy(s), **_waits(s))
                    for s in definition["steps"]),
        on_failure=definition.get("on_failure", "stop"),
        deadline_at=deadline_at, on_deadline=definition.get("on_deadline", "fail"),
    )


#: What ``to_state`` reads of a pinned definition's steps (their retry policies, what undoes each,
#: their kinds), by workflow and version: a definition is the same for every load of its executions,
#: and parsing it again is most of a load's cost. A hit is checked against the stored steps (equal
#: dicts), so a definition stored again under the same name and version is never mistaken.
_STATICS: dict[tuple[Any, Any], tuple[list[Any], tuple[_Static, ...]]] = {}
#: Definitions ``_STATICS`` holds at most (past it, it starts over).
STATICS_KEPT = 256
#: Step states each step of a definition keeps for reuse, at most (past it, it starts over).
STEP_STATES_KEPT = 64
#: A stored status to its enum member (faster than calling the enum).
_STEP_STATUS = {status.value: status for status in StepStatus}


@dataclass(frozen=True)
class _Static:
    """What the definition says of one step, and the states of it that carry no time (a pending or
    finished step: most of them), which any execution of the definition can share (states are
    frozen values), by ``(status, attempt, budget_base)``."""

    policy: RetryPolicy
    compensate: RetryPolicy | None
    waits: dict[str, Any]
    shared: dict[tuple[str, int, int], StepState]


def _statics(doc: Mapping[str, Any]) -> tuple[_Static, ...]:
    """Return what the definition of ``doc`` says of each of its steps (see ``_STATICS``)."""
    specs = doc["definition"]["steps"]
    key = (doc.get("workflow"), doc.get("workflow_version"))
    found = _STATICS.get(key)
    if found is not None and found[0] == specs:
        return found[1]
    statics = tuple(_Static(_policy(spec), _undo_policy(spec), _waits(spec), {}) for spec in specs)
    if len(_STATICS) >= STATICS_KEPT:
        _STATICS.clear()
    _STATICS[key] = (copy.deepcopy(specs), statics)  # a copy: the doc's may be changed after
    return statics


def to_state(doc: dict[str, Any]) -> ExecutionState:
    """Return the engine's view of a stored execution."""
    steps = tuple(_step_state(step, static) for step, static in zip(doc["steps"], _statics(doc), strict=True))
    compensations = tuple(
        _slot_state(undo, steps[undo["step_index"]].compensate or RetryPolicy(), undoes=undo["step_index"])
        for undo in doc.get("compensations") or ()
    )
    signals = tuple(SignalState(sig["name"], sig.get("consumed_by") is not None)
                    for sig in doc.get("signals") or ())
    return ExecutionState(id=doc["_id"], status=ExecutionStatus(doc["status"]), steps=steps,
                          compensations=compensations, signals=signals,
                          on_failure=doc["definition"].get("on_failure", "stop"),
                          holds=frozenset(doc.get("paused") or ()),
                          deadline_at=None if doc.get("deadline_spent") else to_ms(doc.get("deadline_at")),
                          on_deadline=doc["definition"].get("on_deadline", "fail"),
                          deadline_failed=doc.get("deadline_failed"))


def _step_state(stored: Mapping[str, Any], static: _Static) -> StepState:
    if "next_retry_at" in stored or "lease_expires_at" in stored or "wake_at" in stored:
        return _slot_state(stored, static.policy, compensate=static.compensate, **static.waits)
    key = (stored["status"], stored.get("attempt", 0), stored.get("budget_base", 0))
    state = static.shared.get(key)
    if state is None or state.name != stored["name"]:
        state = _slot_state(stored, static.policy, compensate=static.compensate, **static.waits)
        if len(static.shared) >= STEP_STATES_KEPT:
            static.shared.clear()
        static.shared[key] = state
    return state


def _slot_state(stored: Mapping[str, Any], policy: RetryPolicy, **more: Any) -> StepState:
    retry_at, lease, wake = (stored.get("next_retry_at"), stored.get("lease_expires_at"),
                             stored.get("wake_at"))
    return StepState(
        name=stored["name"],
        status=_STEP_STATUS.get(stored["status"]) or StepStatus(stored["status"]),
        policy=policy,
        attempt=stored.get("attempt", 0),
        budget_base=stored.get("budget_base", 0),
        next_retry_at=None if retry_at is None else to_ms(retry_at),
        lease_expires_at=None if lease is None else to_ms(lease),
        wake_at=None if wake is None else to_ms(wake),
        **more,
    )


def _policy(spec: Mapping[str, Any]) -> RetryPolicy:
    """A handler step's retry policy (a sleep or a wait has none: the defaults stand in)."""
    return RetryPolicy(**spec["retry"]) if "retry" in spec else RetryPolicy()


def _waits(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What the engine knows of a sleep or wait step: its kind, and the signal and timeout rule."""
    if "sleep" in spec:
        return {"kind": "sleep"}
    if "wait" in spec:
        return {"kind": "wait", "signal": spec["wait"]["signal"],
                "on_timeout": spec["wait"].get("on_timeout", "fail")}
    return {}


def _undo_policy(spec: Mapping[str, Any]) -> RetryPolicy | None:
    undo = spec.get("compensate")
    return RetryPolicy(**undo["retry"]) if undo else None


def slot_path(doc: Mapping[str, Any], index: int) -> str:
    """Return the document path of the step (or, past the steps, the compensation) at ``index``."""
    n = len(doc["steps"])
    return f"steps.{index}" if index < n else f"compensations.{index - n}"


def slot_doc(doc: Mapping[str, Any], index: int) -> dict[str, Any]:
    """Return the stored step (or compensation) at ``index``."""
    n = len(doc["steps"])
    return doc["steps"][index] if index < n else doc["compensations"][index - n]


def slot_spec(doc: Mapping[str, Any], index: int) -> dict[str, Any]:
    """Return the definition of what runs at ``index``: the step's, or what undoes it."""
    steps = doc["definition"]["steps"]
    if index < len(steps):
        return steps[index]
    return steps[doc["compensations"][index - len(steps)]["step_index"]]["compensate"]


@dataclass(frozen=True)
class Snapshot:
    """A stored execution as one writer last saw it: the state and the version to match on.

    A snapshot returned by a write carries the document as that write left it (its working fields:
    the events and attempt records it pushed are not carried), so the next step can be decided
    and run from it without reading the store again.
    """

    doc: dict[str, Any]
    state: ExecutionState
    version: int
    event_seq: int
    #: Whether the write that produced this snapshot ended the execution (it was not terminal before).
    finished: bool = False

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Snapshot:
        return cls(doc=doc, state=to_state(doc), version=doc["version"], event_seq=doc["event_seq"])
