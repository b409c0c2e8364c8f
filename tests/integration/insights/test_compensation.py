"""Post-mortems of rolled-back executions, run on a real worker: what was undone, what could not be."""
from __future__ import annotations

import json
from typing import Any

from executions import operations
from insights import baseline, fold, redact, service
from insights.prompt import CLOSE, OPEN
from tests.conftest import wait_for, wait_terminal
from tests.integration.insights.support import FakeModel
from tests.integration.support import events_of, fingerprint, loaded, the_event
from workflows import masking

FAST = {"max_attempts": 2, "initial_delay_s": 0.05, "max_delay_s": 0.1}
UNDO = {"handler": "test.undo", "retry": FAST, "timeout_s": 10}
PERMANENT = "workflows.errors.PermanentError"


def sheet_of(doc: dict[str, Any]) -> Any:
    """Return the fact sheet the service computes (masked, redacted, with baselines)."""
    redacted = redact.value(masking.execution(doc))
    return fold.compute(redacted, baseline.step_baselines(doc["workflow"], doc["workflow_version"]))


def cited(record: dict[str, Any]) -> list[int]:
    return [e["event_seq"] for e in record["evidence"]]


def compensated(define: Any) -> dict[str, Any]:
    """An order whose capture fails for good: charge's refund fails once then succeeds, reserve's
    release succeeds, note has nothing to undo, receipt never runs."""
    define("order", [
        {"name": "reserve", "handler": "test.echo", "compensate": UNDO},
        {"name": "note", "handler": "test.echo"},
        {"name": "charge", "handler": "test.echo",
         "compensate": {"handler": "test.undo_flaky", "retry": FAST}},
        {"name": "capture", "handler": "test.permanent"},
        {"name": "receipt", "handler": "test.echo", "compensate": UNDO},
    ], on_failure="compensate")
    started, _ = operations.start("order", {"undo_succeed_on": 2})
    [doc] = wait_terminal(started["_id"])
    assert doc["status"] == "COMPENSATED"
    return doc


def compensation_failed(define: Any) -> dict[str, Any]:
    """Ship is undone, charge's refund is refused for good, reserve's release is never reached."""
    define("refused", [
        {"name": "reserve", "handler": "test.echo", "compensate": UNDO},
        {"name": "charge", "handler": "test.echo", "compensate": {"handler": "test.undo_refused"}},
        {"name": "ship", "handler": "test.echo", "compensate": UNDO},
        {"name": "capture", "handler": "test.permanent"},
    ], on_failure="compensate")
    started, _ = operations.start("refused", {})
    [doc] = wait_terminal(started["_id"])
    assert doc["status"] == "COMPENSATION_FAILED"
    return doc


def test_facts__of_a_compensated_execution_name_the_cause_who_asked_the_plan_and_each_undo(
    worker: Any, define: Any, settle: Any
) -> None:
    doc = compensated(define)
    settle()

    sheet = sheet_of(doc)

    r = sheet.rollback
    assert r is not None
    assert (r.by, r.reason) == (None, "on_failure: compensate")
    assert (r.cause_step, r.cause_type) == ("capture", PERMANENT)
    assert r.cause_message == "the input can never be processed"
    assert r.plan == ("charge", "reserve")
    assert r.seq == the_event(doc, "rollback_started")["seq"]
    assert r.end_seq == the_event(doc, "execution_compensated")["seq"] == sheet.terminal_seq
    charge, reserve = r.compensations
    assert (charge.step, charge.handler, charge.outcome) == ("charge", "test.undo_flaky", "undone")
    assert [(a.n, a.outcome) for a in charge.attempts] == [(1, "failed"), (2, "succeeded")]
    assert (reserve.step, reserve.handler, reserve.outcome, len(reserve.attempts)) == (
        "reserve", "test.undo", "undone", 1)
    assert charge.seq == events_of(doc, "compensation_succeeded")[0]["seq"]
    # The forward failure is still the cause; the forward steps keep their statuses.
    assert sheet.failure is not None and sheet.failure.step == "capture"
    assert [s.status for s in sheet.steps] == ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED", "FAILED", "PENDING"]
    assert sheet.notable and sheet.undoable == ()
    kinds = [f.kind for f in sheet.facts]
    assert kinds[0] == "outcome" and "rollback" in kinds and kinds.count("compensation") == 2
    assert sheet.facts[0].text.startswith("COMPENSATED after ")
    assert "rolled back after step 'capture' failed for good (PermanentError: 'the input can never be " \
           "processed'), as the workflow's on_failure: compensate says" in sheet.facts[0].text
    assert any(f.kind == "compensation_retry_pattern" and f.step == "charge" for f in sheet.facts)
    assert any(log.step == "charge:compensate" and log.outcome == "failed" for log in sheet.logs)
    for fact in sheet.facts:
        assert fact.seqs and set(fact.seqs) <= sheet.event_seqs, fact


