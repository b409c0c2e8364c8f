"""Worker threads and the sweeper inside one process (tests and the single-process mode)."""
from __future__ import annotations

import dramatiq

from detflow_site import conf
from executions.sweeper import Sweeper


class WorkerPool:
    """A real ``dramatiq.Worker`` on the engine's queue plus a recovery sweeper, in this process."""

    def __init__(self, threads: int = 4, sweeper: bool = True) -> None:
        from executions.actors import broker

        self._middleware = list(broker.middleware)
        self.worker = dramatiq.Worker(
            broker, queues={conf.get().QUEUE}, worker_threads=threads, worker_timeout=100
        )
        self.sweeper = Sweeper() if sweeper else None

    def start(self) -> WorkerPool:
        self.worker.start()
        if self.sweeper is not None:
            self.sweeper.start()
        return self

    def stop(self) -> None:
        """Stop the sweeper, then the worker (running attempts finish first)."""
        if self.sweeper is not None:
            self.sweeper.stop()
        self.worker.stop(timeout=30_000)
        # A started Worker hooks a middleware into the broker; drop it, so that another pool in
        # this process (a test, the demo's --serve) does not find a stopped worker's hook there.
        broker = self.worker.broker
        broker.middleware[:] = [m for m in broker.middleware if any(m is b for b in self._middleware)]
