"""Starting with Redis stopped: the execution is stored (201, PENDING) and finishes after a sweep
once Redis is back. Redis is killed for real (the embedded redis-server, SIGKILL)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from detflow_site import conf, embedded
from executions import store
from executions.sweeper import sweep
from tests.conftest import wait_terminal

API = "/api/v1/"


@pytest.fixture
def redis_down(redis_client: Any) -> Iterator[Any]:
    """Return the embedded redis-server's ``kill``; the server is started again after the test."""
    if conf.get().REDIS_URL is not None:
        pytest.skip("kills the embedded redis-server; an external Redis is not ours to kill")
    server = embedded.redis_server()
    yield server.kill
    if server.process is None:
        server.start()


def test_redis_down__start_answers_201_and_the_sweeper_dispatches_it_later(
    operator: Any, viewer: Any, define: Any, worker: Any, redis_down: Any
) -> None:
    define("pay", [{"handler": "test.echo"}, {"handler": "test.echo"}])
    redis_down()

    started = operator.post(API + "executions/", {"workflow": "pay", "input": {"n": 1}}, format="json",
                            headers={"Idempotency-Key": "while-down"})
    repeated = operator.post(API + "executions/", {"workflow": "pay", "input": {"n": 1}}, format="json",
                             headers={"Idempotency-Key": "while-down"})
    health = viewer.get(API + "health/")
    diagnosis = viewer.get(API + f"executions/{started.json()['id']}/diagnosis/")

    assert (started.status_code, repeated.status_code) == (201, 200)
    assert started.json()["status"] == "PENDING"
    assert health.status_code == 503
    assert (health.json()["status"], health.json()["mongodb"]["ok"], health.json()["redis"]["ok"]) == (
        "degraded", True, False)
    assert diagnosis.status_code == 200
    assert diagnosis.json()["redis"]["reachable"] is False
    assert diagnosis.json()["repair"]["action"] == "redis"

    embedded.redis_server().start()
    report = sweep(grace_s=0)
    [doc] = wait_terminal(started.json()["id"])

    assert started.json()["id"] in report.resent
    assert doc["status"] == "SUCCEEDED"
    assert store.collection().count_documents({}) == 1