def test_rules__a_compensated_execution_says_what_was_undone_and_writes_only_insights(
    worker: Any, define: Any, settle: Any
) -> None:
    doc = compensated(define)
    settle()
    before = fingerprint(loaded(doc["_id"]))

    record = service.postmortem(doc["_id"])

    assert fingerprint(loaded(doc["_id"])) == before  # AI and rules read the execution only
    assert record["source"] == "rules" and record["execution_status"] == "COMPENSATED"
    assert record["summary"] == (
        "COMPENSATED: rolled back after step 'capture' failed for good (PermanentError: 'the input can "
        "never be processed'), as the workflow's on_failure: compensate says: undone 'charge' "
        "(test.undo_flaky, 2 attempts), 'reserve' (test.undo, 1 attempt).")
    assert "The workflow's on_failure is compensate" in record["root_cause"]
    assert "'charge' undone, 'reserve' undone" in record["root_cause"]
    assert "Attempts of the compensation of 'charge': 2 attempt(s)" in record["root_cause"]
    assert record["impact"].startswith("Undone: 'charge', 'reserve'.")
    assert "Steps that ran and have no compensation keep their effects: note." in record["impact"]
    assert "Never run: receipt." in record["impact"]
    started = the_event(doc, "rollback_started")["seq"]
    succeeded = [e["seq"] for e in events_of(doc, "compensation_succeeded")]
    assert cited(record)[0] == started and set(succeeded) <= set(cited(record))
    assert cited(record)[-1] == the_event(doc, "execution_compensated")["seq"]
    assert [a["action"] for a in record["suggested_actions"]] == ["other"]
    assert record["confidence"] == "high"
    assert record["facts"]["rollback"]["plan"] == ["charge", "reserve"]
    assert [c["outcome"] for c in record["facts"]["rollback"]["compensations"]] == ["undone", "undone"]


def test_rules__a_compensation_failed_for_good_names_what_is_undone_what_is_not_and_the_way_out(
    worker: Any, define: Any, settle: Any
) -> None:
    doc = compensation_failed(define)
    settle()

    record = service.postmortem(doc["_id"])

    assert record["execution_status"] == "COMPENSATION_FAILED"
    assert record["summary"] == (
        "COMPENSATION_FAILED: rolled back after step 'capture' failed for good (PermanentError: 'the "
        "input can never be processed'), as the workflow's on_failure: compensate says: undone 'ship' "
        "(test.undo, 1 attempt); the compensation of 'charge' (test.undo_refused) failed for good: "
        "PermanentError: 'charge cannot be undone', so 'charge' and 'reserve' are not undone; an "
        "operator must retry or skip it.")
    assert record["impact"].startswith(
        "Not undone: 'charge' (its compensation failed for good), 'reserve' (not reached)")
    assert "Undone: 'ship'." in record["impact"]
    assert "the error is permanent" in record["root_cause"]
    failing = [e["seq"] for e in events_of(doc, "compensation_attempt_failed")]
    assert failing and failing[-1] in cited(record)
    assert cited(record)[-1] == the_event(doc, "compensation_failed")["seq"]
    assert [a["action"] for a in record["suggested_actions"]] == ["retry", "skip", "code_change"]
    assert "then the rollback goes on with reserve" in record["suggested_actions"][0]["detail"]
    facts = record["facts"]["rollback"]["compensations"]
    assert [(c["step"], c["outcome"]) for c in facts] == [
        ("ship", "undone"), ("charge", "failed"), ("reserve", "not_reached")]
    assert facts[1]["error_type"] == PERMANENT and facts[1]["message"] == "charge cannot be undone"

    operations.skip(doc["_id"], by="ops", reason="refunded by hand")
    [after] = wait_terminal(doc["_id"])
    assert after["status"] == "COMPENSATED"
    settle()

    again = service.postmortem(doc["_id"])

    assert again["execution_status"] == "COMPENSATED" and again["execution_version"] == after["version"]
    assert "compensation skipped by an operator: 'charge' (ops: 'refunded by hand')" in again["summary"]
    assert "undone 'ship' (test.undo, 1 attempt), 'reserve' (test.undo, 1 attempt)" in again["summary"]
    assert "Not undone by detflow (an operator skipped the compensation): 'charge'." in again["impact"]
    skipped = the_event(after, "compensation_skipped")
    assert skipped["seq"] in cited(again)
    outcomes = [c["outcome"] for c in again["facts"]["rollback"]["compensations"]]
    assert outcomes == ["undone", "skipped", "undone"]
    assert {"action": "skip_compensation", "step": "charge", "by": "ops", "reason": "refunded by hand",
            "seq": skipped["seq"]} in again["facts"]["operator"]


