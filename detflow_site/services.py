"""Connections to the two services: MongoDB (or mongomock) and Redis (or the embedded server)."""
from __future__ import annotations

import functools

import mongoengine
import redis
from mongoengine.connection import DEFAULT_CONNECTION_NAME

from detflow_site import conf, embedded

#: The mongoengine alias every document uses.
ALIAS = DEFAULT_CONNECTION_NAME  # mongoengine's default alias: the documents' own


def connect_mongo() -> None:
    """Register the MongoDB connection (lazy: no I/O until the first query).

    The embedded store starts empty with each connection and lives in this process, so its
    indexes are created here; a server's are created by ``manage.py ensure_indexes``.
    """
    settings = conf.get()
    mongoengine.disconnect(ALIAS)
    if settings.MONGODB_URL is None:
        import mongomock

        from detflow_site import indexes

        embedded.serialize_mongomock()
        mongoengine.connect(
            db=settings.MONGODB_DB, alias=ALIAS, host="mongodb://embedded", uuidRepresentation="standard",
            mongo_client_class=mongomock.MongoClient,
        )
        indexes.ensure()
    else:
        mongoengine.connect(
            db=settings.MONGODB_DB, alias=ALIAS, host=settings.MONGODB_URL,
            w="majority", readPreference="primary", uuidRepresentation="standard",
            # Every call is bounded: finding a primary, connecting, each answer, and a majority
            # acknowledgement. A write that fails so is retried by the writer (transitions), long
            # enough to ride out an election; a lease renewal sets a tighter bound of its own.
            serverSelectionTimeoutMS=5000, connectTimeoutMS=5000, socketTimeoutMS=20000,
            wTimeoutMS=10000, tz_aware=False,
        )


def is_embedded_store() -> bool:
    """Tell whether state lives in this process's memory (mongomock)."""
    return conf.get().MONGODB_URL is None


def store_description() -> str:
    """Describe the store for start-up banners and errors, without credentials."""
    url = conf.get().MONGODB_URL
    if url is None:
        return "embedded mongomock (state lives in this process's memory)"
    return "MongoDB at " + url.split("@")[-1]


def redis_description() -> str:
    """Describe the Redis in use for start-up banners, without credentials."""
    url = conf.get().REDIS_URL
    if url is None:
        return f"embedded redis-server started by this process ({embedded.redis_server().url})"
    scheme, _, rest = url.partition("://")
    return f"Redis at {scheme}://{rest.split('@')[-1]}"


def redis_url() -> str:
    """Return the Redis URL, starting the embedded redis-server when none is configured."""
    return conf.get().REDIS_URL or embedded.redis_server().url


@functools.cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=10, health_check_interval=30)


def redis_client() -> redis.Redis:
    """Return the shared Redis client for locks and the sweeper (thread-safe, pooled)."""
    return _client(redis_url())
