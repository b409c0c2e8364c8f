"""Insights fixtures: a clean insights collection and baseline cache, a local model, a write counter."""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from executions import store
from tests.integration.insights.support import WRITES, FakeModel, Writes, listening


@pytest.fixture(autouse=True)
def fresh(redis_client: Any) -> Iterator[None]:
    """Start with no post-mortem and no cached baseline (the engine's ``clean`` leaves both)."""
    from insights import baseline, service

    service.collection().delete_many({})
    baseline.forget()
    yield
    baseline.forget()


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch, settings: Any) -> Iterator[FakeModel]:
    """A local model the ``openai`` client is pointed at (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``)."""
    fake = FakeModel()
    fake.thread.start()
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    settings.DETFLOW = {**settings.DETFLOW, "INSIGHTS_MODEL": "test-model", "INSIGHTS_TIMEOUT_S": "5"}
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Writes]:
    """Record every write to MongoDB while the test runs: at mongomock's collection methods on the
    embedded store, by a ``pymongo.monitoring.CommandListener`` on a real MongoDB. Dramatiq's
    CurrentMessage is added to the broker meanwhile (the engine does not install it), so that each
    write is known by the actor whose message made it."""
    from dramatiq.middleware import CurrentMessage

    from executions.broker import broker

    current = CurrentMessage()
    broker.add_middleware(current)
    try:
        yield from _recording(monkeypatch)
    finally:
        broker.middleware[:] = [m for m in broker.middleware if m is not current]


def _recording(monkeypatch: pytest.MonkeyPatch) -> Iterator[Writes]:
    from detflow_site import services
    from insights import service

    seen = Writes()
    store.collection()  # indexes are ensured on first use, before anything is counted
    service.collection()
    if services.is_embedded_store():
        from mongomock.collection import Collection

        def counting(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(method)
            def call(self: Any, *args: Any, **kwargs: Any) -> Any:
                seen.add(self.name, name)
                return method(self, *args, **kwargs)

            return call

        for name in WRITES:
            if hasattr(Collection, name):
                monkeypatch.setattr(Collection, name, counting(name, getattr(Collection, name)))
        yield seen
        return
    with listening(seen):
        yield seen


