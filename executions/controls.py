"""Workflow pauses: while a workflow is paused, none of its executions starts a step, a wait or a
compensation; a running attempt finishes. Nothing is scanned when the pause is set: each execution
is held (a fenced ``paused`` event of scope ``workflow``) by the worker that comes to its next step
boundary, and a new one from its start. A resume lifts the holds, one fenced event each, and goes
on from the sweeper if it was cut short (``release`` stays set until every hold is lifted).

Workers read the paused workflows through a cache refreshed every ``REFRESH_S``: another process
holds an execution at most that long after the pause; the process that paused it, at once.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from executions.models import Execution, WorkflowControl
from executions.store import now_ms, to_dt

#: Longest time a worker goes on with a pause it has not seen, in seconds.
REFRESH_S = 1.0
_lock = threading.Lock()
_cache: tuple[float, dict[str, dict[str, Any]]] = (0.0, {})


def collection() -> Collection:
    return WorkflowControl._get_collection()


def paused_workflows(fresh: bool = False) -> dict[str, dict[str, Any]]:
    """Return the paused workflows, ``{name: {"by", "reason", "at"}}`` (cached ``REFRESH_S``)."""
    global _cache
    with _lock:
        read_at, paused = _cache
        if fresh or time.monotonic() - read_at >= REFRESH_S:
            paused = {doc["_id"]: doc["paused"]
                      for doc in collection().find({"paused.at": {"$exists": True}}, {"paused": 1})}
            _cache = (time.monotonic(), paused)
        return paused


def _forget() -> None:
    global _cache
    with _lock:
        _cache = (0.0, {})


def paused(workflow: str) -> dict[str, Any] | None:
    """Return ``workflow``'s pause (``{"by", "reason", "at"}``) read now, or ``None``."""
    doc = collection().find_one({"_id": workflow}, {"paused": 1}) or {}
    return doc.get("paused") or None


def set_paused(workflow: str, by: str, reason: str) -> bool:
    """Pause ``workflow``; ``False`` when it is paused already."""
    try:
        collection().update_one({"_id": workflow, "paused.at": {"$exists": False}},
                                {"$set": {"paused": {"by": by, "reason": reason, "at": to_dt(now_ms())}}},
                                upsert=True)
    except DuplicateKeyError:  # it exists, and is paused: the upsert tried to insert it again
        return False
    finally:
        _forget()
    return True


def set_resumed(workflow: str, by: str, reason: str) -> bool:
    """Lift ``workflow``'s pause and start its release; ``False`` when it is not paused."""
    found = collection().find_one_and_update(
        {"_id": workflow, "paused.at": {"$exists": True}},
        {"$unset": {"paused": ""}, "$set": {"release": {"by": by, "reason": reason, "at": to_dt(now_ms())}}},
    )
    _forget()
    return found is not None


def releasing(workflow: str | None = None) -> list[dict[str, Any]]:
    """Return the resumes whose holds are still being lifted (of ``workflow``, or of any):
    ``{"_id", "release": {"by", "reason", "at"}}`` each, unless paused again meanwhile."""
    query: dict[str, Any] = {"release.at": {"$exists": True}}
    if workflow is not None:
        query["_id"] = workflow
    return [doc for doc in collection().find(query) if not doc.get("paused")]


def released(workflow: str, at: Any) -> None:
    """Mark the resume of ``workflow`` begun at ``at`` done: no hold of it is left."""
    collection().update_one({"_id": workflow, "release.at": at}, {"$unset": {"release": ""}})


def held(workflow: str, limit: int) -> list[str]:
    """Return up to ``limit`` executions of ``workflow`` its pause holds."""
    return [d["_id"] for d in Execution._get_collection().find(
        {"workflow": workflow, "paused.workflow.at": {"$exists": True}}, {"_id": 1}).limit(limit)]
