"""The recovery sweeper: MongoDB alone decides what is due (DESIGN invariant 6).

It does not wait for Dramatiq to hand back an unacked message (which can take ten minutes and
more after a ``kill -9``). Each sweep reads the executions whose ``due_at`` has passed and
- records a RUNNING attempt whose lease ran out as lost, then retries or fails it per its policy;
- sends a message for due work that no message has picked up within the grace period, unless a
  message for it is plainly waiting in the engine's queue (a backlog, not a loss): re-sending
  those would only add duplicates behind them. A message fetched by a worker is not counted as
  waiting, since that worker may have died with it.
"""
from __future__ import annotations

import json
import logging
import secrets
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from detflow_site import conf, services
from executions import bulk, dispatch, metrics, operations, schedules, signals, store
from executions.engine import Claim, RecoverLost, Settle, decide
from executions.followup import follow_up, recover_lost
from executions.store import Snapshot, now_ms, to_dt

logger = logging.getLogger("detflow.sweeper")

#: Redis key of the lease that lets one process's sweeper run at a time.
LEADER_KEY = "detflow:sweeper"
#: Executions read per sweep at most (oldest due first); the next sweep takes the rest.
BATCH = 500
#: Longest queue whose waiting messages a sweep reads; a longer one is not read (every due
#: execution past its grace is re-sent, as if nothing were waiting).
QUEUE_READ_LIMIT = 50_000


@dataclass
class SweepReport:
    """What one sweep did."""

    examined: int = 0
    lost: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    actions: Counter[str] = field(default_factory=Counter)

    #: Due executions past their grace whose message waits in the queue (not re-sent).
    waiting: list[str] = field(default_factory=list)
    #: Executions this sweep could not handle (a store or Redis error); the next sweep tries again.
    failed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"examined {self.examined} due execution(s): {len(self.lost)} lost attempt(s) "
                f"recorded, {len(self.resent)} message(s) re-sent")
        if self.waiting:
            text += f", {len(self.waiting)} left to the message waiting in the queue"
        if self.failed:
            text += f", {len(self.failed)} failed (tried again next sweep)"
        return text


def sweep(grace_s: float | None = None, now: int | None = None) -> SweepReport:
    """Run one sweep; return what it did."""
    settings = conf.get()
    grace_ms = round((settings.SWEEP_GRACE_S if grace_s is None else grace_s) * 1000)
    now = now_ms() if now is None else now
    report = SweepReport()
    cursor = (
        store.collection()
        .find({"due_at": {"$lte": to_dt(now)}}, store.WORKING_FIELDS)
        .sort("due_at", 1)
        .limit(BATCH)
    )
    queued: set[str] | None = None
    read = False
    for doc in cursor:
        report.examined += 1
        try:
            queued, read = _recover(doc, now, grace_ms, report, queued, read)
        except Exception as exc:  # one execution that keeps failing never stops the sweep
            report.failed.append(doc["_id"])
            metrics.SWEEPER_FAILURES.inc()
            logger.warning("sweep: execution %s failed (%s: %s); going on with the others",
                           doc["_id"], type(exc).__name__, exc)
    try:  # a workflow's resume that a crash cut short goes on
        if released := operations.release_workflows():
            report.actions["released"] += released
    except Exception as exc:
        logger.warning("sweep: resumed workflows' holds not lifted (%s: %s)", type(exc).__name__, exc)
    try:
        if resent_bulk := bulk.resend_expired(now):  # a bulk operation whose runner died goes on
            report.actions["bulk"] += len(resent_bulk)
    except Exception as exc:
        logger.warning("sweep: bulk operations not re-sent (%s: %s)", type(exc).__name__, exc)
    try:
        fired = schedules.fire_due(now).started
        if fired:
            report.actions["scheduled"] += len(fired)
    except Exception:  # failing schedules never stop the sweep
        logger.exception("sweep: firing the due schedules failed")
    if report.lost or report.resent or report.failed:
        logger.info("sweep: %s", report.summary())
    return report


