"""Throttling of start and regenerate requests; its state is in Django's cache (django-redis)."""
from __future__ import annotations

from typing import Any

from django.core.cache import cache
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle, UserRateThrottle

from detflow_site import conf


class StartThrottle(UserRateThrottle):
    """At most ``DETFLOW_API_START_RATE`` starts per user.

    With Redis down the cache misses (``IGNORE_EXCEPTIONS``) and the throttle lets the request
    through: starting must keep working while Redis is away, the sweeper sends the messages later.
    """

    scope = "start"

    def get_rate(self) -> str:
        return conf.get().API_START_RATE


class RegenerateThrottle(UserRateThrottle):
    """At most ``DETFLOW_INSIGHTS_REGENERATE_RATE`` post-mortem regenerations per user.

    With Redis down it lets the request through; the model budget, counted in Redis too, then
    refuses the model call, so the rules write the post-mortem.
    """

    scope = "insights-regenerate"

    def get_rate(self) -> str:
        return conf.get().INSIGHTS_REGENERATE_RATE


class ExecutionRegenerateThrottle(BaseThrottle):
    """At most one regeneration of an execution's post-mortem per ``DETFLOW_INSIGHTS_REGENERATE_INTERVAL_S``,
    whoever asks.

    The slot is taken with one atomic ``SET NX`` (``cache.add``), so two operators asking at once
    cannot both pass, unlike a history read and written back as DRF's rate throttles keep it. With
    Redis down ``add`` answers ``None`` and the request passes (the model budget then refuses).
    """

    def __init__(self) -> None:
        self.key: str | None = None

    def allow_request(self, request: Request, view: Any) -> bool:
        execution_id = str(view.kwargs.get("execution_id", ""))
        self.key = f"throttle_insights-regenerate-execution_{execution_id}"
        interval = conf.get().INSIGHTS_REGENERATE_INTERVAL_S
        return cache.add(self.key, 1, timeout=interval) is not False

    def wait(self) -> float | None:
        interval = conf.get().INSIGHTS_REGENERATE_INTERVAL_S
        if self.key is None:
            return interval
        left = cache.ttl(self.key)  # type: ignore[attr-defined]  # django-redis
        return float(left) if isinstance(left, int) and left > 0 else float(interval)
