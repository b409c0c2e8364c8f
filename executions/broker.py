"""The Dramatiq broker, built from settings before any actor module is imported.

Dramatiq's retries stay off for the engine's actor (``max_retries=0``; DESIGN's pitfalls): a
redelivered message does not raise Dramatiq's retry count, so attempts are counted in MongoDB only.
TimeLimit is left out: the engine's own watchdog enforces each step's ``timeout_s`` around the
handler alone, and the lease catches what it cannot interrupt. So are the middleware that act only
on actor options no actor here sets (AgeLimit's ``max_age``, ShutdownNotifications'
``notify_shutdown``, Callbacks' ``on_success``, Pipelines' ``pipe_target``) and CurrentMessage,
which nothing reads: Retries is kept for the post-mortem actor's ``max_retries``. The engine's own
middleware (a worker's stop seen by its runs, its consumers kept alive) is ``executions.middleware``.
"""
from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Retries

from detflow_site import services
from executions.middleware import STOPPING, ConsumerSupervisor

#: The prefix of every key the broker keeps in Redis.
NAMESPACE = "detflow"


def build() -> RedisBroker:
    """Return a Redis broker for the configured (or embedded) Redis."""
    middleware = [Retries(), ConsumerSupervisor(), STOPPING]
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
