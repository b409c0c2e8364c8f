"""The engine's Dramatiq middleware on a real worker: this file fails when Dramatiq changes under
``executions.middleware`` (a hook no longer called, ``Worker.consumers`` or ``Worker._add_consumer``
renamed or reshaped)."""
from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from detflow_site import conf
from executions import operations, store
from executions.middleware import STOPPING
from tests.conftest import running_worker, wait_for, wait_terminal
from workflows.context import StepContext
from workflows.registry import step

#: Set when ``test.watch_stop`` has started in its worker thread.
ENTERED = threading.Event()


@step("test.watch_stop")
def watch_stop(ctx: StepContext) -> dict[str, Any]:
    """Return whether the worker was stopping as the step began, and once its worker's stop began
    (within 10 s)."""
    seen = [STOPPING.stopping()]
    ENTERED.set()
    deadline = time.monotonic() + 10
    while not STOPPING.stopping() and time.monotonic() < deadline:
        time.sleep(0.01)
    seen.append(STOPPING.stopping())
    return {"seen": seen}


def test_worker_stopping__a_worker_thread_sees_its_worker_stop__a_thread_no_worker_booted_never_does(
    broker: Any, redis_client: Any, define: Any
) -> None:
    define("watched", [{"handler": "test.watch_stop"}])
    ENTERED.clear()
    with running_worker(1) as worker:
        execution_id = operations.start("watched")[0]["_id"]
        assert ENTERED.wait(10), "the step did not start"
        worker.stop(timeout=10_000)  # returns once the running attempt has finished
        assert STOPPING.stopping() is False

    doc = store.load_working(execution_id)
    assert doc is not None
    assert json.loads(doc["steps"][0]["output_json"]) == {"seen": [False, True]}


def test_consumer_supervisor__restarts_a_consumer_that_died__and_its_queue_is_served_again(
    broker: Any, redis_client: Any, define: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dramatiq 2.2's consumer thread dies when an error escapes ``ConsumerThread.close`` (Redis gone
    while it closes); the supervisor puts a new consumer in its place."""
    died: list[BaseException | None] = []
    default_hook = threading.excepthook

    def note_death(args: Any) -> None:
        if isinstance(args.exc_value, ConnectionError):
            died.append(args.exc_value)
        else:
            default_hook(args)

    monkeypatch.setattr(threading, "excepthook", note_death)
    define("served", [{"handler": "test.echo"}])
    queue = conf.get().QUEUE
    with running_worker(1) as worker:
        dead = wait_for(lambda: worker.consumers.get(queue), timeout=5, what="the consumer")

        def fail(*args: Any, **kwargs: Any) -> None:
            raise ConnectionError("Redis went away while the consumer closed")

        dead.handle_delayed_messages = fail  # an error in the consume loop, then close raises too
        dead.close = fail
        wait_for(lambda: died and not dead.is_alive(), timeout=5, what="the consumer to die")

        restarted = wait_for(
            lambda: (c := worker.consumers.get(queue)) is not None and c is not dead and c.is_alive() and c,
            timeout=10, what="a new consumer")
        assert restarted.running
        execution_id = operations.start("served", {"n": 1})[0]["_id"]
        [doc] = wait_terminal(execution_id, timeout=20)
    assert doc["status"] == "SUCCEEDED"
