"""The run loop: lock, load, decide, claim, run the attempt, record, release, send.

The attempt itself (the handler, its failure, its output and record) is ``executions.attempt``;
its lease renewals and timeout are ``executions.watchdog``.

A crash between any two of these is recovered (DESIGN: "One step's life"): before the claim by the
next message or sweep, after the claim by the lease running out, after the outcome by the sweeper
seeing due work (or by the lease of the next step's claim, which a run of steps back to back writes
with the outcome: ``claim_next`` in ``_run``). The next message is sent *after* the lock is
released, so that it never finds the lock still held by the worker that sent it.

Each boundary of a step's life is a call to one of the runner's collaborators (the lock, the
engine's ``decide``, the ``Attempt``, ``_hand_on``): the crash tests and chaos watch and break them
there through ``executions.seams``, which wraps those names; the runner itself makes no test call.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from typing import Any

from detflow_site import conf, logs, services
from executions import controls, dispatch, engine, metrics, store, transitions, waits
from executions.attempt import Attempt, Then
from executions.engine import (
    Claim,
    Decision,
    Expire,
    Finish,
    RecoverLost,
    Resume,
    Rollback,
    StartWait,
    Wait,
    WakeUp,
    decide,
)
from executions.followup import follow_up, recover_lost
from executions.locks import ExecutionLock
from executions.middleware import STOPPING
from executions.slots import StepSlot
from executions.state import ExecutionState
from executions.store import Snapshot, now_ms

logger = logging.getLogger("detflow.worker")

#: How long a message whose step has no free concurrency slot waits before it tries again.
SLOT_WAIT_MS = 250


def worker_id() -> str:
    """Return ``host:pid:thread``, the name a claim records."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"


def advance(execution_id: str, worker: str | None = None) -> None:
    """Do what the engine decides for one execution, under its lock."""
    worker = worker or worker_id()
    with logs.bound(execution_id=execution_id, worker=worker, step=None, attempt=None):
        _advance(execution_id, worker)


def _advance(execution_id: str, worker: str) -> None:
    settings = conf.get()
    lease_ms = round(settings.LEASE_S * 1000)
    lock = ExecutionLock(services.redis_client(), execution_id, lease_ms)
    if not lock.acquire():
        # A live holder sees the poke when it releases. A dead one never will: the first to poke
        # comes back when the lock runs out rather than wait for the sweeper (later ones drop out).
        metrics.LOCK_CONTENTION.inc()
        left_ms = lock.holder_ttl_ms() if lock.first_poke else 0
        if left_ms > 0:
            dispatch.send(execution_id, delay_ms=left_ms + 50)
        logger.debug("execution %s is held by another worker; poked it", execution_id)
        return
    try:
        doc = store.patiently(lambda: store.load_working(execution_id))
        if doc is None:
            lock.release()
            logger.warning("execution %s does not exist; message dropped", execution_id)
            return
        end = _run(Snapshot.of(doc), worker, lock, lease_ms)
    except BaseException:
        # A failure (a store that stayed down past every retry) releases the lock: left behind, it
        # would hold the execution's next message off until it expired. (A crash the test seam
        # raises keeps it: the seam's lock releases nothing once its worker is dead.)
        lock.release()
        raise
    poked = lock.release()
    _hand_on(execution_id, end, poked)


@dataclass
class RunEnd:
    """How a run of steps under one message ended."""

    #: The snapshot the run's last write returned (``None``: the run wrote nothing).
    written: Snapshot | None = None
    #: Whether a write of the run ended the execution.
    finished: bool = False
    #: The engine's last decision, and when it was made.
    decision: Decision | None = None
    now: int = 0
    #: The step to run next had no free concurrency slot: try again after this long.
    slot_wait_ms: int = 0


