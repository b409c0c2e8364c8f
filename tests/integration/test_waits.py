"""Sleeps, waits and signals on a real worker: nothing is held while an execution waits, a signal
ends a wait (even one sent before the wait started, once per key), a timeout ends it by its rule."""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from executions import diagnosis, operations, store, sweeper
from executions.audit import verify
from executions.errors import IdempotencyConflict, InvalidArgument, OperationNotAllowed
from tests.conftest import running_worker, wait_for, wait_terminal
from tests.integration.support import events_of, loaded, ms, the_event

WAIT = {"signal": "approved", "timeout_s": 30}


def waiting(execution_id: str, index: int) -> dict[str, Any]:
    """Wait until step ``index`` is WAITING; return the document."""
    return wait_for(lambda: (doc := loaded(execution_id))["steps"][index]["status"] == "WAITING" and doc,
                    what=f"step {index} to wait")


def holds_nothing(redis_client: Any, doc: dict[str, Any]) -> None:
    """No lock, no lease, no running attempt: only the stored state and a delayed message. The
    runner releases the lock just after the write that made the step WAITING: wait for that, then
    check the step is still waiting (the lock is not taken again while it sleeps)."""
    wait_for(lambda: redis_client.exists(f"detflow:lock:{doc['_id']}") == 0, what="the lock released")
    assert all("lease_expires_at" not in s and "current" not in s for s in doc["steps"])
    assert any(s["status"] == "WAITING" for s in store.load(doc["_id"])["steps"]), "it woke meanwhile"


def test_sleep__holds_no_lock_or_lease_and_ends_when_due(worker: Any, define: Any, redis_client: Any) -> None:
    define("nap", [{"handler": "test.echo"}, {"name": "nap", "sleep": {"seconds": 1.5}},
                   {"handler": "test.echo"}])
    started, _ = operations.start("nap", {"n": 1})
    eid = started["_id"]

    asleep = waiting(eid, 1)
    holds_nothing(redis_client, asleep)
    wake_at = ms(asleep["steps"][1]["wake_at"])
    assert ms(asleep["due_at"]) == wake_at

    [doc] = wait_terminal(eid)
    assert doc["status"] == "SUCCEEDED"
    ended = the_event(doc, "wait_ended")
    assert ended["outcome"] == "woke" and ms(ended["at"]) >= wake_at
    slept_until = asleep["steps"][1]["wake_at"].isoformat() + "Z"
    assert json.loads(doc["steps"][1]["output_json"]) == {"slept_until": slept_until}
    assert "wake_at" not in doc["steps"][1] and verify(doc) == []


def test_wait__a_signal_ends_it_and_its_payload_is_the_steps_output(
    worker: Any, define: Any, redis_client: Any
) -> None:
    define("approve", [{"handler": "test.echo"}, {"name": "approval", "wait": WAIT},
                       {"handler": "test.context"}])
    started, _ = operations.start("approve", {"order": 7})
    eid = started["_id"]
    holds_nothing(redis_client, waiting(eid, 1))
    found = diagnosis.diagnose(eid)
    assert found.summary.startswith("step 'approval' waits for signal 'approved' until ")
    assert "0 signals kept and not taken" in found.summary and not found.stuck
    assert "signals/approved/" in found.repair["detail"] and found.next["reason"] == "signal"

    sent = operations.signal(eid, "approved", {"by": "ann", "ok": True}, by="ann", reason="looks right")

    [doc] = wait_terminal(eid)
    assert (sent.created, sent.signal_index, doc["status"]) == (True, 0, "SUCCEEDED")
    assert json.loads(doc["steps"][1]["output_json"]) == {"by": "ann", "ok": True}
    assert json.loads(doc["steps"][2]["output_json"])["outputs"]["approval"] == {"by": "ann", "ok": True}
    assert doc["signals"][0]["consumed_by"] == "approval" and doc["signals"][0]["by"] == "ann"
    kinds = [e["type"] for e in doc["events"]]
    assert kinds.index("wait_started") < kinds.index("signal_received") < kinds.index("signal_consumed")
    assert verify(doc) == []


