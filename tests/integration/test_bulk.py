"""Bulk retry and cancel by filter: the exact set, each execution acted on once, crash and cancel."""
from __future__ import annotations

from typing import Any

import pytest

from executions import bulk, operations
from executions.errors import InvalidArgument
from executions.store import now_ms, to_dt
from tests.conftest import wait_for, wait_terminal
from tests.integration.support import events_of, loaded


def failed_executions(define: Any, count: int, name: str = "fails") -> list[str]:
    """Start ``count`` executions whose first step fails for good; return their ids once FAILED."""
    define(name, [{"handler": "test.permanent"}])
    ids = [operations.start(name, {"n": n})[0]["_id"] for n in range(count)]
    docs = wait_terminal(*ids, timeout=60)
    assert {d["status"] for d in docs} == {"FAILED"}
    return ids


def retried_by(execution_id: str, op_id: str) -> int:
    return sum(1 for e in events_of(loaded(execution_id), "retried") if e.get("bulk") == op_id)


def test_bulk__dry_run_counts_exactly_the_matching_executions(worker: Any, define: Any) -> None:
    failed = failed_executions(define, 300)
    define("ok", [{"handler": "test.echo"}])
    fine = [operations.start("ok", {"n": n})[0]["_id"] for n in range(20)]
    wait_terminal(*fine)

    planned = bulk.plan("retry", {"status": "FAILED", "workflow": "fails"})

    assert planned["count"] == 300
    assert planned["sample"] == sorted(failed)[: bulk.SAMPLE]
    assert bulk.plan("retry", {"status": "FAILED", "workflow": "ok"})["count"] == 0
    assert {loaded(i)["status"] for i in failed} == {"FAILED"}  # a dry run changes nothing


def test_bulk__retry_retries_each_matching_execution_once(worker: Any, define: Any) -> None:
    failed = failed_executions(define, 300)

    op = bulk.create("retry", {"status": "FAILED", "workflow": "fails"}, "upstream fixed", "ops")

    done = wait_for(lambda: (o := bulk.get(op["_id"])) and o["status"] == bulk.SUCCEEDED and o,
                    timeout=60, what="the bulk retry to finish")
    assert (done["total"], done["done"], done["acted"], done["failed"]) == (300, 300, 300, 0)
    assert [retried_by(i, op["_id"]) for i in failed] == [1] * 300
    assert all(op["_id"] in loaded(i)["bulk_operations"] for i in failed)


def test_bulk__resumed_after_a_dead_runner_acts_on_each_execution_once(worker: Any, define: Any) -> None:
    failed = failed_executions(define, 450)
    op = bulk.store_op("retry", {"status": "FAILED", "workflow": "fails"}, "upstream fixed", "ops")
    # A runner takes the lease, handles one batch and dies holding it.
    claimed = bulk.claim(op["_id"], "dead-worker")
    assert claimed is not None
    after_one = bulk.run_batch(claimed, "dead-worker")
    assert after_one is not None and after_one["done"] == bulk.BATCH
    assert bulk.claim(op["_id"], "another") is None  # the lease still holds it
    assert bulk.resend_expired() == []

    # Time passes: the dead runner's lease runs out; the sweeper's pass sends the op again.
    bulk.collection().update_one({"_id": op["_id"]},
                                 {"$set": {"lease_expires_at": to_dt(now_ms() - 1)}})
    assert bulk.resend_expired() == [op["_id"]]
    done = wait_for(lambda: (o := bulk.get(op["_id"])) and o["status"] == bulk.SUCCEEDED and o,
                    timeout=60, what="the resumed run to finish")
    assert (done["done"], done["acted"], done["skipped"], done["failed"]) == (450, 450, 0, 0)
    assert [retried_by(i, op["_id"]) for i in failed] == [1] * 450


def test_bulk__cancel_stops_the_run_at_its_next_batch(worker: Any, define: Any) -> None:
    failed = failed_executions(define, 450)
    op = bulk.store_op("retry", {"status": "FAILED", "workflow": "fails"}, "upstream fixed", "ops")
    claimed = bulk.claim(op["_id"], "runner")
    assert claimed is not None
    after_one = bulk.run_batch(claimed, "runner")
    assert after_one is not None

    assert bulk.cancel(op["_id"])["status"] == bulk.CANCELLED  # type: ignore[index]

    assert bulk.run_batch(after_one, "runner") is None
    assert bulk.run(op["_id"], "runner")["done"] == bulk.BATCH  # type: ignore[index]
    assert sum(retried_by(i, op["_id"]) for i in failed) == bulk.BATCH


def test_bulk__skips_an_execution_that_no_longer_qualifies(worker: Any, define: Any) -> None:
    failed = failed_executions(define, 3)
    op = bulk.store_op("cancel", {"workflow": "fails"}, "stop them", "ops")

    done = bulk.run(op["_id"])

    assert done is not None
    assert (done["done"], done["acted"], done["skipped"], done["failed"]) == (3, 0, 3, 0)
    assert {loaded(i)["status"] for i in failed} == {"FAILED"}


@pytest.mark.parametrize(("action", "reason", "field"), [("delete", "r", "action"), ("retry", " ", "reason")])
def test_bulk__bad_input_names_the_field(action: str, reason: str, field: str) -> None:
    before = bulk.collection().count_documents({})
    with pytest.raises(InvalidArgument) as raised:
        bulk.store_op(action, {}, reason, "ops")
    assert raised.value.field == field
    assert bulk.collection().count_documents({}) == before
