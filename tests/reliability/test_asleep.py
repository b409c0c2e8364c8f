"""10,000 executions asleep hold nothing: once every one sleeps or waits (WAITING, with a timeout
of a day), the worker's threads are idle, no execution lock is left in Redis, no document holds a
lease or a running attempt, and the worker process's memory does not grow with them.

Everything runs as it does deployed, each part in a process of its own: ``runstore`` (the store
over the wire), a redis-server, a worker process (a real ``dramatiq.Worker`` on the engine's queue,
which answers ``status`` on its stdin with its RSS and how many messages its threads hold), and a
starter process that starts the executions through ``operations.start``. So the worker's RSS is
its own: the documents live in the store's process, not in the worker's.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
import pytest
import redis

from detflow_site.embedded import RedisServer
from detflow_site.processes import manage_command, stop
from tests.wire import WireStore, start_store

ROOT = Path(__file__).resolve().parents[2]
DATABASE = "detflow_asleep"
#: A sleep's length and a wait's timeout: nothing wakes during the test.
DAY_S = 86_400
WORKER_THREADS = 4
#: RSS is read once this many are asleep, and again once all are.
FIRST, TOTAL = 1000, 10_000

#: The worker process: a real Dramatiq worker on the engine's queue; ``status`` on stdin prints
#: its RSS (KiB, from /proc), the messages its threads hold (put on its work queue and not done),
#: its threads and the delayed messages it keeps; end of stdin stops it.
WORKER = f"""
import json, sys, django
django.setup()
import dramatiq
from executions.actors import broker
worker = dramatiq.Worker(broker, worker_threads={WORKER_THREADS}, worker_timeout=100)
worker.start()
print("ready", flush=True)
for line in sys.stdin:
    rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))
    delayed = sum(len(c.delay_queue.queue) for c in worker.consumers.values()
                  if hasattr(c, "delay_queue"))
    print(json.dumps({{"rss_kib": rss, "busy": worker.work_queue.unfinished_tasks,
                      "threads": len(worker.workers), "delayed_held": delayed}}), flush=True)
worker.stop(timeout=10_000)
"""
#: The starter: registers the two workflows (a day's sleep; a wait of a day for 'wake'), then
#: starts argv[1] executions through operations.start, alternating them, from argv[2] on.
STARTER = f"""
import sys, django
django.setup()
from executions import operations
from workflows import definitions
definitions.register({{"name": "asleep-sleep",
                      "steps": [{{"name": "nap", "sleep": {{"seconds": {DAY_S}}}}}]}})
definitions.register({{"name": "asleep-wait", "steps": [{{"name": "approval",
                      "wait": {{"signal": "wake", "timeout_s": {DAY_S}}}}}]}})
count, first = int(sys.argv[1]), int(sys.argv[2])
for n in range(first, first + count):
    operations.start("asleep-wait" if n % 2 else "asleep-sleep", {{"n": n}})
