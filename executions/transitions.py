"""Every write to an execution: one conditional update of one document (DESIGN invariant 4).

Each function takes the :class:`Snapshot` its caller decided on, appends the events that describe
the change, and writes the new state, the events and ``version + 1`` in a single ``update_one``
matched on ``_id`` and the snapshot's ``version``. It returns the new snapshot, or ``None`` when
the version moved on: someone else changed the execution first, and this writer changed nothing.
"""
from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

import bson
from pymongo.errors import DuplicateKeyError, PyMongoError

from executions import faults, store
from executions.engine import (
    TERMINAL,
    CancelStep,
    Claim,
    ExecutionStatus,
    FailStep,
    Failure,
    Finish,
    RecoverLost,
    RetryAt,
    StepStatus,
    decide,
    due_at,
    failure,
    replay,
)
from executions.store import Snapshot, to_dt

logger = logging.getLogger("detflow.store")

#: Event fields that hold times: milliseconds for the engine, BSON dates when stored.
TIME_FIELDS = ("lease_expires_at", "next_retry_at")


def new_id() -> str:
    """Return a new execution id (128 random bits, hex)."""
    return secrets.token_hex(16)


def create(
    definition: Mapping[str, Any], input_json: str, idempotency_key: str | None, now: int,
    by: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Insert a new execution; return ``(document, created)``.

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
        "event_seq": 1,
        "created_at": at,
        "updated_at": at,
        "due_at": at,
        "steps": [
            {"name": s["name"], "handler": s["handler"], "status": StepStatus.PENDING.value,
             "attempt": 0, "budget_base": 0, "attempts": []}
            for s in definition["steps"]
        ],
        "events": [{"seq": 1, "at": at, "type": "created", "by": by,
                    "workflow": definition["name"], "workflow_version": definition["version"]}],
    }
    if idempotency_key is not None:
        doc["idempotency_key"] = idempotency_key
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


def commit(
    snap: Snapshot,
    events: list[dict[str, Any]],
    now: int,
    *,
    sets: Mapping[str, Any] | None = None,
    unsets: tuple[str, ...] = (),
    pushes: Mapping[str, Any] | None = None,
) -> Snapshot | None:
    """Apply ``events`` to the snapshot's state and write it all in one conditional update."""
    new_state = replay(snap.state, events)
    update_set: dict[str, Any] = {"updated_at": to_dt(now)}
    update_unset: dict[str, str] = {name: "" for name in unsets}
    if new_state.status is not snap.state.status:
        update_set["status"] = new_state.status.value
    for index, (old, new) in enumerate(zip(snap.state.steps, new_state.steps, strict=True)):
        if old is new or old == new:  # evolve keeps the steps it does not change
            continue
        prefix = f"steps.{index}."
        update_set[prefix + "status"] = new.status.value
        update_set[prefix + "attempt"] = new.attempt
        update_set[prefix + "budget_base"] = new.budget_base
        for name in TIME_FIELDS:
            value = getattr(new, name)
            if value is None:
                update_unset[prefix + name] = ""
            else:
                update_set[prefix + name] = to_dt(value)
    due = due_at(new_state, now)
    if due is None:
        update_unset["due_at"] = ""
    else:
        update_set["due_at"] = to_dt(due)
    update_set.update(sets or {})
    stamped = [
        {"seq": snap.event_seq + k + 1, "at": to_dt(now), **_stored(event)}
        for k, event in enumerate(events)
    ]
    pushed: dict[str, Any] = {"$each": stamped}
    moved = snap.doc.get("history_seq", 0)
    held = snap.event_seq - moved + len(stamped)
    added = len(bson.encode({"events": stamped}))
    held_bytes = snap.doc.get("events_bytes", 0) + added
    if held > store.EVENTS_KEPT + store.HISTORY_CHUNK or held_bytes > store.EVENTS_BYTES:
        chunk = store.patiently(lambda: _archive(snap, moved))  # idempotent: safe to try again
        if chunk is not None:
            # The oldest events are in the history now: this write drops them from the document.
            count, size = chunk
            pushed["$slice"] = -(held - count)
            update_set["history_seq"] = moved + count
            added -= size
    update: dict[str, Any] = {
        "$set": update_set,
        "$inc": {"version": 1, "event_seq": len(events), "events_bytes": added},
        "$push": {"events": pushed, **(pushes or {})},
    }
    if update_unset:
        update["$unset"] = update_unset
    query: dict[str, Any] = {"_id": snap.state.id, "version": snap.version}
    if faults.broken("fence"):
        del query["version"]
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
            return store.collection().update_one(query, update).modified_count == 1
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
    copied: set[str] = set()
    changes = [(path, value, False) for path, value in sets.items()]
    changes += [(path, None, True) for path in unsets]
    for path, value, unset in changes:
        parts = path.split(".")
        target: Any = new
        for depth, part in enumerate(parts[:-1]):
            key: Any = int(part) if isinstance(target, list) else part
            child = target[key]
            prefix = ".".join(parts[: depth + 1])
            if prefix not in copied:
                child = list(child) if isinstance(child, list) else dict(child)
                target[key] = child
                copied.add(prefix)
            target = child
        if unset:
            target.pop(parts[-1], None)
        else:
            target[parts[-1]] = value
    return new