def test_signal__sent_before_the_wait_is_kept_and_taken_when_it_starts(worker: Any, define: Any) -> None:
    define("early", [{"name": "nap", "sleep": {"seconds": 0.5}}, {"name": "approval", "wait": WAIT}])
    started, _ = operations.start("early", {})
    eid = started["_id"]
    waiting(eid, 0)

    first = operations.signal(eid, "approved", {"n": 1}, by="ops", idempotency_key="k-1")
    again = operations.signal(eid, "approved", {"n": 1}, by="ops", idempotency_key="k-1")
    with pytest.raises(IdempotencyConflict):
        operations.signal(eid, "approved", {"n": 2}, by="ops", idempotency_key="k-1")

    [doc] = wait_terminal(eid)
    assert (first.created, again.created, again.signal_index) == (True, False, 0)
    assert doc["status"] == "SUCCEEDED" and len(doc["signals"]) == 1
    assert json.loads(doc["steps"][1]["output_json"]) == {"n": 1}
    kinds = [e["type"] for e in doc["events"]]
    assert kinds.count("signal_received") == 1
    assert kinds.index("signal_received") < kinds.index("wait_started", kinds.index("wait_started") + 1)
    assert verify(doc) == []


@pytest.mark.parametrize(("rule", "status", "step_status"), [
    ("fail", "FAILED", "FAILED"), ("continue", "SUCCEEDED", "SUCCEEDED"),
    ("skip", "SUCCEEDED", "SKIPPED"),
])
def test_wait__with_no_signal_ends_by_its_on_timeout_rule(
    worker: Any, define: Any, rule: str, status: str, step_status: str
) -> None:
    wait: dict[str, Any] = {"signal": "approved", "timeout_s": 0.3, "on_timeout": rule}
    if rule == "continue":
        wait["default_output"] = {"approved": False}
    define("timeout", [{"name": "approval", "wait": wait}, {"handler": "test.echo"}])
    started, _ = operations.start("timeout", {})

    [doc] = wait_terminal(started["_id"])

    assert (doc["status"], doc["steps"][0]["status"]) == (status, step_status)
    ended = the_event(doc, "wait_ended")
    assert (ended["outcome"], ended["ends"]) == ("timed_out", {"fail": "failed", "continue": "succeeded",
                                                              "skip": "skipped"}[rule])
    if rule == "fail":
        assert doc["steps"][0]["error"]["type"] == "WaitTimedOut" and doc["failed_step"] == "approval"
    if rule == "continue":
        assert json.loads(doc["steps"][0]["output_json"]) == {"approved": False}
    assert verify(doc) == []


def test_wait__of_2_s_ends_within_2_s_and_a_sweep_interval(worker: Any, define: Any, settings: Any) -> None:
    define("two", [{"name": "approval", "wait": {"signal": "approved", "timeout_s": 2}}])
    started, _ = operations.start("two", {})

    [doc] = wait_terminal(started["_id"], timeout=30)

    began, ended = the_event(doc, "wait_started"), the_event(doc, "wait_ended")
    took = ms(ended["at"]) - ms(began["at"])
    assert 2000 <= took <= 2000 + 1000 * float(settings.DETFLOW["SWEEP_INTERVAL_S"]) + 1000


def test_wait__a_lost_wake_up_message_is_sent_again_by_the_sweeper(
    define: Any, broker: Any, redis_client: Any
) -> None:
    define("lost", [{"name": "nap", "sleep": {"seconds": 0.2}}, {"handler": "test.echo"}])
    redis_client.flushdb()
    with running_worker(2):
        started, _ = operations.start("lost", {})
        eid = started["_id"]
        waiting(eid, 0)
    # The worker that held the delayed wake-up message is gone, and Redis lost everything.
    redis_client.flushdb()
    with running_worker(2):
        resent = wait_for(lambda: sweeper.sweep().resent, what="the sweeper to send the lost wake-up")
        [doc] = wait_terminal(eid)
    assert resent == [eid]
    assert doc["status"] == "SUCCEEDED" and verify(doc) == []


