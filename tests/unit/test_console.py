"""The admin console's pure parts: the SVG timeline and worst cases."""
from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest

from detflow_site.console.aggregates import worst_case_s
from detflow_site.console.timeline import svg
from executions.store import to_ms

T0 = dt.datetime(2025, 1, 1)


def at(ms: int) -> dt.datetime:
    return T0 + dt.timedelta(milliseconds=ms)


def now(ms: int) -> int:
    return to_ms(at(ms)) or 0


def attempt(n: int, start: int, end: int, outcome: str, **extra: Any) -> dict[str, Any]:
    return {"n": n, "worker": "w1", "started_at": at(start), "ended_at": at(end), "outcome": outcome, **extra}


def execution(*steps: dict[str, Any], finished: int | None = None) -> dict[str, Any]:
    return {"_id": "e1", "created_at": T0, "finished_at": None if finished is None else at(finished),
            "steps": list(steps)}


def test_timeline__draws_a_row_per_step_a_bar_per_attempt_and_the_retry_waits() -> None:
    picture = svg(execution(
        {"name": "a", "status": "SUCCEEDED", "attempts": [
            attempt(1, 0, 100, "failed", error_type="E", message="no"), attempt(2, 300, 400, "succeeded")]},
        {"name": "b", "status": "RUNNING", "attempts": [],
         "current": {"n": 1, "worker": "w2", "started_at": at(450)}},
        {"name": "c", "status": "PENDING", "attempts": []},
    ), now=now(1000))
    assert picture.count('class="step-label"') == 3
    assert re.findall(r'class="attempt (\w+)"', picture) == ["failed", "succeeded", "running"]
    assert picture.count('class="wait"') == 1
    assert "1.000 s" in picture


def test_timeline__shows_the_wait_until_a_scheduled_retry() -> None:
    picture = svg(execution({"name": "a", "status": "RETRY_WAIT", "next_retry_at": at(2000),
                             "attempts": [attempt(1, 0, 100, "failed")]}), now=now(500))
    assert picture.count('class="wait"') == 1
    assert "2.000 s" in picture  # the axis reaches the retry


def test_timeline__escapes_every_text() -> None:
    hostile = "<script>alert(1)</script>"
    failed = attempt(1, 0, 10, "failed", error_type="E", message=hostile, worker=hostile)
    stored = execution({"name": "a", "status": "FAILED", "attempts": [failed]}, finished=10)
    picture = svg(stored, now=now(20))
    assert "<script>" not in picture and "&lt;script&gt;" in picture


@pytest.mark.parametrize(("retry", "timeout_s", "expected"), [
    ({"max_attempts": 1, "initial_delay_s": 1, "multiplier": 2, "max_delay_s": 60, "jitter": 0.1}, 10, 10.0),
    ({"max_attempts": 3, "initial_delay_s": 1, "multiplier": 2, "max_delay_s": 60, "jitter": 0.1}, 10, 33.0),
    ({"max_attempts": 4, "initial_delay_s": 5, "multiplier": 10, "max_delay_s": 20, "jitter": 0.5}, 1, 49.0),
])
def test_worst_case__is_every_attempt_to_its_timeout_plus_the_longest_delays(
    retry: dict[str, Any], timeout_s: float, expected: float,
) -> None:
    assert worst_case_s({"name": "s", "retry": retry, "timeout_s": timeout_s}) == pytest.approx(expected)


def test_timeline__draws_the_compensations_in_a_lane_of_their_own_after_the_forward_steps() -> None:
    stored = execution(
        {"name": "reserve", "status": "SUCCEEDED", "attempts": [attempt(1, 0, 100, "succeeded")]},
        {"name": "charge", "status": "SUCCEEDED", "attempts": [attempt(1, 100, 200, "succeeded")]},
        {"name": "capture", "status": "FAILED", "attempts": [attempt(1, 200, 300, "failed")]},
        finished=900)
    stored["rollback"] = {"started_at": at(300)}
    stored["compensations"] = [
        {"name": "charge", "status": "SUCCEEDED", "attempts": [
            attempt(1, 300, 400, "failed", error_type="E", message="gateway"),
            attempt(2, 500, 600, "succeeded")]},
        {"name": "reserve", "status": "RUNNING", "attempts": [],
         "current": {"n": 1, "worker": "w2", "started_at": at(650)}},
    ]
    picture = svg(stored, now=now(1000))

    forward, lane = picture.split('<g class="rollback-lane">')
    assert re.findall(r'class="step-label">(\w+)', forward) == ["reserve", "charge", "capture"]
    assert re.findall(r'class="attempt (\w+)"', forward) == ["succeeded", "succeeded", "failed"]
    assert 'class="attempt' not in lane  # undoing a step is not another attempt of it
    assert re.findall(r'class="undo-label">\u21a9 (\w+) \((\w+)\)', lane) == [
        ("charge", "succeeded"), ("reserve", "running")]
    assert re.findall(r'class="undo (\w+)"', lane) == ["failed", "succeeded", "running"]
    assert lane.count('class="wait"') == 1 and lane.count('class="rollback-start"') == 1
    assert "undo charge attempt 1: failed" in lane


