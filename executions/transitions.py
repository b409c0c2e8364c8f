"""Every write to an execution: one conditional update of one document (DESIGN invariant 4).

:func:`commit` takes the :class:`Snapshot` its caller decided on and the typed events the engine
built from it (``executions.engine``: ``claimed``, ``succeeded``, ``failed``, ...), and writes the
state they lead to, what each event stores in the document, the events and ``version + 1`` in a
single ``update_one`` matched on ``_id`` and the snapshot's ``version``. It decides nothing: what
follows a failure, and whether the execution ends, are in the events it is given. It returns the
new snapshot, or ``None`` when the version moved on: someone else changed the execution first,
and this writer changed nothing.
"""
from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import bson
from pymongo.errors import DuplicateKeyError, PyMongoError

from executions import engine, store
from executions.engine import (
    TERMINAL,
    ExecutionState,
    ExecutionStatus,
    Folded,
    StepStatus,
    decide,
    replay,
)
from executions.events import (
    AttemptFailed,
    AttemptLost,
    Cancelled,
    CompensationFailed,
    CompensationRetried,
    CompensationSkipped,
    DeadlinePassed,
    Event,
    ExecutionCompensated,
    ExecutionFailed,
    ExecutionSucceeded,
    Paused,
    Retried,
    RollbackStarted,
    SignalConsumed,
    SignalReceived,
    Skipped,
    StepClaimed,
    StepSucceeded,
    WaitEnded,
    WaitStarted,
)
from executions.store import Snapshot, to_dt

logger = logging.getLogger("detflow.store")

#: Event fields that hold times: milliseconds for the engine, BSON dates when stored.
TIME_FIELDS = ("lease_expires_at", "next_retry_at", "wake_at")


def new_id() -> str:
    """Return a new execution id (128 random bits, hex)."""
    return secrets.token_hex(16)


