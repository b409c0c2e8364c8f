"""A real Dramatiq worker on a real Redis runs steps: outputs, retries, failures, timeouts, caps."""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import pytest

from executions import operations
from executions.audit import verify
from executions.engine import backoff_ms
from executions.sweeper import sweep
from tests.conftest import wait_for, wait_terminal
from tests.handlers import LEDGER
from tests.integration.support import events_of, loaded, ms, runs_of, the_event
from workflows.spec import RetryPolicy


def test_worker__runs_three_steps_in_order_with_context_outputs_and_logs(worker: Any, define: Any) -> None:
    define("three", [{"handler": "test.echo"}, {"handler": "test.context"}, {"handler": "test.echo"}])

    started, created = operations.start("three", {"order": 7})
    [doc] = wait_terminal(started["_id"])

    assert created is True
    assert doc["status"] == "SUCCEEDED"
    assert [s["status"] for s in doc["steps"]] == ["SUCCEEDED"] * 3
    eid = doc["_id"]
    first, second, third = (json.loads(s["output_json"]) for s in doc["steps"])
    assert first == {"step": "s1", "input": {"order": 7}, "seen": []}
    assert third == {"step": "s3", "input": {"order": 7}, "seen": ["s1", "s2"]}
    claim = next(e for e in events_of(doc, "step_claimed") if e["step"] == "s2")
    assert second == {
        "execution_id": eid, "workflow": "three", "workflow_version": 1, "step": "s2", "attempt": 1,
        "idempotency_key": f"{eid}:s2", "fencing_token": claim["fence"], "input": {"order": 7},
        "outputs": {"s1": first},
    }
    assert doc["steps"][1]["attempts"][0]["fence"] == claim["fence"]
    claimed = [(e["step"], e["attempt"]) for e in events_of(doc, "step_claimed")]
    assert claimed == [("s1", 1), ("s2", 1), ("s3", 1)]
    assert dict(LEDGER) == {(f"{eid}:s1", 1): 1, (f"{eid}:s2", 1): 1, (f"{eid}:s3", 1): 1}
    logs = [[(line["level"], line["message"]) for line in s["attempts"][0]["logs"]] for s in doc["steps"]]
    assert logs == [[("INFO", "echo attempt 1")], [("INFO", "context of s2 attempt 1")],
                    [("INFO", "echo attempt 1")]]
    assert all(s["attempts"][0]["outcome"] == "succeeded" for s in doc["steps"])
    assert verify(doc) == []


def test_worker__retries_until_success_with_policy_delays(worker: Any, define: Any) -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay_s=0.1, multiplier=3.0, max_delay_s=0.2, jitter=0.5)
    define("flaky", [{"handler": "test.flaky", "retry": asdict(policy)}])

    started, _ = operations.start("flaky", {"succeed_on": 3})
    [doc] = wait_terminal(started["_id"])

    eid = doc["_id"]
    assert doc["status"] == "SUCCEEDED"
    step = doc["steps"][0]
    assert step["attempt"] == 3
    assert json.loads(step["output_json"]) == {"attempt": 3}
    assert runs_of(eid, "s1") == {1: 1, 2: 1, 3: 1}
    assert [(a["n"], a["outcome"]) for a in step["attempts"]] == [(1, "failed"), (2, "failed"),
                                                                     (3, "succeeded")]
    assert [a["error_type"] for a in step["attempts"][:2]] == ["workflows.errors.RetryableError"] * 2
    assert step["attempts"][0]["message"] == "transient failure on attempt 1"
    assert "error" not in step  # the failures belong to their attempts, not to the step that succeeded

    failed = events_of(doc, "attempt_failed")
    claims = events_of(doc, "step_claimed")
    assert [(e["attempt"], e["outcome"], e["permanent"]) for e in failed] == [(1, "retry", False),
                                                                             (2, "retry", False)]
    for n, event in enumerate(failed, start=1):
        base_ms = min(0.2, 0.1 * 3.0 ** (n - 1)) * 1000
        delay = ms(event["next_retry_at"]) - ms(event["at"])
        assert base_ms * (1 - 0.5) - 1 <= delay <= base_ms, (n, delay)
        assert delay == backoff_ms(policy, eid, "s1", n, n)
        # The next attempt is never claimed before its retry time.
        assert ms(claims[n]["at"]) >= ms(event["next_retry_at"])
    assert verify(doc) == []