def test_timeline__of_an_execution_never_rolled_back_has_no_rollback_lane() -> None:
    picture = svg(execution({"name": "a", "status": "FAILED", "attempts": [attempt(1, 0, 10, "failed")]},
                            finished=10), now=now(20))
    assert "rollback" not in picture and "undo" not in picture


def test_badges__give_each_status_of_a_rollback_a_colour_of_its_own() -> None:
    from detflow_site.templatetags.console import BADGES, badge
    from executions.engine import ExecutionStatus, StepStatus

    assert {s.value for s in [*ExecutionStatus, *StepStatus]} <= set(BADGES)
    assert len(set(BADGES.values())) == len(BADGES)  # no two statuses look alike
    assert badge("COMPENSATION_FAILED") == ('<span class="detflow-badge status-compensation_failed" '
                                            'style="background:#ad1457">COMPENSATION_FAILED</span>')


def test_timeline__draws_a_wait_as_a_wait_with_the_signal_that_ended_it() -> None:
    stored = execution({"name": "a", "status": "SUCCEEDED", "attempts": [attempt(1, 0, 100, "succeeded")]},
                       {"name": "approval", "status": "SUCCEEDED", "attempts": []},
                       {"name": "nap", "status": "WAITING", "attempts": []})
    stored["definition"] = {"steps": [{"name": "a"}, {"name": "approval", "wait": {"signal": "ok"}},
                                      {"name": "nap", "sleep": {"seconds": 5}}]}
    stored["events"] = [
        {"seq": 1, "at": at(100), "type": "wait_started", "step_index": 1, "kind": "wait", "signal": "ok",
         "wake_at": at(9000)},
        {"seq": 2, "at": at(400), "type": "signal_received", "name": "ok", "signal_index": 0, "by": "<ann>",
         "reason": ""},
        {"seq": 3, "at": at(400), "type": "signal_consumed", "step_index": 1, "signal_index": 0},
        {"seq": 4, "at": at(400), "type": "wait_started", "step_index": 2, "kind": "sleep", "signal": None,
         "wake_at": at(5400)},
    ]

    picture = svg(stored, now=now(1000))

    assert re.findall(r'class="wait-span (\w+ \w+)"', picture) == ["wait signalled", "sleep waiting"]
    assert re.findall(r'class="attempt (\w+)"', picture) == ["succeeded"]  # a wait is no attempt
    assert picture.count('class="wait"') == 0  # nor a retry wait
    assert picture.count('class="signal-mark"') == 1 and "&lt;ann&gt;" in picture
    assert "1.000 s" in picture  # the open sleep is drawn to now


def test_timeline__draws_a_failed_step_until_an_operators_retry_as_a_wait_for_an_operator() -> None:
    stored = execution({"name": "a", "status": "SUCCEEDED", "attempts": [
        attempt(1, 0, 100, "failed", error_type="E", message="no"),
        attempt(2, 200, 300, "failed", error_type="E", message="no"),
        attempt(3, 5050, 5100, "succeeded")]}, finished=5100)
    stored["events"] = [{"seq": 9, "at": at(5000), "type": "retried", "step_index": 0, "step": "a",
                         "by": "ann", "reason": "fixed"}]

    picture = svg(stored, now=now(6000))

    assert picture.count('class="wait"') == 1  # the automatic retry between attempts 1 and 2
    assert picture.count('class="operator-wait retry"') == 1
    wait = picture.split('class="operator-wait retry"', 1)[1].split("</g>", 1)[0]
    x1, x2 = (float(v) for v in re.findall(r'x[12]="([\d.]+)"', wait)[:2])
    assert x2 - x1 > 500  # from the failure at 300 ms to the retry at 5000 ms, not to the next attempt
    assert 'stroke-dasharray' not in wait and "#616161" in wait
    assert '<text' in wait and "waited for an operator</text>" in wait
    assert "waited for an operator: 4.700 s, failed until an operator&#x27;s retry" in wait


