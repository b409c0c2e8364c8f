"""max_concurrency: a step's attempts never overlap beyond their limit, across all worker threads."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from executions import operations
from tests.conftest import running_worker, wait_terminal
from tests.handlers import WINDOWS


@pytest.fixture
def eight_threads(redis_client: Any) -> Iterator[Any]:
    with running_worker(8) as worker:
        yield worker


def _most_at_once(windows: list[tuple[str, float, float]]) -> int:
    edges = sorted([(start, 1) for _, start, _ in windows] + [(end, -1) for _, _, end in windows],
                   key=lambda edge: (edge[0], edge[1]))
    running = most = 0
    for _, change in edges:
        running += change
        most = max(most, running)
    return most


@pytest.mark.parametrize("limit", [1, 2])
def test_max_concurrency__never_lets_more_attempts_overlap_under_8_threads(
    eight_threads: Any, define: Any, limit: int
) -> None:
    WINDOWS.clear()
    define("limited", [{"handler": "test.echo"},
                       {"handler": "test.window", "max_concurrency": limit}])
    ids = [operations.start("limited", {"sleep_s": 0.05})[0]["_id"] for _ in range(12)]
    docs = wait_terminal(*ids, timeout=60)

    assert {d["status"] for d in docs} == {"SUCCEEDED"}
    assert len(WINDOWS) == 12
    assert _most_at_once(WINDOWS) == limit


def test_max_concurrency__unlimited_steps_do_overlap(eight_threads: Any, define: Any) -> None:
    WINDOWS.clear()
    define("free", [{"handler": "test.window"}])
    ids = [operations.start("free", {"sleep_s": 0.2})[0]["_id"] for _ in range(8)]
    wait_terminal(*ids, timeout=60)
    assert _most_at_once(WINDOWS) > 1


def test_diagnosis__shows_a_step_waiting_for_a_concurrency_slot(redis_client: Any, define: Any) -> None:
    from executions import slots
    from executions.diagnosis import diagnose
    from executions.store import now_ms

    define("gated", [{"handler": "test.echo", "max_concurrency": 1}])
    execution_id = operations.start("gated", {})[0]["_id"]
    holder = slots.StepSlot(redis_client, "gated", "s1", limit=1, ttl_ms=60_000)
    assert holder.acquire(now_ms())

    found = diagnose(execution_id).as_dict()
    assert found["next"]["action"] == "claim"
    assert found["concurrency"] == {"limit": 1, "held": 1, "waiting_for_slot": True}
    holder.release()
    assert diagnose(execution_id).as_dict()["concurrency"]["waiting_for_slot"] is False