def _hand_on(execution_id: str, end: RunEnd, poked: bool) -> None:
    """Send the message the run's end calls for, after the lock is released."""
    decision = end.decision
    if end.written is not None:
        follow_up(end.written, end.finished)
    elif end.slot_wait_ms:
        logger.debug("execution %s waits for a concurrency slot", execution_id)
        dispatch.send(execution_id, delay_ms=end.slot_wait_ms)
    elif isinstance(decision, Wait) and decision.reason != "lease":
        # Early (a clock ahead of ours, or a duplicate): come back when the retry (or the end of a
        # sleep, or a wait's timeout) is due.
        dispatch.send(execution_id, delay_ms=decision.until - end.now)
    elif poked:
        dispatch.send(execution_id)


def _run(snap: Snapshot | None, worker: str, lock: ExecutionLock, lease_ms: int) -> RunEnd:
    """Run what the engine decides, then go on from the snapshot each write returns while the next
    decision is another step (or the end) and this message's budget lasts: one message, one lock
    and one read carry a run of steps instead of one each."""
    settings = conf.get()
    end = RunEnd()
    claims = 0
    # The claim the last outcome's write carried, with its fence (the version that write made):
    # a snapshot of another version was written without it (an outcome tried again alone).
    ahead: tuple[Claim, int] | None = None

    def claim_next(base: Snapshot, done: int, after: ExecutionState, now: int
                   ) -> list[engine.Event] | None:
        """The next step's claim, written with the outcome of slot ``done`` that leads to it when
        this run would claim it at once anyway (no pause to hold it, no concurrency slot to take
        first). Not a retry due at once: the failure and the claim both write the slot's attempt
        (conflicting paths in one update), so that claim is a write of its own."""
        nonlocal ahead
        ahead = None
        decision = engine.decide(after, now)  # on a state not written yet: not the seam's "loaded"
        if (not isinstance(decision, Claim) or decision.step == done
                or claims + 1 >= settings.INLINE_STEPS
                or not lock.fresh() or STOPPING.stopping() or _limited(base.doc, after, decision.step)
                or ("workflow" not in after.holds
                    and base.doc["workflow"] in controls.paused_workflows())):
            return None
        ahead = (decision, base.version + 1)
        return engine.claimed(after, decision, worker, fence=base.version + 1,
                              lease_expires_at=now + lease_ms)

    while snap is not None:
        end.now = now = now_ms()
        carried, ahead = ahead, None
        if carried is not None and carried[1] == snap.version:
            decision: Decision = carried[0]  # decided, checked and claimed by the write behind snap
        else:
            carried = None
            decision = decide(snap.state, now)
        end.decision = decision
        if carried is not None:
            result = run_step(snap, carried[0], worker, lock, lease_ms, claimed=snap, then=claim_next)
            claims += 1
        elif isinstance(decision, Claim | StartWait | Resume | WakeUp | Rollback) \
                and (hold := workflow_pause(snap)) is not None:
            # Its workflow is paused: held here, at the step boundary, until the workflow resumes.
            result = transitions.commit(snap, engine.paused("workflow", hold["by"], hold["reason"]), now)
            if result is not None and controls.paused(snap.doc["workflow"]) is None:
                # Resumed meanwhile (this process's view was a second old): a resume that began
                # before this read may have missed the hold, so it is lifted here.
                result = transitions.commit(result, engine.unpaused(
                    "workflow", "detflow", "the workflow was resumed while this execution was held"), now)
        elif isinstance(decision, Claim):
            if end.written is not None and (
                claims >= settings.INLINE_STEPS or not lock.fresh() or STOPPING.stopping()
            ):
                break
            slot = step_slot(snap, decision.step, lease_ms)
            if slot is not None and not slot.acquire(now):
                if end.written is None:
                    end.slot_wait_ms = SLOT_WAIT_MS
                    metrics.SLOT_WAITS.labels(snap.doc["workflow"], slot.key.rsplit(":", 1)[-1]).inc()
                break
            try:
                result = run_step(snap, decision, worker, lock, lease_ms, slot, then=claim_next)
            finally:
                if slot is not None:
                    slot.release()
            claims += 1
        elif isinstance(decision, RecoverLost):
            result = recover_lost(snap, decision, now)
        elif isinstance(decision, Finish):
            result = transitions.commit(snap, engine.finished(decision), now)
        elif isinstance(decision, Rollback):
            result = transitions.commit(snap, rollback_events(snap, decision), now)
        elif isinstance(decision, Expire):
            result = transitions.commit(snap, engine.expired(snap.state, decision, now), now)
        elif isinstance(decision, StartWait | Resume | WakeUp):
            # A sleep or a wait: its events are written, no handler runs, nothing is held after.
            result = transitions.commit(snap, waits.events(snap, decision, now), now)
        else:
            break
        if result is not None:
            end.written = result
            end.finished = end.finished or result.finished
        snap = result
    return end