def test_worker__permanent_error_fails_at_once(worker: Any, define: Any) -> None:
    define("perm", [{"handler": "test.permanent"}, {"handler": "test.echo"}])

    started, _ = operations.start("perm", {})
    [doc] = wait_terminal(started["_id"])

    eid = doc["_id"]
    assert doc["status"] == "FAILED"
    assert doc["failed_step"] == "s1"
    assert [s["status"] for s in doc["steps"]] == ["FAILED", "PENDING"]
    assert doc["steps"][0]["attempt"] == 1
    assert doc["steps"][0]["error"] == {"type": "workflows.errors.PermanentError",
                                        "message": "the input can never be processed"}
    [failed] = events_of(doc, "attempt_failed")
    assert (failed["outcome"], failed["permanent"]) == ("failed", True)
    assert "next_retry_at" not in failed
    assert events_of(doc, "execution_failed")
    assert dict(LEDGER) == {(f"{eid}:s1", 1): 1}
    assert verify(doc) == []


@pytest.mark.parametrize("listed", ["ValueError", "Exception", "builtins.ValueError"])
def test_worker__exception_listed_non_retryable_fails_at_once(
    worker: Any, define: Any, listed: str
) -> None:
    define("boom-listed", [{"handler": "test.boom", "non_retryable": [listed]}])

    started, _ = operations.start("boom-listed", {})
    [doc] = wait_terminal(started["_id"])

    assert doc["status"] == "FAILED"
    assert doc["failed_step"] == "s1"
    assert doc["steps"][0]["attempt"] == 1
    assert doc["steps"][0]["error"] == {"type": "ValueError", "message": "boom on attempt 1"}
    [failed] = events_of(doc, "attempt_failed")
    assert (failed["outcome"], failed["permanent"]) == ("failed", True)
    assert runs_of(doc["_id"], "s1") == {1: 1}
    assert verify(doc) == []


@pytest.mark.parametrize("listed", ["workflows.errors.RetryableError", "HandlerError"])
def test_worker__retryable_error_listed_by_dotted_path_or_base_fails_at_once(
    worker: Any, define: Any, listed: str
) -> None:
    define("flaky-listed", [{"handler": "test.flaky", "non_retryable": [listed]}])

    started, _ = operations.start("flaky-listed", {"succeed_on": 2})
    [doc] = wait_terminal(started["_id"])

    assert doc["status"] == "FAILED"
    assert doc["steps"][0]["attempt"] == 1
    assert doc["steps"][0]["error"]["type"] == "workflows.errors.RetryableError"
    assert runs_of(doc["_id"], "s1") == {1: 1}
    assert verify(doc) == []


def test_worker__unlisted_exception_retried_until_budget_exhausted(worker: Any, define: Any) -> None:
    define("boom", [{"handler": "test.boom", "non_retryable": ["KeyError"]}, {"handler": "test.echo"}])

    started, _ = operations.start("boom", {})
    [doc] = wait_terminal(started["_id"])

    eid = doc["_id"]
    assert doc["status"] == "FAILED"
    assert doc["failed_step"] == "s1"
    step = doc["steps"][0]
    assert (step["status"], step["attempt"]) == ("FAILED", 3)
    assert step["error"] == {"type": "ValueError", "message": "boom on attempt 3"}
    assert runs_of(eid, "s1") == {1: 1, 2: 1, 3: 1}
    assert runs_of(eid, "s2") == {}
    for n, record in enumerate(step["attempts"], start=1):
        assert (record["n"], record["outcome"], record["error_type"]) == (n, "failed", "ValueError")
        assert record["message"] == f"boom on attempt {n}"
        assert record["traceback"].startswith("Traceback (most recent call last):")
        assert f"ValueError: boom on attempt {n}" in record["traceback"]
        assert "tests/handlers.py" in record["traceback"]
    assert len(step["attempts"]) == 3
    outcomes = [(e["attempt"], e["outcome"], e["permanent"]) for e in events_of(doc, "attempt_failed")]
    assert outcomes == [(1, "retry", False), (2, "retry", False), (3, "failed", False)]
    assert verify(doc) == []


