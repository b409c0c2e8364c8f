"""execution_finished: sent once, by the writer that made the execution terminal."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from executions import operations
from executions.signals import execution_finished
from tests.conftest import wait_for, wait_terminal


@pytest.fixture
def finished() -> Iterator[list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []
    guard = threading.Lock()

    def receiver(sender: Any, execution_id: str, status: str, **_: Any) -> None:
        with guard:
            seen.append((execution_id, status))

    execution_finished.connect(receiver, weak=False)
    yield seen
    execution_finished.disconnect(receiver)


def test_execution_finished__sent_once_for_success_and_for_failure(
    worker: Any, define: Any, finished: list[tuple[str, str]]
) -> None:
    define("ok", [{"handler": "test.echo"}, {"handler": "test.echo"}])
    define("bad", [{"handler": "test.permanent"}])
    ok = operations.start("ok", {})[0]["_id"]
    bad = operations.start("bad", {})[0]["_id"]
    wait_terminal(ok, bad)
    wait_for(lambda: len(finished) >= 2, what="two signals")
    assert sorted(finished) == sorted([(ok, "SUCCEEDED"), (bad, "FAILED")])


def test_execution_finished__sent_for_a_cancel_and_again_after_a_retry_fails(
    worker: Any, define: Any, finished: list[tuple[str, str]]
) -> None:
    define("slow", [{"handler": "test.sleep", "timeout_s": 10}, {"handler": "test.echo"}])
    define("bad", [{"handler": "test.permanent"}])
    slow = operations.start("slow", {"sleep_s": 2})[0]["_id"]
    operations.cancel(slow, by="op", reason="not needed")
    bad = operations.start("bad", {})[0]["_id"]
    wait_terminal(bad)
    operations.retry(bad, by="op", reason="try again")
    wait_for(lambda: finished.count((bad, "FAILED")) == 2, what="the second failure")
    wait_terminal(slow)
    assert finished.count((slow, "CANCELLED")) == 1
