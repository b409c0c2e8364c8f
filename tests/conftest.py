"""Shared fixtures: a clean store and Redis for every test, a real Dramatiq worker on demand.

The suite empties its MongoDB database and flushes its Redis: ``tests/safety.py`` says which it
may use (a test database; a Redis it started, or one it is told it may flush).
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests import safety

IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--allow-flush", action="store_true",
                     help="let the tests flush the Redis at DETFLOW_REDIS_URL (they flush its database "
                          "between tests); without it they refuse to start when it is set")


def pytest_configure(config: pytest.Config) -> None:
    """Refuse, in one line and before any test, a Redis the suite did not start and may not flush."""
    problem = safety.redis_refusal(safety.settings_from(os.environ), config.getoption("allow_flush"))
    if problem is not None:
        raise pytest.UsageError(problem)


@pytest.fixture(scope="session", autouse=True)
def indexed_store() -> None:
    """Create the declared indexes on a MongoDB server once, as ``ensure_indexes`` does before a
    deployment starts (the embedded store creates them when it connects)."""
    from detflow_site import indexes, services

    if not services.is_embedded_store():
        indexes.ensure()


@pytest.fixture(scope="session")
def redis_client() -> Any:
    """The real Redis the engine uses; missing Redis skips locally and fails in CI."""
    from detflow_site import services

    try:
        client = services.redis_client()
        client.ping()
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"Redis is required in CI: {exc}")
        pytest.skip(f"no Redis: {exc}")
    return client


@pytest.fixture(scope="session")
def broker(redis_client: Any) -> Any:
    from executions.broker import broker

    return broker


@pytest.fixture(autouse=True)
def clean(request: pytest.FixtureRequest) -> Iterator[None]:
    """Empty the store (pauses, schedules and bulk operations too), Redis and the ledger; disarm
    every crash point."""
    from executions import bulk, controls, faults, schedules, store
    from executions.models import Execution
    from tests.handlers import LEDGER, UNDONE
    from workflows.models import WorkflowDefinition

    Execution._get_collection().delete_many({})
    store.history().delete_many({})
    WorkflowDefinition._get_collection().delete_many({})
    # A workflow paused, a schedule or a bulk operation left by a test would act on the next one.
    for collection in (controls.collection(), schedules.collection(), bulk.collection()):
        collection.delete_many({})
    controls._forget()
    if "redis_client" in request.fixturenames or "worker" in request.fixturenames:
        request.getfixturevalue("redis_client").flushdb()
    LEDGER.clear()
    UNDONE.clear()
    faults.disarm()
    yield
    faults.disarm()


@contextlib.contextmanager
def running_worker(threads: int) -> Iterator[Any]:
    """Run a real ``dramatiq.Worker`` with ``threads`` threads on the engine's queue."""
    import dramatiq

    from executions.actors import broker

    before = list(broker.middleware)
    running = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=50)
    running.start()
    try:
        yield running
    finally:
        running.stop(timeout=10_000)
        # Each Worker hooks a middleware into the broker; drop it so workers do not pile up.
        broker.middleware[:] = [m for m in broker.middleware if any(m is b for b in before)]


@pytest.fixture
def worker(broker: Any, redis_client: Any) -> Iterator[Any]:
    """A real ``dramatiq.Worker`` with 4 threads on the engine's queue."""
    redis_client.flushdb()
    broker.flush_all()
    with running_worker(4) as running:
        yield running


@pytest.fixture
def define() -> Callable[..., Any]:
    """Register a workflow from ``(name, [steps...])`` with short retry delays."""
    from workflows import definitions

    def register(name: str, steps: list[dict[str, Any]], **extra: Any) -> Any:
        full = []
        for index, step in enumerate(steps):
            step = dict(step)
            step.setdefault("name", f"s{index + 1}")
            if "sleep" not in step and "wait" not in step:  # they run no handler: no retry policy
                step.setdefault("retry", {"max_attempts": 3, "initial_delay_s": 0.05, "max_delay_s": 1})
            full.append(step)
        stored, _ = definitions.register({"name": name, "steps": full, **extra})
        return stored

    return register


@contextlib.contextmanager
def mongo_commands_heard(on_started: Callable[[Any], None]) -> Iterator[None]:
    """Reconnect the store with a pymongo command listener that calls ``on_started`` with each
    command's start event, and reconnect without it afterwards (real MongoDB; a listener is only
    heard by clients created after it)."""
    import mongoengine
    from pymongo import monitoring

    from detflow_site import services

    class Listener(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            on_started(event)

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    real_connect = mongoengine.connect
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mongoengine, "connect",
                      lambda *a, **kw: real_connect(*a, event_listeners=[Listener()], **kw))
        services.connect_mongo()
    try:
        yield
    finally:
        services.connect_mongo()


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_terminal(*execution_ids: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Wait until every execution is terminal (SUCCEEDED, FAILED, CANCELLED, COMPENSATED or
    COMPENSATION_FAILED) with nothing due; return their documents."""
    from executions import store
    from executions.engine import TERMINAL

    def done() -> list[dict[str, Any]] | None:
        docs = [store.load(i) for i in execution_ids]
        if all(d and d["status"] in TERMINAL and not d.get("due_at")
               for d in docs):
            return docs  # type: ignore[return-value]
        return None

    return wait_for(done, timeout, f"executions {execution_ids} to finish")