def test_worker__handler_over_its_timeout_fails_attempt_with_step_timeout(worker: Any, define: Any) -> None:
    define("slow", [{"handler": "test.sleep", "timeout_s": 0.2,
                     "retry": {"max_attempts": 2, "initial_delay_s": 0.05}}])

    started, _ = operations.start("slow", {"sleep_s": 5})
    [doc] = wait_terminal(started["_id"], timeout=10)

    assert doc["status"] == "FAILED"
    step = doc["steps"][0]
    assert step["attempt"] == 2
    assert step["error"] == {"type": "StepTimeout", "message": "attempt ran past timeout_s=0.2"}
    for record in step["attempts"]:
        assert (record["outcome"], record["error_type"]) == ("timed_out", "StepTimeout")
        # The handler was interrupted at its timeout, not left to sleep its 5 s.
        assert 200 <= record["duration_ms"] < 2000
        assert "output_json" not in step
    outcomes = [(e["outcome"], e["error_type"]) for e in events_of(doc, "attempt_failed")]
    assert outcomes == [("retry", "StepTimeout"), ("failed", "StepTimeout")]
    assert runs_of(doc["_id"], "s1") == {1: 1, 2: 1}
    assert verify(doc) == []


def test_worker__output_over_cap_fails_with_output_too_large(
    worker: Any, define: Any, settings: Any
) -> None:
    settings.DETFLOW = {**settings.DETFLOW, "OUTPUT_CAP_BYTES": "100"}
    define("big", [{"handler": "test.big"}])

    small, _ = operations.start("big", {"size": 98})
    large, _ = operations.start("big", {"size": 99})
    fits, too_big = wait_terminal(small["_id"], large["_id"])

    assert fits["status"] == "SUCCEEDED"
    assert fits["steps"][0]["output_bytes"] == 100
    assert too_big["status"] == "FAILED"
    step = too_big["steps"][0]
    assert step["attempt"] == 1
    assert step["error"] == {"type": "workflows.errors.OutputTooLarge",
                             "message": "output is 101 bytes of JSON; the cap is 100 bytes"}
    assert step["attempts"][0]["error_type"] == "workflows.errors.OutputTooLarge"
    assert "output_json" not in step
    assert verify(fits) == []
    assert verify(too_big) == []


def test_worker__outputs_of_one_execution_are_capped_together(
    worker: Any, define: Any, monkeypatch: Any
) -> None:
    from executions import store

    monkeypatch.setattr(store, "DATA_BYTES", 250)
    define("fat", [{"handler": "test.big"}, {"handler": "test.big"}, {"handler": "test.big"}])

    started, _ = operations.start("fat", {"size": 98})
    [doc] = wait_terminal(started["_id"])

    assert [s["status"] for s in doc["steps"]] == ["SUCCEEDED", "SUCCEEDED", "FAILED"]
    error = doc["steps"][2]["error"]
    assert error["type"] == "workflows.errors.ExecutionOutputsTooLarge"
    assert "would total 300 bytes" in error["message"] and "is 250 bytes" in error["message"]
    assert doc["steps"][2]["attempt"] == 1
    assert verify(doc) == []


def test_worker__an_output_with_a_lone_surrogate_fails_for_good_saying_why(
    worker: Any, define: Any
) -> None:
    define("surrogate", [{"handler": "test.surrogate_output"}])

    started, _ = operations.start("surrogate", {})
    [doc] = wait_terminal(started["_id"])

    step = doc["steps"][0]
    assert (doc["status"], step["attempt"]) == ("FAILED", 1)
    assert step["error"]["type"] == "workflows.errors.OutputNotSerializable"
    assert "lone surrogate" in step["error"]["message"]