def claim(snap: Snapshot, decision: Claim, worker: str, now: int, lease_ms: int) -> Snapshot | None:
    """Claim a step for ``worker``: RUNNING, the next attempt, a lease, a fencing token."""
    step = snap.state.steps[decision.step]
    fence = snap.version + 1
    lease = now + lease_ms
    event = {"type": "step_claimed", "step_index": decision.step, "step": step.name,
             "attempt": decision.attempt, "worker": worker, "fence": fence,
             "lease_expires_at": lease}
    prefix = f"steps.{decision.step}."
    sets: dict[str, Any] = {
        prefix + "current": {"n": decision.attempt, "worker": worker, "fence": fence,
                             "started_at": to_dt(now)},
        prefix + "lease_owner": worker,
    }
    if step.attempt == 0:
        sets[prefix + "started_at"] = to_dt(now)
    return commit(snap, [event], now, sets=sets)


def renew_lease(execution_id: str, index: int, fence: int, now: int, lease_ms: int) -> bool:
    """Extend a running attempt's lease; ``False`` when the attempt is no longer the current claim.

    Not a state change (no status moves, no event): it is matched on the claim's fencing token
    instead of the version, so that a heartbeat never makes an outcome write stale.
    """
    prefix = f"steps.{index}."
    result = store.collection().update_one(
        {"_id": execution_id, prefix + "status": StepStatus.RUNNING.value,
         prefix + "current.fence": fence},
        {"$set": {prefix + "lease_expires_at": to_dt(now + lease_ms),
                  prefix + "heartbeat_at": to_dt(now), "due_at": to_dt(now + lease_ms)}},
    )
    return result.matched_count == 1


def record_success(
    snap: Snapshot, index: int, output_json: str, attempt_record: dict[str, Any], now: int
) -> Snapshot | None:
    """Record a succeeded attempt and its output; finish the execution after its last step."""
    step = snap.state.steps[index]
    events = [{"type": "step_succeeded", "step_index": index, "step": step.name,
               "attempt": step.attempt, "duration_ms": attempt_record.get("duration_ms")}]
    events += _finish_events(snap, events, now)
    prefix = f"steps.{index}."
    sets = {prefix + "output_json": output_json, prefix + "output_bytes": len(output_json.encode()),
            prefix + "finished_at": to_dt(now)}
    return _close_attempt(snap, index, events, now, sets, attempt_record)


def record_failure(
    snap: Snapshot, index: int, error_type: str, message: str, permanent: bool,
    attempt_record: dict[str, Any], now: int,
) -> Snapshot | None:
    """Record a failed attempt; schedule the retry or fail the step as the policy says."""
    step = snap.state.steps[index]
    then = failure(snap.state, index, permanent=permanent, now=now)
    events = [{"type": "attempt_failed", "step_index": index, "step": step.name,
               "attempt": step.attempt, "error_type": error_type, "message": message[:300],
               "permanent": permanent, **outcome_fields(then)}]
    events += _finish_events(snap, events, now)
    sets = {f"steps.{index}.error": {"type": error_type, "message": message}}
    return _close_attempt(snap, index, events, now, sets, attempt_record)


