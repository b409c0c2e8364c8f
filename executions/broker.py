"""The Dramatiq broker, built from settings before any actor module is imported.

Dramatiq's retries stay off for the engine's actor (``max_retries=0``; DESIGN's pitfalls): a
redelivered message does not raise Dramatiq's retry count, so attempts are counted in MongoDB only.
TimeLimit is left out: the engine's own watchdog enforces
each step's ``timeout_s`` around the handler alone, and the lease catches what it cannot interrupt.
"""
from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    Retries,
    ShutdownNotifications,
)

from detflow_site import services


def build() -> RedisBroker:
    """Return a Redis broker for the configured (or embedded) Redis."""
    middleware = [
        AgeLimit(), ShutdownNotifications(), Callbacks(), Pipelines(), Retries(), CurrentMessage(),
    ]
    return RedisBroker(url=services.redis_url(), middleware=middleware, namespace="detflow")


broker = build()
dramatiq.set_broker(broker)
