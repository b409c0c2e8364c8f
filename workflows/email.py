"""The e-mail handlers: render, send, record; and the ``email`` and ``email-approved`` definitions.

``render`` fills a template from the input with :class:`string.Template` (``$name`` over plain
values: a template is data, never code, so nothing is evaluated and no attribute is reached) and
refuses a bad address or a header with CR or LF in it, naming the field. ``send`` hands the message
to the SMTP server at ``DETFLOW_SMTP_URL`` (never a host taken from the input) with a Message-ID
derived from the step's idempotency key, so that a run again after a crash sends the same
Message-ID and a server that deduplicates (as an MTA does) holds the message once. A refused
connection, a lost one or a 4xx reply is retryable; a 5xx reply is permanent. The step ``delivery``
waits for the signal ``delivery`` (the delivery report: ``{"status": "delivered"|"bounced", ...}``)
and continues with ``{"delivery": "unknown"}`` when none comes in time; ``record`` says which.

``email-approved`` waits for the signal ``approved`` between render and send: the approver sees the
rendered message (render's output) and nothing is sent before the approval; with none in time the
execution fails and nothing is sent.
"""
from __future__ import annotations

import hashlib
import re
import smtplib
import string
import urllib.parse
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from detflow_site import conf
from workflows.context import StepContext
from workflows.errors import PermanentError, RetryableError
from workflows.registry import step

#: Name of the e-mail workflow, and of its variant that waits for an approval before sending.
EMAIL = "email"
EMAIL_APPROVED = "email-approved"
#: The sender of every message.
SENDER = "detflow@localhost"
#: Seconds one SMTP conversation may take.
TIMEOUT_S = 10.0
#: How long ``delivery`` waits for the delivery report, and ``approval`` for the approval, by default.
DELIVERY_TIMEOUT_S = 86_400.0
APPROVAL_TIMEOUT_S = 7 * 86_400.0
#: Limits of the input, in characters.
MAX_ADDRESS = 254
MAX_SUBJECT = 200
MAX_TEMPLATE = 100_000
MAX_VARS = 100
#: What ``delivery`` outputs when no report came in time.
UNKNOWN = {"delivery": "unknown"}
#: Statuses a delivery report may carry.
REPORTED = ("delivered", "bounced")

#: A bare address (no display name): the local part's atom characters, then a dotted domain.
ADDRESS_RE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*")
#: The values a template is filled with.
PLAIN = (str, int, float, bool, type(None))

_RETRY = {"max_attempts": 3, "initial_delay_s": 0.2, "multiplier": 2.0, "max_delay_s": 2.0, "jitter": 0.1}
#: Sending outlives a short server outage: about 0.2 + 0.4 + 0.8 + 1.6 + 2 x 3 s of waits.
_SEND_RETRY = {"max_attempts": 9, "initial_delay_s": 0.2, "multiplier": 2.0, "max_delay_s": 2.0,
               "jitter": 0.1}


def definition(name: str = EMAIL, *, approval: bool = False, delivery_timeout_s: float = DELIVERY_TIMEOUT_S,
               approval_timeout_s: float = APPROVAL_TIMEOUT_S) -> dict[str, Any]:
    """Return the e-mail workflow's definition: render, (approval,) send, delivery, record.

    The engine reads a wait's timeout from the definition, so a shorter wait (the demo's) is
    another definition built here, not an input.
    """
    steps: list[dict[str, Any]] = [
        {"name": "render", "handler": "email.render", "timeout_s": 30, "retry": _RETRY},
        {"name": "send", "handler": "email.send", "timeout_s": 60, "retry": _SEND_RETRY},
        {"name": "delivery", "wait": {"signal": "delivery", "timeout_s": delivery_timeout_s,
                                      "on_timeout": "continue", "default_output": UNKNOWN}},
        {"name": "record", "handler": "email.record", "timeout_s": 30, "retry": _RETRY},
    ]
    if approval:
        steps.insert(1, {"name": "approval", "wait": {"signal": "approved", "timeout_s": approval_timeout_s,
                                                      "on_timeout": "fail"}})
    approve = "wait for the signal 'approved', " if approval else ""
    return {"name": name, "steps": steps,
            "description": f"Render a message from a template, {approve}send it over SMTP, wait for its "
                           "delivery report and record delivered, bounced or unknown"}


#: The definitions ``workflows.builtin.ensure_email`` registers.
EMAIL_DEFINITION = definition()
EMAIL_APPROVED_DEFINITION = definition(EMAIL_APPROVED, approval=True)


def smtp_address() -> tuple[str, int]:
    """Return the SMTP server's host and port, from ``DETFLOW_SMTP_URL`` (never from the input)."""
    url = conf.get().SMTP_URL
    if not url:
        raise PermanentError("DETFLOW_SMTP_URL is not set: point it at the SMTP server (such as "
                             "smtp://127.0.0.1:2525) in the workers' environment")
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or 25
    except ValueError:
        raise PermanentError(f"DETFLOW_SMTP_URL has a bad port: {url}") from None
    if not parts.hostname:
        raise PermanentError(f"DETFLOW_SMTP_URL names no host: {url}")
    return parts.hostname, port


def message_id(idempotency_key: str) -> str:
    """Return the Message-ID of the message sent under ``idempotency_key``: the same on every run."""
    return f"<{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}@detflow>"


