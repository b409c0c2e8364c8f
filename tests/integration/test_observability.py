"""Metrics that move as executions run, and log lines that carry the execution's ids."""
from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from detflow_site.logs import ContextFilter, JsonFormatter
from executions import operations
from tests.conftest import wait_for, wait_terminal


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def metered() -> dict[str, float]:
    """The samples the metrics test follows, for the workflow ``metered``."""
    return {
        "started": sample("detflow_executions_started_total", workflow="metered"),
        "finished": sample("detflow_executions_finished_total", workflow="metered",
                           status="SUCCEEDED"),
        "failed": sample("detflow_step_attempts_total", workflow="metered", step="s2",
                         outcome="failed"),
        "succeeded": sample("detflow_step_attempts_total", workflow="metered", step="s2",
                            outcome="succeeded"),
        "durations": sample("detflow_step_duration_seconds_count", workflow="metered", step="s1"),
        "lag": sample("detflow_queue_lag_seconds_count", workflow="metered"),
    }


def test_metrics__move_as_executions_run(worker: Any, define: Any) -> None:
    define("metered", [{"handler": "test.echo"}, {"handler": "test.flaky"}])
    before = metered()
    ids = [operations.start("metered", {"succeed_on": 2})[0]["_id"] for _ in range(3)]
    wait_terminal(*ids)

    expected = {name: value + (9 if name == "lag" else 3) for name, value in before.items()}
    # The counters move just after each write: wait for the last ones rather than race them.
    wait_for(lambda: metered() == expected, timeout=10, what=f"metrics {expected}")


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("detflow")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(previous)


def test_json_logs__every_engine_line_parses_and_carries_the_ids(
    worker: Any, define: Any, json_lines: io.StringIO
) -> None:
    define("logged", [{"handler": "test.echo"}, {"handler": "test.flaky"}])
    execution_id = operations.start("logged", {"succeed_on": 2})[0]["_id"]
    wait_terminal(execution_id)

    entries = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    ours = [e for e in entries if e["execution_id"] == execution_id]
    assert ours, entries
    handler_lines = [e for e in ours if e["logger"] == "detflow.handler"]
    assert {(e["step"], e["attempt"]) for e in handler_lines} == {("s1", 1)}
    for entry in ours:
        assert entry["worker"], entry
        assert {"time", "level", "logger", "message"} <= set(entry)
    step_lines = [e for e in ours if e["step"] is not None]
    assert all(isinstance(e["attempt"], int) for e in step_lines)


def test_probes__healthz_readyz_and_metrics_answer(client: Any, redis_client: Any,
                                                    worker: Any, define: Any) -> None:
    define("probed", [{"handler": "test.echo"}])
    wait_terminal(operations.start("probed", {})[0]["_id"])

    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["mongodb"]["ok"] and ready.json()["redis"]["ok"]
    exposed = client.get("/metrics")
    assert exposed.status_code == 200
    text = exposed.content.decode()
    assert 'detflow_executions_finished_total{status="SUCCEEDED",workflow="probed"}' in text
    assert "detflow_step_duration_seconds_bucket" in text
