"""Per-user throttling of start requests; its state is in Django's cache (django-redis)."""
from __future__ import annotations

from rest_framework.throttling import UserRateThrottle

from detflow_site import conf


class StartThrottle(UserRateThrottle):
    """At most ``DETFLOW_API_START_RATE`` starts per user.

    With Redis down the cache misses (``IGNORE_EXCEPTIONS``) and the throttle lets the request
    through: starting must keep working while Redis is away, the sweeper sends the messages later.
    """

    scope = "start"

    def get_rate(self) -> str:
        return conf.get().API_START_RATE
