"""Store faults on the history: a long execution's events move out of its document to
``execution_history`` by a write the store fault seam strikes like any other (an error before it is
applied, or after: an ambiguous write), and the history stays whole: no gap, no event twice, and it
replays through the engine. Faults come from ``detflow_site.chaos.storefaults``; everything else is
real (the engine, a Dramatiq worker, Redis)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from detflow_site.chaos.storefaults import HISTORY, Rule, StoreFaults, installed
from executions import audit, operations, store
from tests.conftest import wait_for
from tests.reliability.invariants import assert_invariants

pytestmark = pytest.mark.usefixtures("audited")

#: Steps of the long execution (the most a definition may have): two events or more each.
STEPS = 200


@pytest.fixture
def faults() -> Iterator[StoreFaults]:
    with installed() as injected:
        yield injected


@pytest.fixture
def small_history(monkeypatch: pytest.MonkeyPatch) -> None:
    """Move events out after 40 held, 20 at a time (instead of 600 and 200), so that one execution
    of ``STEPS`` steps moves its events out many times."""
    monkeypatch.setattr(store, "EVENTS_KEPT", 40)
    monkeypatch.setattr(store, "HISTORY_CHUNK", 20)


def finished(execution_id: str) -> dict[str, Any] | None:
    doc = store.load_working(execution_id)
    return doc if doc and doc["status"] in ("SUCCEEDED", "FAILED") and not doc.get("due_at") else None


@pytest.mark.parametrize("mode", ["before", "after"])
def test_history_write__that_fails_each_time_events_move_out_leaves_the_history_whole(
    define: Any, faults: StoreFaults, small_history: None, worker: Any, mode: str
) -> None:
    define("long", [{"handler": "test.echo", "retry": {"max_attempts": 1}} for _ in range(STEPS)])
    doc, _ = operations.start("long", {"n": 1})
    # Each move of events is one insert into the history, tried again after the error: the first
    # try of every move fails (the calls 1, 3, 5, ... of the execution's history writes).
    rules = [faults.add(Rule(mode, ops=frozenset({"insert_one"}), collection=HISTORY, times=1,
                             skip=2 * k, execution_id=doc["_id"]))
             for k in range(STEPS)]

    done = wait_for(lambda: finished(doc["_id"]), timeout=60, what="the long execution to finish")

    chunks = list(store.history().find({"execution_id": doc["_id"]}).sort("first_seq", 1))
    assert len(chunks) >= 10, "the events hardly moved out: the faults were not exercised"
    assert faults.injected == {mode: len(chunks)}, "not every move of events met its fault"
    assert sum(rule.struck for rule in rules) == len(chunks)
    assert done["status"] == "SUCCEEDED"
    assert [s["attempt"] for s in done["steps"]] == [1] * STEPS
    # The chunks follow one another: none missing, none overlapping, each as its numbers say.
    assert chunks[0]["first_seq"] == 1
    assert [c["first_seq"] for c in chunks[1:]] == [c["last_seq"] + 1 for c in chunks[:-1]]
    assert chunks[-1]["last_seq"] == done["history_seq"]
    for chunk in chunks:
        assert [e["seq"] for e in chunk["events"]] == list(range(chunk["first_seq"], chunk["last_seq"] + 1))
    whole = store.load(doc["_id"])
    assert whole is not None
    assert [e["seq"] for e in whole["events"]] == list(range(1, whole["event_seq"] + 1))
    assert audit.verify(whole) == []
    assert_invariants(whole)


def test_history_rule__strikes_only_the_collection_it_names(define: Any, faults: StoreFaults) -> None:
    define("short", [{"handler": "test.echo", "retry": {"max_attempts": 1}}])
    on_history = faults.add(Rule("before", collection=HISTORY, times=None))

    doc, _ = operations.start("short", {"n": 1})

    assert on_history.struck == 0, "a rule on the history struck a write to the executions"
    with pytest.raises(Exception, match="injected"):
        store.history().insert_one({"_id": f"{doc['_id']}:1", "execution_id": doc["_id"],
                                    "first_seq": 1, "last_seq": 0, "events": []})
    assert on_history.struck == 1
    faults.clear()
    assert store.history().count_documents({}) == 0, "a write struck before it was sent was applied"


def test_history_write__refused_for_good_loses_no_outcome_and_the_next_write_moves_the_events(
    define: Any, faults: StoreFaults, small_history: None, worker: Any
) -> None:
    """A history insert the store refuses for good (no retry mends it) does not fail the outcome
    write it precedes: a step that succeeded with ``max_attempts`` 1 stays SUCCEEDED, the events
    stay in the document for that write, and a later write moves them out."""
    define("long", [{"handler": "test.echo", "retry": {"max_attempts": 1}} for _ in range(60)])
    doc, _ = operations.start("long", {"n": 1})
    refused = faults.add(Rule("refuse", ops=frozenset({"insert_one"}), collection=HISTORY, times=3,
                              execution_id=doc["_id"]))

    done = wait_for(lambda: finished(doc["_id"]), timeout=60, what="the long execution to finish")

    assert refused.struck == 3
    assert done["status"] == "SUCCEEDED"
    assert [s["attempt"] for s in done["steps"]] == [1] * 60
    assert done.get("history_seq", 0) > 0, "the events never moved out after the refusals"
    whole = store.load(doc["_id"])
    assert whole is not None
    assert [e["seq"] for e in whole["events"]] == list(range(1, whole["event_seq"] + 1))
    assert audit.verify(whole) == []
    assert_invariants(whole)
