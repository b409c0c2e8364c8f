"""Bounded execution documents: whatever the history, the working document stays within its byte
budget (the oldest events move to the history collection by the same fenced write; attempt records
and log lines are cut to their share), no write is refused, and every reader sees the whole history."""
from __future__ import annotations

import time
from typing import Any

import bson
import pytest

from detflow_site.api import views  # noqa: F401  (the events page reads across both)
from executions import audit, operations, runner, store
from tests.reliability.invariants import assert_invariants

pytestmark = pytest.mark.usefixtures("audited")


def size(execution_id: str) -> int:
    doc = store.collection().find_one({"_id": execution_id})
    assert doc is not None
    return len(bson.encode(doc))


def advance_until_idle(execution_id: str, limit: int = 1000) -> dict[str, Any]:
    for _ in range(limit):
        runner.advance(execution_id, worker="w")
        doc = store.load_working(execution_id)
        assert doc is not None
        if doc["status"] in ("SUCCEEDED", "FAILED", "CANCELLED") and not doc.get("due_at"):
            return doc
    raise AssertionError(f"{execution_id} did not finish")


@pytest.mark.slow
def test_ten_thousand_operator_retries__keep_the_document_small_and_the_history_whole(
    define: Any, client: Any, admin_user: Any
) -> None:
    define("again", [{"handler": "test.permanent", "retry": {"max_attempts": 1}}])
    doc, _ = operations.start("again", {"n": 1})
    advance_until_idle(doc["_id"])
    sizes = []
    started = time.monotonic()
    for n in range(10_000):
        operations.retry(doc["_id"], by="alice", reason=f"try {n}")
        advance_until_idle(doc["_id"])
        if n % 1000 == 0:
            sizes.append(size(doc["_id"]))
    took = time.monotonic() - started

    whole = store.load(doc["_id"])
    assert whole is not None
    assert [e["seq"] for e in whole["events"]] == list(range(1, whole["event_seq"] + 1))
    assert whole["event_seq"] > 40_000
    assert audit.verify(whole) == []
    assert_invariants(whole)
    working = store.collection().find_one({"_id": doc["_id"]})
    assert working is not None
    assert len(working["events"]) <= store.EVENTS_KEPT + store.HISTORY_CHUNK + 4
    assert max(sizes) < 1024 * 1024, sizes  # a few hundred events and one step: far below 16 MiB
    assert max(sizes) - min(sizes[1:]) < 64 * 1024, f"the document grows with the history: {sizes}"
    # The API's events page reads across the history and the document.
    client.force_login(admin_user)
    page = client.get(f"/api/v1/executions/{doc['_id']}/events/?after=100&limit=3").json()
    assert [e["seq"] for e in page["results"]] == [101, 102, 103]
    tail = client.get(f"/api/v1/executions/{doc['_id']}/events/?after={whole['event_seq'] - 2}").json()
    assert [e["seq"] for e in tail["results"]] == [whole["event_seq"] - 1, whole["event_seq"]]
    print(f"10,000 retries in {took:.1f}s; document sizes {sizes}")


def test_two_hundred_noisy_steps__keep_attempt_records_within_their_budget(define: Any) -> None:
    define("noisy", [{"handler": "test.noisy", "retry": {"max_attempts": 1}} for _ in range(200)])
    doc, _ = operations.start("noisy", {"lines": 200})

    done = advance_until_idle(doc["_id"])

    assert done["status"] == "SUCCEEDED"
    stored = store.collection().find_one({"_id": doc["_id"]})
    assert stored is not None
    records = sum(len(bson.encode({"a": s["attempts"]})) for s in stored["steps"])
    assert records <= store.RECORDS_BUDGET
    assert len(bson.encode(stored)) < 4 * 1024 * 1024
    [record] = stored["steps"][0]["attempts"]
    assert record["logs_dropped"] > 150 and record["logs"], "the newest lines are kept, the rest counted"
    assert len(bson.encode(record)) <= store.record_bytes(200)
    whole = store.load(doc["_id"])
    assert whole is not None and audit.verify(whole) == []


def test_a_long_failure__is_cut_to_its_share_and_still_says_what_failed(define: Any) -> None:
    define("loud", [{"handler": "test.noisy", "retry": {"max_attempts": 1}}])
    doc, _ = operations.start("loud", {"lines": 400, "fail": True})

    done = advance_until_idle(doc["_id"])

    assert done["status"] == "FAILED"
    stored = store.collection().find_one({"_id": doc["_id"]})
    assert stored is not None
    [record] = stored["steps"][0]["attempts"][-1:]
    assert len(bson.encode(record)) <= store.RECORD_BYTES
    assert record["message"].startswith("noisy failure: ")
    assert "noisy failure" in stored["steps"][0]["error"]["message"]


def test_skip_output_and_edited_input__count_in_the_data_cap(
    define: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from executions.errors import InvalidArgument

    monkeypatch.setattr(store, "DATA_BYTES", 400)
    define("capped", [{"handler": "test.permanent", "retry": {"max_attempts": 1}}, {"handler": "test.echo"}])
    doc, _ = operations.start("capped", {"n": 1})
    advance_until_idle(doc["_id"])

    with pytest.raises(InvalidArgument, match="would take this execution's outputs"):
        operations.skip(doc["_id"], by="alice", reason="by hand", output={"x": "y" * 500})
    with pytest.raises(InvalidArgument, match="would take this execution's outputs"):
        operations.retry(doc["_id"], by="alice", reason="bigger", input={"x": "y" * 500})
    operations.retry(doc["_id"], by="alice", reason="small", input={"x": "y"})
    assert store.load_working(doc["_id"])["steps"][0]["input_json"] == '{"x":"y"}'


def test_retry_event__records_a_large_input_difference_by_its_paths_alone(define: Any) -> None:
    define("diffs", [{"handler": "test.permanent", "retry": {"max_attempts": 1}}])
    doc, _ = operations.start("diffs", {f"k{i}": "v" * 100 for i in range(200)})
    advance_until_idle(doc["_id"])

    operations.retry(doc["_id"], by="alice", reason="all new", input={f"k{i}": "w" * 100 for i in range(200)})

    whole = store.load(doc["_id"])
    assert whole is not None
    [event] = [e for e in whole["events"] if e["type"] == "retried"]
    assert len(event["input_diff_json"].encode()) <= operations.DIFF_BYTES
    assert "w" * 100 not in event["input_diff_json"] and '"op":"more"' in event["input_diff_json"]
