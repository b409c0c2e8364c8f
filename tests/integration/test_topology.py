"""The test topology for real: ``runstore``, a redis-server process, ``manage.py runworker
--processes 2 --threads 4`` and gunicorn, each its own process started as a deployment starts it
(``detflow_site.settings`` from the environment, a fresh temp directory), driven and checked through
the REST API only."""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from detflow_site.embedded import RedisServer
from detflow_site.processes import Lines, group_alive, stop
from tests.integration.test_rundev import free_port
from tests.wire import WireStore, start_store

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = str(Path(sys.executable).parent / "gunicorn")
DATABASE = "detflow_test_topology"
LEASE_S = 10
EXECUTIONS = 100
#: Where Dramatiq's Redis broker records each consuming process (a broker id per process), on every fetch.
HEARTBEATS = "detflow:__heartbeats__"


def wait_for_consumers(socket: Path, wanted: int, worker: subprocess.Popen[Any], log: Lines,
                       timeout_s: float = 90) -> None:
    """Wait until ``wanted`` worker processes fetch from Redis (their broker ids in the heartbeats),
    then until each has said so on runworker's output, as an operator reads it."""
    client = redis.Redis(unix_socket_path=str(socket))
    try:
        deadline = time.monotonic() + timeout_s
        while client.zcard(HEARTBEATS) < wanted:
            assert worker.poll() is None, f"runworker exited {worker.returncode}:\n{log.tail()}"
            assert time.monotonic() < deadline, (
                f"{wanted} worker processes did not consume within {timeout_s}s:\n{log.tail()}")
            time.sleep(0.1)  # polling the broker's state, bounded by the deadline above
        while sum("is ready for action" in line for line in list(log.lines)) < wanted:
            assert time.monotonic() < deadline, (
                f"runworker's output does not say its {wanted} worker processes are ready:\n{log.tail()}")
            time.sleep(0.1)  # the line follows the first fetch; bounded by the deadline above
    finally:
        client.close()


@dataclass
class Topology:
    directory: Path
    environ: dict[str, str]
    store: WireStore
    api: str
    token: str
    worker: subprocess.Popen[str]
    worker_log: Lines

    def get(self, path: str, **params: Any) -> Any:
        answer = requests.get(self.api + path, params=params, timeout=30,
                              headers={"Authorization": f"Token {self.token}"})
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:2000])
        return answer.json()


def manage(environ: dict[str, str], cwd: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=cwd, env=environ,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-3000:])
    return result.stdout