@step("email.render")
def render(ctx: StepContext) -> dict[str, Any]:
    """Fill the input's template with its vars; refuse a bad address or header injection."""
    data = ctx.input if isinstance(ctx.input, dict) else None
    if data is None:
        raise PermanentError("the input must be an object with to, subject, template and vars")
    to = _header(data.get("to"), "input.to", MAX_ADDRESS)
    if not ADDRESS_RE.fullmatch(to):
        raise PermanentError(f"input.to is not an e-mail address such as ann@example.com: {to[:80]!r}")
    template = data.get("template")
    if not isinstance(template, str) or not 0 < len(template) <= MAX_TEMPLATE:
        raise PermanentError(f"input.template must be a string of 1 to {MAX_TEMPLATE} characters")
    values = _vars(data.get("vars", {}))
    subject_template = _header(data.get("subject"), "input.subject", MAX_SUBJECT)
    subject = string.Template(subject_template).safe_substitute(values)
    if "\r" in subject or "\n" in subject:
        raise PermanentError("input.subject would hold CR or LF once input.vars are filled in (header "
                             "injection): a header is one line")
    body_template = string.Template(template)
    unfilled = sorted(set(body_template.get_identifiers()) - set(values))
    body = body_template.safe_substitute(values)
    ctx.log.info("rendered %d characters for %s%s", len(body), to,
                 f"; left unfilled: {', '.join(unfilled)}" if unfilled else "")
    return {"from": SENDER, "to": to, "subject": subject[:MAX_SUBJECT], "body": body, "unfilled": unfilled}


@step("email.send")
def send(ctx: StepContext) -> dict[str, Any]:
    """Hand the rendered message to the SMTP server under a Message-ID from the idempotency key."""
    rendered = ctx.outputs.get("render")
    if not isinstance(rendered, dict) or not all(isinstance(rendered.get(k), str)
                                                 for k in ("to", "subject", "body")):
        raise PermanentError(f"{ctx.step} needs to, subject and body in the output of an earlier step "
                             "named 'render'")
    # Checked again: an operator may have edited render's output before a retry.
    to = _header(rendered["to"], "outputs.render.to", MAX_ADDRESS)
    if not ADDRESS_RE.fullmatch(to):
        raise PermanentError(f"outputs.render.to is not an e-mail address: {to[:80]!r}")
    subject = _header(rendered["subject"], "outputs.render.subject", MAX_SUBJECT)
    mid = message_id(ctx.idempotency_key)
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = mid
    message["Date"] = formatdate(usegmt=True)
    message.set_content(rendered["body"])
    host, port = smtp_address()
    where = f"the SMTP server {host}:{port}"
    try:
        with smtplib.SMTP(host, port, timeout=TIMEOUT_S) as client:
            client.send_message(message, from_addr=SENDER, to_addrs=[to])
    except smtplib.SMTPRecipientsRefused as exc:
        code, reply = max(exc.recipients.values(), key=lambda item: item[0])
        raise _by_code(code, f"{where} refused the recipient {to}: {code} {_text(reply)}") from None
    except smtplib.SMTPResponseException as exc:
        raise _by_code(exc.smtp_code, f"{where} answered {exc.smtp_code} {_text(exc.smtp_error)}") from None
    except smtplib.SMTPServerDisconnected as exc:
        raise RetryableError(f"{where} closed the connection: {exc!r}") from None
    except smtplib.SMTPException as exc:  # before OSError, its base class
        raise PermanentError(f"{where} cannot take the message: {exc!r}") from None
    except OSError as exc:
        raise RetryableError(f"cannot reach {where}: {exc!r}") from None
    ctx.log.info("sent %s to %s", mid, to)
    return {"message_id": mid, "to": to}


@step("email.record")
def record(ctx: StepContext) -> dict[str, Any]:
    """Record how the message ended: delivered, bounced (from the report) or unknown (no report)."""
    sent = ctx.outputs.get("send")
    report = ctx.outputs.get("delivery")
    if not isinstance(sent, dict) or not isinstance(report, dict):
        raise PermanentError(f"{ctx.step} needs the outputs of earlier steps named 'send' and 'delivery'")
    if report == UNKNOWN:
        result, detail = "unknown", "no delivery report came in time"
    elif report.get("status") in REPORTED:
        result, detail = report["status"], str(report.get("reason") or report.get("detail") or "")[:500]
    else:
        raise PermanentError("the payload of the signal 'delivery' must have status delivered or bounced "
                             f"(with a reason), got {report.get('status')!r}")
    ctx.log.info("%s to %s: %s", sent.get("message_id"), sent.get("to"), result)
    return {"message_id": sent.get("message_id"), "to": sent.get("to"), "result": result, "detail": detail}


def _header(value: Any, field: str, limit: int) -> str:
    """Return a one-line header value; refuse CR or LF (header injection) naming ``field``."""
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise PermanentError(f"{field} must be a string of 1 to {limit} characters")
    if "\r" in value or "\n" in value:
        raise PermanentError(f"{field} must not hold CR or LF (header injection): a header is one line")
    return value


def _vars(value: Any) -> dict[str, str]:
    """Return the template's values as text; only plain values (no objects, no lists)."""
    if not isinstance(value, dict) or len(value) > MAX_VARS:
        raise PermanentError(f"input.vars must be an object of at most {MAX_VARS} plain values")
    found = {}
    for key, item in value.items():
        if not key.isidentifier():
            raise PermanentError(f"input.vars key {key[:40]!r} is not a template name such as first_name")
        if not isinstance(item, PLAIN):
            raise PermanentError(f"input.vars.{key} must be a string, number, boolean or null")
        found[key] = "" if item is None else str(item)
    return found


def _by_code(code: int, message: str) -> RetryableError | PermanentError:
    """A 4xx SMTP reply is worth another attempt, a 5xx one is not."""
    return RetryableError(message) if 400 <= code < 500 else PermanentError(message)


def _text(reply: bytes | str) -> str:
    return (reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply))[:300]
