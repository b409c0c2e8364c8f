"""Issue 19's check with the production worker: a bulk retry runs in ``manage.py runworker`` over a
``runstore`` and a redis-server (each its own process, settings from the environment, a fresh temp
directory); the worker's process group is SIGKILLed in the middle of a batch, after at least one
batch was saved; a new ``runworker`` (its sweeper thread re-sends the operation once its lease ran
out) finishes it. Each execution is retried exactly once, the counts add up, every execution ends
SUCCEEDED, and the histories replay (``manage.py verify --all`` and the reliability invariants)."""
from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
import pytest

from detflow_site.embedded import RedisServer
from detflow_site.processes import Child, group_alive, manage_command
from executions import bulk, operations, store
from executions.store import now_ms, to_dt
from tests.conftest import wait_terminal
from tests.reliability.invariants import assert_invariants
from tests.wire import WireStore, start_store

DATABASE = "detflow_test_bulk_crash"
#: Executions retried: three batches, so that the kill falls with a batch saved and batches to go.
EXECUTIONS = 3 * bulk.BATCH
#: The bulk operation's lease (DETFLOW_BULK_LEASE_S): how long the killed runner holds the op.
BULK_LEASE_S = 3
#: A step attempt's lease (DETFLOW_LEASE_S): how long the killed worker's attempts stay RUNNING.
LEASE_S = 2
WORKFLOW = "bulk-crash"


@dataclass
class Stack:
    """runstore and redis-server running in ``directory``; runworkers started on them."""

    directory: Path
    environ: dict[str, str]
    store: WireStore
    client: pymongo.MongoClient[dict[str, Any]]
    workers: list[Child]

    @property
    def db(self) -> Any:
        return self.client[DATABASE]

    def manage(self, *args: str) -> str:
        result = subprocess.run(manage_command(*args), cwd=self.directory, env=self.environ,
                                capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-3000:])
        return result.stdout

    def runworker(self) -> Child:
        worker = Child.start(manage_command("runworker", "--processes", "1", "--threads", "4"),
                             self.environ, self.directory)
        self.workers.append(worker)
        return worker

    def op(self, op_id: str) -> dict[str, Any]:
        found = self.db["bulk_operations"].find_one({"_id": op_id})
        assert found is not None, op_id
        return found


def until(what: str, probe: Callable[[], Any], worker: Child | None, timeout_s: float = 60) -> Any:
    """Poll ``probe`` (a read of the store) until it returns something truthy; fail after
    ``timeout_s``, or at once if ``worker`` exited, with its output."""
    deadline = time.monotonic() + timeout_s
    while not (found := probe()):
        tail = worker.log.tail() if worker else ""
        assert worker is None or worker.process.poll() is None, \
            f"runworker exited {worker.process.returncode}:\n{tail}"
        assert time.monotonic() < deadline, f"not {what} within {timeout_s} s:\n{tail}"
        time.sleep(0.05)  # polling the store's state, bounded by the deadline above
    return found


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """runstore and a redis-server in ``tmp_path``, the environment of a deployment; every
    process stopped at the end."""
    fresh_tmp = tmp_path / "tmp"
    fresh_tmp.mkdir()
    (tmp_path / "redis").mkdir()
    wire = start_store(tmp_path / "store")
    redis_server = RedisServer(tmp_path / "redis")
    workers: list[Child] = []
    client = wire.client()
    try:
        redis_server.start()
        environ = {k: v for k, v in os.environ.items()
                   if not k.startswith(("DJANGO_", "DETFLOW_", "OPENAI_"))
                   and k not in ("PROMETHEUS_MULTIPROC_DIR", "dramatiq_prom_db")}
        environ.update(
            PYTHONUNBUFFERED="1", TMPDIR=str(fresh_tmp), DJANGO_SETTINGS_MODULE="detflow_site.settings",
            DJANGO_SECRET_KEY=secrets.token_urlsafe(50), DJANGO_SQLITE_PATH=str(tmp_path / "db.sqlite3"),
            DETFLOW_STORAGE_DIR=str(tmp_path / "storage"), DETFLOW_MONGODB_URL=wire.url,
            DETFLOW_MONGODB_DB=DATABASE, DETFLOW_REDIS_URL=redis_server.url,
            DETFLOW_HANDLER_MODULES="tests.handlers", DETFLOW_INSIGHTS_AUTO="0",
            DETFLOW_LEASE_S=str(LEASE_S), DETFLOW_BULK_LEASE_S=str(BULK_LEASE_S),
            DETFLOW_SWEEP_INTERVAL_S="1", DETFLOW_SWEEP_GRACE_S="2", DETFLOW_PURGE_INTERVAL_S="0",
            dramatiq_prom_host="127.0.0.1", dramatiq_prom_port="0",
        )
        yield Stack(tmp_path, environ, wire, client, workers)
    finally:
        for worker in reversed(workers):
            worker.stop()
        client.close()
        redis_server.stop()
        wire.stop()


