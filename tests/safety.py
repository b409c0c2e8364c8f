"""The suite never touches a user's data: the rules it checks before it starts.

The tests delete every execution and definition of the database they use, and flush their Redis
between tests. On the embedded services (the default) both live in the test process. Pointed at
servers, the suite runs only on a MongoDB database whose name marks it as a test database, and
flushes a Redis it did not start only when told to (``--allow-flush``). The database rule is
checked by ``tests/settings.py``, before Django connects to anything; the Redis rule by
``tests/conftest.py``, before the first test.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from detflow_site.conf import DetflowSettings, from_environ, parse

#: A database name marks a test database when it starts or ends like this.
TEST_PREFIX, TEST_SUFFIX = "test_", "_test"


def is_test_database(name: str) -> bool:
    """Tell whether ``name`` marks a MongoDB database as one the tests may empty."""
    return name.startswith(TEST_PREFIX) or name.endswith(TEST_SUFFIX)


def settings_from(environ: Mapping[str, str]) -> DetflowSettings:
    """Return the services' settings as the test settings read them (bad values: the defaults)."""
    return parse(from_environ(environ))[0]


def database_refusal(settings: DetflowSettings) -> str | None:
    """Return why the suite must not run on this MongoDB database, or ``None``."""
    if settings.MONGODB_URL is None or is_test_database(settings.MONGODB_DB):
        return None
    return (f"refusing to run the tests on MongoDB database {settings.MONGODB_DB!r} at "
            f"{settings.MONGODB_URL.split('@')[-1]}: they delete every execution and definition in "
            f"it; set DETFLOW_MONGODB_DB to a name that starts with {TEST_PREFIX!r} or ends with "
            f"{TEST_SUFFIX!r} (e.g. detflow{TEST_SUFFIX})")


def redis_refusal(settings: DetflowSettings, allow_flush: bool) -> str | None:
    """Return why the suite must not run on this Redis, or ``None``."""
    if settings.REDIS_URL is None or allow_flush:
        return None
    scheme, _, rest = settings.REDIS_URL.partition("://")
    return (f"refusing to run the tests on the Redis at {scheme}://{rest.split('@')[-1]}: they flush "
            "its database between tests; pass --allow-flush if nothing else uses that database, or "
            "unset DETFLOW_REDIS_URL to use a redis-server the tests start")


def refuse_a_user_database() -> None:
    """Stop the test session, in one line, when ``DETFLOW_MONGODB_DB`` is not a test database."""
    import pytest

    problem = database_refusal(settings_from(os.environ))
    if problem is not None:
        raise pytest.UsageError(problem)
