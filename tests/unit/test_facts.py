"""The fact sheet, on hand-built histories: computed from events, each fact citing events that exist."""
from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from insights.baseline import summarize
from insights.facts import Baseline, FactSheet
from insights.fold import compute
from insights.postmortem import validate
from insights.writers import RulesWriter

T0 = dt.datetime(2026, 1, 1)


def at(ms: int) -> dt.datetime:
    return T0 + dt.timedelta(milliseconds=ms)


def history(*items: tuple[int, str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Return events numbered 1, 2, 3, ... from ``(ms, type, fields)``; ``next_retry_at`` in ms."""
    events = [{"seq": 1, "at": at(0), "type": "created"}]
    for ms, kind, fields in items:
        event = {"seq": len(events) + 1, "at": at(ms), "type": kind, **fields}
        if "next_retry_at" in event:
            event["next_retry_at"] = at(event["next_retry_at"])
        events.append(event)
    return events


def execution(status: str, steps: list[str], events: list[dict[str, Any]], max_attempts: int = 3,
              timeout_s: float = 60, **extra: Any) -> dict[str, Any]:
    names = ["a", "b", "c"][: len(steps)]
    return {
        "_id": "e1", "workflow": "w", "workflow_version": 1, "status": status, "version": 9,
        "input_json": '{"n":1}', "events": events,
        "definition": {"steps": [{"name": n, "handler": f"h.{n}", "timeout_s": timeout_s,
                                  "retry": {"max_attempts": max_attempts}} for n in names]},
        "steps": [{"name": n, "status": s, "attempts": []} for n, s in zip(names, steps, strict=True)],
        **extra,
    }


def claimed(step: int, attempt: int, worker: str = "w1") -> dict[str, Any]:
    return {"step_index": step, "step": "abc"[step], "attempt": attempt, "worker": worker}


def failed_(step: int, attempt: int, outcome: str, error: str = "ValueError", permanent: bool = False,
            **more: Any) -> dict[str, Any]:
    return {"step_index": step, "step": "abc"[step], "attempt": attempt, "error_type": error,
            "message": f"{error} on {attempt}", "permanent": permanent, "outcome": outcome, **more}


def succeeded(step: int, attempt: int) -> dict[str, Any]:
    return {"step_index": step, "step": "abc"[step], "attempt": attempt, "duration_ms": 5}


EXHAUSTED = execution("FAILED", ["SUCCEEDED", "FAILED", "PENDING"], history(
    (10, "step_claimed", claimed(0, 1)), (20, "step_succeeded", succeeded(0, 1)),
    (30, "step_claimed", claimed(1, 1)),
    (40, "attempt_failed", failed_(1, 1, "retry", next_retry_at=240)),
    (250, "step_claimed", claimed(1, 2)),
    (260, "attempt_lost", {"step_index": 1, "step": "b", "attempt": 2, "worker": "w2",
                           "outcome": "retry", "next_retry_at": 660}),
    (700, "step_claimed", claimed(1, 3)),
    (800, "attempt_failed", failed_(1, 3, "failed", error="StepTimeout")),
    (800, "execution_failed", {}),
))


def test_facts__the_retry_pattern_has_each_outcome_delay_and_wait() -> None:
    sheet = compute(EXHAUSTED)

    b = sheet.steps[1]
    assert [(a.n, a.outcome, a.then) for a in b.attempts] == [
        (1, "failed", "retry"), (2, "lost", "retry"), (3, "timed_out", "failed")]
    assert [a.retry_delay_ms for a in b.attempts] == [200, 400, None]
    assert [a.waited_ms for a in b.attempts] == [210, 440, None]
    assert b.elapsed_ms == 770 and (b.first_seq, b.last_seq) == (4, 9)
    assert sheet.failure is not None
    assert (sheet.failure.kind, sheet.failure.seq, sheet.failure.attempts_used) == ("timeout", 9, 3)
    assert sheet.failure.outcomes == {"failed": 1, "lost": 1, "timed_out": 1}
    assert sheet.failure.not_run == ("c",)
    assert sheet.duration_ms == 800 and sheet.terminal_seq == 10 and sheet.slowest == "b"
    pattern = next(f for f in sheet.facts if f.kind == "retry_pattern" and f.step == "b")
    assert pattern.text == ("step 'b': 3 attempt(s) (max_attempts=3): #1 ValueError: 'ValueError on 1', "
                            "retry after 200 ms; #2 lost (its worker stopped), retry after 400 ms; "
                            "#3 StepTimeout: 'StepTimeout on 3', failed for good; 650 ms spent waiting "
                            "between attempts")
    assert pattern.seqs == (5, 7, 9)


@pytest.mark.parametrize(("last", "kind"), [
    (failed_(0, 1, "failed", error="workflows.errors.PermanentError", permanent=True), "permanent"),
    (failed_(0, 1, "failed"), "retries_exhausted"),
    (failed_(0, 1, "failed", error="StepTimeout"), "timeout"),
    ({"step_index": 0, "step": "a", "attempt": 1, "worker": "w", "outcome": "failed"}, "lost"),
])
def test_facts__the_failure_kind_comes_from_the_last_attempt(last: dict[str, Any], kind: str) -> None:
    kind_of_event = "attempt_lost" if "error_type" not in last else "attempt_failed"
    doc = execution("FAILED", ["FAILED"], history(
        (0, "step_claimed", claimed(0, 1)), (5, kind_of_event, last), (5, "execution_failed", {})),
        max_attempts=1)

    sheet = compute(doc)

    assert sheet.failure is not None and sheet.failure.kind == kind
    answer = validate(RulesWriter().write(sheet), sheet.event_seqs, sheet.status)
    assert answer.evidence[0].event_seq == 3
    assert "'a'" in answer.summary


def test_facts__an_operator_retry_opens_a_new_budget_and_is_a_fact() -> None:
    doc = execution("FAILED", ["FAILED"], history(
        (0, "step_claimed", claimed(0, 1)), (5, "attempt_failed", failed_(0, 1, "failed")),
        (5, "execution_failed", {}),
        (900, "retried", {"step_index": 0, "step": "a", "by": "alice", "reason": "fixed the feed"}),
        (910, "step_claimed", claimed(0, 2)),
        (920, "attempt_failed", failed_(0, 2, "failed", error="KeyError")),
        (920, "execution_failed", {}),
    ), max_attempts=1)

    sheet = compute(doc)

    assert sheet.steps[0].budget_base == 1 and [a.n for a in sheet.steps[0].budget] == [2]
    assert sheet.failure is not None and sheet.failure.attempts_used == 1
    assert sheet.failure.error_type == "KeyError" and sheet.terminal_seq == 8
    [action] = [f for f in sheet.facts if f.kind == "operator_action"]
    assert (action.text, action.seqs) == ("alice retried step 'a' ('fixed the feed')", (5,))
    text = RulesWriter().write(sheet)
    assert {"event_seq": 5, "shows": "alice retried 'a' ('fixed the feed')"} in text["evidence"]


def test_facts__a_cancel_names_the_running_step_and_what_ended_after_it() -> None:
    doc = execution("CANCELLED", ["SUCCEEDED", "CANCELLED"], history(
        (0, "step_claimed", claimed(0, 1)), (50, "cancelled", {"by": "bob", "reason": "dup"}),
        (80, "step_succeeded", succeeded(0, 1)),
    ))

    sheet = compute(doc)

    assert sheet.cancellation is not None
    assert sheet.cancellation.running == ("a",) and sheet.cancellation.not_run == ("b",)
    assert sheet.cancellation.ended_after == (("a", "succeeded", 4),)
    assert sheet.terminal_seq == 3 and sheet.duration_ms == 50
    [fact] = [f for f in sheet.facts if f.kind == "cancelled"]
    assert fact.seqs == (3, 4)


def test_facts__a_running_attempt_is_said_to_have_no_outcome_yet() -> None:
    doc = execution("CANCELLED", ["RUNNING"], history(
        (0, "step_claimed", claimed(0, 1)), (50, "cancelled", {"by": "bob", "reason": "dup"})))

    sheet = compute(doc)

    assert sheet.running == ("a",)
    assert any(f.kind == "still_running" and f.seqs == (2,) for f in sheet.facts)


def _timed(elapsed_ms: int) -> dict[str, Any]:
    return execution("SUCCEEDED", ["SUCCEEDED"], history(
        (0, "step_claimed", claimed(0, 1)), (elapsed_ms, "step_succeeded", succeeded(0, 1)),
        (elapsed_ms, "execution_succeeded", {})))


@pytest.mark.parametrize(("elapsed", "baseline", "slow"), [
    (2000, Baseline(median_ms=100, p95_ms=300, samples=20), True),
    (2000, Baseline(median_ms=100, p95_ms=300, samples=4), False),  # too few runs
    (2000, Baseline(median_ms=100, p95_ms=2500, samples=20), False),  # within the p95
    (2000, Baseline(median_ms=700, p95_ms=900, samples=20), False),  # under 3x the median
    (400, Baseline(median_ms=10, p95_ms=20, samples=20), False),  # less than 500 ms above it
])
def test_facts__a_step_is_slow_far_above_its_median_and_p95_over_enough_runs(
    elapsed: int, baseline: Baseline, slow: bool
) -> None:
    sheet = compute(_timed(elapsed), {"a": baseline})

    assert sheet.steps[0].slow is slow
    assert sheet.notable is slow
    assert (sheet.slow_steps == ("a",)) is slow


def test_facts__every_fact_cites_events_that_exist() -> None:
    docs = [EXHAUSTED, _timed(2000)]
    for doc in docs:
        sheet: FactSheet = compute(doc, {"a": Baseline(100, 300, 20), "b": Baseline(100, 300, 20)})
        assert sheet.facts
        for fact in sheet.facts:
            assert fact.seqs and set(fact.seqs) <= sheet.event_seqs, fact


def test_facts__a_history_without_claims_still_gives_a_sheet() -> None:
    doc = execution("FAILED", ["FAILED"], history(
        (5, "attempt_failed", failed_(0, 1, "failed")), (5, "execution_failed", {})))

    sheet = compute(doc)

    assert sheet.steps[0].elapsed_ms is None and sheet.failure is not None
    validate(RulesWriter().write(sheet), sheet.event_seqs, sheet.status)


def test_facts__as_dict_is_json_data_without_logs() -> None:
    data = compute(EXHAUSTED).as_dict()

    assert data["failure"]["kind"] == "timeout" and "logs" not in data and "input_json" not in data
    assert data["steps"][1]["attempts"][1]["outcome"] == "lost"


def test_baseline__median_and_nearest_rank_p95() -> None:
    assert summarize([5, 1, 3]) == Baseline(median_ms=3, p95_ms=5, samples=3)
    assert summarize(list(range(1, 101))) == Baseline(median_ms=50, p95_ms=95, samples=100)
    assert summarize([7]) == Baseline(7, 7, 1)


def _undo(k: int, step: int, **more: Any) -> dict[str, Any]:
    """Fields of a compensation event: compensation ``k`` undoes step ``step``."""
    return {"step_index": step, "step": "abc"[step], "compensation_index": k, **more}


def rolled_back(status: str, steps: list[str], undos: list[tuple[int, str]], events: list[dict[str, Any]],
                by: str | None = None, reason: str = "on_failure: compensate",
                cause: tuple[str | None, str, str] = ("c", "workflows.errors.PermanentError", "declined"),
                ) -> dict[str, Any]:
    """Return a rolled-back execution of steps a, b (each undone by ``h.undo_<name>``) and c;
    ``undos``: the compensations stored, in plan order, as ``(step index, status)``."""
    doc = execution(status, steps, events, rollback={
        "by": by, "reason": reason, "started_at": at(0),
        "cause": {"step": cause[0], "error_type": cause[1], "message": cause[2]}})
    for spec in doc["definition"]["steps"][:2]:
        spec["compensate"] = {"handler": f"h.undo_{spec['name']}", "retry": {"max_attempts": 2},
                              "timeout_s": 5}
    doc["definition"]["on_failure"] = "compensate"
    doc["compensations"] = [
        {"step_index": i, "name": "ab"[i], "handler": f"h.undo_{'ab'[i]}", "status": s, "attempts": []}
        for i, s in undos]
    return doc


ROLLBACK = [
    (10, "step_claimed", claimed(0, 1)), (20, "step_succeeded", succeeded(0, 1)),
    (30, "step_claimed", claimed(1, 1)), (40, "step_succeeded", succeeded(1, 1)),
    (50, "step_claimed", claimed(2, 1)),
    (60, "attempt_failed", failed_(2, 1, "failed", error="workflows.errors.PermanentError", permanent=True)),
    (60, "rollback_started", {"plan": [1, 0], "steps": ["b", "a"], "by": None,
                              "reason": "on_failure: compensate", "cause_step": "c",
                              "cause_type": "workflows.errors.PermanentError", "cause_message": "declined"}),
]


def test_facts__a_rollback_names_its_cause_plan_and_each_compensation_from_the_history() -> None:
    doc = rolled_back("COMPENSATION_FAILED", ["SUCCEEDED", "SUCCEEDED", "FAILED"],
                      [(1, "SUCCEEDED"), (0, "FAILED")], history(*ROLLBACK,
        (70, "compensation_claimed", _undo(0, 1, attempt=1, worker="w1")),
        (80, "compensation_succeeded", _undo(0, 1, attempt=1, duration_ms=5)),
        (90, "compensation_claimed", _undo(1, 0, attempt=1, worker="w1")),
        (95, "compensation_attempt_lost", _undo(1, 0, attempt=1, worker="w1", outcome="retry",
                                                next_retry_at=120)),
        (130, "compensation_claimed", _undo(1, 0, attempt=2, worker="w2")),
        (140, "compensation_attempt_failed", _undo(1, 0, attempt=2, error_type="RefundRefused",
                                                   message="refused", permanent=False, outcome="failed")),
        (140, "compensation_failed", {}),
    ))

    sheet = compute(doc)

    r = sheet.rollback
    assert r is not None and (r.by, r.cause_step, r.plan, r.seq, r.end_seq) == (None, "c", ("b", "a"), 8, 15)
    b, a = r.compensations
    assert (b.step, b.step_index, b.handler, b.outcome, b.seq) == ("b", 1, "h.undo_b", "undone", 10)
    assert [(x.n, x.outcome) for x in a.attempts] == [(1, "lost"), (2, "failed")]
    assert (a.outcome, a.error_type, a.message, a.seq, a.max_attempts) == (
        "failed", "RefundRefused", "refused", 14, 2)
    assert r.having("failed") == (a,) and r.having("not_reached") == ()
    # The forward steps' attempts are theirs alone: the compensations' events do not reach them.
    assert [len(s.attempts) for s in sheet.steps] == [1, 1, 1]
    assert sheet.failure is not None and sheet.failure.step == "c" and sheet.terminal_seq == 15
    assert sheet.duration_ms == 140
    assert sheet.facts[0].text == (
        "COMPENSATION_FAILED after 140 ms: rolled back after step 'c' failed for good (PermanentError: "
        "'declined'), as the workflow's on_failure: compensate says; 1 of 2 compensation(s) undid their "
        "step; the compensation of 'a' failed for good")
    texts = [f.text for f in sheet.facts if f.kind == "compensation"]
    assert texts == ["step 'b': undone by h.undo_b on attempt 1 of 2",
                     "step 'a': its compensation (h.undo_a) failed for good with RefundRefused: 'refused' "
                     "after 2 attempt(s) of max_attempts=2: it is not undone, an operator must retry or "
                     "skip it"]
    [pattern] = [f for f in sheet.facts if f.kind == "compensation_retry_pattern"]
    assert pattern.step == "a" and pattern.seqs == (12, 14)
    for fact in sheet.facts:
        assert fact.seqs and set(fact.seqs) <= sheet.event_seqs, fact
    answer = validate(RulesWriter().write(sheet), sheet.event_seqs, sheet.status)
    assert "the compensation of 'a' (h.undo_a) failed for good: RefundRefused: 'refused'" in answer.summary
    assert "undone 'b' (h.undo_b, 1 attempt)" in answer.summary
    assert [x.action for x in answer.suggested_actions] == ["retry", "skip", "code_change"]
    assert answer.confidence == "medium"  # not a permanent error: the facts do not say why


def test_facts__an_operator_retry_and_skip_of_a_compensation_are_facts_and_end_it() -> None:
    doc = rolled_back("COMPENSATED", ["SUCCEEDED", "SUCCEEDED", "FAILED"], [(1, "SKIPPED"), (0, "SUCCEEDED")],
                      history(*ROLLBACK,
        (70, "compensation_claimed", _undo(0, 1, attempt=1)),
        (80, "compensation_attempt_failed", _undo(0, 1, attempt=1, error_type="E", message="no",
                                                  permanent=True, outcome="failed")),
        (80, "compensation_failed", {}),
        (500, "compensation_retried", _undo(0, 1, by="ann", reason="gateway back", input_diff_json="[]")),
        (510, "compensation_claimed", _undo(0, 1, attempt=2)),
        (520, "compensation_attempt_failed", _undo(0, 1, attempt=2, error_type="E", message="no",
                                                   permanent=True, outcome="failed")),
        (520, "compensation_failed", {}),
        (900, "compensation_skipped", _undo(0, 1, by="bob", reason="refunded by hand")),
        (910, "compensation_claimed", _undo(1, 0, attempt=1)),
        (920, "compensation_succeeded", _undo(1, 0, attempt=1, duration_ms=3)),
        (920, "execution_compensated", {}),
    ))

    sheet = compute(doc)

    r = sheet.rollback
    assert r is not None
    b, a = r.compensations
    assert (b.outcome, b.by, b.reason, b.seq, b.budget_base) == ("skipped", "bob", "refunded by hand", 16, 1)
    assert (a.outcome, a.seq, r.end_seq, sheet.terminal_seq) == ("undone", 18, 19, 19)
    assert [(x.action, x.step, x.by, x.seq) for x in sheet.operator] == [
        ("retry_compensation", "b", "ann", 12), ("skip_compensation", "b", "bob", 16)]
    operator = [f.text for f in sheet.facts if f.kind == "operator_action"]
    assert operator == ["ann retried the compensation of 'b' ('gateway back')",
                        "bob skipped the compensation of 'b' ('refunded by hand')"]
    answer = validate(RulesWriter().write(sheet), sheet.event_seqs, sheet.status)
    assert answer.summary.endswith("undone 'a' (h.undo_a, 1 attempt); compensation skipped by an operator: "
                                   "'b' (bob: 'refunded by hand').")
    assert {(e.event_seq, e.shows) for e in answer.evidence} >= {
        (12, "ann retried the compensation of 'b' ('gateway back')"),
        (16, "bob skipped the compensation of 'b'")}
    assert [x.action for x in answer.suggested_actions] == ["other"]


def test_facts__a_rollback_of_a_cancelled_execution_undoes_the_cancel() -> None:
    doc = rolled_back("COMPENSATED", ["SUCCEEDED", "CANCELLED", "PENDING"], [(0, "SUCCEEDED")], history(
        (10, "step_claimed", claimed(0, 1)), (20, "step_succeeded", succeeded(0, 1)),
        (30, "step_claimed", claimed(1, 1)), (40, "cancelled", {"by": "bob", "reason": "dup"}),
        (45, "attempt_failed", failed_(1, 1, "cancelled")),
        (900, "rollback_started", {"plan": [0], "steps": ["a"], "by": "ops", "reason": "give it back",
                                   "cause_step": None, "cause_type": "Cancelled",
                                   "cause_message": "the execution was cancelled"}),
        (910, "compensation_claimed", _undo(0, 0, attempt=1)),
        (920, "compensation_succeeded", _undo(0, 0, attempt=1)),
        (920, "execution_compensated", {}),
    ), by="ops", reason="give it back", cause=(None, "Cancelled", "the execution was cancelled"))

    sheet = compute(doc)

    assert sheet.rollback is not None and sheet.rollback.cause_step is None
    assert sheet.failure is None and sheet.cancellation is not None and sheet.cancellation.by == "bob"
    assert sheet.facts[0].text.startswith(
        "COMPENSATED after 920 ms: rolled back after the execution was cancelled, at the request of ops "
        "('give it back'); 1 of 1 compensation(s) undid their step")
    answer = validate(RulesWriter().write(sheet), sheet.event_seqs, sheet.status)
    assert answer.root_cause.startswith(
        "The rollback undoes a cancelled execution: bob cancelled it ('dup'). ops asked for the rollback "
        "('give it back')")
    assert [e.event_seq for e in answer.evidence][:2] == [7, 5]


def test_facts__a_failed_execution_not_rolled_back_says_what_a_compensate_would_undo() -> None:
    doc = rolled_back("FAILED", ["SUCCEEDED", "SUCCEEDED", "FAILED"], [],
                      history(*ROLLBACK[:-1], (60, "execution_failed", {})))
    del doc["compensations"], doc["rollback"], doc["definition"]["on_failure"]

    sheet = compute(doc)

    assert sheet.rollback is None and sheet.undoable == ("b", "a")
    assert any(f.kind == "undoable" and f.text.endswith("newest first: b, a") for f in sheet.facts)
    answer = validate(RulesWriter().write(sheet), sheet.event_seqs, sheet.status)
    assert answer.suggested_actions[-1].action == "compensate"


def _waits(status: str, step_status: str, events: list[dict[str, Any]],
           rule: str = "fail") -> dict[str, Any]:
    """An execution whose step 'a' sleeps and step 'b' waits for 'approved' (timeout_s 2)."""
    doc = execution(status, ["SUCCEEDED", step_status], events)
    doc["definition"]["steps"] = [
        {"name": "a", "handler": "detflow.sleep", "sleep": {"seconds": 1}},
        {"name": "b", "handler": "detflow.wait",
         "wait": {"signal": "approved", "timeout_s": 2, "on_timeout": rule}}]
    return doc


def _wait_started(step: int, kind: str, wake_ms: int) -> dict[str, Any]:
    return {"step_index": step, "step": "ab"[step], "kind": kind,
            "signal": "approved" if kind == "wait" else None, "wake_at": at(wake_ms)}


def test_facts__a_wait_that_timed_out_with_on_timeout_fail_is_the_failure() -> None:
    doc = _waits("FAILED", "FAILED", history(
        (0, "wait_started", _wait_started(0, "sleep", 1000)),
        (1000, "wait_ended", {"step_index": 0, "step": "a", "outcome": "woke", "ends": "succeeded",
                              "message": ""}),
        (1000, "wait_started", _wait_started(1, "wait", 3000)),
        (1500, "signal_received", {"name": "approved", "signal_index": 0, "key": None, "by": "bob",
                                   "reason": "late"}),
        (3000, "wait_ended", {"step_index": 1, "step": "b", "outcome": "timed_out", "ends": "failed",
                              "message": "no signal 'approved' within 2 s"}),
        (3000, "execution_failed", {}),
    ))
    # The signal came (to a later wait's name here: the history says it was not taken).
    sheet = compute(doc)

    assert [(w.step, w.kind, w.outcome, w.waited_ms) for w in sheet.waits] == [
        ("a", "sleep", "woke", 1000), ("b", "wait", "timed_out", 2000)]
    assert sheet.failure is not None and (sheet.failure.kind, sheet.failure.seq) == ("wait_timed_out", 6)
    assert sheet.facts[0].text == ("FAILED after 3.00 s: step 'b' waited 2 s for signal 'approved', none "
                                   "came: on_timeout fail (the step failed)")
    assert [(s.name, s.by, s.taken_by) for s in sheet.signals] == [("approved", "bob", None)]
    kinds = [f.kind for f in sheet.facts]
    assert "failing_step" in kinds and "signals_not_taken" in kinds and "sleep" in kinds
    answer = RulesWriter().write(sheet)
    assert answer["summary"].startswith("FAILED at step 'b': step 'b' waited 2 s for signal 'approved'")
    assert validate(answer, sheet.event_seqs, "FAILED").evidence[0].event_seq == 6


def test_facts__a_wait_that_took_a_signal_sent_before_it_started_says_so() -> None:
    doc = _waits("SUCCEEDED", "SUCCEEDED", history(
        (0, "wait_started", _wait_started(0, "sleep", 1000)),
        (200, "signal_received", {"name": "approved", "signal_index": 0, "key": "k", "by": "ann",
                                  "reason": "early"}),
        (1000, "wait_ended", {"step_index": 0, "step": "a", "outcome": "woke", "ends": "succeeded",
                              "message": ""}),
        (1000, "wait_started", _wait_started(1, "wait", 3000)),
        (1000, "signal_consumed", {"step_index": 1, "step": "b", "name": "approved", "signal_index": 0}),
        (1000, "execution_succeeded", {}),
    ))

    sheet = compute(doc)

    wait = sheet.waits[1]
    assert (wait.outcome, wait.signal_by, wait.signal_seq) == ("signalled", "ann", 3)
    assert sheet.signals[0].taken_by == "b"
    text = next(f.text for f in sheet.facts if f.kind == "wait")
    assert text == ("step 'b' waited 0 ms for signal 'approved' and took the one ann sent ('early'), "
                    "800 ms before the wait started (kept until then); its payload is the step's output")


@pytest.mark.parametrize(("rule", "ends", "then"), [
    ("continue", "succeeded", "the step succeeded with its default_output"),
    ("skip", "skipped", "the step was skipped"),
])
def test_facts__a_timed_out_wait_names_its_rule(rule: str, ends: str, then: str) -> None:
    doc = _waits("SUCCEEDED", ends.upper(), history(
        (0, "wait_started", _wait_started(1, "wait", 2000)),
        (2000, "wait_ended", {"step_index": 1, "step": "b", "outcome": "timed_out", "ends": ends,
                              "message": ""}),
        (2000, "execution_succeeded", {}),
    ), rule=rule)

    sheet = compute(doc)

    assert sheet.failure is None
    assert next(f.text for f in sheet.facts if f.kind == "wait") == (
        f"step 'b' waited 2 s for signal 'approved', none came: on_timeout {rule} ({then})")
