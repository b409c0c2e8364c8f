"""Starting with Redis stopped: the execution is stored (201, PENDING) and finishes after a sweep
once Redis is back. Redis is killed for real: the embedded redis-server (SIGKILL), or a Redis at
DETFLOW_REDIS_URL by the commands its owner gives in TEST_REDIS_KILL and TEST_REDIS_START (the CI
job with real services: ``docker kill`` and ``docker start``). Without them an external Redis is
not the suite's to kill: the test skips on a developer's machine and fails in CI."""
from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from detflow_site import conf, embedded
from executions import store
from executions.sweeper import sweep
from tests.conftest import IN_CI, wait_terminal

API = "/api/v1/"


@dataclass(frozen=True)
class Switch:
    """Kill the Redis the engine uses, and start it again (waiting until it answers PING)."""

    kill: Callable[[], None]
    start: Callable[[], None]


def _run(command: str) -> None:
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{command!r} exited {done.returncode}: {done.stderr.strip()[-300:]}"


def _external(kill: str, start: str, client: Any, timeout_s: float = 30.0) -> Switch:
    def start_and_wait() -> None:
        _run(start)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if client.ping():
                    return
            except Exception:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    return Switch(kill=lambda: _run(kill), start=start_and_wait)


@pytest.fixture
def redis_down(redis_client: Any) -> Iterator[Switch]:
    """Return how to kill the engine's Redis and start it again; it is started again after the test."""
    if conf.get().REDIS_URL is None:
        server = embedded.redis_server()
        yield Switch(kill=server.kill, start=server.start)
        if server.process is None:
            server.start()
        return
    kill, start = os.environ.get("TEST_REDIS_KILL"), os.environ.get("TEST_REDIS_START")
    if not (kill and start):
        reason = ("an external Redis (DETFLOW_REDIS_URL) is not the suite's to kill: set "
                  "TEST_REDIS_KILL and TEST_REDIS_START to the commands that kill and start it")
        if IN_CI:
            pytest.fail(f"the Redis-down test must run in CI: {reason}")
        pytest.skip(reason)
    switch = _external(kill, start, redis_client)
    yield switch
    switch.start()  # starting a running Redis again is harmless (``docker start``: a no-op)


def test_redis_down__start_answers_201_and_the_sweeper_dispatches_it_later(
    operator: Any, viewer: Any, define: Any, worker: Any, redis_down: Switch
) -> None:
    define("pay", [{"handler": "test.echo"}, {"handler": "test.echo"}])
    redis_down.kill()

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

    redis_down.start()
    report = sweep(grace_s=0)
    [doc] = wait_terminal(started.json()["id"])

    assert started.json()["id"] in report.resent
    assert doc["status"] == "SUCCEEDED"
    assert store.collection().count_documents({}) == 1
