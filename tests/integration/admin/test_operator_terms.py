"""The execution page speaks the admin's language: the retry form starts from the input the failed step
reads, and the diagnosis' repair names the page's buttons, not the API's calls."""
from __future__ import annotations

import html as html_lib
import json
import re
from collections.abc import Callable
from typing import Any

from django.test import Client

from tests.integration.admin.conftest import failed_execution

EXECUTIONS = "/admin/executions/execution/"


def page(client: Client, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, response.content[:2000]
    return response.content.decode()


def textarea(html: str, name: str) -> str:
    found = re.search(rf'<textarea name="{name}"[^>]*>(.*?)</textarea>', html, re.S)
    assert found, f"no {name} box"
    return html_lib.unescape(found.group(1))


def repair(html: str) -> str:
    found = re.search(r'<td id="repair">(.*?)</td>', html, re.S)
    assert found, "the page has a repair line"
    return html_lib.unescape(found.group(1))


def test_retry_form__holds_the_current_input_and_sent_unchanged_records_no_edit(
    console_as: Callable[..., Client], define: Any,
) -> None:
    from executions import store

    failed = failed_execution(define, input={"order": 7, "items": ["a", "b"]})
    operator = console_as("operator")
    form_html = page(operator, EXECUTIONS + f"{failed}/retry/")
    shown = textarea(form_html, "input")
    assert json.loads(shown) == {"order": 7, "items": ["a", "b"]}
    done = operator.post(EXECUTIONS + f"{failed}/retry/",
                         {"stage": "confirm", "reason": "back up", "input": shown})
    assert done.status_code == 302
    event = store.load(failed)["events"][-1]
    assert event["type"] == "retried" and event.get("input_diff_json") in (None, "[]")
    assert store.load(failed)["steps"][0].get("input_json") is None  # no input of its own: not edited


def test_retry_form__an_edited_input_is_recorded_and_the_step_reads_it_next_time(
    console_as: Callable[..., Client], define: Any,
) -> None:
    from executions import runner, store

    failed = failed_execution(define, input={"order": 7})
    operator = console_as("operator")
    sent = operator.post(EXECUTIONS + f"{failed}/retry/",
                         {"stage": "confirm", "reason": "fix the order", "input": '{"order": 8}'})
    assert sent.status_code == 302
    assert '"new":8' in store.load(failed)["events"][-1]["input_diff_json"]
    runner.advance(failed, worker="test")
    assert store.load(failed)["status"] == "FAILED"  # test.permanent fails again, with the edited input
    assert json.loads(textarea(page(operator, EXECUTIONS + f"{failed}/retry/"), "input")) == {"order": 8}


def test_repair__of_a_failed_execution_names_the_retry_and_skip_buttons(
    console_as: Callable[..., Client], define: Any,
) -> None:
    failed = failed_execution(define)
    operator_line = repair(page(console_as("operator"), EXECUTIONS + f"{failed}/"))
    assert "POST" not in operator_line and "executions/" not in operator_line
    assert operator_line.startswith("press “Retry” above") and "“Skip the failed step”" in operator_line
    viewer_line = repair(page(console_as("viewer"), EXECUTIONS + f"{failed}/"))
    assert viewer_line.startswith("an operator presses “Retry” above")


def test_repair__of_a_paused_execution_names_resume(console_as: Callable[..., Client], define: Any) -> None:
    from executions import operations

    define("held", [{"handler": "test.echo"}])
    doc, _ = operations.start("held", {})
    operations.pause(doc["_id"], "operator", "hold on")
    line = repair(page(console_as("operator"), EXECUTIONS + f"{doc['_id']}/"))
    assert line == "press “Resume” above"


def test_repair__of_a_wait_for_a_signal_names_the_approve_button(
    console_as: Callable[..., Client], define: Any, worker: Any,
) -> None:
    from executions import operations, store
    from tests.conftest import wait_for

    define("approve", [{"name": "approval", "wait": {"signal": "approved", "timeout_s": 60}}])
    doc, _ = operations.start("approve", {})
    wait_for(lambda: store.load(doc["_id"])["steps"][0]["status"] == "WAITING", what="the wait")
    line = repair(page(console_as("operator"), EXECUTIONS + f"{doc['_id']}/"))
    assert line == "it moves on when the signal 'approved' comes (press “Approve” above) or at its timeout"