def failed_executions(define: Any, count: int) -> list[str]:
    """Start ``count`` executions whose step fails twice (its whole budget of 2) and succeeds from
    its third attempt: FAILED now; a retry opens a new budget of 2, so its run succeeds even when
    the kill loses its first attempt. Return their ids once FAILED."""
    define(WORKFLOW, [{"handler": "test.flaky",
                       "retry": {"max_attempts": 2, "initial_delay_s": 0.01, "max_delay_s": 0.05}}])
    ids = [operations.start(WORKFLOW, {"succeed_on": 3})[0]["_id"] for _ in range(count)]
    assert {d["status"] for d in wait_terminal(*ids, timeout=120)} == {"FAILED"}
    return ids


def with_history(db: Any, doc: dict[str, Any]) -> dict[str, Any]:
    """``store.with_history`` read from the stack's database."""
    moved = doc.get("history_seq", 0)
    chunks = db[store.HISTORY].find({"execution_id": doc["_id"]}).sort("first_seq", 1) if moved else []
    older = [e for chunk in chunks for e in chunk["events"] if e["seq"] <= moved]
    return {**doc, "events": older + list(doc.get("events") or [])}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bulk_crash__a_runworker_killed_mid_batch_and_restarted_retries_each_execution_once(
        worker: Any, define: Any, stack: Stack) -> None:
    began = time.monotonic()
    ids = failed_executions(define, EXECUTIONS)  # cheaply, in this process; then copied over
    stack.manage("ensure_indexes")
    stack.db["executions"].insert_many(list(store.collection().find({"_id": {"$in": ids}})))
    moved = list(store.history().find({"execution_id": {"$in": ids}}))
    if moved:
        stack.db[store.HISTORY].insert_many(moved)
    prepared = time.monotonic() - began

    first = stack.runworker()
    # The operator's path, in its own process: bulk.create stores the op and sends it to a worker.
    op_id = stack.manage("shell", "-c", (
        "from executions import bulk; "
        f"print(bulk.create('retry', {{'status': 'FAILED', 'workflow': {WORKFLOW!r}}}, "
        "'upstream fixed', 'ops')['_id'])")).strip().splitlines()[-1]
    assert stack.op(op_id)["total"] == EXECUTIONS

    def mid_batch() -> tuple[dict[str, Any], int] | None:
        # At least one batch saved, and executions retried in the batch that is not saved yet.
        op = stack.op(op_id)
        if op["done"] == 0:
            return None
        marked = stack.db["executions"].count_documents({"bulk_operations": op_id})
        return (op, marked) if op["done"] < marked < EXECUTIONS else None

    running, marked = until("in the middle of a batch", mid_batch, first)
    killed_at = time.monotonic()
    first.kill()  # SIGKILL to runworker's whole group at once: its sweeper, its Dramatiq process
    until("runworker's process group gone", lambda: not group_alive(first.pid), None, timeout_s=10)
    at_kill = stack.op(op_id)
    at_kill_marked = stack.db["executions"].count_documents({"bulk_operations": op_id})
    unfinished = stack.db["executions"].count_documents(
        {"bulk_operations": op_id, "status": {"$ne": "SUCCEEDED"}})
    assert at_kill["status"] == bulk.RUNNING and at_kill["done"] < EXECUTIONS, at_kill
    # One runner held the op from its first batch to the kill: its lease never ran out meanwhile.
    assert at_kill["lease_owner"] == running["lease_owner"] is not None, (running, at_kill)

    second = stack.runworker()
    done = until("the bulk operation finished",
                 lambda: (o := stack.op(op_id))["status"] == bulk.SUCCEEDED and o, second)
    finished = time.monotonic() - killed_at

    def all_succeeded() -> list[dict[str, Any]] | None:
        docs = list(stack.db["executions"].find({"_id": {"$in": ids}}))
        return docs if all(d["status"] == "SUCCEEDED" and not d.get("due_at") for d in docs) else None

    docs = until("every execution SUCCEEDED", all_succeeded, second)
    assert (done["total"], done["done"], done["failed"]) == (EXECUTIONS, EXECUTIONS, 0), done
    assert done["acted"] + done["skipped"] == EXECUTIONS, done
    assert done["errors"] == []
    assert len(docs) == EXECUTIONS
    for doc in docs:
        doc = with_history(stack.db, doc)
        retried = [e for e in doc["events"] if e["type"] == "retried"]
        assert [e.get("bulk") for e in retried] == [op_id], (doc["_id"], retried)
        assert doc["bulk_operations"] == [op_id], doc["_id"]
    assert second.stop() == 0, second.log.tail()

    assert "no divergence" in stack.manage("verify", "--all")
    assert_invariants(*(with_history(stack.db, d) for d in stack.db["executions"].find({})))
    lost = sum(1 for d in docs for e in with_history(stack.db, d)["events"] if e["type"] == "attempt_lost")
    print(f"\nbulk crash: {EXECUTIONS} FAILED prepared in {prepared:.1f} s; killed at done "
          f"{running['done']} with {marked} retried ({at_kill['done']} saved, {at_kill_marked} retried "
          f"at the kill, {unfinished} of them not run yet); finished {finished:.1f} s after the kill "
          f"(acted {done['acted']}, skipped {done['skipped']}); {lost} attempts lost by the kill; "
          f"{time.monotonic() - began:.1f} s in all")