def create(
    definition: Mapping[str, Any], input_json: str, idempotency_key: str | None, now: int,
    events: Sequence[Event], by: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Insert a new execution with its first ``events``; return ``(document, created)``.

    With an ``idempotency_key`` already used for this workflow, nothing is inserted and the first
    execution is returned with ``created=False``.
    """
    execution_id = new_id()
    at = to_dt(now)
    doc: dict[str, Any] = {
        "_id": execution_id,
        "workflow": definition["name"],
        "workflow_version": definition["version"],
        "definition": dict(definition),
        "input_json": input_json,
        "created_by": by,
        "status": ExecutionStatus.PENDING.value,
        "version": 1,
        "event_seq": len(events),
        "created_at": at,
        "updated_at": at,
        "due_at": at,
        "steps": [
            {"name": s["name"], "handler": s["handler"], "status": StepStatus.PENDING.value,
             "attempt": 0, "budget_base": 0, "attempts": []}
            for s in definition["steps"]
        ],
        "events": [{"seq": k + 1, "at": at, **_stored(event)} for k, event in enumerate(events)],
    }
    if idempotency_key is not None:
        doc["idempotency_key"] = idempotency_key
    if definition.get("deadline_s") is not None:
        doc["deadline_at"] = to_dt(now + round(definition["deadline_s"] * 1000))
    held = {e.scope: {"by": e.by, "reason": e.reason, "at": at} for e in events if isinstance(e, Paused)}
    if held:  # started while its workflow is paused: nothing is due until the pause is lifted
        doc["paused"] = held
        del doc["due_at"]
    try:
        store.collection().insert_one(doc)
    except DuplicateKeyError:
        existing = store.collection().find_one(
            {"workflow": definition["name"], "idempotency_key": idempotency_key}
        )
        if existing is None:  # the first insert was removed meanwhile; nothing to return
            raise
        return existing, False
    return doc, True


def commit(snap: Snapshot, events: Sequence[Event], now: int) -> Snapshot | None:
    """Apply ``events`` to the snapshot's state and write it all in one conditional update."""
    if isinstance(events, Folded) and events.base is snap.state:
        entries, new_state = events.entries, events.after  # the engine folded them in already
    else:
        entries = [event.fields() for event in events]
        new_state = replay(snap.state, entries)
    decision = decide(new_state, now)
    update_set: dict[str, Any] = {"updated_at": to_dt(now)}
    update_unset: dict[str, str] = {}
    pushes: dict[str, Any] = {}
    if new_state.status is not snap.state.status:
        update_set["status"] = new_state.status.value
    changed = [(f"steps.{i}.", old, new)
               for i, (old, new) in enumerate(zip(snap.state.steps, new_state.steps, strict=True))]
    if snap.state.compensations:
        changed += [(f"compensations.{k}.", old, new) for k, (old, new)
                    in enumerate(zip(snap.state.compensations, new_state.compensations, strict=True))]
    elif new_state.compensations:  # a rollback starts: its compensations are stored whole
        update_set["compensations"] = _compensations(snap, new_state)
    for prefix, old, new in changed:
        if old is new or old == new:  # evolve keeps the steps it does not change
            continue
        # Only what changed: the stored step holds what its state was read from (or written as).
        if new.status is not old.status:
            update_set[prefix + "status"] = new.status.value
        if new.attempt != old.attempt:
            update_set[prefix + "attempt"] = new.attempt
        if new.budget_base != old.budget_base:
            update_set[prefix + "budget_base"] = new.budget_base
        for name in TIME_FIELDS:
            value = getattr(new, name)
            if value == getattr(old, name):
                continue
            if value is None:
                update_unset[prefix + name] = ""
            else:
                update_set[prefix + name] = to_dt(value)
    if new_state.holds != snap.state.holds:
        if new_state.holds:
            for scope in snap.state.holds - new_state.holds:
                update_unset[f"paused.{scope}"] = ""
        else:
            update_unset["paused"] = ""
    for event in events:
        bulk = getattr(event, "bulk", None)
        if bulk is not None:
            pushes["bulk_operations"] = {"$each": [bulk], "$slice": -store.BULK_KEPT}
    due = engine.due(decision, now)
    if due is None:
        update_unset["due_at"] = ""
    else:
        update_set["due_at"] = to_dt(due)
    for event in events:
        _effects(snap, event, new_state, now, update_set, update_unset, pushes)
    stamped = [
        {"seq": snap.event_seq + k + 1, "at": to_dt(now), **_stored_entry(entry)}
        for k, entry in enumerate(entries)
    ]
    pushed: dict[str, Any] = {"$each": stamped}
    moved = snap.doc.get("history_seq", 0)
    held = snap.event_seq - moved + len(stamped)
    added = len(bson.encode({"events": stamped}))
    held_bytes = snap.doc.get("events_bytes", 0) + added
    if held > store.EVENTS_KEPT + store.HISTORY_CHUNK or held_bytes > store.EVENTS_BYTES:
        try:
            chunk = store.patiently(lambda: _archive(snap, moved))  # idempotent: safe to try again
        except PyMongoError as exc:
            if held_bytes > store.EVENTS_BYTES_MAX:
                raise  # the document may not grow on: this write fails as the store failed
            # The history refused the copy: the events stay in the document for this write (it is
            # far from the limit) and the next write tries the move again; the outcome is kept.
            logger.warning("events of %s not moved to the history (%s: %s); the next write tries again",
                           snap.state.id, type(exc).__name__, exc)
            chunk = None
        if chunk is not None:
            # The oldest events are in the history now: this write drops them from the document.
            count, size = chunk
            pushed["$slice"] = -(held - count)
            update_set["history_seq"] = moved + count
            added -= size
    update: dict[str, Any] = {
        "$set": update_set,
        "$inc": {"version": 1, "event_seq": len(events), "events_bytes": added},
        "$push": {"events": pushed, **pushes},
    }
    if update_unset:
        update["$unset"] = update_unset
    query: dict[str, Any] = {"_id": snap.state.id, "version": snap.version}
    if not _fenced_update(snap, query, update, stamped):
        return None
    version, event_seq = snap.version + 1, snap.event_seq + len(events)
    doc = applied(snap.doc, {**update_set, "version": version, "event_seq": event_seq,
                             "events_bytes": snap.doc.get("events_bytes", 0) + added}, update_unset)
    return Snapshot(doc=doc, state=new_state, version=version, event_seq=event_seq,
                    finished=new_state.status in TERMINAL and snap.state.status not in TERMINAL)


def _fenced_update(
    snap: Snapshot, query: dict[str, Any], update: dict[str, Any], stamped: list[dict[str, Any]]
) -> bool:
    """Send the version-matched update; return whether it changed the execution.

    A transient store error (a failover, a lost connection, a timeout) is retried with backoff for
    up to ``store.PATIENCE_S``. Such an error leaves the write ambiguous: it may have been applied.
    Before sending it again the execution is read back: the write was applied when the history holds
    its events at their numbers, and is then neither sent again nor taken for someone else's. A
    write sent again cannot apply twice either way, since it is matched on the version it moves on.
    """
    deadline = time.monotonic() + store.PATIENCE_S
    delay = store.FIRST_BACKOFF_S
    uncertain = False
    while True:
        try:
            if uncertain and _landed(snap, stamped):
                return True
            return store.update_fenced(query, update)
        except PyMongoError as exc:
            if not store.transient(exc) or time.monotonic() + delay > deadline:
                raise
            uncertain = True
            logger.warning("write to execution %s failed (%s: %s); trying again in %.2fs",
                           snap.state.id, type(exc).__name__, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, store.MAX_BACKOFF_S)


def _landed(snap: Snapshot, stamped: list[dict[str, Any]]) -> bool:
    """Tell whether a write from ``snap`` whose answer was lost was applied: its first event is
    stored under its number (in the document, or moved to the history since)."""
    first = stamped[0]
    doc = store.collection().find_one(
        {"_id": snap.state.id},
        {"version": 1, "history_seq": 1, "events": {"$elemMatch": {"seq": first["seq"]}}},
    )
    if doc is None or doc["version"] <= snap.version:
        return False
    found = doc.get("events") or []
    if not found and doc.get("history_seq", 0) >= first["seq"]:
        found = [e for e in store.events_after(snap.state.id, first["seq"] - 1, 1) or []
                 if e["seq"] == first["seq"]]
    return found[:1] == [first]


def _archive(snap: Snapshot, moved: int) -> tuple[int, int] | None:
    """Copy the oldest events of the execution (``HISTORY_CHUNK`` at most) to the history; return
    how many and their bytes, or ``None`` when there is nothing to move. A chunk is written once,
    the same whoever writes it (stored events never change), so a writer whose fenced update then
    misses leaves nothing wrong behind: the next one finds the chunk there."""
    doc = store.collection().find_one({"_id": snap.state.id},
                                      {"history_seq": 1, "events": {"$slice": store.HISTORY_CHUNK}})
    if doc is None or doc.get("history_seq", 0) != moved:
        return None  # moved on since the snapshot: the fenced update will miss anyway
    events = doc.get("events") or []
    if not events or events[0]["seq"] != moved + 1:
        return None
    # On a duplicate, an earlier writer copied this chunk and then lost its race: the same events.
    with contextlib.suppress(DuplicateKeyError):
        store.history().insert_one({"_id": f"{snap.state.id}:{moved + 1}", "execution_id": snap.state.id,
                                    "first_seq": moved + 1, "last_seq": events[-1]["seq"],
                                    "events": events})
    return len(events), len(bson.encode({"events": events}))


def applied(doc: dict[str, Any], sets: Mapping[str, Any], unsets: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``doc`` with a ``$set`` and an ``$unset`` of dotted paths applied.

    Only the containers on a changed path are copied (the top level, the ``steps`` list, the one
    step changed), so the cost is the number of steps, not the document's size; ``doc`` is not
    changed. Paths name list elements by index, as every write here does (no positional ``$``).
    """
    new = dict(doc)
    copied: dict[str, Any] = {}  # the containers copied so far, by their path
    changes = [(path, value, False) for path, value in sets.items()]
    changes += [(path, None, True) for path in unsets]
    for path, value, unset in changes:
        target: Any = new
        name = path
        if "." in path:
            *parents, name = path.split(".")
            prefix = ""
            for part in parents:
                prefix = f"{prefix}.{part}" if prefix else part
                child = copied.get(prefix)
                if child is None:
                    key: Any = int(part) if isinstance(target, list) else part
                    child = target[key]
                    child = list(child) if isinstance(child, list) else dict(child)
                    target[key] = child
                    copied[prefix] = child
                target = child
        if unset:
            target.pop(name, None)
        else:
            target[name] = value
    return new


def renew_lease(execution_id: str, path: str, fence: int, now: int, lease_ms: int) -> bool:
    """Extend a running attempt's lease; ``False`` when the attempt is no longer the current claim.

    ``path`` is the step's (or compensation's) place in the document: ``steps.3``, as
    ``store.slot_path`` says. Not a state change (no status moves, no event): it is matched on the
    claim's fencing token instead of the version, so that a heartbeat never makes an outcome write
    stale.
    """
    prefix = f"{path}."
    result = store.collection().update_one(
        {"_id": execution_id, prefix + "status": StepStatus.RUNNING.value,
         prefix + "current.fence": fence},
        {"$set": {prefix + "lease_expires_at": to_dt(now + lease_ms),
                  prefix + "heartbeat_at": to_dt(now), "due_at": to_dt(now + lease_ms)}},
    )
    return result.matched_count == 1


def _compensations(snap: Snapshot, state: ExecutionState) -> list[dict[str, Any]]:
    specs = snap.doc["definition"]["steps"]
    return [{"step_index": undo.undoes, "name": undo.name,
             "handler": specs[undo.undoes]["compensate"]["handler"],  # type: ignore[index]
             "status": undo.status.value, "attempt": 0, "budget_base": 0, "attempts": []}
            for undo in state.compensations]


def _slot(snap: Snapshot, event: Event) -> int:
    """Return the slot index (``ExecutionState.slot``) ``event`` is about."""
    k = getattr(event, "compensation_index", None)
    return event.step_index if k is None else len(snap.state.steps) + k  # type: ignore[attr-defined]


def _prefix(event: Event) -> str:
    """Return the document path (with its dot) of the step or compensation ``event`` is about."""
    k = getattr(event, "compensation_index", None)
    return f"compensations.{k}." if k is not None else f"steps.{event.step_index}."  # type: ignore[attr-defined]


def _effects(
    snap: Snapshot, event: Event, after: ExecutionState, now: int,
    sets: dict[str, Any], unsets: dict[str, str], pushes: dict[str, Any],
) -> None:
    """Add what ``event`` stores in the document (beyond the state and the history) to the update."""
    at = to_dt(now)
    slots = store.record_slots(snap.state)
    if isinstance(event, StepClaimed):
        prefix = _prefix(event)
        sets[prefix + "current"] = {"n": event.attempt, "worker": event.worker, "fence": event.fence,
                                    "started_at": at}
        sets[prefix + "lease_owner"] = event.worker
        if event.attempt == 1:
            sets[prefix + "started_at"] = at
    elif isinstance(event, StepSucceeded):
        _output(sets, _prefix(event), event.output_json, now)
        if "error" in store.slot_doc(snap.doc, _slot(snap, event)):
            unsets[_prefix(event) + "error"] = ""  # an earlier attempt's: its attempt record keeps it
        _close_attempt(_prefix(event), slots, dict(event.record), unsets, pushes)
    elif isinstance(event, AttemptFailed):
        sets[_prefix(event) + "error"] = {"type": event.error_type, "message": event.detail}
        _close_attempt(_prefix(event), slots, dict(event.record), unsets, pushes)
    elif isinstance(event, AttemptLost):
        stored = store.slot_doc(snap.doc, _slot(snap, event))
        current = stored.get("current") or {}
        message = f"lease of worker {current.get('worker')!r} expired before an outcome was recorded"
        record = {**current, "ended_at": at, "outcome": "lost", "error_type": "AttemptLost",
                  "message": message}
        sets[_prefix(event) + "error"] = {"type": "AttemptLost", "message": message}
        _close_attempt(_prefix(event), slots, record, unsets, pushes)
    elif isinstance(event, ExecutionSucceeded | Cancelled | ExecutionCompensated):
        sets["finished_at"] = at
    elif isinstance(event, ExecutionFailed):
        sets["finished_at"] = at
        sets["failed_step"] = next(s.name for s in after.steps if s.status is StepStatus.FAILED)
    elif isinstance(event, CompensationFailed):
        sets["finished_at"] = at
        sets["failed_compensation"] = next(c.name for c in after.compensations
                                           if c.status is StepStatus.FAILED)
    elif isinstance(event, RollbackStarted):
        sets["rollback"] = {"by": event.by, "reason": event.reason, "started_at": at,
                            "cause": {"step": event.cause_step, "error_type": event.cause_type,
                                      "message": event.cause_message}}
        if event.cause_step is not None:
            sets["failed_step"] = event.cause_step  # the step whose failure is being undone
        unsets["finished_at"] = ""
    elif isinstance(event, WaitStarted):
        sets[f"steps.{event.step_index}.started_at"] = at
    elif isinstance(event, DeadlinePassed):
        sets[f"steps.{event.step_index}.error"] = {"type": "DeadlineExceeded",
                                                   "message": engine.deadline_message(event.deadline_at)}
        sets["deadline_spent"] = True
        sets["deadline_failed"] = event.step_index
    elif isinstance(event, Paused):
        if event.scope in after.holds:  # whole: the document may hold no pause yet
            sets["paused"] = {**(snap.doc.get("paused") or {}),
                              event.scope: {"by": event.by, "reason": event.reason, "at": at}}
    elif isinstance(event, SignalReceived):
        pushes["signals"] = {"$each": [{"name": event.name, "key": event.key, "by": event.by,
                                        "reason": event.reason, "at": at, "payload_json": event.payload_json,
                                        "payload_bytes": len(event.payload_json.encode())}]}
    elif isinstance(event, SignalConsumed):
        _output(sets, f"steps.{event.step_index}.", event.output_json, now)
        unsets[f"steps.{event.step_index}.error"] = ""
        sets[f"signals.{event.signal_index}.consumed_by"] = event.step
    elif isinstance(event, WaitEnded):
        if event.ends == "failed":
            sets[f"steps.{event.step_index}.error"] = {
                "type": "WaitTimedOut" if event.outcome == "timed_out" else "SleepUntilInvalid",
                "message": event.message}
        else:
            _output(sets, f"steps.{event.step_index}.", event.output_json, now)
            unsets[f"steps.{event.step_index}.error"] = ""
    elif isinstance(event, CompensationRetried | CompensationSkipped):
        unsets["failed_compensation"] = unsets["finished_at"] = ""
    elif isinstance(event, Retried | Skipped):
        if isinstance(event, Retried) and event.input_json is not None:
            sets[f"steps.{event.step_index}.input_json"] = event.input_json
        if isinstance(event, Skipped):
            _output(sets, f"steps.{event.step_index}.", event.output_json, now)
        unsets["failed_step"] = unsets["finished_at"] = ""
        if snap.doc.get("deadline_failed") is not None:
            unsets["deadline_failed"] = ""


def _output(sets: dict[str, Any], prefix: str, output_json: str, now: int) -> None:
    sets[prefix + "output_json"] = output_json
    sets[prefix + "output_bytes"] = len(output_json.encode())
    sets[prefix + "finished_at"] = to_dt(now)


def _close_attempt(
    prefix: str, slots: int, record: dict[str, Any], unsets: dict[str, str], pushes: dict[str, Any]
) -> None:
    unsets[prefix + "current"] = ""
    pushes[prefix + "attempts"] = {"$each": [record], "$slice": -store.records_kept(slots)}


def _stored(event: Event) -> dict[str, Any]:
    return _stored_entry(event.fields())


def _stored_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """Return a history entry as stored: its times as BSON dates."""
    return {k: (to_dt(v) if k in TIME_FIELDS else v) for k, v in entry.items()}
