"""Post-mortems of executions that slept and waited, run on a real worker: how each wait ended (a
signal taken, by whom; a timeout and its rule), the signals never taken, and what a model is told."""
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


def sheet_of(doc: dict[str, Any]) -> Any:
    """Return the fact sheet the service computes (masked, redacted, with baselines)."""
    redacted = redact.value(masking.execution(doc))
    return fold.compute(redacted, baseline.step_baselines(doc["workflow"], doc["workflow_version"]))


def step_event(doc: dict[str, Any], kind: str, step: str) -> dict[str, Any]:
    """Return the one event of a type of one step."""
    [event] = [e for e in events_of(doc, kind) if e.get("step") == step]
    return event


def timed_out(define: Any) -> dict[str, Any]:
    """A wait for 'approved' with on_timeout fail that nobody approves; a 'rejected' signal goes
    unused by any wait (a later wait step waits for it)."""
    define("approval", [
        {"handler": "test.echo"},
        {"name": "nap", "sleep": {"seconds": 0.05}},
        {"name": "approval", "wait": {"signal": "approved", "timeout_s": 0.4, "on_timeout": "fail"}},
        {"name": "veto", "wait": {"signal": "rejected", "timeout_s": 5}},
        {"name": "ship", "handler": "test.echo"},
    ])
    doc, _ = operations.start("approval", {"order": 1})
    wait_for(lambda: loaded(doc["_id"])["steps"][2]["status"] == "WAITING", what="the wait to start")
    operations.signal(doc["_id"], "rejected", None, by="bob", reason="too expensive")
    [done] = wait_terminal(doc["_id"])
    assert done["status"] == "FAILED" and done["failed_step"] == "approval"
    return done


def test_facts__know_each_wait_how_it_ended_and_the_signals_not_taken(
    worker: Any, define: Any, settle: Any
) -> None:
    doc = timed_out(define)
    settle()

    sheet = sheet_of(doc)

    nap, approval = sheet.waits
    assert (nap.step, nap.kind, nap.outcome, nap.ends) == ("nap", "sleep", "woke", "succeeded")
    assert (approval.step, approval.kind, approval.signal, approval.outcome) == (
        "approval", "wait", "approved", "timed_out")
    assert (approval.on_timeout, approval.timeout_s, approval.ends) == ("fail", 0.4, "failed")
    assert approval.end_seq == step_event(doc, "wait_ended", "approval")["seq"]
    [kept] = sheet.signals
    assert (kept.name, kept.by, kept.reason, kept.taken_by) == ("rejected", "bob", "too expensive", None)
    f = sheet.failure
    assert f is not None and (f.step, f.kind, f.error_type) == ("approval", "wait_timed_out", "WaitTimedOut")
    assert f.not_run == ("veto", "ship")
    texts = {fact.kind: fact.text for fact in sheet.facts}
    assert texts["outcome"].startswith("FAILED after ")
    timed = "step 'approval' waited 0.4 s for signal 'approved', none came: on_timeout fail"
    assert timed in texts["outcome"]
    assert texts["sleep"].startswith("step 'nap' slept ")
    assert texts["signals_not_taken"] == ("1 signal(s) received and not taken by any step: 'rejected' "
                                          "from bob ('too expensive')")
    for fact in sheet.facts:
        assert fact.seqs and set(fact.seqs) <= sheet.event_seqs, fact


def test_rules__a_failed_wait_says_it_timed_out_and_writes_only_insights(
    worker: Any, define: Any, settle: Any
) -> None:
    doc = timed_out(define)
    settle()
    before = fingerprint(loaded(doc["_id"]))

    record = service.postmortem(doc["_id"])

    assert fingerprint(loaded(doc["_id"])) == before  # read-only
    assert record["source"] == "rules" and record["execution_status"] == "FAILED"
    assert record["summary"] == ("FAILED at step 'approval': step 'approval' waited 0.4 s for signal "
                                 "'approved', none came: on_timeout fail (the step failed).")
    assert "the wait's on_timeout is fail" in record["root_cause"]
    assert "'rejected' from bob" in record["root_cause"]
    assert record["impact"].startswith("Steps after 'approval' did not run: veto, ship.")
    ended = step_event(doc, "wait_ended", "approval")["seq"]
    assert record["evidence"][0]["event_seq"] == ended
    assert [a["action"] for a in record["suggested_actions"]] == ["retry", "skip", "code_change"]
    assert record["facts"]["waits"][1]["outcome"] == "timed_out"


def test_facts__a_wait_that_took_a_signal_names_who_sent_it_and_when(worker: Any, define: Any) -> None:
    define("approved", [{"name": "approval", "wait": {"signal": "approved", "timeout_s": 30}},
                        {"handler": "test.echo"}])
    doc, _ = operations.start("approved", {})
    wait_for(lambda: loaded(doc["_id"])["steps"][0]["status"] == "WAITING", what="the wait to start")
    operations.signal(doc["_id"], "approved", {"ok": True}, by="ann", reason="checked")
    [done] = wait_terminal(doc["_id"])

    sheet = sheet_of(done)  # pure: the wait's timeout message still queued does not matter

    [wait] = sheet.waits
    assert (wait.outcome, wait.signal_by, wait.signal_reason, wait.signal_index) == (
        "signalled", "ann", "checked", 0)
    assert wait.signal_seq == the_event(done, "signal_received")["seq"]
    [signal] = sheet.signals
    assert signal.taken_by == "approval"
    text = next(f.text for f in sheet.facts if f.kind == "wait")
    assert text.startswith("step 'approval' waited ") and "took the one ann sent ('checked')" in text
    assert not any(f.kind == "signals_not_taken" for f in sheet.facts)


def test_prompt__carries_the_waits_signals_and_the_new_events_fields(
    worker: Any, define: Any, settle: Any, model: FakeModel
) -> None:
    doc = timed_out(define)
    settle()
    ended = step_event(doc, "wait_ended", "approval")["seq"]
    model.answer = {
        "summary": "Nobody approved.", "root_cause": "No signal came.",
        "evidence": [{"event_seq": ended, "shows": "the wait timed out"}],
        "impact": "Nothing shipped.", "suggested_actions": [{"action": "retry", "detail": "Wait again."}],
        "confidence": "high"}

    service.postmortem(doc["_id"])

    [request] = model.requests
    user = request["body"]["messages"][1]["content"]
    data = json.loads(user.split(OPEN, 1)[1].rsplit(CLOSE, 1)[0])
    assert [(w["step"], w["outcome"]) for w in data["waits"]] == [("nap", "woke"), ("approval", "timed_out")]
    assert data["waits"][1]["on_timeout"] == "fail" and data["waits"][1]["signal"] == "approved"
    assert data["signals"] == [{"name": "rejected", "signal_index": 0, "seq": data["signals"][0]["seq"],
                                "by": "bob", "taken_by": None, "reason": "too expensive"}]
    events = {e["seq"]: e for e in data["events"]}
    assert (events[ended]["outcome"], events[ended]["ends"]) == ("timed_out", "failed")
    started = next(e for e in data["events"] if e["type"] == "wait_started" and e["step"] == "approval")
    assert started["kind"] == "wait" and started["signal"] == "approved" and 0 < started["wake_in_ms"] <= 400
    received = next(e for e in data["events"] if e["type"] == "signal_received")
    assert (received["name"], received["by"], received["reason"]) == ("rejected", "bob", "too expensive")
