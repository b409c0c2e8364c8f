"""Waits and signals in the admin console, through Django's test client with a real worker behind
it: the wait on the execution page, the Approve form and what it does, roles, the timeline."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.test import Client

from executions import operations
from tests.conftest import wait_for, wait_terminal
from tests.integration.support import loaded

EXECUTIONS = "/admin/executions/execution/"
WAIT = {"signal": "approved", "timeout_s": 60}


def page(client: Client, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, response.content[:2000]
    return response.content.decode()


def section(html: str, name: str) -> str:
    """Return the HTML of the module ``id=name`` (up to the next module)."""
    return html.split(f'id="{name}"', 1)[1].split('<div class="module', 1)[0]


def waiting_for(define: Callable[..., Any], signal: str = "approved") -> str:
    """Start an execution whose second step waits for ``signal``; return its id once it waits."""
    define("approve", [{"handler": "test.echo"}, {"name": "approval", "wait": {**WAIT, "signal": signal}},
                       {"handler": "test.echo"}])
    doc, _ = operations.start("approve", {"order": 7})
    wait_for(lambda: loaded(doc["_id"])["steps"][1]["status"] == "WAITING", what="the wait to start")
    return str(doc["_id"])


def test_execution_page__shows_the_wait_its_diagnosis_and_the_approve_button(
    worker: Any, define: Any, console_as: Callable[..., Client]
) -> None:
    eid = waiting_for(define)

    html = page(console_as("operator"), EXECUTIONS + f"{eid}/")

    wait = html.split('id="wait-1"', 1)[1].split("</p>", 1)[0]
    assert "waits for signal &#x27;approved&#x27; until 20" in wait and "on_timeout fail" in wait
    assert "status-waiting" in section(html, "steps")
    diagnosis = section(html, "diagnosis")
    assert "waits for signal &#x27;approved&#x27; until" in diagnosis
    assert "(then its on_timeout rule applies: fail), 0 signals kept and not taken" in diagnosis
    assert f'href="{EXECUTIONS}{eid}/signal/">Approve</a>' in section(html, "actions")
    assert "No signal received yet." in section(html, "signals")
    form = page(console_as("operator"), EXECUTIONS + f"{eid}/signal/")
    assert '<option value="approved" selected>' in form and ">{}</textarea>" in form


def test_approve__ends_the_wait_with_the_payload_as_the_steps_output(
    worker: Any, define: Any, console_as: Callable[..., Client]
) -> None:
    eid = waiting_for(define)
    operator = console_as("operator")

    done = operator.post(EXECUTIONS + f"{eid}/signal/", {"name": "approved", "payload": '{"ok": true}',
                                                         "reason": "checked the order"}, follow=True)

    assert done.status_code == 200
    said = done.content.decode()
    assert "recorded as signal #1" in said
    assert ("waits for it and takes it now" in said) or ("taken by step &#x27;approval&#x27;" in said)
    [doc] = wait_terminal(eid)
    assert doc["status"] == "SUCCEEDED"
    assert json.loads(doc["steps"][1]["output_json"]) == {"ok": True}
    assert (doc["signals"][0]["by"], doc["signals"][0]["reason"]) == ("operator", "checked the order")
    html = page(operator, EXECUTIONS + f"{eid}/")
    signals = section(html, "signals")
    assert "step approval" in signals and "checked the order" in signals and "&quot;ok&quot;: true" in signals
    assert 'class="wait-span wait signalled"' in section(html, "timeline")
    assert 'class="signal-mark"' in section(html, "timeline")
    assert "action-signal" not in html  # finished: no signal to send


def test_signal__a_bad_json_payload_or_no_reason_is_a_form_error_and_changes_nothing(
    worker: Any, define: Any, console_as: Callable[..., Client]
) -> None:
    eid = waiting_for(define)
    operator = console_as("operator")
    before = loaded(eid)

    bad = operator.post(EXECUTIONS + f"{eid}/signal/", {"name": "approved", "payload": "{ok",
                                                        "reason": "checked"})
    unexplained = operator.post(EXECUTIONS + f"{eid}/signal/", {"name": "approved", "payload": "{}",
                                                                "reason": " "})
    unknown = operator.post(EXECUTIONS + f"{eid}/signal/", {"name": "rejected", "payload": "{}",
                                                            "reason": "checked"})

    assert (bad.status_code, unexplained.status_code, unknown.status_code) == (400, 400, 400)
    assert "payload: is not JSON" in bad.content.decode()
    assert "reason" in unexplained.content.decode()
    assert "waits for signal" in unknown.content.decode()
    after = loaded(eid)
    assert (after["version"], after.get("signals") or []) == (before["version"], [])
    assert after["steps"][1]["status"] == "WAITING"


def test_signal__a_viewer_gets_no_button_and_a_refused_post(
    worker: Any, define: Any, console_as: Callable[..., Client]
) -> None:
    eid = waiting_for(define)
    viewer = console_as("viewer")

    html = page(viewer, EXECUTIONS + f"{eid}/")
    refused = viewer.post(EXECUTIONS + f"{eid}/signal/", {"name": "approved", "payload": "{}",
                                                          "reason": "me too"})

    assert "action-signal" not in html and "Approve" not in html
    assert refused.status_code == 403
    assert loaded(eid)["steps"][1]["status"] == "WAITING" and not loaded(eid).get("signals")


def test_signal__another_name_is_sent_with_send_signal_and_a_null_payload(
    worker: Any, define: Any, console_as: Callable[..., Client]
) -> None:
    eid = waiting_for(define, signal="documents_ready")
    operator = console_as("operator")

    html = page(operator, EXECUTIONS + f"{eid}/")
    form = page(operator, EXECUTIONS + f"{eid}/signal/")
    operator.post(EXECUTIONS + f"{eid}/signal/", {"name": "documents_ready", "payload": "",
                                                  "reason": "scanned"})

    assert ">Send signal</a>" in section(html, "actions")
    assert 'value="Send signal"' in form
    [doc] = wait_terminal(eid)
    assert doc["status"] == "SUCCEEDED" and doc["steps"][1]["output_json"] == "null"


def test_signal__sent_before_the_wait_starts_is_shown_kept(
    worker: Any, define: Any, console_as: Callable[..., Client]
) -> None:
    define("later", [{"name": "nap", "sleep": {"seconds": 60}}, {"name": "approval", "wait": WAIT}])
    doc, _ = operations.start("later", {})
    eid = str(doc["_id"])
    wait_for(lambda: loaded(eid)["steps"][0]["status"] == "WAITING", what="the sleep to start")
    operator = console_as("operator")

    sent = operator.post(EXECUTIONS + f"{eid}/signal/", {"name": "approved", "payload": "{}",
                                                         "reason": "early"}, follow=True)

    assert "kept until the wait of step &#x27;approval&#x27; starts" in sent.content.decode()
    html = page(operator, EXECUTIONS + f"{eid}/")
    assert "kept: no wait has taken it yet" in section(html, "signals")
    assert "sleeps 60 s (until 20" in html
    assert 'class="wait-span sleep waiting"' in section(html, "timeline")
    operations.cancel(eid, "operator", "done with the test")
    wait_terminal(eid)


def test_signal__a_secret_of_the_input_in_a_payload_is_masked_on_the_page(
    worker: Any, define: Any, console_as: Callable[..., Client]
) -> None:
    define("secret", [{"name": "approval", "wait": WAIT}], secret_inputs=["token"])
    doc, _ = operations.start("secret", {"token": "tok-very-secret-1"})
    eid = str(doc["_id"])
    wait_for(lambda: loaded(eid)["steps"][0]["status"] == "WAITING", what="the wait to start")
    operations.signal(eid, "approved", {"echo": "tok-very-secret-1"}, by="ops", reason="ok")
    wait_terminal(eid)

    html = page(console_as("viewer"), EXECUTIONS + f"{eid}/")

    assert "tok-very-secret-1" not in html
    assert "[secret]" in section(html, "signals")


def test_workflow_page__shows_a_sleep_and_a_wait_by_what_they_are(
    define: Any, console_as: Callable[..., Client]
) -> None:
    wait = {"signal": "approved", "timeout_s": 60, "on_timeout": "continue", "default_output": {"ok": False}}
    define("paced", [{"handler": "test.echo"}, {"name": "nap", "sleep": {"seconds": 5}},
                     {"name": "then", "sleep": {"until": "input.send_at"}},
                     {"name": "approval", "wait": wait}])

    html = page(console_as("viewer"), "/admin/workflows/workflow/paced/")

    assert html.count('class="pause"') == 3
    assert "sleeps 5 s" in html and "sleeps until the time at input.send_at" in html
    assert "waits for signal &#x27;approved&#x27; for up to 60 s, then on_timeout continue with " \
           "default_output {&quot;ok&quot;: false}" in html
