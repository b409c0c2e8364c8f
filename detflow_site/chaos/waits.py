"""The chaos run's sleeps, waits and signals: the signaller, which sends each waiting execution's
signal when its plan says (``schedule.WaitPlan``), some twice with the same Idempotency-Key; and
the lost wake-ups, delayed messages dropped at the broker while a step of their execution waits.

The drop is a seam on this process's broker (its ``enqueue``), installed for the run and removed
after it, as the store faults are a seam on the store: a dropped message is gone as a message lost
in Redis is, and only the sweeper can wake the step (once it is overdue past the grace).
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

from pymongo.errors import PyMongoError

from detflow_site.chaos.schedule import Schedule, WaitPlan
from executions import faults, operations, store
from executions.errors import OperationNotAllowed

logger = logging.getLogger("detflow.chaos")

#: The signal every chaos wait step waits for.
SIGNAL = "go"


def send(execution_id: str, plan: WaitPlan, counts: Counter[str]) -> bool:
    """Send ``plan``'s signal (twice with its key when ``plan.duplicate``); return ``False`` when a
    store fault refused it (try again), ``True`` once it is done."""
    key = f"{execution_id}:{SIGNAL}"
    payload = {"mode": plan.mode}
    try:
        for n in range(2 if plan.duplicate else 1):
            sent = operations.signal(execution_id, SIGNAL, payload, by="chaos", reason=plan.mode,
                                     idempotency_key=key)
            if sent.created:
                counts["signals sent"] += 1
            else:
                counts["duplicates"] += 1
                if n == 0:  # a first call that the store applied and then failed: sent before
                    counts["signals sent"] += 1
    except OperationNotAllowed:  # it ended already (its wait timed out): nothing to take it
        counts["refused (execution ended)"] += 1
    except PyMongoError as exc:
        logger.info("signal to %s failed (%s); sending again", execution_id, exc)
        return False
    return True


class Signaller(threading.Thread):
    """Sends the signals of the ``during`` and ``crash`` plans: the first once the execution's wait
    step is WAITING, the second once a crash struck the execution (its worker died holding it)."""

    def __init__(self, schedule: Schedule, ids: list[str], wait_index: int) -> None:
        super().__init__(name="detflow-chaos-signaller", daemon=True)
        self.pending = {ids[w.execution]: w for w in schedule.waits if w.mode in ("during", "crash")}
        self.wait_index = wait_index
        self.counts: Counter[str] = Counter()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while self.pending and not self._stop_event.wait(0.05):
            crashed = {f.execution_id for f in list(faults.fired)}
            try:
                waiting = {d["_id"] for d in store.collection().find(
                    {"_id": {"$in": [i for i, w in self.pending.items() if w.mode == "during"]},
                     f"steps.{self.wait_index}.status": "WAITING"}, {"_id": 1})}
            except PyMongoError:  # an election the nemesis holds: look again
                continue
            for execution_id, plan in list(self.pending.items()):
                ready = execution_id in crashed if plan.mode == "crash" else execution_id in waiting
                if ready and send(execution_id, plan, self.counts):
                    self.counts[f"sent {plan.mode}"] += 1
                    del self.pending[execution_id]

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


class LostWakeups:
    """Drops delayed messages of the executions it was given (``count`` each) sent while a step of
    theirs is WAITING: a sleep's end, a wait's timeout."""

    def __init__(self, planned: dict[str, int]) -> None:
        self.left = dict(planned)
        self.lost: Counter[str] = Counter()
        self._guard = threading.Lock()

    def drops(self, message: Any, delay: int | None) -> bool:
        execution_id = str(message.args[0]) if message.args else ""
        if not delay or self.left.get(execution_id, 0) <= 0:
            return False
        try:
            doc = store.load_working(execution_id)
        except PyMongoError:
            return False
        if doc is None or not any(s.get("status") == "WAITING" for s in doc["steps"]):
            return False
        with self._guard:
            if self.left[execution_id] <= 0:
                return False
            self.left[execution_id] -= 1
            self.lost[execution_id] += 1
        logger.info("chaos: dropped the wake-up of %s (due in %s ms)", execution_id, delay)
        return True


@contextlib.contextmanager
def dropping(lost: LostWakeups) -> Iterator[LostWakeups]:
    """Install ``lost`` at this process's broker for the block."""
    from executions.broker import broker

    real = broker.enqueue

    def enqueue(message: Any, *, delay: int | None = None) -> Any:
        if lost.drops(message, delay):
            return message
        return real(message, delay=delay)

    broker.enqueue = enqueue  # type: ignore[method-assign]
    try:
        yield lost
    finally:
        del broker.enqueue  # back to the class's own

