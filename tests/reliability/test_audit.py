"""The determinism audit: histories of every kind replay cleanly through ``decide``, and a history
tampered with through the raw collection is reported where it diverges (``verify``)."""
from __future__ import annotations

import contextlib
import copy
import datetime as dt
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.management import execute_from_command_line

from executions import faults, operations, runner, store
from executions.audit import verify
from executions.engine import Claim, Finish, RecoverLost, Wait, decide
from executions.store import now_ms
from executions.sweeper import sweep
from tests.conftest import wait_for
from tests.reliability.invariants import assert_each_attempt_ran_once, assert_invariants, violations

pytestmark = pytest.mark.usefixtures("audited")

FAST = {"initial_delay_s": 0.05, "max_delay_s": 0.1}
#: Every event type a history can hold.
EVENT_TYPES = {"created", "step_claimed", "step_succeeded", "attempt_failed", "attempt_lost",
               "execution_succeeded", "execution_failed", "retried", "skipped", "cancelled"}


def drive(execution_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """Advance in this thread whenever the engine says there is work, until there is none."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = store.load(execution_id)
        assert doc is not None
        decision = decide(store.to_state(doc), now_ms())
        if isinstance(decision, Claim | RecoverLost | Finish):
            runner.advance(execution_id)
        elif isinstance(decision, Wait):
            time.sleep(max(decision.until - now_ms(), 0) / 1000 + 0.005)
        else:
            return doc
    raise AssertionError(f"execution {execution_id} still has work after {timeout}s")


@pytest.fixture
def histories(redis_client: Any, define: Any, settings: Any) -> dict[str, str]:
    """Executions whose histories hold every kind of event; ``{kind: execution id}``."""
    # One step per advance, so that the cancel below falls between two steps.
    settings.DETFLOW = {**settings.DETFLOW, "LEASE_S": "0.2", "INLINE_STEPS": "1"}
    define("retrying", [{"handler": "test.echo"},
                        {"handler": "test.flaky", "retry": {"max_attempts": 3, **FAST}}])
    define("failing", [{"handler": "test.permanent"}, {"handler": "test.echo"}])
    define("once", [{"handler": "test.flaky", "retry": {"max_attempts": 1, **FAST}},
                    {"handler": "test.echo"}])
    define("long", [{"handler": "test.echo"}] * 3)
    ids = {
        "retried_until_success": operations.start("retrying", {"succeed_on": 3})[0]["_id"],
        "failed_then_skipped": operations.start("failing", {})[0]["_id"],
        "failed_then_retried": operations.start("once", {"succeed_on": 2})[0]["_id"],
        "lost_then_retried": operations.start("once", {"succeed_on": 1})[0]["_id"],
        "cancelled": operations.start("long", {})[0]["_id"],
    }
    drive(ids["retried_until_success"])

    drive(ids["failed_then_skipped"])
    operations.retry(ids["failed_then_skipped"], by="ops", reason="one more try")
    drive(ids["failed_then_skipped"])
    operations.skip(ids["failed_then_skipped"], by="ops", reason="input is bad", output={"x": 1})
    drive(ids["failed_then_skipped"])

    drive(ids["failed_then_retried"])
    operations.retry(ids["failed_then_retried"], by="ops", reason="transient")
    drive(ids["failed_then_retried"])

    # The worker dies right after its claim; its lease (and lock) runs out, and the sweeper records
    # the attempt lost, which fails the step (one attempt allowed). An operator retries it.
    lost = ids["lost_then_retried"]
    faults.arm("claimed")
    with pytest.raises(faults.SimulatedCrash):
        runner.advance(lost)
    wait_for(lambda: sweep().lost, timeout=5, what="the lease to run out")
    operations.retry(lost, by="ops", reason="worker died")
    drive(lost)

    runner.advance(ids["cancelled"])
    operations.cancel(ids["cancelled"], by="ops", reason="not needed")
    drive(ids["cancelled"])
    return ids


def load(execution_id: str) -> dict[str, Any]:
    doc = store.load(execution_id)
    assert doc is not None
    return doc


def test_verify__histories_of_every_kind__replay_without_divergence(histories: dict[str, str]) -> None:
    docs = {kind: load(eid) for kind, eid in histories.items()}

    assert {kind: d["status"] for kind, d in docs.items()} == {
        "retried_until_success": "SUCCEEDED", "failed_then_skipped": "SUCCEEDED",
        "failed_then_retried": "SUCCEEDED", "lost_then_retried": "SUCCEEDED",
        "cancelled": "CANCELLED",
    }
    assert {e["type"] for d in docs.values() for e in d["events"]} == EVENT_TYPES
    assert {kind: verify(d) for kind, d in docs.items()} == {kind: [] for kind in docs}
    assert_invariants(*docs.values())
    assert_each_attempt_ran_once(*docs.values())


def event_seq(doc: dict[str, Any], kind: str, nth: int = 0, **match: Any) -> int:
    found = [e for e in doc["events"]
             if e["type"] == kind and all(e.get(k) == v for k, v in match.items())]
    return found[nth]["seq"]


def claim_attempt_raised(doc: dict[str, Any]) -> tuple[dict[str, Any], int]:
    seq = event_seq(doc, "step_claimed", step_index=1)
    return {"$set": {f"events.{seq - 1}.attempt": 2}}, seq


def event_deleted(doc: dict[str, Any]) -> tuple[dict[str, Any], int]:
    seq = event_seq(doc, "step_succeeded", step_index=0)
    return {"$pull": {"events": {"seq": seq}}}, seq + 1


def retry_time_moved(doc: dict[str, Any]) -> tuple[dict[str, Any], int]:
    seq = event_seq(doc, "attempt_failed")
    at = doc["events"][seq - 1]["next_retry_at"]
    return {"$set": {f"events.{seq - 1}.next_retry_at": at + dt.timedelta(seconds=5)}}, seq


def step_claimed_out_of_order(doc: dict[str, Any]) -> tuple[dict[str, Any], int]:
    seq = event_seq(doc, "step_claimed", step_index=1)
    return {"$set": {f"events.{seq - 1}.step_index": 2, f"events.{seq - 1}.step": "s3"}}, seq


def succeeded_step_claimed_again(doc: dict[str, Any]) -> tuple[dict[str, Any], int]:
    seq = event_seq(doc, "step_claimed", step_index=1)
    return {"$set": {f"events.{seq - 1}.step_index": 0, f"events.{seq - 1}.step": "s1"}}, seq


def attempt_lost_before_its_lease_ran_out(doc: dict[str, Any]) -> tuple[dict[str, Any], int]:
    seq = event_seq(doc, "attempt_lost")
    claimed = doc["events"][seq - 2]["at"]
    return {"$set": {f"events.{seq - 1}.at": claimed + dt.timedelta(milliseconds=1)}}, seq


def retry_beyond_max_attempts(doc: dict[str, Any]) -> tuple[dict[str, Any], int]:
    # With one attempt allowed, the engine fails the step: a recorded retry is over budget.
    seq = event_seq(doc, "attempt_failed")
    return {"$set": {"definition.steps.1.retry.max_attempts": 1}}, seq


def status_changed(doc: dict[str, Any]) -> tuple[dict[str, Any], None]:
    return {"$set": {"status": "FAILED"}}, None


TAMPERS: list[tuple[str, Callable[[dict[str, Any]], tuple[dict[str, Any], int | None]], str]] = [
    ("retried_until_success", claim_attempt_raised, "engine decides Claim(step=1, attempt=1)"),
    ("retried_until_success", event_deleted, "expected sequence number"),
    ("retried_until_success", retry_time_moved, "failure recorded"),
    ("retried_until_success", step_claimed_out_of_order, "engine decides Claim(step=1, attempt=1)"),
    ("retried_until_success", succeeded_step_claimed_again, "engine decides Claim(step=1, attempt=1)"),
    ("lost_then_retried", attempt_lost_before_its_lease_ran_out, "engine decides Wait"),
    ("retried_until_success", retry_beyond_max_attempts, "engine says {'outcome': 'failed'}"),
    ("cancelled", status_changed, "status is FAILED, history gives CANCELLED"),
]


@contextlib.contextmanager
def tampered(execution_id: str, update: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Change the stored document through the raw collection; put the original back afterwards."""
    original = load(execution_id)
    store.collection().update_one({"_id": execution_id}, update)
    try:
        yield load(execution_id)
    finally:
        store.collection().replace_one({"_id": execution_id}, original)


@pytest.mark.parametrize(("kind", "tamper", "problem"), TAMPERS,
                         ids=[tamper.__name__ for _, tamper, _ in TAMPERS])
def test_verify__tampered_history__is_reported_where_it_diverges(
    histories: dict[str, str], kind: str, tamper: Any, problem: str
) -> None:
    execution_id = histories[kind]
    update, seq = tamper(load(execution_id))

    with tampered(execution_id, update) as doc:
        found = verify(doc)

    assert found, f"{tamper.__name__} went unnoticed"
    first = found[0]
    assert (first.execution_id, first.seq) == (execution_id, seq)
    assert problem in first.problem, [str(d) for d in found]
    assert verify(load(execution_id)) == []


def test_verify_command__names_the_tampered_execution_and_exits_non_zero(
    histories: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    execution_id = histories["retried_until_success"]
    update, seq = claim_attempt_raised(load(execution_id))
    execute_from_command_line(["manage.py", "verify", "--all"])
    assert f"verified {len(histories)} execution(s): no divergence" in capsys.readouterr().out

    with tampered(execution_id, update), pytest.raises(SystemExit) as exited:
        execute_from_command_line(["manage.py", "verify", "--all"])

    assert exited.value.code == 1
    out, err = capsys.readouterr()
    assert f"{execution_id}: " in out
    assert f"{execution_id} event {seq}: recorded step_claimed" in out
    assert [line for line in out.splitlines() if not line.startswith(" ")] == [
        f"{execution_id}: {out.count(execution_id) - 1} divergence(s)"]
    assert f"1 of {len(histories)} execution(s) diverge" in err


def claimed_before_the_step_before_succeeded(doc: dict[str, Any]) -> None:
    events = doc["events"]
    first = event_seq(doc, "step_succeeded", step_index=0) - 1
    second = event_seq(doc, "step_claimed", step_index=1) - 1
    events[first], events[second] = events[second], events[first]
    for seq, event in enumerate(events, 1):
        event["seq"] = seq


def succeeded_step_claimed_once_more(doc: dict[str, Any]) -> None:
    claim = next(e for e in doc["events"] if e["type"] == "step_claimed" and e["step_index"] == 0)
    doc["events"].append({**claim, "seq": len(doc["events"]) + 1, "attempt": 2})
    doc["event_seq"] += 1


def budget_shrunk_below_the_attempts_made(doc: dict[str, Any]) -> None:
    doc["definition"]["steps"][1]["retry"]["max_attempts"] = 2


def attempt_recorded_by_another_worker(doc: dict[str, Any]) -> None:
    doc["steps"][1]["attempts"][-1]["worker"] = "late-worker"


BREAKS = [
    (claimed_before_the_step_before_succeeded, "claimed before ['s1'] succeeded or were skipped"),
    (claimed_before_the_step_before_succeeded, "(one runner)"),
    (succeeded_step_claimed_once_more, "s1 claimed again after it finished"),
    (budget_shrunk_below_the_attempts_made, "exceeds max_attempts=2"),
    (attempt_recorded_by_another_worker, "recorded by late-worker"),
]


@pytest.mark.parametrize(("broken", "problem"), BREAKS, ids=[f"{b.__name__}-{i}" for i, (b, _) in
                                                              enumerate(BREAKS)])
def test_invariants__a_broken_history__is_named(
    histories: dict[str, str], broken: Any, problem: str
) -> None:
    doc = copy.deepcopy(load(histories["retried_until_success"]))
    assert violations(doc) == []

    broken(doc)

    assert any(problem in found for found in violations(doc)), violations(doc)
