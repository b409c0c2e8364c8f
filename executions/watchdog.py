"""The watchdog of a running attempt: it renews the lease and the lock while the handler runs,
and interrupts the handler at its ``timeout_s``.

Its ticks run in the process's one ticker thread (``executions.ticker``); the renewals' I/O runs in
this module's pool of renewal threads, so one slow write never delays another attempt's renewal.
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pymongo

from executions import transitions
from executions.locks import ExecutionLock
from executions.slots import StepSlot
from executions.store import now_ms
from executions.ticker import TICKER, Entry
from workflows.errors import LeaseLost

logger = logging.getLogger("detflow.worker")

#: Executions whose watchdog is frozen (neither renews nor interrupts), as if the worker's process
#: had stopped: filled by ``executions.faults.pause`` only (tests and chaos), empty in production.
PAUSED: set[str] = set()


class TimeoutInterrupt(BaseException):
    """Raised inside a handler that ran past its ``timeout_s`` (a BaseException, so that a handler's
    ``except Exception`` does not swallow it)."""


class Watchdog:
    """Renews the lease and the lock while a handler runs; interrupts it at its deadline.

    Its ticks run in the process's one ticker thread (``executions.ticker``), every third of the
    lease. An interrupt cannot stop C code or a blocking system call; the watchdog then stops
    renewing, the lease runs out, and the sweeper records the attempt lost.
    """

    def __init__(
        self, execution_id: str, path: str, fence: int, lock: ExecutionLock, lease_ms: int,
        timeout_s: float, slot: StepSlot | None = None,
    ):
        self.execution_id = execution_id
        #: The running step's (or compensation's) place in the document (``store.slot_path``).
        self.path = path
        self.fence = fence
        self.lock = lock
        self.slot = slot
        self.lease_ms = lease_ms
        self.interval = max(lease_ms / 3000, 0.05)
        self.deadline = time.monotonic() + timeout_s
        self.target = threading.get_ident()
        self.lost = False
        self._done = False
        #: The handler returned: renewals go on, the timeout no longer applies.
        self._settled = False
        self._entry: Entry | None = None
        self._guard = threading.Lock()

    def start(self) -> None:
        """Start watching (from the handler's thread, which an interrupt is raised in)."""
        self._next(time.monotonic())

    def _next(self, now: float, paused: bool = False) -> None:
        at = now + self.interval if paused or self._settled else min(now + self.interval, self.deadline)
        with self._guard:
            if not self._done:
                self._entry = TICKER.schedule(at, self._tick)

    def _tick(self) -> None:
        if self._done:
            return
        now = time.monotonic()
        if self.execution_id in PAUSED:
            self._next(now, paused=True)
            return
        if now >= self.deadline and not self._settled:
            with self._guard:
                if not self._done and not self._settled:
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(self.target), ctypes.py_object(TimeoutInterrupt)
                    )
            return
        # The renewal's I/O runs in the renewal pool: a slow write never holds the ticker, which
        # keeps every other attempt's renewals and timeouts.
        renewals().submit(self._renew_then_next)

    def _renew_then_next(self) -> None:
        try:
            self._renew()
        finally:
            self._next(time.monotonic())

    def _renew(self) -> bool:
        """Renew the lease in MongoDB (what counts), then the lock and the slot in Redis.

        The MongoDB write may take a third of the lease at most (pymongo's client-side timeout): a
        renewal that cannot land by then is worth less than the next one."""
        execution_id = self.execution_id
        try:
            with pymongo.timeout(self.interval):
                renewed = transitions.renew_lease(
                    execution_id, self.path, self.fence, now_ms(), self.lease_ms
                )
        except Exception as exc:  # the store is down: try again next beat; the lease decides
            logger.warning("lease renewal of %s failed: %s", execution_id, exc)
            return not self.lost
        if not renewed:
            self.lost = True
            return False
        try:
            if not self.lock.renew():
                logger.info("lock of %s expired while its handler ran", execution_id)
            if self.slot is not None:
                self.slot.renew(now_ms())
        except Exception as exc:  # Redis down: the lock is for efficiency only, the fence holds
            logger.warning("lock renewal of %s failed: %s", execution_id, exc)
        return True

    def beat(self) -> None:
        """Renew now, on the handler's request; raise ``LeaseLost`` if a successor owns the step."""
        if self.lost or not self._renew():
            raise LeaseLost("this attempt's claim is no longer current; stop and return")

    def settle(self) -> None:
        """The handler returned or raised: interrupt it no more, but keep the lease alive while
        its outcome is written (a write may wait out a failover)."""
        with self._guard:
            self._settled = True

    def finish(self) -> None:
        """Stop renewing: the outcome is recorded, or given up."""
        with self._guard:
            self._done = True
            TICKER.cancel(self._entry)


#: Threads that renew leases, per process (a forked child makes its own).
RENEWAL_THREADS = 8
_renewal_pool: tuple[int, ThreadPoolExecutor] | None = None
_renewal_guard = threading.Lock()


def renewals() -> ThreadPoolExecutor:
    """Return this process's pool of lease-renewal threads."""
    global _renewal_pool
    with _renewal_guard:
        if _renewal_pool is None or _renewal_pool[0] != os.getpid():
            _renewal_pool = (os.getpid(), ThreadPoolExecutor(RENEWAL_THREADS, "detflow-renewal"))
        return _renewal_pool[1]