def test_bulk_crash__executions_a_dead_runner_retried_in_its_unsaved_batch_are_counted_not_retried_again(
        worker: Any, define: Any) -> None:
    from tests.integration.test_bulk import failed_executions as permanently_failed
    from tests.integration.test_bulk import retried_by

    failed = sorted(permanently_failed(define, 250))
    op = bulk.store_op("retry", {"status": "FAILED", "workflow": "fails"}, "upstream fixed", "ops")
    claimed = bulk.claim(op["_id"], "dead-worker")
    assert claimed is not None
    saved = bulk.run_batch(claimed, "dead-worker")
    assert saved is not None and saved["done"] == bulk.BATCH
    # The runner retries three of its next batch, then dies before it saves that batch.
    for execution_id in failed[bulk.BATCH:bulk.BATCH + 3]:
        operations.retry(execution_id, "ops", "upstream fixed", bulk=op["_id"])
    bulk.collection().update_one({"_id": op["_id"]}, {"$set": {"lease_expires_at": to_dt(now_ms() - 1)}})

    done = bulk.run(op["_id"], "next-worker")

    assert done is not None
    assert (done["status"], done["done"], done["acted"], done["skipped"], done["failed"]) == (
        bulk.SUCCEEDED, 250, 250, 0, 0), done
    assert [retried_by(i, op["_id"]) for i in failed] == [1] * 250


def test_bulk_crash__a_batch_slower_than_the_lease_keeps_it(
        worker: Any, define: Any, settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.integration.test_bulk import failed_executions as permanently_failed

    failed = permanently_failed(define, 8)
    settings.DETFLOW = {**settings.DETFLOW, "BULK_LEASE_S": 1}
    op = bulk.store_op("retry", {"status": "FAILED", "workflow": "fails"}, "upstream fixed", "ops")
    real_retry = operations.retry
    stolen: list[Any] = []

    def slow_retry(execution_id: str, *args: Any, **kwargs: Any) -> Any:
        # Each retry takes a quarter of the lease: the batch outlasts it twice over.
        time.sleep(0.25)
        stolen.append(bulk.claim(op["_id"], "another-worker"))
        return real_retry(execution_id, *args, **kwargs)

    monkeypatch.setattr(operations, "retry", slow_retry)
    started = time.monotonic()
    done = bulk.run(op["_id"], "slow-worker")

    assert time.monotonic() - started > 2 * bulk.lease_ms() / 1000
    assert stolen == [None] * 8, "another runner took the lease of a runner still at work"
    assert done is not None and (done["status"], done["done"], done["acted"]) == (bulk.SUCCEEDED, 8, 8)
    assert len(failed) == 8
