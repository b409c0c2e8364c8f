"""AI is read-only (DESIGN invariant 8): writing a post-mortem changes nothing in the executions.

Two checks at once: the executions collection is the same before and after, and no write command
reaches it while post-mortems are written (counted at mongomock's collection methods on the embedded
store, or heard by a ``pymongo`` command listener on a real MongoDB).
"""
from __future__ import annotations

from typing import Any

from executions import operations
from insights import service
from tests.conftest import wait_for, wait_terminal
from tests.integration.insights.support import FakeModel, Writes, failed, lost, run_to_end, snapshot


def test_readonly__writing_post_mortems_of_every_kind_changes_nothing_in_the_executions(
    define: Any, writes: Writes
) -> None:
    ids = [failed(define)["_id"], lost(define)["_id"],
           failed(define, handler="test.boom", name="boom",
                  retry={"max_attempts": 2, "initial_delay_s": 0})["_id"]]
    define("cancelled", [{"handler": "test.echo"}])
    ids.append(operations.start("cancelled", {})[0]["_id"])
    operations.cancel(ids[-1], by="op", reason="not needed")
    define("fine", [{"handler": "test.echo"}])
    ids.append(run_to_end(operations.start("fine", {})[0]["_id"])["_id"])
    before = snapshot()
    writes.clear()

    for execution_id in ids:
        service.postmortem(execution_id)
        service.postmortem(execution_id, regenerate=True)
        service.on_finished(execution_id)

    assert snapshot() == before
    assert writes.to("executions") == []
    assert {collection for collection, _ in writes.seen} == {"insights"}
    assert service.collection().count_documents({}) == len(ids)


def test_readonly__a_model_call_that_falls_back_changes_nothing_in_the_executions(
    define: Any, writes: Writes, model: FakeModel
) -> None:
    model.behaviour = "error"
    doc = failed(define)
    before = snapshot()
    writes.clear()

    record = service.postmortem(doc["_id"])

    assert record["source"] == "rules"
    assert snapshot() == before
    assert writes.to("executions") == []


def test_readonly__the_actor_writes_only_insights(
    worker: Any, define: Any, writes: Writes, settings: Any
) -> None:
    from insights.actors import POSTMORTEM

    settings.DETFLOW = {**settings.DETFLOW, "INSIGHTS_AUTO": "true"}
    define("bad", [{"handler": "test.permanent"}, {"handler": "test.echo"}])
    ids = [operations.start("bad", {"n": n})[0]["_id"] for n in range(3)]
    wait_terminal(*ids)
    before = snapshot()

    wait_for(lambda: service.collection().count_documents({}) == len(ids), what="three post-mortems")

    assert snapshot() == before
    assert {collection for collection, _ in writes.by_actor[POSTMORTEM]} == {"insights"}
    assert {collection for collection, _ in writes.by_actor["detflow.advance"]} == {"executions"}
