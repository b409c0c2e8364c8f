"""The e-mail handlers against a live aiosmtpd server (the Message-ID stable across runs, retries
through a stopped server and 4xx replies, header injection refused, the server from DETFLOW_SMTP_URL
only), and the ``email`` workflows end to end on a real worker."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from detflow_site import conf
from detflow_site.demo.smtp import SmtpServer
from executions import operations
from executions.audit import verify
from tests.conftest import wait_for, wait_terminal
from tests.integration.support import loaded
from workflows import definitions, registry
from workflows import email as workflow
from workflows.builtin import ensure_email
from workflows.context import AttemptLog, StepContext
from workflows.errors import PermanentError, RetryableError

EID = "0123456789abcdef0123456789abcdef"
MESSAGE = {"to": "ann@example.com", "subject": "Order $order", "template": "Hello $name, order $order.",
           "vars": {"name": "Ann", "order": 42}}


@pytest.fixture
def server(settings: Any) -> Iterator[SmtpServer]:
    """A live SMTP server, set as DETFLOW_SMTP_URL for the handlers, until the test ends."""
    smtp = SmtpServer()
    point_at(settings, smtp.start())
    yield smtp
    smtp.stop()


def point_at(settings: Any, url: str | None) -> None:
    """Set DETFLOW_SMTP_URL (``None``: unset it) for this test."""
    settings.DETFLOW = {k: v for k, v in settings.DETFLOW.items() if k != "SMTP_URL"}
    if url is not None:
        settings.DETFLOW = {**settings.DETFLOW, "SMTP_URL": url}


def context(step: str, outputs: dict[str, Any] | None = None, data: Any = None) -> StepContext:
    return StepContext(
        execution_id=EID, workflow=workflow.EMAIL, workflow_version=1, step=step, attempt=1,
        idempotency_key=f"{EID}:{step}", input=MESSAGE if data is None else data,
        outputs=dict(outputs or {}), fencing_token=1, log=AttemptLog(200, {}),
    )


def rendered(data: Any = None) -> dict[str, Any]:
    return {"render": registry.get_handler("email.render")(context("render", data=data))}


def send(outputs: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = registry.get_handler("email.send")(context("send", outputs))
    return found


def test_send__hands_the_rendered_message_to_the_server_under_a_message_id_from_the_key(
    server: SmtpServer,
) -> None:
    outputs = rendered()

    sent = send(outputs)

    assert sent == {"message_id": workflow.message_id(f"{EID}:send"), "to": "ann@example.com"}
    held = server.mailbox.get(sent["message_id"])
    assert held is not None and held.rcpt_tos == ("ann@example.com",) and held.mail_from == workflow.SENDER
    assert held.message["Subject"] == "Order 42" and held.message["To"] == "ann@example.com"
    assert held.message.get_content().strip() == "Hello Ann, order 42."
    assert outputs["render"]["unfilled"] == []


def test_send__run_again_sends_the_same_message_id_and_the_server_holds_it_once(server: SmtpServer) -> None:
    outputs = rendered()

    first, again = send(outputs), send(outputs)

    assert first == again
    assert server.mailbox.handed(first["message_id"]) == 2 and len(server.mailbox) == 1


def test_send__a_stopped_server_is_retryable_and_the_retry_after_the_restart_lands(
    server: SmtpServer,
) -> None:
    outputs = rendered()
    port = server.port
    server.stop()

    with pytest.raises(RetryableError, match=r"cannot reach the SMTP server 127\.0\.0\.1"):
        send(outputs)
    server.start()
    sent = send(outputs)

    assert server.port == port and len(server.mailbox) == 1
    assert server.mailbox.handed(sent["message_id"]) == 1


@pytest.mark.parametrize(("reply", "error"), [
    ("451 4.3.0 mailbox busy, try later", RetryableError),
    ("550 5.1.1 no such mailbox", PermanentError),
])
def test_send__a_4xx_reply_is_retryable_and_a_5xx_reply_permanent(
    server: SmtpServer, reply: str, error: type[Exception],
) -> None:
    outputs = rendered()
    server.mailbox.refuse("ann@example.com", reply)

    with pytest.raises(error, match=f"refused the recipient ann@example.com: {reply[:3]}"):
        send(outputs)

    assert len(server.mailbox) == 0


@pytest.mark.parametrize(("change", "field"), [
    ({"to": "ann@example.com\r\nBcc: eve@example.com"}, "input.to"),
    ({"subject": "Hi\nBcc: eve@example.com"}, "input.subject"),
    ({"vars": {"name": "Ann", "order": "42\r\nBcc: eve@example.com"}}, "input.subject"),
])
def test_render__refuses_header_injection_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(PermanentError, match=f"^{field} .*CR or LF.*header injection"):
        rendered({**MESSAGE, **change})


@pytest.mark.parametrize(("change", "message"), [
    ({"to": "not an address"}, "input.to is not an e-mail address"),
    ({"to": "Ann <ann@example.com>"}, "input.to is not an e-mail address"),
    ({"vars": {"name": {"__class__": 1}}}, "input.vars.name must be a string, number, boolean or null"),
    ({"vars": {"not-a-name": 1}}, "input.vars key 'not-a-name' is not a template name"),
    ({"template": ""}, "input.template must be a string"),
])
def test_render__refuses_bad_input_naming_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(PermanentError, match=message):
        rendered({**MESSAGE, **change})


def test_render__fills_plain_values_and_evaluates_nothing() -> None:
    template = "$name ${name} $name.__class__ {name.__class__} {0} $$ $missing"

    body = rendered({**MESSAGE, "template": template})["render"]["body"]

    assert body == "Ann Ann Ann.__class__ {name.__class__} {0} $ $missing"
    assert rendered({**MESSAGE, "template": template})["render"]["unfilled"] == ["missing"]


def test_send__takes_the_server_from_smtp_url_only(server: SmtpServer, settings: Any) -> None:
    elsewhere = SmtpServer()
    elsewhere.start()
    try:
        outputs = rendered({**MESSAGE, "smtp_url": elsewhere.url, "host": "127.0.0.1",
                            "port": elsewhere.port})
        send(outputs)
        assert (len(server.mailbox), len(elsewhere.mailbox)) == (1, 0)
        point_at(settings, None)
        with pytest.raises(PermanentError, match="DETFLOW_SMTP_URL is not set"):
            send(outputs)
    finally:
        elsewhere.stop()
    _, problems = conf.parse({"SMTP_URL": "http://127.0.0.1:25"})
    assert any("SMTP_URL" in p and "smtp://" in p for p in problems)


# -- the workflows on a real worker ------------------------------------------------------------------


def held(server: SmtpServer, execution_id: str) -> Any:
    return wait_for(lambda: server.mailbox.get(workflow.message_id(f"{execution_id}:send")),
                    what="the message in the mailbox")


def output(doc: dict[str, Any], step_name: str) -> Any:
    return json.loads(next(s for s in doc["steps"] if s["name"] == step_name)["output_json"])


@pytest.mark.parametrize("report", [{"status": "delivered"},
                                    {"status": "bounced", "reason": "550 5.1.1 mailbox unavailable"}])
def test_email__records_the_delivery_report(worker: Any, server: SmtpServer, report: dict[str, Any]) -> None:
    ensure_email()
    started, _ = operations.start(workflow.EMAIL, MESSAGE)
    eid = started["_id"]
    held(server, eid)

    operations.signal(eid, "delivery", report, by="mta")

    [doc] = wait_terminal(eid)
    assert doc["status"] == "SUCCEEDED" and [s["name"] for s in doc["steps"]] == [
        "render", "send", "delivery", "record"]
    mid = workflow.message_id(f"{eid}:send")
    assert output(doc, "record") == {"message_id": mid, "to": "ann@example.com", "result": report["status"],
                                     "detail": report.get("reason", "")}
    assert len(server.mailbox) == 1 and verify(doc) == []


def test_email__with_no_report_in_time_continues_as_unknown(worker: Any, server: SmtpServer) -> None:
    definitions.register(workflow.definition("email-short", delivery_timeout_s=0.3))
    started, _ = operations.start("email-short", MESSAGE)

    [doc] = wait_terminal(started["_id"])

    assert doc["status"] == "SUCCEEDED" and output(doc, "delivery") == workflow.UNKNOWN
    assert output(doc, "record")["result"] == "unknown" and len(server.mailbox) == 1
    ended = [e for e in doc["events"] if e["type"] == "wait_ended"]
    assert [(e["step"], e["outcome"]) for e in ended] == [("delivery", "timed_out")] and verify(doc) == []


def test_email_approved__sends_nothing_before_the_approval(worker: Any, server: SmtpServer) -> None:
    ensure_email()
    started, _ = operations.start(workflow.EMAIL_APPROVED, MESSAGE)
    eid = started["_id"]
    wait_for(lambda: loaded(eid)["steps"][1]["status"] == "WAITING", what="the approval wait")
    assert len(server.mailbox) == 0
    assert json.loads(loaded(eid)["steps"][0]["output_json"])["body"] == "Hello Ann, order 42."

    operations.signal(eid, "approved", {"approved": True}, by="ann")
    held(server, eid)
    operations.signal(eid, "delivery", {"status": "delivered"}, by="mta")

    [doc] = wait_terminal(eid)
    assert doc["status"] == "SUCCEEDED" and output(doc, "record")["result"] == "delivered"
    kinds = [(e["type"], e.get("step")) for e in doc["events"]]
    assert kinds.index(("signal_consumed", "approval")) < kinds.index(("step_claimed", "send"))
    assert verify(doc) == []


def test_email__sends_retry_through_a_stopped_server_and_deliver_once(
    worker: Any, server: SmtpServer,
) -> None:
    ensure_email()
    server.stop()
    started, _ = operations.start(workflow.EMAIL, MESSAGE)
    eid = started["_id"]
    wait_for(lambda: loaded(eid)["steps"][1]["attempt"] >= 2, what="a second attempt of send")

    server.start()
    held(server, eid)
    operations.signal(eid, "delivery", {"status": "delivered"}, by="mta")

    [doc] = wait_terminal(eid)
    assert doc["status"] == "SUCCEEDED" and doc["steps"][1]["attempt"] >= 2
    failed = [e for e in doc["events"] if e["type"] == "attempt_failed" and e["step"] == "send"]
    assert failed and all("cannot reach the SMTP server" in e["message"] for e in failed)
    assert len(server.mailbox) == 1 and verify(doc) == []


def test_email__header_injection_fails_render_and_sends_nothing(worker: Any, server: SmtpServer) -> None:
    ensure_email()
    started, _ = operations.start(workflow.EMAIL, {**MESSAGE, "to": "ann@example.com\nBcc: eve@example.com"})

    [doc] = wait_terminal(started["_id"])

    assert doc["status"] == "FAILED" and doc["failed_step"] == "render"
    assert doc["steps"][0]["error"]["message"].startswith("input.to must not hold CR or LF")
    assert doc["steps"][0]["attempt"] == 1 and len(server.mailbox) == 0