def wait_for_health(url: str, child: subprocess.Popen[Any], log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert child.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, f"gunicorn did not answer /healthz within {timeout_s}s"
        with contextlib.suppress(requests.RequestException):
            if requests.get(url + "/healthz", timeout=5).status_code == 200:
                return
        time.sleep(0.2)  # polling the port until it accepts: bounded by the deadline above


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    """The whole test topology in ``tmp_path``; every process stopped at the end."""
    fresh_tmp = tmp_path / "tmp"
    fresh_tmp.mkdir()
    (tmp_path / "static").mkdir()
    store = start_store(tmp_path / "store")
    redis_server = RedisServer(tmp_path / "redis")
    (tmp_path / "redis").mkdir()
    started: list[subprocess.Popen[Any]] = []
    opened: list[Any] = []
    try:
        redis_server.start()
        environ = {k: v for k, v in os.environ.items()
                   if not k.startswith(("DJANGO_", "DETFLOW_", "OPENAI_"))
                   and k not in ("PROMETHEUS_MULTIPROC_DIR", "dramatiq_prom_db")}
        environ.update(
            PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", TMPDIR=str(fresh_tmp),
            DJANGO_SETTINGS_MODULE="detflow_site.settings", DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
            DJANGO_SECURE_SSL_REDIRECT="0", DJANGO_SQLITE_PATH=str(tmp_path / "db.sqlite3"),
            DJANGO_STATIC_ROOT=str(tmp_path / "static"), DETFLOW_STORAGE_DIR=str(tmp_path / "storage"),
            DETFLOW_MONGODB_URL=store.url, DETFLOW_MONGODB_DB=DATABASE, DETFLOW_REDIS_URL=redis_server.url,
            DETFLOW_LEASE_S=str(LEASE_S), dramatiq_prom_host="127.0.0.1", dramatiq_prom_port="0",
        )
        manage(environ, tmp_path, "ensure_indexes")
        manage(environ, tmp_path, "migrate", "--no-input")
        token = manage(environ, tmp_path, "apiuser", "topology", "--role", "operator").split()[-1]

        worker_out = open(tmp_path / "runworker.out", "w")  # noqa: SIM115 (closed in the finally)
        opened.append(worker_out)
        worker = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "runworker", "--processes", "2", "--threads", "4"],
            # Without PYTHONPATH, from a directory of its own: as `python /srv/detflow/manage.py
            # runworker` starts on a deployment (gunicorn, below, needs the path or --chdir).
            cwd=tmp_path, env={k: v for k, v in environ.items() if k != "PYTHONPATH"},
            stdout=worker_out, stderr=subprocess.PIPE, text=True, start_new_session=True)
        started.append(worker)
        worker_log = Lines()
        worker_log.follow(worker.stderr)
        wait_for_consumers(redis_server.socket, 2, worker, worker_log)

        port = free_port()
        api_out = open(tmp_path / "gunicorn.log", "w")  # noqa: SIM115 (closed in the finally)
        opened.append(api_out)
        api = subprocess.Popen(
            [GUNICORN, "detflow_site.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "2",
             "--control-socket", str(tmp_path / "gunicorn.ctl")],
            cwd=tmp_path, env=environ, stdout=api_out, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        started.append(api)
        base = f"http://127.0.0.1:{port}"
        wait_for_health(base, api, tmp_path / "gunicorn.log")
        yield Topology(tmp_path, environ, store, base + "/api/v1/", token, worker, worker_log)
    finally:
        for child in reversed(started):
            stop(child)
        for handle in opened:
            handle.close()
        redis_server.stop()
        store.stop()


def upload(topology: Topology, n: int) -> str:
    answer = requests.post(topology.api + "files/", timeout=30,
                           headers={"Authorization": f"Token {topology.token}",
                                    "Idempotency-Key": f"topology-{n}"},
                           files={"file": (f"note-{n}.txt", f"file number {n}\n".encode() * (n + 1),
                                           "text/plain")})
    assert answer.status_code == 201, (answer.status_code, answer.text[:2000])
    return str(answer.json()["id"])


def statuses(topology: Topology) -> dict[str, str]:
    """Every execution's status, through the list endpoint (every page)."""
    found: dict[str, str] = {}
    page = topology.get("executions/", page_size=200)
    while True:
        found.update({row["id"]: row["status"] for row in page["results"]})
        if not page["next"]:
            return found
        answer = requests.get(page["next"], timeout=30, headers={"Authorization": f"Token {topology.token}"})
        assert answer.status_code == 200, answer.text[:2000]
        page = answer.json()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_topology__100_uploads_through_gunicorn_all_succeed_on_real_workers_and_sigterm_stops_them(
        topology: Topology) -> None:
    began = time.monotonic()
    ids = [upload(topology, n) for n in range(EXECUTIONS)]
    uploaded = time.monotonic() - began
    assert len(set(ids)) == EXECUTIONS

    deadline = time.monotonic() + 300
    while True:
        found = statuses(topology)
        mine = {i: found.get(i) for i in ids}
        counts = {s: sum(1 for v in mine.values() if v == s) for s in set(mine.values())}
        if counts.get("SUCCEEDED") == EXECUTIONS:
            break
        assert not {"FAILED", "CANCELLED"} & set(counts), counts
        assert topology.worker.poll() is None, topology.worker_log.tail()
        assert time.monotonic() < deadline, f"not all SUCCEEDED within 300 s: {counts}"
        time.sleep(0.5)  # polling the API's state, bounded by the deadline above
    succeeded = time.monotonic() - began

    stopping = time.monotonic()
    topology.worker.send_signal(signal.SIGTERM)
    try:
        code = topology.worker.wait(LEASE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"runworker did not exit within the lease ({LEASE_S} s) of SIGTERM:\n"
                    + topology.worker_log.tail())
    stopped = time.monotonic() - stopping
    assert code == 0, topology.worker_log.tail()
    group_deadline = time.monotonic() + LEASE_S - stopped
    while group_alive(topology.worker.pid):  # the dramatiq processes, in runworker's session
        assert time.monotonic() < group_deadline, "a worker process outlived runworker past the lease"
        time.sleep(0.05)

    running, processes, attempts = [], set(), 0
    for execution_id in ids:
        doc = topology.get(f"executions/{execution_id}/")
        assert doc["status"] == "SUCCEEDED", doc
        for step in doc["steps"]:
            if step["status"] == "RUNNING" or step["current"] is not None:
                running.append((execution_id, step["name"], step["status"], step["current"]))
            assert step["status"] == "SUCCEEDED", (execution_id, step)
            for attempt in step["attempts"]:
                attempts += 1
                assert attempt["outcome"] == "succeeded", (execution_id, step["name"], attempt)
                processes.add(attempt["worker"].split(":")[1])  # host:pid:thread
    assert running == []
    assert len(processes) == 2, f"the attempts ran in processes {processes}, not in runworker's 2"
    assert str(topology.worker.pid) not in processes
    print(f"\ntopology: {EXECUTIONS} uploads in {uploaded:.1f} s, all SUCCEEDED after {succeeded:.1f} s "
          f"({attempts} attempts in processes {sorted(processes)}), runworker stopped {stopped:.2f} s "
          f"after SIGTERM (lease {LEASE_S} s)")