def test_prompt__a_model_gets_the_rollback_facts_and_its_retry_of_the_compensation_stands(
    worker: Any, define: Any, settle: Any, model: FakeModel
) -> None:
    doc = compensation_failed(define)
    settle()
    failing = events_of(doc, "compensation_attempt_failed")[-1]["seq"]
    model.answer = {
        "summary": "The refund was refused.", "root_cause": "test.undo_refused refused.",
        "evidence": [{"event_seq": failing, "shows": "the refund failed for good"}],
        "impact": "charge and reserve are not undone.",
        "suggested_actions": [{"action": "retry", "detail": "Retry the refund."},
                              {"action": "compensate", "detail": "Roll back again."}],
        "confidence": "medium"}

    record = service.postmortem(doc["_id"])

    assert record["source"] == "llm:test-model"
    # On a COMPENSATION_FAILED execution a retry applies (to the compensation); a new rollback does not.
    assert [a["action"] for a in record["suggested_actions"]] == ["retry", "other"]
    [request] = model.requests
    user = request["body"]["messages"][1]["content"]
    data = json.loads(user.split(OPEN, 1)[1].rsplit(CLOSE, 1)[0])
    assert data["execution"]["status"] == "COMPENSATION_FAILED"
    texts = {f["kind"]: f["text"] for f in data["facts"]}
    assert "rolled back after step 'capture' failed for good" in texts["rollback"]
    assert "the plan, newest step first: ship, charge, reserve" in texts["rollback"]
    undos = [f["text"] for f in data["facts"] if f["kind"] == "compensation"]
    assert undos[0].startswith("step 'ship': undone by test.undo on attempt 1 of 2")
    assert "step 'charge': its compensation (test.undo_refused) failed for good with PermanentError: " \
           "'charge cannot be undone'" in undos[1]
    assert undos[2] == "step 'reserve': not undone: the rollback stopped before its compensation ran"
    assert [(c["undoes"], c["outcome"]) for c in data["compensations"]] == [
        ("ship", "undone"), ("charge", "failed"), ("reserve", "not_reached")]
    started = next(e for e in data["events"] if e["type"] == "rollback_started")
    assert started["steps"] == ["ship", "charge", "reserve"] and started["cause_step"] == "capture"
    assert started["cause_type"] == PERMANENT
    assert any(log["step"] == "charge:compensate" for log in data["attempt_logs"])


def test_auto__an_operator_compensate_after_failed_rewrites_the_post_mortem_about_the_rollback(
    worker: Any, define: Any, settle: Any, settings: Any
) -> None:
    settings.DETFLOW = {**settings.DETFLOW, "INSIGHTS_AUTO": "true"}
    define("manual", [
        {"name": "a", "handler": "test.echo", "compensate": UNDO},
        {"name": "b", "handler": "test.echo", "compensate": UNDO},
        {"name": "c", "handler": "test.permanent"},
    ])
    started, _ = operations.start("manual", {})
    eid = started["_id"]
    [failed] = wait_terminal(eid)
    assert failed["status"] == "FAILED"

    first = wait_for(lambda: service.find(eid), what="the post-mortem of the failure")
    assert first["execution_status"] == "FAILED" and first["execution_version"] == failed["version"]
    compensate = [a for a in first["suggested_actions"] if a["action"] == "compensate"]
    assert compensate and "'b', 'a' would be undone, newest first" in compensate[0]["detail"]
    assert first["facts"]["undoable"] == ["b", "a"]

    operations.compensate(eid, by="ops", reason="order withdrawn")
    [doc] = wait_terminal(eid)
    assert doc["status"] == "COMPENSATED"

    def rewritten() -> dict[str, Any] | None:
        record = service.find(eid)
        return record if record and record["execution_version"] == doc["version"] else None

    record = wait_for(rewritten, what="the post-mortem of the rollback")
    settle()

    assert record["execution_status"] == "COMPENSATED"
    assert record["summary"] == (
        "COMPENSATED: rolled back after step 'c' failed for good (PermanentError: 'the input can never be "
        "processed'), at the request of ops ('order withdrawn'): undone 'b' (test.undo, 1 attempt), "
        "'a' (test.undo, 1 attempt).")
    assert "ops asked for the rollback ('order withdrawn') after the execution had ended." in (
        record["root_cause"])
    rollback = the_event(doc, "rollback_started")["seq"]
    assert the_event(doc, "execution_failed")["seq"] < rollback == cited(record)[0]
    assert record["facts"]["rollback"]["by"] == "ops"
    assert record["facts"]["terminal_seq"] == the_event(doc, "execution_compensated")["seq"]
    shown, current = service.shown(eid)
    assert current and shown["execution_version"] == doc["version"]
    assert fingerprint(loaded(eid)) == fingerprint(doc)
