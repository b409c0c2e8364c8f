"""Pausing and resuming from the admin console: an execution (a dry run, then a confirmation), a
whole workflow (on its page), and the schedules (their list); viewers see the state and act on none."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.test import Client

from tests.integration.admin.conftest import failed_execution

EXECUTIONS = "/admin/executions/execution/"
WORKFLOWS = "/admin/workflows/workflow/"
SCHEDULES = "/admin/executions/schedule/"


@pytest.fixture(autouse=True)
def no_pauses_or_schedules() -> Iterator[None]:
    """No workflow pause or schedule outlives a test (the store's clean-up keeps both)."""
    from executions import controls, schedules

    def clear() -> None:
        controls.collection().delete_many({})
        schedules.collection().delete_many({})
        controls.paused_workflows(fresh=True)

    clear()
    yield
    clear()


def page(client: Client, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, response.content[:2000]
    return response.content.decode()


def pending(define: Callable[..., Any], name: str = "ok") -> str:
    """Return the id of a PENDING execution of ``name`` (no worker takes it)."""
    from executions import operations

    define(name, [{"handler": "test.echo"}, {"handler": "test.echo"}])
    doc, _ = operations.start(name, {"n": 1})
    return str(doc["_id"])


def test_pause__a_dry_run_changes_nothing_then_the_confirmation_records_paused_and_shows_the_badge(
    console_as: Callable[..., Client], define: Any,
) -> None:
    from executions import store

    execution_id = pending(define)
    operator = console_as("operator")
    detail = EXECUTIONS + f"{execution_id}/"
    html = page(operator, detail)
    assert f'href="{detail}pause/"' in html and f'href="{detail}resume/"' not in html
    assert 'id="paused"' not in html
    before = store.load(execution_id)

    form = {"stage": "preview", "reason": "the payment provider is down"}
    preview = operator.post(detail + "pause/", form)
    assert preview.status_code == 200
    text = preview.content.decode()
    assert 'id="confirm"' in text and "Confirm: pause" in text and "the payment provider is down" in text
    after_preview = store.load(execution_id)
    assert (after_preview["version"], after_preview.get("paused")) == (before["version"], None)

    done = operator.post(detail + "pause/", {**form, "stage": "confirm"})
    assert done.status_code == 302 and done["Location"] == detail
    doc = store.load(execution_id)
    event = doc["events"][-1]
    assert (event["type"], event["scope"], event["by"], event["reason"]) == (
        "paused", "execution", "operator", "the payment provider is down")
    assert doc["paused"]["execution"]["by"] == "operator"
    html = page(operator, detail)
    assert 'id="paused"' in html and "paused-badge" in html
    assert 'class="pause-execution">Paused by itself' in html
    assert "<strong>operator</strong>" in html and "the payment provider is down" in html
    assert "Pause done; recorded: type=paused" in html  # the message after the redirect
    assert f'href="{detail}resume/"' in html and f'href="{detail}pause/"' not in html


def test_resume__records_resumed_and_the_badge_goes(console_as: Callable[..., Client], define: Any) -> None:
    from executions import operations, store

    execution_id = pending(define)
    operations.pause(execution_id, "ann", "hold on")
    operator = console_as("operator")
    detail = EXECUTIONS + f"{execution_id}/"

    preview = operator.post(detail + "resume/", {"stage": "preview", "reason": "provider is back"})
    assert preview.status_code == 200 and "Confirm: resume" in preview.content.decode()
    assert "execution" in store.load(execution_id)["paused"]  # a dry run changes nothing

    done = operator.post(detail + "resume/", {"stage": "confirm", "reason": "provider is back"})
    assert done.status_code == 302
    doc = store.load(execution_id)
    event = doc["events"][-1]
    assert (event["type"], event["scope"], event["by"], event["reason"]) == (
        "resumed", "execution", "operator", "provider is back")
    assert not doc.get("paused")
    html = page(operator, detail)
    assert 'id="paused"' not in html and f'href="{detail}pause/"' in html


def test_execution_held_by_its_workflow__names_the_workflow_and_offers_no_execution_resume(
    console_as: Callable[..., Client], define: Any,
) -> None:
    from executions import operations

    define("ok", [{"handler": "test.echo"}])
    operations.pause_workflow("ok", "ann", "database maintenance")
    doc, _ = operations.start("ok", {})
    detail = EXECUTIONS + f"{doc['_id']}/"

    html = page(console_as("operator"), detail)
    assert 'class="pause-workflow">Paused by its workflow' in html
    assert f'href="{WORKFLOWS}ok/"' in html and "database maintenance" in html
    assert "<strong>ann</strong>" in html
    assert f'href="{detail}resume/"' not in html  # its own pause is not what holds it
    assert f'href="{detail}pause/"' in html


def test_viewer__sees_every_pause_but_no_button_and_each_post_is_refused(
    console_as: Callable[..., Client], define: Any,
) -> None:
    from executions import controls, operations, schedules, store

    execution_id = pending(define)
    operations.pause(execution_id, "ann", "hold on")
    operations.pause_workflow("ok", "ann", "maintenance")
    schedule = schedules.create("ok", "*/5 * * * *")
    viewer = console_as("viewer")
    before = store.load(execution_id)

    html = page(viewer, EXECUTIONS + f"{execution_id}/")
    assert 'id="paused"' in html and 'id="actions"' not in html
    html = page(viewer, WORKFLOWS + "ok/")
    assert 'id="pause-state">Paused by <strong>ann</strong>' in html and 'id="pause-form"' not in html
    html = page(viewer, SCHEDULES)
    assert f'id="schedule-{schedule["_id"]}"' in html and "pause-schedule" not in html
    assert "delete-schedule" not in html

    posts = [(EXECUTIONS + f"{execution_id}/resume/", {"stage": "confirm", "reason": "x"}),
             (EXECUTIONS + f"{execution_id}/pause/", {"stage": "preview", "reason": "x"}),
             (WORKFLOWS + "ok/resume/", {"reason": "x"}),
             (SCHEDULES + f"{schedule['_id']}/pause/", {}),
             (SCHEDULES + f"{schedule['_id']}/delete/", {"stage": "confirm"})]
    assert [viewer.post(url, form).status_code for url, form in posts] == [403] * len(posts)
    assert viewer.get(SCHEDULES + f"{schedule['_id']}/delete/").status_code == 403
    assert store.load(execution_id)["version"] == before["version"]
    assert controls.paused("ok") is not None
    assert schedules.get(schedule["_id"])["paused"] is False


def test_workflow_pause_and_resume__through_its_page_change_its_pause_and_release_its_executions(
    console_as: Callable[..., Client], define: Any,
) -> None:
    from executions import controls, operations, store

    define("ok", [{"handler": "test.echo"}])
    operator = console_as("operator")
    html = page(operator, WORKFLOWS + "ok/")
    assert 'id="pause-state">Not paused' in html and 'id="pause-button"' in html

    done = operator.post(WORKFLOWS + "ok/pause/", {"reason": "database maintenance"})
    assert done.status_code == 302 and done["Location"] == WORKFLOWS + "ok/"
    paused = controls.paused("ok")
    assert paused is not None and (paused["by"], paused["reason"]) == ("operator", "database maintenance")
    html = page(operator, WORKFLOWS + "ok/")
    assert "Workflow ok paused" in html and 'id="resume-button"' in html
    assert 'id="pause-state">Paused by <strong>operator</strong>' in html and "database maintenance" in html

    held, _ = operations.start("ok", {})
    assert "workflow" in store.load(held["_id"])["paused"]
    done = operator.post(WORKFLOWS + "ok/resume/", {"reason": "maintenance over"})
    assert done.status_code == 302
    assert controls.paused("ok") is None
    doc = store.load(held["_id"])
    assert not doc.get("paused")
    event = doc["events"][-1]
    assert (event["type"], event["scope"], event["by"], event["reason"]) == (
        "resumed", "workflow", "operator", "maintenance over")
    html = page(operator, WORKFLOWS + "ok/")
    assert "Workflow ok resumed: 1 held execution released" in html and 'id="pause-state">Not paused' in html


def test_bad_input__answers_a_page_saying_what_is_wrong_and_changes_nothing(
    console_as: Callable[..., Client], define: Any,
) -> None:
    from executions import controls, store

    execution_id = pending(define)
    failed = failed_execution(define)
    operator = console_as("operator")
    detail = EXECUTIONS + f"{execution_id}/"
    before = store.load(execution_id)["version"]

    refused = [
        (detail + "pause/", {"stage": "confirm", "reason": " "}, "a reason is required"),
        (detail + "pause/", {"stage": "preview", "reason": "x" * 1001}, "at most 1000 characters"),
        (detail + "resume/", {"stage": "confirm", "reason": "go"}, "is not paused"),
        (EXECUTIONS + f"{failed}/pause/", {"stage": "confirm", "reason": "late"}, "only a PENDING"),
        (WORKFLOWS + "ok/pause/", {"reason": ""}, "a reason is required"),
        (WORKFLOWS + "ok/pause/", {}, "a reason is required"),
        (WORKFLOWS + "ok/resume/", {"reason": "go"}, "is not paused"),
    ]
    for url, form, reason in refused:
        response = operator.post(url, form)
        assert response.status_code == 400, (url, response.status_code)
        assert reason in response.content.decode(), (url, response.content[:2000])
    assert store.load(execution_id)["version"] == before
    assert store.load(failed)["status"] == "FAILED"
    assert controls.paused("ok") is None
    # The 400 page of a workflow is its page, with the reason typed kept in the form.
    kept = operator.post(WORKFLOWS + "ok/resume/", {"reason": "kept text"}).content.decode()
    assert 'id="pause-error"' in kept and ">kept text</textarea>" in kept

    assert operator.get(WORKFLOWS + "ok/pause/").status_code == 405
    assert operator.post(WORKFLOWS + "no-such/pause/", {"reason": "x"}).status_code == 404
    assert operator.post(WORKFLOWS + "no-such/pause/", {"reason": ""}).status_code == 404
    assert operator.post(WORKFLOWS + "ok/halt/", {"reason": "x"}).status_code == 404
    assert operator.post(SCHEDULES + "no-such/pause/").status_code == 404
    assert controls.paused("ok") is None


def test_workflow_pause__needs_the_csrf_token(console_as: Callable[..., Client], define: Any) -> None:
    from executions import controls

    define("ok", [{"handler": "test.echo"}])
    operator = console_as("operator", csrf_checks=True)
    assert operator.post(WORKFLOWS + "ok/pause/", {"reason": "forged"}).status_code == 403
    assert controls.paused("ok") is None


def test_schedules__listed_then_paused_resumed_and_deleted_after_a_confirmation(
    console_as: Callable[..., Client], define: Any,
) -> None:
    from executions import schedules
    from executions.store import now_ms, to_ms

    define("ok", [{"handler": "test.echo"}])
    made = schedules.create("ok", "30 2 * * *", timezone_name="Europe/Paris", overlap="cancel_previous")
    sid = made["_id"]
    operator = console_as("operator")
    assert f'href="{SCHEDULES}"' in page(operator, "/admin/executions/")

    html = page(operator, SCHEDULES)
    row = html[html.index(f'id="schedule-{sid}"'):]
    row = row[: row.index("</tr>")]
    for shown in ("<code>30 2 * * *</code>", "Europe/Paris", "cancel_previous", f'href="{WORKFLOWS}ok/"',
                  'class="paused-state">no', "never", 'value="Pause"'):
        assert shown in row, shown
    assert made["next_fire_at"].isoformat(sep=" ", timespec="milliseconds") + "Z" in row

    done = operator.post(SCHEDULES + f"{sid}/pause/")
    assert done.status_code == 302 and done["Location"] == SCHEDULES
    assert schedules.get(sid)["paused"] is True
    html = page(operator, SCHEDULES)
    assert f"Schedule {sid} of ok paused" in html and 'value="Resume"' in html and "paused-badge" in html

    resumed_at = now_ms()
    assert operator.post(SCHEDULES + f"{sid}/resume/").status_code == 302
    resumed = schedules.get(sid)
    assert resumed["paused"] is False and to_ms(resumed["next_fire_at"]) >= resumed_at
    assert operator.get(SCHEDULES + f"{sid}/pause/").status_code == 405  # a change is a POST

    confirm = page(operator, SCHEDULES + f"{sid}/delete/")
    assert 'id="confirm-delete"' in confirm and "30 2 * * *" in confirm
    unconfirmed = operator.post(SCHEDULES + f"{sid}/delete/")
    assert unconfirmed.status_code == 200 and 'id="confirm-delete"' in unconfirmed.content.decode()
    assert schedules.get(sid)["_id"] == sid  # nothing deleted before the confirmation

    done = operator.post(SCHEDULES + f"{sid}/delete/", {"stage": "confirm"})
    assert done.status_code == 302
    with pytest.raises(schedules.ScheduleNotFound):
        schedules.get(sid)
    html = page(operator, SCHEDULES)
    assert f"Schedule {sid} of ok deleted" in html and f'id="schedule-{sid}"' not in html
    assert operator.post(SCHEDULES + f"{sid}/delete/", {"stage": "confirm"}).status_code == 404


def test_schedule_list__links_the_last_execution_it_started(console_as: Callable[..., Client],
                                                            define: Any) -> None:
    from executions import schedules
    from executions.store import now_ms

    define("ok", [{"handler": "test.echo"}])
    made = schedules.create("ok", "* * * * *", now=now_ms() - 120_000)
    report = schedules.fire_due()
    assert len(report.started) == 1
    html = page(console_as("viewer"), SCHEDULES)
    assert f'href="{EXECUTIONS}{report.started[0]}/"' in html
    assert made["_id"] in html