def workflow_pause(snap: Snapshot) -> dict[str, Any] | None:
    """Return the pause of the execution's workflow that does not hold it yet, if there is one."""
    if "workflow" in snap.state.holds:
        return None
    return controls.paused_workflows().get(snap.doc["workflow"])


def rollback_events(snap: Snapshot, decision: Rollback) -> list[engine.Event]:
    """Return the events of the rollback ``decision`` starts, its cause read from the failed step
    (a rollback is written with the failure that causes it; this is for one that was not)."""
    index = engine.failed_step(snap.state)
    stored = snap.doc["steps"][index] if index is not None else {}
    error = stored.get("error") or {}
    return engine.rollback(snap.state, decision.plan, None, "on_failure: compensate",
                           (stored.get("name"), error.get("type", ""), error.get("message", "")))


def step_slot(snap: Snapshot, index: int, lease_ms: int) -> StepSlot | None:
    """Return a slot to take before running step ``index``, or ``None`` if it has no limit (a
    compensation never has one: a rollback is not held back by the forward traffic)."""
    if not _limited(snap.doc, snap.state, index):
        return None
    limit = snap.doc["definition"]["steps"][index]["max_concurrency"]
    step = snap.state.steps[index].name
    return StepSlot(services.redis_client(), snap.doc["workflow"], step, limit, lease_ms)


def _limited(doc: dict[str, Any], state: ExecutionState, index: int) -> bool:
    """Whether slot ``index`` is a step with a concurrency limit (a compensation never has one)."""
    return not state.is_compensation(index) and bool(
        doc["definition"]["steps"][index].get("max_concurrency"))


def run_step(
    snap: Snapshot, decision: Claim, worker: str, lock: ExecutionLock, lease_ms: int,
    slot: StepSlot | None = None, claimed: Snapshot | None = None, then: Then | None = None,
) -> Snapshot | None:
    """Claim the step (unless ``claimed``, the snapshot of the write that claimed it), run its
    handler, and record the outcome (with what ``then`` adds); ``None`` if another writer won."""
    if claimed is None:
        now = now_ms()
        claim = engine.claimed(snap.state, decision, worker, fence=snap.version + 1,
                               lease_expires_at=now + lease_ms)
        claimed = transitions.commit(snap, claim, now)
        if claimed is None:
            logger.info("claim of %s step %d lost a race; leaving it", snap.state.id, decision.step)
            return None
    workflow = snap.doc["workflow"]
    logs.bind(step=snap.state.slot(decision.step).name, attempt=decision.attempt)
    due = store.to_ms(snap.doc.get("due_at"))
    if due is not None:
        metrics.QUEUE_LAG.labels(workflow).observe(max(now_ms() - due, 0) / 1000)
    attempt = Attempt(claimed, decision.step, worker)
    try:
        attempt.run(lock, lease_ms, slot)
        recorded = attempt.record(then)
    finally:
        if attempt.watchdog is not None:
            attempt.watchdog.finish()
    return recorded
