"""The engine's Dramatiq middleware: a worker's stop seen by its runs, and its consumers kept alive.

``WorkerStopping`` uses Dramatiq's documented hooks alone. ``ConsumerSupervisor`` is the one place
that leans on Dramatiq's worker internals (``Worker.consumers``, ``Worker._add_consumer``): Dramatiq
has no hook or public call to restart a consumer. ``tests/integration/test_middleware.py`` kills a
consumer of a real worker and fails when Dramatiq changes under either.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from dramatiq.middleware import Middleware

logger = logging.getLogger("detflow.worker")


class WorkerStopping(Middleware):
    """Tell a worker thread that its worker is shutting down (SIGTERM, ``Worker.stop``).

    A run of steps asks :meth:`stopping` before it claims the next step, and hands that step on to
    a new message once the worker stops: the running attempt finishes, nothing new starts. As with
    Dramatiq's ``ShutdownNotifications``, a shutdown reaches every worker thread of the process that
    booted before it (a process runs one worker, or a pool stopped as one); a worker booted after it
    starts afresh. A thread that no worker booted (a test calling the runner) never stops.
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads = threading.local()

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        if self._stop.is_set():
            self._stop = threading.Event()

    def after_worker_thread_boot(self, broker: Any, thread: Any) -> None:
        self._threads.stop = self._stop  # called in the worker thread itself

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self._stop.set()

    def stopping(self) -> bool:
        """Whether the worker that booted the calling thread is shutting down."""
        stop = getattr(self._threads, "stop", None)
        return stop is not None and stop.is_set()


#: The process's one ``WorkerStopping``, installed by ``executions.broker``.
STOPPING = WorkerStopping()


class ConsumerSupervisor(Middleware):
    """Restart a worker's consumer thread that died.

    Dramatiq 2.2's consumer thread dies for good when Redis goes away while it closes (a connection
    error escapes ``ConsumerThread.close``); a dead delay-queue consumer would leave every retry to
    the sweeper. Checked once a second; a restarted consumer reconnects when Redis is back.
    """

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._stops: dict[int, threading.Event] = {}

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        stop = self._stops[id(worker)] = threading.Event()
        threading.Thread(target=self._watch, args=(worker, stop), daemon=True,
                         name="detflow-consumer-supervisor").start()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        stop = self._stops.pop(id(worker), None)
        if stop is not None:
            stop.set()

    def _watch(self, worker: Any, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            for name, consumer in list(worker.consumers.items()):
                if consumer.running and not consumer.is_alive() and not stop.is_set():
                    logger.warning("consumer of queue %s died; restarting it", name)
                    worker.consumers.pop(name, None)
                    worker._add_consumer(name, delay=name.endswith(".DQ"))
