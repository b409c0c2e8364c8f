"""The contenders, each able to start workers, launch chains and stop, on the same Redis.

- ``detflow``: a ``dramatiq.Worker`` on the engine's queue, as ``WorkerPool`` and ``runworker`` run
  it (no sweeper, and no worker for other apps' queues), running executions of a no-op workflow;
  an execution counts as done when its writer sends ``execution_finished``.
- ``detflow-msg``: the same with ``DETFLOW_INLINE_STEPS=1``, a message per step (detflow before it
  ran the steps that follow at once back to back): what the durability costs when every step goes
  through the broker as in the other two.
- ``dramatiq``: a raw chain on the engine's broker, on a queue of its own: each actor sends the next
  message, nothing is stored, no lock is taken.
- ``celery``: a Celery 5 chain (Redis broker and Redis result backend), run by an in-process worker
  with the ``threads`` pool and the same concurrency.

Every step runs :func:`bench.handlers.body`; only what surrounds it differs.
"""
from __future__ import annotations

import contextlib
import logging
import secrets
from typing import Any, Protocol

import dramatiq

from bench import handlers
from detflow_site import services

#: The raw Dramatiq chain's queue, beside the engine's.
RAW_QUEUE = "bench-raw"
#: The Celery chain's queue.
CELERY_QUEUE = "bench-celery"
#: Consumer idle timeout of both Dramatiq workers, in ms (as ``WorkerPool`` sets it).
DRAMATIQ_WORKER_TIMEOUT_MS = 100


class Contender(Protocol):
    name: str

    def start(self, threads: int) -> None: ...

    def launch(self, run: str, executions: int, steps: int, sleep_s: float = 0.0) -> None: ...

    def stop(self) -> None: ...


class Detflow:
    """detflow: durable executions of ``steps`` no-op steps."""

    name = "detflow"

    def __init__(self) -> None:
        from executions import actors, signals

        self.broker = actors.broker
        self.worker: dramatiq.Worker | None = None
        self._middleware: list[Any] = []
        self.workflows: dict[int, str] = {}
        signals.execution_finished.connect(self._finished, dispatch_uid="bench-finished")

    def _finished(self, sender: Any, execution_id: str, status: str, **kwargs: Any) -> None:
        handlers.FINISH.one(handlers.FINISH.run)

    def workflow(self, steps: int) -> str:
        if steps not in self.workflows:
            self.workflows[steps] = handlers.noop_workflow(steps)
        return self.workflows[steps]

    def start(self, threads: int) -> None:
        from detflow_site import conf

        self.worker, self._middleware = _start_worker(self.broker, conf.get().QUEUE, threads)

    def launch(self, run: str, executions: int, steps: int, sleep_s: float = 0.0) -> None:
        from executions import operations

        name = self.workflow(steps)
        for _ in range(executions):
            operations.start(name, {"run": run, "sleep": sleep_s} if sleep_s else {"run": run})

    def stop(self) -> None:
        assert self.worker is not None
        _stop_worker(self.worker, self._middleware)
        self.worker = None


class DetflowPerMessage(Detflow):
    """detflow with a message per step (``DETFLOW_INLINE_STEPS=1``) while its worker runs."""

    name = "detflow-msg"

    def start(self, threads: int) -> None:
        from bench.cost import inline_steps

        self._inline = inline_steps(1)
        self._inline.__enter__()
        super().start(threads)

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self._inline.__exit__(None, None, None)


class RawDramatiq:
    """A hand-rolled Dramatiq pipeline: each step's actor sends the next step's message."""

    name = "dramatiq"

    def __init__(self) -> None:
        from executions.broker import broker

        self.broker = broker
        self.worker: dramatiq.Worker | None = None
        self._middleware: list[Any] = []

        @dramatiq.actor(actor_name="bench.raw_step", queue_name=RAW_QUEUE, max_retries=0,
                        broker=broker)
        def raw_step(run: str, chain: str, index: int, steps: int, sleep_s: float = 0.0) -> None:
            handlers.body(run, chain, index, sleep_s)
            if index + 1 < steps:
                raw_step.send(run, chain, index + 1, steps, sleep_s)
            else:
                handlers.FINISH.one(run)

        self.actor = raw_step

    def start(self, threads: int) -> None:
        self.worker, self._middleware = _start_worker(self.broker, RAW_QUEUE, threads)

    def launch(self, run: str, executions: int, steps: int, sleep_s: float = 0.0) -> None:
        for _ in range(executions):
            self.actor.send(run, secrets.token_hex(8), 0, steps, sleep_s)

    def stop(self) -> None:
        assert self.worker is not None
        _stop_worker(self.worker, self._middleware)
        self.worker = None


def _start_worker(broker: Any, queue: str, threads: int) -> tuple[dramatiq.Worker, list[Any]]:
    """Start a Dramatiq worker on one queue; return it and the broker's middleware before it."""
    before = list(broker.middleware)
    worker = dramatiq.Worker(broker, queues={queue}, worker_threads=threads,
                             worker_timeout=DRAMATIQ_WORKER_TIMEOUT_MS)
    worker.start()
    return worker, before


def _stop_worker(worker: dramatiq.Worker, before: list[Any]) -> None:
    """Stop a worker and drop the middleware it hooked into the broker (as ``WorkerPool`` does)."""
    worker.stop(timeout=30_000)
    broker = worker.broker
    broker.middleware[:] = [m for m in broker.middleware if any(m is b for b in before)]


def celery_url(url: str) -> str:
    """Return the Celery (kombu) spelling of a Redis URL: a unix socket is ``redis+socket://``."""
    if url.startswith("unix://"):
        return "redis+socket://" + url[len("unix://"):]
    return url


class CeleryChain:
    """A Celery 5 chain of ``steps`` tasks, Redis broker and Redis result backend."""

    name = "celery"

    def __init__(self) -> None:
        from celery import Celery

        url = celery_url(services.redis_url())
        self.app = app = Celery("bench", broker=url, backend=url, set_as_current=False)
        app.conf.update(task_default_queue=CELERY_QUEUE, worker_hijack_root_logger=False,
                        broker_connection_retry_on_startup=True, worker_redirect_stdouts=False)

        @app.task(name="bench.celery_step")
        def celery_step(run: str, chain: str, index: int, steps: int, sleep_s: float = 0.0) -> None:
            handlers.body(run, chain, index, sleep_s)
            if index + 1 == steps:
                handlers.FINISH.one(run)

        self.task = celery_step
        self._context: contextlib.AbstractContextManager[Any] | None = None

    def start(self, threads: int) -> None:
        from celery.contrib.testing.worker import start_worker

        logging.getLogger("celery").setLevel(logging.WARNING)
        self._context = start_worker(self.app, concurrency=threads, pool="threads",
                                     perform_ping_check=False, loglevel="WARNING",
                                     shutdown_timeout=30)
        self._context.__enter__()

    def launch(self, run: str, executions: int, steps: int, sleep_s: float = 0.0) -> None:
        from celery import chain

        for _ in range(executions):
            chain_id = secrets.token_hex(8)
            chain(*(self.task.si(run, chain_id, i, steps, sleep_s) for i in range(steps))).apply_async()

    def stop(self) -> None:
        assert self._context is not None
        self._context.__exit__(None, None, None)
        self._context = None
