"""Django's cache backend: django-redis on the Redis detflow uses, resolved when first used.

The embedded redis-server starts on first use and its URL is known only then, so the backend
takes ``services.redis_url()`` when it first connects rather than from the settings.
"""
from __future__ import annotations

from typing import Any

from django_redis.cache import RedisCache as DjangoRedisCache

from detflow_site import services


class RedisCache(DjangoRedisCache):
    """django-redis whose server is ``DETFLOW_REDIS_URL`` (or the embedded redis-server)."""

    @property
    def client(self) -> Any:
        if self._client is None:
            self._server = services.redis_url()
        return super().client
