"""Integration helpers: settle the real worker, audit every execution a test leaves behind."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def audited() -> Iterator[None]:
    """After each test, replay every stored execution through the engine: no divergence allowed."""
    yield
    from executions import audit, store

    problems = [str(d) for doc in store.collection().find({}) for d in audit.verify(doc)]
    assert problems == [], "determinism audit failed:\n" + "\n".join(problems)


@pytest.fixture
def settle(broker: Any, worker: Any) -> Callable[[], None]:
    """Return a function that waits until no engine message is queued, delayed or being handled."""
    from dramatiq.common import dq_name

    from detflow_site import conf

    queue = conf.get().QUEUE

    def wait() -> None:
        for name in (queue, dq_name(queue)):
            broker.join(name, timeout=20_000)
        worker.join()
        broker.join(queue, timeout=20_000)

    return wait