def _recover(
    doc: dict[str, Any], now: int, grace_ms: int, report: SweepReport, queued: set[str] | None,
    read: bool,
) -> tuple[set[str] | None, bool]:
    """Recover one due execution; return the queue's waiting ids (read once per sweep)."""
    snap = Snapshot.of(doc)
    decision = decide(snap.state, now)
    if isinstance(decision, RecoverLost):
        after = recover_lost(snap, decision, now)
        if after is not None:
            report.lost.append(snap.state.id)
            report.actions["lost"] += 1
            metrics.SWEEPER_RECOVERIES.labels("lost").inc()
            follow_up(after)
            report.resent.append(snap.state.id)
    elif isinstance(decision, Claim | Settle):  # a step to claim, or events to write (an end, a wake-up)
        due = store.to_ms(doc.get("due_at")) or now
        if now - due < grace_ms:
            return queued, read
        if not read:
            queued, read = waiting_in_queue(), True
        if queued is not None and snap.state.id in queued:
            report.waiting.append(snap.state.id)
        elif dispatch.send(snap.state.id):
            report.resent.append(snap.state.id)
            report.actions["resent"] += 1
            metrics.SWEEPER_RECOVERIES.labels("resent").inc()
    return queued, read


def waiting_in_queue() -> set[str] | None:
    """Return the executions that have a message waiting in the engine's queue, not yet fetched
    by any worker; ``None`` when the queue cannot be read (Redis down, or longer than
    ``QUEUE_READ_LIMIT``)."""
    from executions.broker import messages_key, queue_key  # the broker is built on first import

    queue = conf.get().QUEUE
    client = services.redis_client()
    try:
        ids = client.lrange(queue_key(queue), 0, QUEUE_READ_LIMIT)
        if len(ids) > QUEUE_READ_LIMIT:
            return None
        found: set[str] = set()
        for start in range(0, len(ids), 1000):
            for body in client.hmget(messages_key(queue), ids[start:start + 1000]):
                try:
                    args = json.loads(body).get("args") if body else None
                except ValueError:  # not one of ours
                    continue
                if args and isinstance(args[0], str):
                    found.add(args[0])
    except Exception as exc:  # Redis down: re-send as if nothing were waiting (sends may fail too)
        logger.warning("could not read the queue (%s); re-sending all due work", exc)
        return None
    return found


def _housekeeping(now: int) -> None:
    """Send ``signals.swept`` (the project's retention pass listens), logging a receiver's error."""
    for receiver, result in signals.swept.send_robust(sender=Sweeper, now=now):
        if isinstance(result, Exception):
            logger.warning("sweep: %s failed (%s: %s)", getattr(receiver, "__qualname__", receiver),
                           type(result).__name__, result)


class Sweeper(threading.Thread):
    """Runs :func:`sweep` every ``SWEEP_INTERVAL_S`` until stopped.

    With ``exclusive``, sweepers of several processes take turns through a Redis lease so that one
    sweeps at a time (two at once would be safe, only wasteful: every write is fenced).
    """

    def __init__(self, interval_s: float | None = None, exclusive: bool = False) -> None:
        super().__init__(name="detflow-sweeper", daemon=True)
        self.interval_s = conf.get().SWEEP_INTERVAL_S if interval_s is None else interval_s
        self.exclusive = exclusive
        #: What every sweep of this thread did, added up (lost attempts, re-sent messages).
        self.totals: Counter[str] = Counter()
        self._token = secrets.token_hex(8)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            try:
                if not self.exclusive or self._lead():
                    now = now_ms()
                    self.totals.update(sweep(now=now).actions)
                    _housekeeping(now)
            except Exception:  # a sweep that fails (store or Redis down) is tried again next time
                logger.exception("sweep failed; retrying in %.1fs", self.interval_s)

    def _lead(self) -> bool:
        client = services.redis_client()
        ttl_ms = max(round(self.interval_s * 3000), 1000)
        if client.set(LEADER_KEY, self._token, nx=True, px=ttl_ms):
            return True
        if client.get(LEADER_KEY) == self._token.encode():
            client.pexpire(LEADER_KEY, ttl_ms)
            return True
        return False

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)
