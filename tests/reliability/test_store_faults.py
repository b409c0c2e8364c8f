"""Store failures survived: an ambiguous write is recognised and never applied twice, an election
during an outcome write loses nothing, a store that stays down releases the lock, and one
execution that keeps failing never stops a sweep. Faults come from the store seam
(``detflow_site.chaos.storefaults``), as a replica set would fail; everything else is real."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo.errors import PyMongoError

from detflow_site.chaos.storefaults import WRITES, Rule, StoreFaults, installed
from executions import engine, operations, runner, store, transitions
from executions.engine import Claim, decide
from executions.store import Snapshot, now_ms
from executions.sweeper import sweep
from tests.conftest import wait_for
from tests.handlers import LEDGER
from tests.reliability.invariants import assert_each_attempt_ran_once, assert_invariants

pytestmark = pytest.mark.usefixtures("audited")


@pytest.fixture
def faults() -> Iterator[StoreFaults]:
    with installed() as injected:
        yield injected


def finished(execution_id: str) -> dict[str, Any] | None:
    """The execution once it is terminal; ``None`` before, or while the store answers no one."""
    try:
        doc = store.load(execution_id)
    except PyMongoError:
        return None
    return doc if doc and doc["status"] in ("SUCCEEDED", "FAILED") and not doc.get("due_at") else None


def events_of(doc: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in doc["events"] if e["type"] == kind]


@pytest.mark.parametrize("mode", ["before", "after"])
def test_outcome_write__that_fails_once_is_recorded_once_and_never_as_lost(
    define: Any, faults: StoreFaults, mode: str
) -> None:
    define("once", [{"handler": "test.echo", "retry": {"max_attempts": 1}},
                    {"handler": "test.echo", "retry": {"max_attempts": 1}}])
    doc, _ = operations.start("once", {"n": 1})
    # The claim is the first fenced write, the outcome the second: strike the second.
    faults.add(Rule(mode, ops=frozenset({"update_one"}), times=1, skip=1, execution_id=doc["_id"],
                    fenced=True))

    runner.advance(doc["_id"], worker="w")  # both steps, back to back, in this one call

    done = store.load(doc["_id"])
    assert done is not None
    assert faults.injected == {mode: 1}
    assert done["status"] == "SUCCEEDED", "the run did not go on from the write it could not see"
    assert [e["attempt"] for e in events_of(done, "step_succeeded")] == [1, 1]
    assert not events_of(done, "attempt_lost")
    assert_each_attempt_ran_once(done)
    assert_invariants(done)


def test_election__during_the_outcome_write_loses_nothing_when_it_ends_within_the_lease(
    define: Any, faults: StoreFaults, settings: Any, worker: Any, sweeper: Any
) -> None:
    settings.DETFLOW = {**settings.DETFLOW, "LEASE_S": "6"}
    define("elected", [{"handler": "test.election", "retry": {"max_attempts": 1}},
                       {"handler": "test.echo", "retry": {"max_attempts": 1}}])
    from tests.reliability import handlers

    handlers.ELECTIONS.append((faults, 2.0))
    doc, _ = operations.start("elected", {"n": 1})

    done = wait_for(lambda: finished(doc["_id"]), timeout=30, what="the execution to finish")

    assert faults.injected.get("not_primary", 0) > 0, "the election never struck"
    assert done["status"] == "SUCCEEDED"
    assert not events_of(done, "attempt_lost")
    assert [s["attempt"] for s in done["steps"]] == [1, 1]
    assert sum(n for (key, _), n in LEDGER.items() if key.endswith(":s1")) == 1, "the handler ran twice"


def test_store_down__past_every_retry_releases_the_lock_and_the_lease_recovers_the_attempt(
    define: Any, faults: StoreFaults, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "PATIENCE_S", 0.3)
    define("down", [{"handler": "test.echo", "retry": {"max_attempts": 2}}])
    doc, _ = operations.start("down", {"n": 1})
    faults.add(Rule("before", ops=WRITES, times=None, skip=1, execution_id=doc["_id"], fenced=True))

    runner.advance(doc["_id"], worker="w")  # claims, runs, then gives the outcome up

    assert redis_client.get(f"detflow:lock:{doc['_id']}") is None, "the lock was left behind"
    faults.clear()
    left = store.load(doc["_id"])
    assert left is not None and left["steps"][0]["status"] == "RUNNING"
    report = sweep(now=now_ms() + 60_000)
    assert report.lost == [doc["_id"]]


def test_sweep__one_execution_whose_every_write_fails_does_not_stop_the_others(
    define: Any, faults: StoreFaults, redis_client: Any
) -> None:
    define("swept", [{"handler": "test.echo", "retry": {"max_attempts": 3}}])
    ids = []
    for n in range(101):
        doc, _ = operations.start("swept", {"n": n})
        snap = Snapshot.of(store.load_working(doc["_id"]))
        decision = decide(snap.state, now_ms())
        assert isinstance(decision, Claim)
        then = now_ms() - 60_000
        claim = engine.claimed(snap.state, decision, "dead-worker", snap.version + 1, then + 1000)
        assert transitions.commit(snap, claim, then) is not None
        ids.append(doc["_id"])
    broken = ids[0]  # due first: it comes first in every sweep
    faults.add(Rule("before", ops=WRITES, times=None, execution_id=broken))

    report = sweep()

    assert report.failed == [broken]
    assert sorted(report.lost) == sorted(ids[1:])
    stuck = store.load(broken)
    assert stuck is not None and stuck["steps"][0]["status"] == "RUNNING"
    faults.clear()
    assert sweep().lost == [broken]


def test_api__answers_503_while_the_store_elects_and_changes_nothing(
    define: Any, faults: StoreFaults, monkeypatch: pytest.MonkeyPatch, admin_client: Any
) -> None:
    monkeypatch.setattr(store, "PATIENCE_S", 0.3)
    define("waits", [{"handler": "test.echo"}])
    doc, _ = operations.start("waits", {"n": 1})
    faults.election(5)

    response = admin_client.post(f"/api/v1/executions/{doc['_id']}/cancel/", {"reason": "x"},
                                 content_type="application/json")

    assert response.status_code == 503, response.content
    assert response.json()["code"] == "store_unavailable"
    faults.clear()
    after = store.load(doc["_id"])
    assert after is not None and after["status"] == "PENDING"
    assert json.loads(after["input_json"]) == {"n": 1}


def test_renewals__one_slow_renewal_never_holds_back_another_attempts(
    define: Any, faults: StoreFaults, settings: Any, worker: Any, sweeper: Any
) -> None:
    settings.DETFLOW = {**settings.DETFLOW, "LEASE_S": "1.5"}  # renewed every 0.5 s
    define("slow", [{"handler": "test.sleep", "retry": {"max_attempts": 1}}])
    slow, _ = operations.start("slow", {"sleep_s": 3})
    steady, _ = operations.start("slow", {"sleep_s": 3})
    # Every renewal of the first takes 3 s: twice its lease. It may be recorded lost; the other
    # one must not be, though its renewals fall due while the first's hang.
    faults.add(Rule("latency", ops=frozenset({"update_one"}), times=None, execution_id=slow["_id"],
                    fenced=False, delay_s=3.0))

    done = wait_for(lambda: finished(steady["_id"]), timeout=30, what="the steady execution to finish")

    assert faults.injected.get("latency", 0) > 0, "no renewal of the slow execution was slowed"
    assert done["status"] == "SUCCEEDED", [e["type"] for e in done["events"]]
    assert not events_of(done, "attempt_lost")
    wait_for(lambda: finished(slow["_id"]), timeout=30, what="the slow execution to finish")


def test_api__answers_409_when_the_store_refuses_a_write_for_good(
    define: Any, faults: StoreFaults, admin_client: Any
) -> None:
    define("refused", [{"handler": "test.echo"}])
    doc, _ = operations.start("refused", {"n": 1})
    # The server refusing the document (too large, say): an error no retry mends.
    faults.add(Rule("refuse", ops=WRITES, times=None, execution_id=doc["_id"]))

    response = admin_client.post(f"/api/v1/executions/{doc['_id']}/cancel/", {"reason": "x"},
                                 content_type="application/json")

    assert response.status_code == 409, response.content
    body = response.json()
    assert body["code"] == "store_refused" and "code 17419" in body["detail"]
    faults.clear()
    after = store.load(doc["_id"])
    assert after is not None and after["status"] == "PENDING"


def test_message__whose_first_read_meets_an_election_waits_it_out_instead_of_being_dropped(
    define: Any, faults: StoreFaults, redis_client: Any
) -> None:
    from detflow_site.chaos.storefaults import READS

    define("read", [{"handler": "test.echo", "retry": {"max_attempts": 1}}])
    doc, _ = operations.start("read", {"n": 1})
    faults.election(0.6, ops=READS)

    runner.advance(doc["_id"], worker="w")

    assert faults.injected.get("not_primary", 0) > 0, "the election never struck"
    done = store.load(doc["_id"])
    assert done is not None and done["status"] == "SUCCEEDED"
    assert redis_client.get(f"detflow:lock:{doc['_id']}") is None