def record_lost(snap: Snapshot, decision: RecoverLost, now: int) -> Snapshot | None:
    """Record that a running attempt's lease ran out (its worker died or stalled)."""
    index = decision.step
    step = snap.state.steps[index]
    current = snap.doc["steps"][index].get("current") or {}
    events = [{"type": "attempt_lost", "step_index": index, "step": step.name,
               "attempt": step.attempt, "worker": current.get("worker"),
               **outcome_fields(decision.then)}]
    events += _finish_events(snap, events, now)
    message = f"lease of worker {current.get('worker')!r} expired before an outcome was recorded"
    record = {**current, "ended_at": to_dt(now), "outcome": "lost", "error_type": "AttemptLost",
              "message": message}
    sets = {f"steps.{index}.error": {"type": "AttemptLost", "message": message}}
    return _close_attempt(snap, index, events, now, sets, record)


def finish(snap: Snapshot, decision: Finish, now: int) -> Snapshot | None:
    """End an execution whose steps are all settled."""
    return commit(snap, [_finish_event(decision)], now, sets=_finish_sets(snap, decision, now))


def cancel(snap: Snapshot, by: str, reason: str, now: int) -> Snapshot | None:
    """Cancel: no further step starts; a running attempt may still finish."""
    return commit(snap, [{"type": "cancelled", "by": by, "reason": reason}], now,
                  sets={"finished_at": to_dt(now)})


def retry(
    snap: Snapshot, index: int, by: str, reason: str, now: int,
    input_json: str | None = None, input_diff: list[dict[str, Any]] | None = None,
) -> Snapshot | None:
    """Reopen a failed step with a new attempt budget (and, optionally, its own input)."""
    step = snap.state.steps[index]
    event = {"type": "retried", "step_index": index, "step": step.name, "by": by,
             "reason": reason, "input_diff_json": dumps(input_diff or [])}
    sets: dict[str, Any] = {}
    if input_json is not None:
        sets[f"steps.{index}.input_json"] = input_json
    return commit(snap, [event], now, sets=sets, unsets=("failed_step", "finished_at"))


def skip(
    snap: Snapshot, index: int, by: str, reason: str, output_json: str, now: int
) -> Snapshot | None:
    """Mark a failed step skipped with an operator-given output, so the execution goes on."""
    step = snap.state.steps[index]
    event = {"type": "skipped", "step_index": index, "step": step.name, "by": by,
             "reason": reason}
    prefix = f"steps.{index}."
    sets = {prefix + "output_json": output_json, prefix + "output_bytes": len(output_json.encode()),
            prefix + "finished_at": to_dt(now)}
    return commit(snap, [event], now, sets=sets, unsets=("failed_step", "finished_at"))


def _close_attempt(
    snap: Snapshot, index: int, events: list[dict[str, Any]], now: int,
    sets: dict[str, Any], record: dict[str, Any],
) -> Snapshot | None:
    final = next((e for e in events if e["type"].startswith("execution_")), None)
    if final is not None:
        sets.update(_finish_sets(snap, Finish(ExecutionStatus(final["type"][10:].upper())), now,
                                 failed_index=index))
    prefix = f"steps.{index}."
    pushes = {prefix + "attempts": {"$each": [record], "$slice": -store.records_kept(len(snap.state.steps))}}
    return commit(snap, events, now, sets=sets, unsets=(prefix + "current",), pushes=pushes)


def _finish_events(snap: Snapshot, events: list[dict[str, Any]], now: int) -> list[dict[str, Any]]:
    decision = decide(replay(snap.state, events), now)
    return [_finish_event(decision)] if isinstance(decision, Finish) else []


def _finish_event(decision: Finish) -> dict[str, Any]:
    return {"type": f"execution_{decision.status.value.lower()}"}


def _finish_sets(
    snap: Snapshot, decision: Finish, now: int, failed_index: int | None = None
) -> dict[str, Any]:
    sets: dict[str, Any] = {"finished_at": to_dt(now)}
    if decision.status is ExecutionStatus.FAILED:
        if failed_index is None:
            failed_index = next(i for i, s in enumerate(snap.state.steps)
                                if s.status is StepStatus.FAILED)
        sets["failed_step"] = snap.state.steps[failed_index].name
    return sets


def outcome_fields(then: Failure) -> dict[str, Any]:
    if isinstance(then, RetryAt):
        return {"outcome": "retry", "next_retry_at": then.at}
    if isinstance(then, FailStep):
        return {"outcome": "failed"}
    assert isinstance(then, CancelStep)
    return {"outcome": "cancelled"}


def _stored(event: dict[str, Any]) -> dict[str, Any]:
    return {k: (to_dt(v) if k in TIME_FIELDS else v) for k, v in event.items()}


def dumps(value: Any) -> str:
    """Return the canonical JSON text detflow stores for inputs and outputs."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
