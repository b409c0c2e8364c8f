"""Worker threads and the sweeper inside one process (tests and the single-process mode)."""
from __future__ import annotations

import logging

import dramatiq
from django.utils.module_loading import autodiscover_modules

from detflow_site import conf
from executions.sweeper import Sweeper


def declared_queues() -> set[str]:
    """Import every installed app's ``actors`` module; return the queues the installed apps' actors
    declared (an actor some other module declared on the same broker, a benchmark's in a test
    process, is not the project's work)."""
    from django.apps import apps

    from executions.actors import broker

    autodiscover_modules("actors")
    roots = tuple(config.name for config in apps.get_app_configs())
    return {actor.queue_name for actor in broker.actors.values()
            if actor.fn.__module__ in roots or actor.fn.__module__.startswith(tuple(f"{r}." for r in roots))}


def _second_hook(record: logging.LogRecord) -> bool:
    """Drop Dramatiq's warning that a middleware type was added twice: each Worker adds its own
    hook, and a pool of two Workers means two."""
    return "of the same type twice" not in record.getMessage()


class WorkerPool:
    """A real ``dramatiq.Worker`` on the engine's queue plus a recovery sweeper, in this process.

    The queues of other apps' actors (``insights`` post-mortems) get a worker of one thread of
    their own, so that their work never holds up a step.
    """

    def __init__(self, threads: int = 4, sweeper: bool = True) -> None:
        from executions.actors import broker

        self._middleware = list(broker.middleware)
        engine = conf.get().QUEUE
        others = declared_queues() - {engine}
        self.workers = [dramatiq.Worker(broker, queues={engine}, worker_threads=threads, worker_timeout=100)]
        if others:
            logging.getLogger(f"dramatiq.broker.{type(broker).__name__}").addFilter(_second_hook)
            self.workers.append(dramatiq.Worker(broker, queues=others, worker_threads=1, worker_timeout=100))
        self.worker = self.workers[0]
        self.sweeper = Sweeper() if sweeper else None

    def start(self) -> WorkerPool:
        for worker in self.workers:
            worker.start()
        if self.sweeper is not None:
            self.sweeper.start()
        return self

    def stop(self) -> None:
        """Stop the sweeper, then the workers (running attempts finish first)."""
        if self.sweeper is not None:
            self.sweeper.stop()
        for worker in self.workers:
            worker.stop(timeout=30_000)
        # A started Worker hooks a middleware into the broker; drop it, so that another pool in
        # this process (a test, the demo's --serve) does not find a stopped worker's hook there.
        broker = self.worker.broker
        broker.middleware[:] = [m for m in broker.middleware if any(m is b for b in self._middleware)]
