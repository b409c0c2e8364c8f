"""The nemesis: injects the faults that come from outside a handler, on the schedule's clock.

Duplicate and late messages go through the real broker. Redis is killed for real: the embedded
redis-server process is killed with SIGKILL and started again on the same socket (its data gone,
as after a crash without persistence); an external Redis is restarted with ``DEBUG RESTART`` where
it allows that, and otherwise has every client connection killed. Elections, latency and spikes
are rules added to the store seam (``storefaults``) for as long as the fault lasts.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from detflow_site import conf, embedded, services
from detflow_site.chaos.schedule import STORE_GLOBAL_KINDS, Fault, Schedule
from detflow_site.chaos.storefaults import READS, WRITES, Rule, StoreFaults
from executions import dispatch
from executions.store import now_ms

logger = logging.getLogger("detflow.chaos")


@dataclass(frozen=True)
class Injected:
    """A fault the nemesis injected."""

    kind: str
    execution_id: str | None
    at_ms: int
    detail: str = ""


class Nemesis(threading.Thread):
    """Injects the schedule's message and Redis faults at their times after :meth:`start`."""

    def __init__(self, schedule: Schedule, ids: list[str], store: StoreFaults | None = None) -> None:
        super().__init__(name="detflow-nemesis", daemon=True)
        self.schedule = schedule
        self.ids = ids
        self.store = store
        self.injected: list[Injected] = []
        #: The store rule each store fault added (what it struck is counted on the rule).
        self.rules: list[tuple[Fault, Rule]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        planned = sorted(
            (f for f in self.schedule.faults if f.kind in ("duplicate", "late", "redis_kill",
                                                           "redis_flush", *STORE_GLOBAL_KINDS)),
            key=lambda f: f.at_s,
        )
        for fault in planned:
            if self._stop_event.wait(max(started + fault.at_s - time.monotonic(), 0)):
                return
            try:
                self._inject(fault)
            except Exception as exc:  # the nemesis reports a fault it could not inject; runs on
                logger.warning("could not inject %s: %s", fault.kind, exc)
                self.injected.append(Injected(fault.kind, None, now_ms(), f"failed: {exc}"))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)

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
        else:
            detail = restart_redis()
        self.injected.append(Injected(fault.kind, execution_id, now_ms(), detail))

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
