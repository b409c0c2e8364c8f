"""The chaos workflow's step and its compensation: each records every run in a ledger, commits one
side effect (deduplicated by the idempotency key, as the README tells users to), and injects the
faults its input plans for it. A compensation's runs and side effect are named ``<step>:compensate``
(its key is ``<id>:<step>:compensate``); the step ``input.chaos.fail_at`` names fails for good on
every run, which starts the rolling-back workflow's rollback.

Ledger and effects live in MongoDB (``chaos_ledger``, ``chaos_effects``), so a chaos run can check
workers in other processes too. Only the chaos command (``detflow_site.chaos.run``) and the tests import
this module: production processes never register ``chaos.step`` (add it to ``DETFLOW_HANDLER_MODULES``
for workers of a chaos run in other processes).
"""
from __future__ import annotations

import math
import secrets
import time
from typing import Any

from mongoengine.connection import get_db
from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError, PyMongoError

from executions import faults, store
from workflows.context import StepContext
from workflows.errors import PermanentError, RetryableError
from workflows.registry import step

#: Handler name of every chaos step, and of every compensation of one.
HANDLER = "chaos.step"
UNDO_HANDLER = "chaos.undo"
#: Longest a planned hang or pause holds its thread, in seconds, whatever the input says.
MAX_STALL_S = 600.0
#: Test-only switch: with ``False`` every run commits its side effect, duplicates included.
DEDUPLICATE = {"enabled": True}


def ledger() -> Collection:
    """Return the ledger: one document per handler run (indexed as ``detflow_site.indexes.RAW``
    declares, by ``manage.py ensure_indexes``)."""
    return get_db()["chaos_ledger"]


def effects() -> Collection:
    """Return the committed side effects: ``_id`` is the idempotency key when deduplicating."""
    return get_db()["chaos_effects"]


@step(HANDLER)
def chaos_step(ctx: StepContext) -> dict[str, Any]:
    """Record the run, fail or hang as planned, commit the effect once, pause as planned."""
    return _run(ctx, undo=False)


@step(UNDO_HANDLER)
def chaos_undo(ctx: StepContext) -> dict[str, Any]:
    """Undo a chaos step as :func:`chaos_step` does it: the faults planned for its compensation."""
    return _run(ctx, undo=True)


def _run(ctx: StepContext, undo: bool) -> dict[str, Any]:
    plan = ctx.input.get("chaos", {})
    index = int(ctx.step.rsplit("-", 1)[-1]) - 1
    name = f"{ctx.step}:compensate" if undo else ctx.step
    mine = {f["kind"]: f for f in plan.get("faults", [])
            if f.get("step") == index and bool(f.get("undo")) == undo}
    ledger().insert_one({"run": plan.get("run"), "execution_id": ctx.execution_id,
                         "step": name, "attempt": ctx.attempt, "fence": ctx.fencing_token,
                         "at": store.now_ms()})
    # Runs of this step so far, this one included: a counter by _id (one lookup, not a scan).
    earlier = get_db()["chaos_runs"].find_one_and_update(
        {"_id": ctx.idempotency_key}, {"$inc": {"runs": 1}}, upsert=True,
        return_document=ReturnDocument.AFTER,
    )["runs"]
    if "retryable" in mine and earlier <= mine["retryable"].get("count", 1):
        raise RetryableError(f"planned transient failure (run {earlier})")
    if "permanent" in mine:
        raise PermanentError("planned permanent failure")
    if not undo and plan.get("fail_at") == index:
        raise PermanentError("planned failure for good: the rollback's cause")
    if "hang" in mine and earlier == 1:
        _sleep(_seconds(plan, "hang_s", 60))
    # The step's own work, if the run gives it any: half before its effect, half after (a worker
    # killed in either half leaves the effect undone or done, its outcome unrecorded).
    work_s = _seconds(plan, "work_s", 0)
    _sleep(work_s / 2)
    _commit_effect(ctx, plan.get("run"), name)
    _sleep(work_s / 2)
    if "pause" in mine and earlier == 1:
        _pause(ctx, index, undo, _seconds(plan, "pause_s", 120))
    return {"step": name, "attempt": ctx.attempt}


def _seconds(plan: dict[str, Any], key: str, default: float) -> float:
    """Return a planned stall's length, refused unless finite and capped at ``MAX_STALL_S``."""
    try:
        value = float(plan.get(key, default))
    except (TypeError, ValueError):
        raise PermanentError(f"input.chaos.{key} must be a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise PermanentError(f"input.chaos.{key} must be a finite number of seconds, at least 0")
    return min(value, MAX_STALL_S)


def _commit_effect(ctx: StepContext, run: str | None, name: str) -> None:
    key = ctx.idempotency_key if DEDUPLICATE["enabled"] else secrets.token_hex(8)
    try:
        effects().insert_one({"_id": key, "run": run, "execution_id": ctx.execution_id,
                              "step": name, "attempt": ctx.attempt})
    except DuplicateKeyError:
        ctx.log.info("side effect of %s already committed; not repeated", ctx.idempotency_key)


def _pause(ctx: StepContext, index: int, undo: bool, limit_s: float) -> None:
    """Stall like a stopped process until a successor claims the step (its compensation, with
    ``undo``) or ``limit_s`` passes."""
    faults.pause(ctx.execution_id)
    try:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            try:
                doc = store.load_working(ctx.execution_id)
            except PyMongoError:  # a store fault of the run (an election): look again
                time.sleep(0.1)
                continue
            if doc is None or _attempt(doc, index, undo) > ctx.attempt:
                return
            time.sleep(0.1)
    finally:
        faults.resume(ctx.execution_id)


def _attempt(doc: dict[str, Any], index: int, undo: bool) -> int:
    """Return the stored attempt number of step ``index`` or, with ``undo``, of its compensation."""
    if not undo:
        return int(doc["steps"][index].get("attempt", 0))
    undoing = [c for c in doc.get("compensations") or () if c.get("step_index") == index]
    return int(undoing[0].get("attempt", 0)) if undoing else 0


def _sleep(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)