def test_worker__non_json_output_fails_with_output_not_serializable(worker: Any, define: Any) -> None:
    define("setty", [{"handler": "test.unserializable"}])

    started, _ = operations.start("setty", {})
    [doc] = wait_terminal(started["_id"])

    assert doc["status"] == "FAILED"
    step = doc["steps"][0]
    assert step["attempt"] == 1
    assert step["error"]["type"] == "workflows.errors.OutputNotSerializable"
    assert "not JSON-serialisable" in step["error"]["message"]
    assert "set" in step["error"]["message"]
    assert "output_json" not in step
    assert verify(doc) == []


def test_worker__attempt_log_and_attempt_records_keep_the_newest_within_their_caps(
    worker: Any, define: Any, settings: Any
) -> None:
    settings.DETFLOW = {**settings.DETFLOW, "LOG_LINES_CAP": "3", "ATTEMPTS_KEPT": "2"}
    define("chatty", [{"handler": "test.chatty",
                       "retry": {"max_attempts": 4, "initial_delay_s": 0.02, "max_delay_s": 0.05}}])

    started, _ = operations.start("chatty", {"lines": 5, "fail": True})
    [doc] = wait_terminal(started["_id"])

    assert doc["status"] == "FAILED"
    step = doc["steps"][0]
    assert step["attempt"] == 4
    assert runs_of(doc["_id"], "s1") == {1: 1, 2: 1, 3: 1, 4: 1}
    assert [a["n"] for a in step["attempts"]] == [3, 4]
    for record in step["attempts"]:
        n = record["n"]
        assert [line["message"] for line in record["logs"]] == [
            f"line {i} of attempt {n}" for i in (2, 3, 4)]
        assert record["logs_dropped"] == 2
        assert record["message"] == f"chatty failure on attempt {n}"
    assert verify(doc) == []


def test_worker__many_concurrent_executions_each_run_their_steps_once_in_order(
    worker: Any, define: Any
) -> None:
    define("fanout", [{"handler": "test.echo"}, {"handler": "test.context"}, {"handler": "test.echo"}])

    ids = [operations.start("fanout", {"i": i})[0]["_id"] for i in range(12)]
    docs = wait_terminal(*ids, timeout=30)

    for i, doc in enumerate(docs):
        assert doc["status"] == "SUCCEEDED"
        claims = [(e["step"], e["attempt"]) for e in events_of(doc, "step_claimed")]
        assert claims == [("s1", 1), ("s2", 1), ("s3", 1)]
        assert json.loads(doc["steps"][2]["output_json"]) == {
            "step": "s3", "input": {"i": i}, "seen": ["s1", "s2"]}
        assert verify(doc) == []
    assert sum(LEDGER.values()) == 36
    assert set(LEDGER.values()) == {1}


def test_worker__step_longer_than_its_lease_keeps_its_claim_by_heartbeat(worker: Any, define: Any) -> None:
    define("outlives", [{"handler": "test.sleep", "timeout_s": 10}])
    started, _ = operations.start("outlives", {"sleep_s": 2.8})
    eid = started["_id"]
    wait_for(lambda: runs_of(eid, "s1"), what="the step to start")
    claim = the_event(loaded(eid), "step_claimed")
    first_lease = ms(claim["lease_expires_at"])
    lost: list[str] = []

    def succeeded() -> dict[str, Any] | None:
        lost.extend(sweep().lost)  # a sweeper runs all along and must find nothing lost
        doc = loaded(eid)
        return doc if doc["status"] == "SUCCEEDED" else None

    doc = wait_for(succeeded, timeout=10, what="the long step to succeed")

    assert lost == []
    step = doc["steps"][0]
    assert ms(step["finished_at"]) > first_lease + 500  # it ran well past the lease it was claimed with
    assert ms(step["heartbeat_at"]) > ms(claim["at"])
    assert step["attempt"] == 1
    assert runs_of(eid, "s1") == {1: 1}
    assert [e["type"] for e in doc["events"]] == ["created", "step_claimed", "step_succeeded",
                                                  "execution_succeeded"]
    assert verify(doc) == []
