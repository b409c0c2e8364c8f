"""Bulk operations: one operator action (retry or cancel) applied to every execution a filter matches.

A bulk operation is a document of the ``bulk_operations`` collection. Its set is fixed at creation
(``created_at <= bound``); a runner, holding the operation's lease, takes the matching executions in
batches by ``_id`` after the saved ``cursor`` and applies the same operator service
(``operations.retry`` / ``operations.cancel``) to each, with ``bulk=<op id>``. That service pushes the
op id onto the execution in the same fenced write, so after a crash the resumed runner counts an
execution past its cursor that already holds it (acted on in the batch the dead runner did not
save) without acting on it again: each execution is acted on once, and counted once. Progress is
saved per batch by a write conditioned on the lease, which a long batch renews as it goes; a
cancelled operation stops at its next batch (or renewal), an operation whose lease ran out is sent
again by the sweeper.
"""
from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from dramatiq import Message

from detflow_site import conf
from detflow_site.errors import DetflowError
from executions import operations, store
from executions.errors import InvalidArgument, OperationNotAllowed
from executions.store import now_ms, to_dt

logger = logging.getLogger("detflow.bulk")

#: Name of the actor that runs a bulk operation; its messages carry the operation's id.
RUN = "detflow.bulk"
#: What a bulk operation may do to each execution.
ACTIONS = ("retry", "cancel")
#: Executions read and acted on per batch; progress is saved after each.
BATCH = 200
#: Executions acted on per second at most, so a bulk retry does not flood the workers.
RATE = 2000
#: First ids a dry run shows, and errors an operation keeps.
SAMPLE = 10
#: Statuses: not started, being run, all handled, stopped by an operator.
PENDING, RUNNING, SUCCEEDED, CANCELLED = "PENDING", "RUNNING", "SUCCEEDED", "CANCELLED"
OPEN = (PENDING, RUNNING)


def lease_ms() -> int:
    """Return how long a runner's lease lasts without a batch saved (``DETFLOW_BULK_LEASE_S``);
    past it, the sweeper sends the op again."""
    return round(conf.get().BULK_LEASE_S * 1000)


def collection() -> Any:
    """Return the bulk_operations collection (beside the executions)."""
    return store.collection().database["bulk_operations"]


def _matching(query: dict[str, Any], bound: Any) -> dict[str, Any]:
    return {"$and": [query, {"created_at": {"$lte": bound}}]}


def _check(action: str) -> None:
    if action not in ACTIONS:
        raise InvalidArgument("action", f"{action!r} is not one of: {', '.join(ACTIONS)}")


def plan(action: str, query: dict[str, Any]) -> dict[str, Any]:
    """Dry run: return the exact count and the first ids of the executions ``query`` matches now."""
    _check(action)
    found = _matching(query, to_dt(now_ms()))
    ids = [d["_id"] for d in store.collection().find(found, {"_id": 1}).sort("_id", 1).limit(SAMPLE)]
    return {"count": store.collection().count_documents(found), "sample": ids}


def store_op(action: str, query: dict[str, Any], reason: str, by: str) -> dict[str, Any]:
    """Store a new PENDING bulk operation over what ``query`` matches now; return it."""
    _check(action)
    operations.check_reason(by, reason)
    now = to_dt(now_ms())
    doc: dict[str, Any] = {
        "_id": "bulk_" + secrets.token_hex(8), "action": action, "filter": query, "bound": now,
        "reason": reason, "by": by, "status": PENDING,
        "total": store.collection().count_documents(_matching(query, now)),
        "done": 0, "acted": 0, "skipped": 0, "failed": 0, "errors": [], "cursor": None,
        "created_at": now, "updated_at": now, "lease_owner": None,
        # Held by nobody, yet due: a send that is lost is sent again once this has passed.
        "lease_expires_at": to_dt(now_ms() + lease_ms()),
    }
    collection().insert_one(doc)
    return doc


def create(action: str, query: dict[str, Any], reason: str, by: str) -> dict[str, Any]:
    """Store a bulk operation and send it to a worker; return it."""
    doc = store_op(action, query, reason, by)
    send(doc["_id"])
    return doc


def send(op_id: str) -> bool:
    """Ask a worker to run bulk operation ``op_id``; ``False`` if the send failed (the sweeper
    sends it again once its lease is past)."""
    from executions.broker import broker

    message: Message[None] = Message(queue_name=conf.get().QUEUE, actor_name=RUN,
                                     args=(op_id,), kwargs={}, options={})
    try:
        broker.enqueue(message)
    except Exception as exc:  # any broker failure
        logger.warning("send of bulk operation %s failed (%s); the sweeper will re-send", op_id, exc)
        return False
    return True


def get(op_id: str) -> dict[str, Any] | None:
    """Return a bulk operation as stored."""
    return collection().find_one({"_id": op_id})


def cancel(op_id: str) -> dict[str, Any] | None:
    """Stop a bulk operation at its next batch; return it (``None``: no such operation)."""
    collection().update_one({"_id": op_id, "status": {"$in": list(OPEN)}},
                            {"$set": {"status": CANCELLED, "updated_at": to_dt(now_ms())}})
    return get(op_id)


