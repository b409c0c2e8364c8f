"""Rollback in the admin console, through Django's test client with a real worker behind it: the
rollback section, the Compensate action, the retry and skip of a failed compensation, and roles."""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django.test import Client

from tests.conftest import wait_terminal
from tests.handlers import UNDONE
from tests.integration.support import events_of, fingerprint, loaded

EXECUTIONS = "/admin/executions/execution/"
FAST = {"max_attempts": 2, "initial_delay_s": 0.05, "max_delay_s": 0.1}
UNDO = {"handler": "test.undo", "retry": FAST, "timeout_s": 10}


def page(client: Client, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, response.content[:2000]
    return response.content.decode()


def section(html: str, name: str) -> str:
    """Return the HTML of the module ``id=name`` (up to the next module)."""
    return html.split(f'id="{name}"', 1)[1].split('<div class="module', 1)[0]


def undone(execution_id: str) -> list[str]:
    return [step for eid, step, *_ in UNDONE if eid == execution_id]


def started(workflow: str, input: Any = None) -> dict[str, Any]:
    """Start ``workflow`` and return its document once it is terminal."""
    from executions import operations

    doc, _ = operations.start(workflow, {} if input is None else input)
    [done] = wait_terminal(doc["_id"])
    return done


def rolled_back_by_itself(define: Any) -> dict[str, Any]:
    """Return a COMPENSATED execution: capture fails for good, charge then reserve are undone."""
    define("order", [
        {"name": "reserve", "handler": "test.echo", "compensate": UNDO},
        {"name": "note", "handler": "test.echo"},
        {"name": "charge", "handler": "test.echo", "compensate": UNDO},
        {"name": "capture", "handler": "test.permanent"},
    ], on_failure="compensate")
    doc = started("order", {"n": 1})
    assert doc["status"] == "COMPENSATED"
    return doc


def stopped_at_a_compensation(define: Any, charge_undo: dict[str, Any], input: Any) -> dict[str, Any]:
    """Return a COMPENSATION_FAILED execution whose compensation of charge failed for good."""
    define("refund", [
        {"name": "reserve", "handler": "test.echo", "compensate": UNDO},
        {"name": "charge", "handler": "test.echo", "compensate": charge_undo},
        {"name": "capture", "handler": "test.permanent"},
    ], on_failure="compensate")
    doc = started("refund", input)
    assert doc["status"] == "COMPENSATION_FAILED" and doc["failed_compensation"] == "charge"
    return doc


def failed_with_a_plan(define: Any) -> dict[str, Any]:
    """Return a FAILED execution (on_failure stop) whose steps a and b succeeded and name a compensation."""
    define("manual", [
        {"name": "a", "handler": "test.echo", "compensate": UNDO},
        {"name": "b", "handler": "test.echo", "compensate": UNDO},
        {"name": "c", "handler": "test.permanent", "compensate": UNDO},
    ])
    doc = started("manual", {"n": 7})
    assert doc["status"] == "FAILED"
    return doc


def test_compensated_page__shows_the_rollback_apart_with_its_compensations_in_order(
    worker: Any, console_as: Callable[..., Client], define: Any,
) -> None:
    doc = rolled_back_by_itself(define)
    html = page(console_as("viewer"), EXECUTIONS + f"{doc['_id']}/")

    assert 'class="detflow-badge status-compensated" style="background:#6d4c41"' in section(html, "summary")
    rollback = section(html, "rollback")
    assert "by the engine (the workflow's on_failure is compensate)" in rollback
    assert 'id="rollback-reason">on_failure: compensate<' in rollback
    assert "step capture failed for good:" in rollback
    assert "workflows.errors.PermanentError: the input can never be processed" in rollback
    plan = rollback.split('class="rollback-plan"')[1].split("</ol>")[0]
    assert re.findall(r"undo (\w+) \(test.undo\)", plan) == ["charge", "reserve"]
    assert re.findall(r"(\d) of 2\. undo (\w+)", rollback) == [("1", "charge"), ("2", "reserve")]
    assert rollback.count('class="attempt outcome-succeeded"') == 2
    assert "&quot;undone&quot;: &quot;charge&quot;" in rollback  # the compensation's output
    # The forward steps keep their statuses; the undone ones say so and link to the rollback.
    steps = section(html, "steps")
    assert steps.count('class="undone"') == 2 and "undo charge" not in steps
    # The timeline draws the compensations in a lane of their own, not as attempts of the steps.
    timeline = section(html, "timeline")
    assert 'class="rollback-lane"' in timeline
    assert re.findall(r'class="undo-label">\u21a9 (\w+)', timeline) == ["charge", "reserve"]
    assert timeline.count('class="undo succeeded"') == 2
    assert timeline.count('class="attempt succeeded"') == 3  # reserve, note, charge: once each
    assert "nothing more will happen to it" in section(html, "diagnosis")


def test_new_statuses__have_their_badges_in_the_list_its_filter_the_dashboard_and_the_workflow_page(
    worker: Any, console_as: Callable[..., Client], define: Any,
) -> None:
    doc = rolled_back_by_itself(define)
    viewer = console_as("viewer")
    listed = page(viewer, EXECUTIONS + "?status=COMPENSATED")
    assert doc["_id"] in listed and 'class="execution-row status-compensated"' in listed
    status_filter = listed.split('data-filter-title="status"')[1].split("</details>")[0]
    for status, colour in (("compensating", "#00695c"), ("compensated", "#6d4c41"),
                           ("compensation_failed", "#ad1457")):
        assert f'status-{status}" style="background:{colour}"' in status_filter
    assert 'class="count-compensated">1<' in page(viewer, "/admin/")
    workflow = page(viewer, "/admin/workflows/workflow/order/")
    assert 'status-compensated" style="background:#6d4c41">COMPENSATED</span> 1' in workflow
    assert "success rate 0.0 %" in workflow  # rolled back counts as finished, not as a success
    assert "<strong>compensate</strong>" in workflow and workflow.count('class="compensate">test.undo') == 2


def test_compensate__previews_the_plan_without_changing_anything_then_rolls_back(
    worker: Any, console_as: Callable[..., Client], define: Any,
) -> None:
    doc = failed_with_a_plan(define)
    eid = doc["_id"]
    operator = console_as("operator")
    detail = page(operator, EXECUTIONS + f"{eid}/")
    assert f'class="button action-compensate" href="{EXECUTIONS}{eid}/compensate/">Compensate<' in detail
    assert 'name="include_skipped"' in page(operator, EXECUTIONS + f"{eid}/compensate/")

    form = {"stage": "preview", "reason": "order withdrawn"}
    preview = operator.post(EXECUTIONS + f"{eid}/compensate/", form)
    assert preview.status_code == 200
    html = preview.content.decode()
    plan = html.split('id="plan"')[1].split("</table>")[0]
    assert re.findall(r"<td>\d\. (\w+)</td><td>([\w.]+)</td>", plan) == [("b", "test.undo"),
                                                                       ("a", "test.undo")]
    assert "&quot;n&quot;: 7" in plan  # the step's output, which its compensation reads
    assert "FAILED &rarr; COMPENSATING" in html and "compensations.b" in html
    assert "rollback_started" in html and 'id="confirm"' in html
    assert fingerprint(loaded(eid)) == fingerprint(doc) and "compensations" not in loaded(eid)
    assert UNDONE == []

    done = operator.post(EXECUTIONS + f"{eid}/compensate/", {**form, "stage": "confirm"})
    assert done.status_code == 302
    [after] = wait_terminal(eid)
    assert after["status"] == "COMPENSATED" and undone(eid) == ["b", "a"]
    assert (after["rollback"]["by"], after["rollback"]["reason"]) == ("operator", "order withdrawn")
    shown = page(operator, done["Location"])
    assert "Compensate done; recorded: type=rollback_started" in shown
    assert "by operator (an operator's Compensate)" in section(shown, "rollback")
    assert 'id="actions"' not in shown  # nothing left to do


def test_compensate__includes_skipped_steps_when_asked_through_to_the_confirmation(
    worker: Any, console_as: Callable[..., Client], define: Any,
) -> None:
    from executions import operations

    define("skipped", [
        {"name": "a", "handler": "test.echo", "compensate": UNDO},
        {"name": "b", "handler": "test.permanent", "compensate": UNDO},
        {"name": "c", "handler": "test.permanent"},
    ])
    eid = started("skipped")["_id"]
    operations.skip(eid, by="ops", reason="b done by hand", output={"by": "hand"})
    [doc] = wait_terminal(eid)
    assert doc["status"] == "FAILED" and doc["failed_step"] == "c"
    operator = console_as("operator")
    url = EXECUTIONS + f"{eid}/compensate/"

    def planned(html: str) -> list[str]:
        return re.findall(r"<td>\d\. (\w+)</td>", html.split('id="plan"')[1].split("</table>")[0])

    form = {"stage": "preview", "reason": "undo all"}
    assert planned(operator.post(url, form).content.decode()) == ["a"]
    preview = operator.post(url, {**form, "include_skipped": "on"}).content.decode()
    assert planned(preview) == ["b", "a"] and "&quot;by&quot;: &quot;hand&quot;" in preview
    confirm = preview.split('id="confirm-form"')[1].split("</form>")[0]
    assert '<input type="hidden" name="include_skipped" value="on">' in confirm
    assert 'name="output"' not in confirm and 'name="input"' not in confirm

    assert operator.post(url, {**form, "include_skipped": "on", "stage": "confirm"}).status_code == 302
    [after] = wait_terminal(eid)
    assert after["status"] == "COMPENSATED" and undone(eid) == ["b", "a"]


def test_compensate__of_a_cancelled_execution_undoes_what_it_did(
    worker: Any, console_as: Callable[..., Client], define: Any,
) -> None:
    from executions import operations
    from tests.conftest import wait_for
    from tests.integration.support import runs_of

    define("halted", [{"name": "a", "handler": "test.echo", "compensate": UNDO},
                      {"name": "b", "handler": "test.until_cancelled", "timeout_s": 20},
                      {"name": "c", "handler": "test.echo", "compensate": UNDO}])
    doc, _ = operations.start("halted", {})
    eid = doc["_id"]
    wait_for(lambda: runs_of(eid, "b"), what="step b to start")
    operator = console_as("operator")
    assert operator.post(EXECUTIONS + f"{eid}/cancel/", {"stage": "confirm", "reason": "customer left"}
                         ).status_code == 302
    [cancelled] = wait_terminal(eid)
    assert cancelled["status"] == "CANCELLED"
    assert "action-compensate" in section(page(operator, EXECUTIONS + f"{eid}/"), "actions")

    preview = operator.post(EXECUTIONS + f"{eid}/compensate/", {"stage": "preview", "reason": "stock back"})
    assert "CANCELLED &rarr; COMPENSATING" in preview.content.decode()
    operator.post(EXECUTIONS + f"{eid}/compensate/", {"stage": "confirm", "reason": "stock back"})
    [after] = wait_terminal(eid)
    assert after["status"] == "COMPENSATED" and undone(eid) == ["a"]
    rollback = section(page(operator, EXECUTIONS + f"{eid}/"), "rollback")
    assert "Cancelled: the execution was cancelled" in rollback and "failed for good" not in rollback


def test_compensate__is_offered_only_with_something_to_undo_and_refused_otherwise(
    worker: Any, console_as: Callable[..., Client], define: Any,
) -> None:
    define("plain", [{"handler": "test.permanent", "compensate": UNDO}, {"handler": "test.echo"}])
    doc = started("plain")
    operator = console_as("operator")
    detail = page(operator, EXECUTIONS + f"{doc['_id']}/")
    assert "action-retry" in detail and "action-compensate" not in detail
    forged = operator.post(EXECUTIONS + f"{doc['_id']}/compensate/", {"stage": "confirm", "reason": "r"})
    assert forged.status_code == 400 and "nothing to undo" in forged.content.decode()
    no_reason = operator.post(EXECUTIONS + f"{failed_with_a_plan(define)['_id']}/compensate/",
                              {"stage": "preview", "reason": " "})
    assert no_reason.status_code == 400 and "a reason is required" in no_reason.content.decode()
    assert fingerprint(loaded(doc["_id"])) == fingerprint(doc)


def test_compensation_failed__retry_names_the_compensation_and_goes_on_with_the_rollback(
    worker: Any, console_as: Callable[..., Client], define: Any,
) -> None:
    doc = stopped_at_a_compensation(define, {"handler": "test.undo_flaky", "retry": FAST},
                                    {"undo_succeed_on": 4})
    eid = doc["_id"]
    operator = console_as("operator")
    detail = page(operator, EXECUTIONS + f"{eid}/")
    actions = section(detail, "actions")
    assert ">Retry the compensation of charge<" in actions
    assert ">Skip the compensation of charge (undone by hand)<" in actions
    assert "action-compensate" not in actions and "action-cancel" not in actions
    assert 'style="background:#ad1457">COMPENSATION_FAILED' in section(detail, "summary")
    diagnosis = section(detail, "diagnosis")
    assert "the compensation of step &#x27;charge&#x27; (1 of 2) failed for good" in diagnosis
    assert "press “Retry the compensation of charge” above" in diagnosis
    assert "not undone yet: &#x27;reserve&#x27;" in diagnosis

    url = EXECUTIONS + f"{eid}/retry/"
    form_page = page(operator, url)
    assert 'id="compensation-help"' in form_page and 'name="input"' not in form_page
    assert "<title>Retry the compensation of charge: execution" in form_page
    preview = operator.post(url, {"stage": "preview", "reason": "gateway fixed"}).content.decode()
    assert "COMPENSATION_FAILED &rarr; COMPENSATING" in preview and "FAILED &rarr; PENDING" in preview
    assert "compensation_retried" in preview and 'name="input"' not in preview
    assert fingerprint(loaded(eid)) == fingerprint(doc)

    done = operator.post(url, {"stage": "confirm", "reason": "gateway fixed"})
    assert done.status_code == 302
    [after] = wait_terminal(eid)
    assert after["status"] == "COMPENSATED"
    assert undone(eid) == ["charge"] * 4 + ["reserve"]
    assert [e["by"] for e in events_of(after, "compensation_retried")] == ["operator"]
    assert "Retry the compensation of charge done; recorded: type=compensation_retried" in page(
        operator, done["Location"])


def test_compensation_failed__skip_sends_no_output_and_lets_the_rollback_go_on(
    worker: Any, console_as: Callable[..., Client], define: Any,
) -> None:
    doc = stopped_at_a_compensation(define, {"handler": "test.undo_refused"}, {})
    eid = doc["_id"]
    operator = console_as("operator")
    url = EXECUTIONS + f"{eid}/skip/"
    form_page = page(operator, url)
    assert 'name="output"' not in form_page and "undone by other means" in form_page
    preview = operator.post(url, {"stage": "preview", "reason": "refunded by hand"}).content.decode()
    assert "compensation_skipped" in preview and 'name="output"' not in preview
    forged = operator.post(url, {"stage": "confirm", "reason": "r", "output": '{"x": 1}'})
    assert forged.status_code == 400 and "a skipped compensation has no output" in forged.content.decode()
    assert fingerprint(loaded(eid)) == fingerprint(doc)

    done = operator.post(url, {"stage": "confirm", "reason": "refunded by hand"})
    assert done.status_code == 302
    [after] = wait_terminal(eid)
    assert after["status"] == "COMPENSATED"
    assert [c["status"] for c in after["compensations"]] == ["SKIPPED", "SUCCEEDED"]
    assert undone(eid) == ["charge", "reserve"]
    rollback = section(page(operator, EXECUTIONS + f"{eid}/"), "rollback")
    assert "Skipped by an operator: undone by other means" in rollback


def test_viewer__gets_no_rollback_button_and_its_posts_are_refused(
    worker: Any, console_as: Callable[..., Client], define: Any,
) -> None:
    failed = failed_with_a_plan(define)
    stopped = stopped_at_a_compensation(define, {"handler": "test.undo_refused"}, {})
    viewer = console_as("viewer")
    for doc, action in ((failed, "compensate"), (stopped, "retry"), (stopped, "skip")):
        html = page(viewer, EXECUTIONS + f"{doc['_id']}/")
        assert 'id="actions"' not in html and "action-" not in html
        url = EXECUTIONS + f"{doc['_id']}/{action}/"
        assert viewer.get(url).status_code == 403
        assert viewer.post(url, {"stage": "confirm", "reason": "forged"}).status_code == 403
        assert fingerprint(loaded(doc["_id"])) == fingerprint(doc)
    assert {u[0] for u in UNDONE} == {stopped["_id"]}  # only the rollback it was built with ran


def test_diagnosis__names_the_compensation_the_rollback_runs_and_its_place_in_the_plan(
    console_as: Callable[..., Client], define: Any, broker: Any,
) -> None:
    from executions import operations, runner

    define("manual", [
        {"name": "a", "handler": "test.echo", "compensate": UNDO},
        {"name": "b", "handler": "test.echo", "compensate": UNDO},
        {"name": "c", "handler": "test.permanent"},
    ])
    doc, _ = operations.start("manual", {})
    runner.advance(doc["_id"], worker="test")  # no worker: what the rollback sends stays queued
    operator = console_as("operator")
    done = operator.post(EXECUTIONS + f"{doc['_id']}/compensate/", {"stage": "confirm", "reason": "undo"})
    assert done.status_code == 302
    diagnosis = section(page(operator, EXECUTIONS + f"{doc['_id']}/"), "diagnosis")
    assert ("the rollback runs the compensation of step &#x27;b&#x27; (1 of 2): it is due and a message "
            "for it is waiting for a worker") in diagnosis
    assert "compensate b" in diagnosis  # the engine's next move


def test_diagnosis__says_the_rollback_waits_for_the_retry_of_a_compensation(
    worker: Any, console_as: Callable[..., Client], define: Any,
) -> None:
    from executions import operations
    from tests.conftest import wait_for

    slow = {"handler": "test.undo_flaky",
            "retry": {"max_attempts": 3, "initial_delay_s": 600, "max_delay_s": 600}}
    define("refund", [
        {"name": "reserve", "handler": "test.echo", "compensate": UNDO},
        {"name": "charge", "handler": "test.echo", "compensate": slow},
        {"name": "capture", "handler": "test.permanent"},
    ], on_failure="compensate")
    doc, _ = operations.start("refund", {"undo_succeed_on": 2})
    wait_for(lambda: (loaded(doc["_id"]).get("compensations") or [{}])[0].get("status") == "RETRY_WAIT",
             what="the compensation of charge to wait for its retry")
    html = page(console_as("viewer"), EXECUTIONS + f"{doc['_id']}/")
    assert ("the rollback waits for the retry of the compensation of step &#x27;charge&#x27; (1 of 2) at "
            in section(html, "diagnosis"))
    assert 'class="undo-label">\u21a9 charge (retry_wait)' in section(html, "timeline")
