"""What writers share around a state change: record a lost attempt (and count it), then send the
message the new state calls for and announce the execution's end. The runner, the sweeper and the
operator actions call these; none of them imports another for it."""
from __future__ import annotations

import logging

from executions import dispatch, engine, metrics, signals, store, transitions
from executions.engine import Claim, Decision, RecoverLost, Settle, Wait, decide
from executions.store import Snapshot, now_ms

logger = logging.getLogger("detflow.worker")


def follow_up(snap: Snapshot, finished: bool | None = None) -> None:
    """Send the message that the state after a change calls for (now, later, or none), and
    announce the execution's end when the change (or, with ``finished``, a run of them) ended it."""
    now = now_ms()
    decision: Decision = decide(snap.state, now)
    if snap.finished if finished is None else finished:
        for receiver, error in signals.execution_finished.send_robust(
            sender=Snapshot, execution_id=snap.state.id, status=snap.state.status.value,
            workflow=snap.doc["workflow"],
        ):
            if isinstance(error, Exception):
                logger.error("execution_finished receiver %r failed: %s", receiver, error)
    if isinstance(decision, Claim | RecoverLost | Settle):
        dispatch.send(snap.state.id)
    elif isinstance(decision, Wait) and decision.reason != "lease":  # a retry, a sleep, a wait's timeout
        dispatch.send(snap.state.id, delay_ms=decision.until - now)


def recover_lost(snap: Snapshot, decision: RecoverLost, now: int) -> Snapshot | None:
    """Record that a running attempt's lease ran out (its worker died or stalled), then what
    ``decision`` says follows; count it. ``None`` when another writer changed the execution first."""
    current = store.slot_doc(snap.doc, decision.step).get("current") or {}
    after = transitions.commit(snap, engine.lost(snap.state, decision, current.get("worker"), now), now)
    if after is not None:
        metrics.STEP_ATTEMPTS.labels(snap.doc["workflow"], metrics.step_label(snap.state, decision.step),
                                     "lost").inc()
    return after