def claim(op_id: str, owner: str, now: int | None = None) -> dict[str, Any] | None:
    """Take the lease of an open operation that nobody holds (or whose lease ran out)."""
    now = now_ms() if now is None else now
    return collection().find_one_and_update(
        {"_id": op_id, "status": {"$in": list(OPEN)},
         "$or": [{"lease_owner": None}, {"lease_owner": owner}, {"lease_expires_at": {"$lt": to_dt(now)}}]},
        {"$set": {"status": RUNNING, "lease_owner": owner, "lease_expires_at": to_dt(now + lease_ms()),
                  "updated_at": to_dt(now)}},
        return_document=True)


def run_batch(op: dict[str, Any], owner: str) -> dict[str, Any] | None:
    """Act on the next batch of ``op`` and save its progress; return the op as saved, ``None`` when
    the runner must stop (the lease is someone else's, or the op was cancelled)."""
    # Checked before acting: a cancel or a lost lease stops the run before its next batch.
    op = collection().find_one_and_update(
        {"_id": op["_id"], "status": RUNNING, "lease_owner": owner},
        {"$set": {"lease_expires_at": to_dt(now_ms() + lease_ms())}}, return_document=True)
    if op is None:
        return None
    # Past the cursor, an execution that already names this op was acted on by a runner that died
    # before it saved that batch: it is taken too (it may match the filter no more), to be counted.
    found: dict[str, Any] = {"$and": [
        {"created_at": {"$lte": op["bound"]}},
        {"$or": [{"$and": [op["filter"], {"bulk_operations": {"$ne": op["_id"]}}]},
                 {"bulk_operations": op["_id"]}]}]}
    if op["cursor"] is not None:
        found["$and"].append({"_id": {"$gt": op["cursor"]}})
    docs = list(store.collection().find(found, {"_id": 1, "bulk_operations": 1}).sort("_id", 1).limit(BATCH))
    ids = [d["_id"] for d in docs]
    act = operations.retry if op["action"] == "retry" else operations.cancel
    counts = {"acted": 0, "skipped": 0, "failed": 0}
    errors: list[dict[str, str]] = []
    lease = lease_ms()
    renewed = time.monotonic()
    for doc in docs:
        # A slow batch (a slow store) keeps its lease: renewed every third of it, and no further
        # execution is acted on once the renewal finds the op cancelled or taken by another runner.
        if time.monotonic() - renewed > lease / 3000:
            if not collection().update_one(
                    {"_id": op["_id"], "status": RUNNING, "lease_owner": owner},
                    {"$set": {"lease_expires_at": to_dt(now_ms() + lease)}}).matched_count:
                return None
            renewed = time.monotonic()
        execution_id = doc["_id"]
        if op["_id"] in (doc.get("bulk_operations") or ()):  # acted on by a dead runner of this op
            counts["acted"] += 1
            continue
        try:
            act(execution_id, op["by"], op["reason"], bulk=op["_id"])
            counts["acted"] += 1
        except OperationNotAllowed:  # no longer qualifies (retried or finished meanwhile)
            counts["skipped"] += 1
        except DetflowError as exc:
            counts["failed"] += 1
            errors.append({"execution": execution_id, "error": f"{type(exc).__name__}: {exc}"[:300]})
    now = now_ms()
    update: dict[str, Any] = {"$set": {"updated_at": to_dt(now),
                                       "lease_expires_at": to_dt(now + lease_ms())},
                              "$inc": {"done": len(ids), **counts}}
    if ids:
        update["$set"]["cursor"] = ids[-1]
    else:
        update["$set"].update(status=SUCCEEDED, lease_owner=None, lease_expires_at=None)
    if errors:
        update["$push"] = {"errors": {"$each": errors, "$slice": SAMPLE}}
    return collection().find_one_and_update(
        {"_id": op["_id"], "status": RUNNING, "lease_owner": owner}, update, return_document=True)


def run(op_id: str, owner: str | None = None) -> dict[str, Any] | None:
    """Run bulk operation ``op_id`` to its end (or until cancelled, or its lease is lost)."""
    owner = owner or secrets.token_hex(8)
    op = claim(op_id, owner)
    started = time.monotonic()
    handled = 0
    while op is not None and op["status"] == RUNNING:
        before = op["done"]
        op = run_batch(op, owner)
        if op is None:
            return get(op_id)
        handled += op["done"] - before
        # Throttle: no faster than RATE executions a second over the whole run.
        ahead = handled / RATE - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    return get(op_id) if op is None else op


def resend_expired(now: int | None = None) -> list[str]:
    """Send again every open operation whose runner's lease ran out (or that never started)."""
    now = now_ms() if now is None else now
    ids = [d["_id"] for d in collection().find(
        {"status": {"$in": list(OPEN)}, "lease_expires_at": {"$lt": to_dt(now)}}, {"_id": 1}).limit(100)]
    for op_id in ids:
        send(op_id)
    return ids
