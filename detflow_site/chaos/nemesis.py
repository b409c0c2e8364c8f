"""The nemesis: injects the faults that come from outside a handler, on the schedule's clock.

Duplicate and late messages go through the real broker. Redis is killed for real: the embedded
redis-server process is killed with SIGKILL and started again on the same socket (its data gone,
as after a crash without persistence); an external Redis is restarted with ``DEBUG RESTART`` where
it allows that, and otherwise has every client connection killed. Elections, latency and spikes
are rules added to the store seam (``storefaults``) for as long as the fault lasts. Pauses are an
operator's: ``operations.pause`` of one execution, or ``operations.pause_workflow`` of each chaos
workflow, lifted ``duration_s`` later by ``resume`` (``resume_workflow``), tried again while the store
refuses it; :meth:`Nemesis.stop` lifts any it left.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from detflow_site import conf, embedded, services
from detflow_site.chaos.schedule import PAUSE_KINDS, STORE_GLOBAL_KINDS, Fault, Schedule
from detflow_site.chaos.storefaults import READS, WRITES, Rule, StoreFaults
from executions import dispatch, operations
from executions.errors import OperationNotAllowed
from executions.store import now_ms

logger = logging.getLogger("detflow.chaos")
T = TypeVar("T")

#: Who the nemesis's pauses and resumes are recorded as.
BY = "chaos-nemesis"
#: Longest the nemesis tries a pause or a resume the store keeps refusing, in seconds.
PATIENCE_S = 60.0


@dataclass(frozen=True)
class Injected:
    """A fault the nemesis injected."""

    kind: str
    execution_id: str | None
    at_ms: int
    detail: str = ""


class Nemesis(threading.Thread):
    """Injects the schedule's message and Redis faults at their times after :meth:`start`."""

    def __init__(self, schedule: Schedule, ids: list[str], store: StoreFaults | None = None,
                 workflows: Sequence[str] = ()) -> None:
        super().__init__(name="detflow-nemesis", daemon=True)
        self.schedule = schedule
        self.ids = ids
        self.store = store
        #: The workflows a ``pause_workflow`` pauses.
        self.workflows = tuple(workflows)
        self.injected: list[Injected] = []
        #: The store rule each store fault added (what it struck is counted on the rule).
        self.rules: list[tuple[Fault, Rule]] = []
        #: What the pauses did: ``paused``, ``refused`` (the execution had ended), ``failed`` (the
        #: store kept refusing it), ``resumed``, ``ended while paused``, ``workflows paused``,
        #: ``workflows resumed``, ``holds lifted``.
        self.pauses: Counter[str] = Counter()
        #: The pauses set and not lifted yet: ``(kind, execution id or workflow name)``; the
        #: executions whose pause was written.
        self._held: set[tuple[str, str]] = set()
        self._paused: set[str] = set()
        self._stop_event = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        strikes = [(f.at_s, self._inject, f) for f in self.schedule.faults
                   if f.kind in ("duplicate", "late", "redis_kill", "redis_flush", *STORE_GLOBAL_KINDS,
                                 *PAUSE_KINDS)]
        lifts = [(f.at_s + f.duration_s, self._lift, f) for f in self.schedule.faults
                 if f.kind in PAUSE_KINDS]
        actions: list[tuple[float, Callable[[Fault], None], Fault]] = sorted(
            strikes + lifts, key=lambda action: action[0])
        for at_s, act, fault in actions:
            if self._stop_event.wait(max(started + at_s - time.monotonic(), 0)):
                return
            try:
                act(fault)
            except Exception as exc:  # the nemesis reports a fault it could not inject; runs on
                logger.warning("could not inject %s: %s", fault.kind, exc)
                self.injected.append(Injected(fault.kind, None, now_ms(), f"failed: {exc}"))

    def stop(self) -> None:
        """Stop injecting, and lift the pauses still set (the run ends with none)."""
        self._stop_event.set()
        self.join(timeout=PATIENCE_S + 10)
        for kind, name in sorted(self._held):
            self._resume(kind, name)

    def _inject(self, fault: Fault) -> None:
        execution_id = self.ids[fault.execution] if fault.execution is not None else None
        if fault.kind == "duplicate" and execution_id:
            for _ in range(fault.count):
                dispatch.send(execution_id)
            detail = f"{fault.count} extra messages"
        elif fault.kind == "late" and execution_id:
            dispatch.send(execution_id, delay_ms=round(fault.delay_s * 1000))
            detail = f"a message delayed {fault.delay_s}s"
        elif fault.kind == "redis_flush":
            services.redis_client().flushall()
            detail = "FLUSHALL"
        elif fault.kind in STORE_GLOBAL_KINDS:
            detail = self._strike_store(fault)
        elif fault.kind == "pause_execution" and execution_id:
            self._held.add((fault.kind, execution_id))  # a pause that failed may have been applied
            reason = f"chaos: paused for {fault.duration_s}s"
            try:
                _patiently(partial(operations.pause, execution_id, BY, reason))
            except OperationNotAllowed as exc:  # it ended before the pause came
                self._held.discard((fault.kind, execution_id))
                self.pauses["refused"] += 1
                self.injected.append(Injected(fault.kind, execution_id, now_ms(), f"refused: {exc}"))
                return
            except Exception:
                self.pauses["failed"] += 1
                raise
            self._paused.add(execution_id)
            self.pauses["paused"] += 1
            detail = f"paused for {fault.duration_s}s"
        elif fault.kind == "pause_workflow":
            for workflow in self.workflows:
                self._held.add((fault.kind, workflow))
                _patiently(partial(operations.pause_workflow, workflow, BY,
                                   f"chaos: paused for {fault.duration_s}s"))
                self.pauses["workflows paused"] += 1
            detail = f"{', '.join(self.workflows)} paused for {fault.duration_s}s"
        else:
            detail = restart_redis()
        self.injected.append(Injected(fault.kind, execution_id, now_ms(), detail))

    def _lift(self, fault: Fault) -> None:
        """Resume what ``fault`` paused (or may have: a pause whose write failed)."""
        names = self.workflows if fault.execution is None else (self.ids[fault.execution],)
        for name in names:
            if (fault.kind, name) in self._held:
                self._resume(fault.kind, name)

    def _resume(self, kind: str, name: str) -> None:
        """Lift the pause of ``kind`` of ``name`` (an execution id, a workflow), trying again while
        the store refuses it (an election the nemesis holds, Redis down)."""
        self._held.discard((kind, name))
        reason = "chaos: the pause is over"
        try:
            if kind == "pause_workflow":
                done = _patiently(partial(operations.resume_workflow, name, BY, reason))
                self.pauses["workflows resumed"] += 1
                self.pauses["holds lifted"] += done.released
            else:
                _patiently(partial(operations.resume, name, BY, reason))
                self.pauses["resumed"] += 1
        except OperationNotAllowed:  # not paused: it ended while paused (or was never paused)
            if kind == "pause_workflow":  # a try whose write of the resume went through
                self.pauses["workflows resumed"] += 1
            elif name in self._paused:
                self.pauses["ended while paused"] += 1
        except Exception as exc:
            logger.warning("could not resume %s: %s", name, exc)
            self.injected.append(Injected(kind, None, now_ms(), f"failed: resume of {name}: {exc}"))

    def _strike_store(self, fault: Fault) -> str:
        """Add the store rule of an election, a latency or spikes, lasting ``fault.duration_s``."""
        if self.store is None:
            raise RuntimeError("no store seam installed")
        until = time.monotonic() + fault.duration_s
        if fault.kind == "store_election":
            rule = self.store.election(fault.duration_s)
            detail = f"NotWritablePrimary to every call for {fault.duration_s}s"
        elif fault.kind == "store_latency":
            rule = self.store.add(Rule("latency", ops=WRITES | READS, times=None, until=until,
                                       delay_s=fault.delay_s))
            detail = f"{fault.delay_s * 1000:g} ms added to every call for {fault.duration_s}s"
        else:
            rule = self.store.add(Rule("latency", ops=WRITES | READS, times=None, until=until,
                                       spike_s=fault.delay_s, spike_every=fault.count))
            detail = f"{fault.delay_s}s added to one call in {fault.count} for {fault.duration_s}s"
        self.rules.append((fault, rule))
        return detail


def _patiently(call: Callable[[], T]) -> T:
    """Return ``call()``, tried again while it fails for any reason but ``OperationNotAllowed``
    (an election the nemesis holds, Redis down, a write that met a concurrent one), for up to
    ``PATIENCE_S``."""
    deadline = time.monotonic() + PATIENCE_S
    while True:
        try:
            return call()
        except OperationNotAllowed:
            raise
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def restart_redis() -> str:
    """Kill Redis and bring it back; return how."""
    if conf.get().REDIS_URL is None:
        server = embedded.redis_server()
        server.kill()
        time.sleep(0.3)
        server.start()
        return "embedded redis-server killed (SIGKILL) and started again"
    client = services.redis_client()
    try:
        client.execute_command("DEBUG", "RESTART")
    except Exception:
        client.client_kill_filter(_type="normal", skipme=True)
        return "DEBUG RESTART refused; every client connection killed instead"
    return "DEBUG RESTART"