print("started", count, flush=True)
"""


@dataclass
class Topology:
    environ: dict[str, str]
    store: WireStore
    redis_server: RedisServer
    worker: subprocess.Popen[str]

    def status(self) -> dict[str, Any]:
        assert self.worker.stdin is not None and self.worker.stdout is not None
        self.worker.stdin.write("status\n")
        self.worker.stdin.flush()
        return json.loads(self.worker.stdout.readline())  # type: ignore[no-any-return]

    def start(self, count: int, first: int) -> None:
        done = subprocess.run([sys.executable, "-c", STARTER, str(count), str(first)], env=self.environ,
                              cwd=self.store.directory, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    store = start_store(tmp_path / "store", faults=False)
    redis_server = RedisServer(tmp_path / "redis")
    (tmp_path / "redis").mkdir()
    worker = None
    errors = open(tmp_path / "worker.err", "w")  # noqa: SIM115 (closed in the finally)
    try:
        redis_server.start()
        environ = {**store.environ(DATABASE), "DETFLOW_REDIS_URL": redis_server.url,
                   "DJANGO_SETTINGS_MODULE": "detflow_site.settings", "PYTHONPATH": str(ROOT),
                   "DJANGO_SQLITE_PATH": str(tmp_path / "db.sqlite3")}
        environ = {k: v for k, v in environ.items()
                   if k not in ("PROMETHEUS_MULTIPROC_DIR", "dramatiq_prom_db")}
        subprocess.run(manage_command("ensure_indexes"), env=environ, cwd=tmp_path, check=True,
                       capture_output=True, timeout=120)
        worker = subprocess.Popen([sys.executable, "-c", WORKER], env=environ, cwd=tmp_path, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=errors, start_new_session=True)
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready", (tmp_path / "worker.err").read_text()
        yield Topology(environ, store, redis_server, worker)
    finally:
        if worker is not None:
            if worker.stdin:
                worker.stdin.close()  # the worker stops its threads and exits
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                stop(worker)
            if worker.stdout:
                worker.stdout.close()
        errors.close()
        redis_server.stop()
        store.stop()


def until(predicate: Callable[[], Any], what: str, timeout_s: float = 600) -> Any:
    """Poll ``predicate`` (each poll reads the whole store: twice a second) until it holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def all_asleep(topology: Topology, client: pymongo.MongoClient[dict[str, Any]], expected: int
               ) -> dict[str, Any]:
    """Wait until ``expected`` executions are stored and all WAITING and the worker holds no
    message; return its status then."""
    executions = client[DATABASE]["executions"]
    until(lambda: executions.count_documents({"status": "RUNNING", "steps.0.status": "WAITING"}) == expected,
          f"{expected} executions asleep")
    assert executions.count_documents({}) == expected
    return until(lambda: (s := topology.status())["busy"] == 0 and s, "the worker's threads to go idle")


def holds_nothing(client: pymongo.MongoClient[dict[str, Any]], redis_server: RedisServer) -> None:
    executions = client[DATABASE]["executions"]
    held = executions.count_documents({"$or": [{"steps.lease_expires_at": {"$exists": True}},
                                               {"steps.current": {"$exists": True}}]})
    assert held == 0, f"{held} documents hold a lease or a running attempt"
    with redis.Redis.from_url(redis_server.url) as r:
        locks = list(r.scan_iter("detflow:lock:*", count=1000))
    assert locks == [], f"{len(locks)} execution locks left in Redis"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_asleep__ten_thousand_waiting_executions_hold_no_thread_lock_lease_or_memory(
    topology: Topology,
) -> None:
    with topology.store.client() as client:
        topology.start(FIRST, 0)
        first = all_asleep(topology, client, FIRST)
        holds_nothing(client, topology.redis_server)

        topology.start(TOTAL - FIRST, FIRST)
        last = all_asleep(topology, client, TOTAL)
        holds_nothing(client, topology.redis_server)
        stored = client[DATABASE]["executions"].count_documents({"steps.0.wake_at": {"$exists": True}})
        assert stored == TOTAL

    assert first["threads"] == last["threads"] == WORKER_THREADS and last["busy"] == 0
    growth_kib = last["rss_kib"] - first["rss_kib"]
    per_execution_b = growth_kib * 1024 / (TOTAL - FIRST)
    print(f"\nasleep: RSS {first['rss_kib']} KiB at {FIRST:,} asleep, {last['rss_kib']} KiB at {TOTAL:,} "
          f"(+{growth_kib} KiB, {per_execution_b:.0f} B per sleeping execution); delayed wake-ups "
          f"held by the worker: {first['delayed_held']} then {last['delayed_held']}")
    # The bound: 4 KiB per sleeping execution. A thread per execution would cost far more: its
    # stack alone reserves 8 MiB of address space and commits at least a few pages (16-64 KiB of
    # RSS for a Python thread that has run anything), besides its thread state. What the worker
    # does keep is each prefetched delayed wake-up message (Dramatiq holds up to 1,000 a thread
    # in memory until due, about 1 KiB each, the rest waiting in Redis): under 1 KiB per
    # execution over 9,000, and the allocator's noise.
    assert per_execution_b < 4096, f"RSS grew {per_execution_b:.0f} B per sleeping execution"