def test_timeline__draws_a_pause_as_a_wait_for_an_operator_across_the_steps() -> None:
    stored = execution({"name": "a", "status": "SUCCEEDED", "attempts": [attempt(1, 0, 100, "succeeded")]},
                       {"name": "b", "status": "RUNNING", "attempts": [],
                        "current": {"n": 1, "worker": "w1", "started_at": at(3100)}})
    stored["events"] = [
        {"seq": 3, "at": at(100), "type": "paused", "scope": "workflow", "by": "<ann>", "reason": "outage"},
        {"seq": 4, "at": at(3000), "type": "resumed", "scope": "workflow", "by": "bob", "reason": "ok"},
        {"seq": 6, "at": at(3500), "type": "paused", "scope": "execution", "by": "cy", "reason": ""},
    ]

    picture = svg(stored, now=now(4000))

    holds = re.findall(r'<g class="operator-wait pause">(.*?)</g>', picture)
    assert len(holds) == 2 and picture.count('class="wait"') == 0
    assert "waited for an operator: paused (its workflow) by &lt;ann&gt; (outage), 2.900 s" in holds[0]
    assert "waited for an operator (paused)</text>" in holds[0]
    assert "paused (itself) by cy, 0.500 s so far" in holds[1]  # still held: drawn to now


def test_timeline__draws_a_compensation_until_an_operators_retry_on_its_own_row() -> None:
    charged = attempt(1, 0, 100, "succeeded")
    stored = execution({"name": "charge", "status": "SUCCEEDED", "attempts": [charged]},
                       {"name": "capture", "status": "FAILED", "attempts": [attempt(1, 100, 200, "failed")]})
    stored["rollback"] = {"started_at": at(200)}
    stored["compensations"] = [{"name": "charge", "step_index": 0, "status": "SUCCEEDED", "attempts": [
        attempt(1, 200, 300, "failed"), attempt(2, 2100, 2200, "succeeded")]}]
    stored["events"] = [{"seq": 9, "at": at(2000), "type": "compensation_retried", "step_index": 0,
                         "step": "charge", "by": "ann", "reason": "refund by hand failed"}]

    forward, lane = svg(stored, now=now(2500)).split('<g class="rollback-lane">')

    assert "operator-wait" not in forward
    assert lane.count('class="operator-wait retry"') == 1 and lane.count('class="wait"') == 0


@pytest.mark.parametrize(("repair", "doc", "buttons", "can_act", "expected"), [
    ({"action": "operator", "detail": "retry it (POST executions/e1/retry/, ...)"},
     {"status": "FAILED"}, [("retry", "Retry"), ("skip", "Skip the failed step")], True,
     "press “Retry” above (its form holds the failed step's input: edit it to retry with another) or "
     "“Skip the failed step” (with the output the next steps read)"),
    ({"action": "operator", "detail": "resume the workflow (POST workflows/w/resume/)"},
     {"status": "RUNNING", "paused": {"workflow": {"by": "ann"}}}, [("pause", "Pause")], False,
     "resume its workflow: “Resume” on the workflow's page"),
    ({"action": "operator", "detail": "x"},
     {"status": "COMPENSATION_FAILED"}, [("retry", "Retry the compensation of c"),
                                         ("skip", "Skip the compensation of c (undone by hand)")], False,
     "an operator presses “Retry the compensation of c” above (a new attempt budget, the same input) or, "
     "once the step is undone by other means, “Skip the compensation of c (undone by hand)”; then the "
     "rollback goes on"),
    ({"action": "wait", "detail": "it moves on when the signal 'ok' comes (POST executions/e1/signals/ok/, "
                                  "or the admin's button on its page) or at its timeout"},
     {"status": "RUNNING"}, [("signal", "Send signal")], True,
     "it moves on when the signal 'ok' comes (press “Send signal” above) or at its timeout"),
    ({"action": "start_worker", "detail": "start a worker on this queue"}, {"status": "PENDING"}, [], True,
     "start a worker on this queue"),
])
def test_repair__names_the_pages_buttons_not_the_apis_calls(
    repair: dict[str, Any], doc: dict[str, Any], buttons: list[tuple[str, str]], can_act: bool,
    expected: str,
) -> None:
    from detflow_site.console.repair import text

    assert text(repair, doc, buttons, can_act) == expected