def test_sleep__until_a_time_of_the_input_and_a_time_it_cannot_read(worker: Any, define: Any) -> None:
    define("until", [{"name": "nap", "sleep": {"until": "input.at"}}, {"handler": "test.echo"}])
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=300)).isoformat()
    timed, _ = operations.start("until", {"at": soon})
    past, _ = operations.start("until", {"at": 0})
    bad, _ = operations.start("until", {"at": "tomorrow"})
    missing, _ = operations.start("until", {})

    timed_doc, past_doc, bad_doc, missing_doc = wait_terminal(timed["_id"], past["_id"], bad["_id"],
                                                              missing["_id"])

    assert (timed_doc["status"], past_doc["status"]) == ("SUCCEEDED", "SUCCEEDED")
    woke_at = ms(the_event(timed_doc, "wait_started")["wake_at"])
    assert ms(the_event(timed_doc, "wait_ended")["at"]) >= woke_at
    for doc, why in ((bad_doc, "is not an ISO 8601 time"), (missing_doc, "nothing is there")):
        assert doc["status"] == "FAILED" and doc["steps"][0]["error"]["type"] == "SleepUntilInvalid"
        assert why in doc["steps"][0]["error"]["message"]
        assert verify(doc) == []


def test_signal__refused_for_an_unknown_name_a_finished_or_cancelled_execution(
    worker: Any, define: Any, redis_client: Any
) -> None:
    define("approve", [{"name": "approval", "wait": WAIT}])
    define("plain", [{"handler": "test.echo"}])
    started, _ = operations.start("approve", {})
    eid = started["_id"]
    doc = waiting(eid, 0)

    with pytest.raises(InvalidArgument, match="no step of this execution waits for signal 'other'"):
        operations.signal(eid, "other", {}, by="ops")
    operations.cancel(eid, by="ops", reason="not needed")
    [doc] = wait_terminal(eid)
    assert doc["status"] == "CANCELLED" and doc["steps"][0]["status"] == "CANCELLED"
    assert "due_at" not in doc
    with pytest.raises(OperationNotAllowed, match="CANCELLED"):
        operations.signal(eid, "approved", {}, by="ops")
    plain, _ = operations.start("plain", {})
    wait_terminal(plain["_id"])
    with pytest.raises(InvalidArgument, match="waits for: no signal"):
        operations.signal(plain["_id"], "approved", {}, by="ops")
    assert events_of(loaded(eid), "signal_received") == []
    assert store.collection().count_documents({"signals": {"$exists": True}}) == 0


def test_sleep__until_more_than_a_year_ahead_fails_the_step(worker: Any, define: Any) -> None:
    define("far", [{"name": "nap", "sleep": {"until": "input.at"}}])
    started, _ = operations.start("far", {"at": "9999-12-31T23:00:00-14:00"})
    [doc] = wait_terminal(started["_id"])
    assert doc["status"] == "FAILED" and doc["steps"][0]["error"]["type"] == "SleepUntilInvalid"
    assert "more than a year ahead" in doc["steps"][0]["error"]["message"] and verify(doc) == []


def test_signal__payload_counts_twice_in_the_data_budget(worker: Any, define: Any, monkeypatch: Any) -> None:
    define("budget", [{"name": "approval", "wait": WAIT}])
    started, _ = operations.start("budget", {})
    eid = started["_id"]
    waiting(eid, 0)
    monkeypatch.setattr(store, "DATA_BYTES", 3000)
    with pytest.raises(InvalidArgument, match="payload"):
        operations.signal(eid, "approved", "x" * 1600, by="ops")  # 1,602 bytes, twice: over 3,000
    assert "signals" not in loaded(eid)
