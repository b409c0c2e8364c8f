"""The Dramatiq broker, built from settings before any actor module is imported.

Dramatiq's retries stay off for the engine's actor (``max_retries=0``; DESIGN's pitfalls): a
redelivered message does not raise Dramatiq's retry count, so attempts are counted in MongoDB only.
TimeLimit is left out: the engine's own watchdog enforces each step's ``timeout_s`` around the
handler alone, and the lease catches what it cannot interrupt. So are the middleware that act only
on actor options no actor here sets (AgeLimit's ``max_age``, ShutdownNotifications'
``notify_shutdown``, Callbacks' ``on_success``, Pipelines' ``pipe_target``) and CurrentMessage,
which nothing reads: Retries is kept for the post-mortem actor's ``max_retries``.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware, Retries

from detflow_site import services

logger = logging.getLogger("detflow.worker")

#: The prefix of every key the broker keeps in Redis.
NAMESPACE = "detflow"


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


def build() -> RedisBroker:
    """Return a Redis broker for the configured (or embedded) Redis."""
    middleware = [Retries(), ConsumerSupervisor()]
    return RedisBroker(url=services.redis_url(), middleware=middleware, namespace=NAMESPACE)


def queue_key(queue_name: str) -> str:
    """Return the Redis key of a queue's list of waiting message ids, as Dramatiq's Redis broker
    names it; the messages themselves are in the hash :func:`messages_key` names."""
    return f"{NAMESPACE}:{queue_name}"


def messages_key(queue_name: str) -> str:
    """Return the Redis key of the hash that holds a queue's messages by id (fetched or not)."""
    return f"{queue_key(queue_name)}.msgs"


broker = build()
dramatiq.set_broker(broker)
