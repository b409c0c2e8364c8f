"""The payment handlers: reserve, charge, capture, receipt, and the compensations release and refund.

Each one makes one call to the payment gateway at ``DETFLOW_PAYMENTS_URL`` (never a URL taken from
the input: data is never an address a worker calls), with the step's idempotency key as the
``Idempotency-Key`` header, so that a handler run again after a crash applies nothing twice. A 5xx,
a timeout or a lost connection is retryable; a decline (402) and every other refusal (4xx) is
permanent. The handlers find each other's outputs under the step names of :data:`PAYMENTS_DEFINITION`
(``reserve``, ``charge``), so a workflow using them names its steps so.
"""
from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from detflow_site import conf
from workflows.context import StepContext
from workflows.errors import PermanentError, RetryableError
from workflows.registry import step

#: Name of the payments workflow.
PAYMENTS = "payments"
#: Seconds one gateway call may take.
TIMEOUT_S = 10.0
#: Longest order id, in characters (the gateway's limit).
MAX_ORDER_ID = 128
#: Largest amount, in cents.
MAX_AMOUNT_CENTS = 10**12
#: HTTP statuses that are worth another attempt.
RETRYABLE_STATUSES = frozenset({408, 425, 429})

_RETRY = {"max_attempts": 4, "initial_delay_s": 0.2, "multiplier": 2.0, "max_delay_s": 5.0, "jitter": 0.1}
#: A compensation must end: more attempts, the same short waits.
_UNDO_RETRY = {**_RETRY, "max_attempts": 8}

#: The definition: reserve, charge, capture, receipt; a failure rolls back by refunding the charge,
#: then releasing the reservation (``workflows.builtin.ensure_payments`` registers it).
PAYMENTS_DEFINITION: dict[str, Any] = {
    "name": PAYMENTS,
    "description": "Reserve an order's amount, charge it, capture the charge and issue a receipt; "
                   "on a failure, refund the charge and release the reservation",
    "on_failure": "compensate",
    "steps": [
        {"name": "reserve", "handler": "payments.reserve", "timeout_s": 30, "retry": _RETRY,
         "compensate": {"handler": "payments.release", "timeout_s": 30, "retry": _UNDO_RETRY}},
        {"name": "charge", "handler": "payments.charge", "timeout_s": 30, "retry": _RETRY,
         "compensate": {"handler": "payments.refund", "timeout_s": 30, "retry": _UNDO_RETRY}},
        {"name": "capture", "handler": "payments.capture", "timeout_s": 30, "retry": _RETRY},
        {"name": "receipt", "handler": "payments.receipt", "timeout_s": 30, "retry": _RETRY},
    ],
}


def gateway_url() -> str:
    """Return the payment gateway's base URL, the ``DETFLOW_PAYMENTS_URL`` setting (never the input:
    data is never a URL a worker calls)."""
    url = conf.get().PAYMENTS_URL
    if not url:
        raise PermanentError("DETFLOW_PAYMENTS_URL is not set: point it at the payment gateway "
                             "(such as http://127.0.0.1:8070) in the workers' environment")
    return url.rstrip("/")  # an http(s) URL: the setting's parser refuses any other


@step("payments.reserve")
def reserve(ctx: StepContext) -> dict[str, Any]:
    """Hold the order's amount at the gateway."""
    order = _order(ctx)
    answer = _call(ctx, "/reservations", {"order_id": order["order_id"],
                                          "amount_cents": order["amount_cents"]})
    ctx.log.info("reserved %d cents for order %s: %s", order["amount_cents"], order["order_id"],
                 answer["reservation_id"])
    return {"reservation_id": answer["reservation_id"], "status": answer["status"],
            "amount_cents": answer["amount_cents"]}


@step("payments.charge")
def charge(ctx: StepContext) -> dict[str, Any]:
    """Authorise a charge of the reserved amount."""
    order = _order(ctx)
    reservation = _earlier(ctx, "reserve", "reservation_id")
    answer = _call(ctx, "/charges", {"order_id": order["order_id"], "reservation_id": reservation,
                                     "amount_cents": order["amount_cents"]})
    ctx.log.info("charge %s authorized", answer["charge_id"])
    return {"charge_id": answer["charge_id"], "status": answer["status"]}


@step("payments.capture")
def capture(ctx: StepContext) -> dict[str, Any]:
    """Capture the authorised charge; a decline fails the step at once."""
    order = _order(ctx)
    charge_id = _earlier(ctx, "charge", "charge_id")
    answer = _call(ctx, f"/charges/{_segment(charge_id)}/capture", {"order_id": order["order_id"]})
    ctx.log.info("charge %s captured", charge_id)
    return {"charge_id": answer["charge_id"], "status": answer["status"]}


@step("payments.receipt")
def receipt(ctx: StepContext) -> dict[str, Any]:
    """Issue the receipt of the captured charge."""
    order = _order(ctx)
    charge_id = _earlier(ctx, "charge", "charge_id")
    answer = _call(ctx, "/receipts", {"order_id": order["order_id"], "charge_id": charge_id})
    return {"receipt_id": answer["receipt_id"], "charge_id": charge_id}


@step("payments.release")
def release(ctx: StepContext) -> dict[str, Any]:
    """Undo ``reserve``: give the held amount back (after ``refund`` undid the charge)."""
    order = _order(ctx)
    reservation = _undone(ctx, "reserve", "reservation_id")
    answer = _call(ctx, f"/reservations/{_segment(reservation)}/release", {"order_id": order["order_id"]})
    ctx.log.info("reservation %s released", reservation)
    return {"reservation_id": reservation, "status": answer["status"]}


@step("payments.refund")
def refund(ctx: StepContext) -> dict[str, Any]:
    """Undo ``charge``: refund it, captured or only authorised; a refusal is permanent."""
    order = _order(ctx)
    charge_id = _undone(ctx, "charge", "charge_id")
    answer = _call(ctx, f"/charges/{_segment(charge_id)}/refund", {"order_id": order["order_id"]},
                   refused=f"the gateway refused to refund charge {charge_id} of order "
                           f"{order['order_id']}: the money stays charged; refund it by hand")
    ctx.log.info("charge %s refunded", charge_id)
    return {"charge_id": charge_id, "status": answer["status"]}


def _undone(ctx: StepContext, step_name: str, key: str) -> Any:
    """Return ``key`` of the output of the step a compensation undoes (``ctx.compensation``), or of
    that step's output by name when the handler is called outside a rollback."""
    undo = ctx.compensation
    if undo is not None and isinstance(undo.step_output, dict) and key in undo.step_output:
        return undo.step_output[key]
    return _earlier(ctx, step_name, key)


def _order(ctx: StepContext) -> dict[str, Any]:
    """Return the input's ``order_id`` and ``amount_cents``; refuse them naming the field."""
    data = ctx.input if isinstance(ctx.input, dict) else None
    if data is None:
        raise PermanentError("the input must be an object with order_id and amount_cents")
    order = data.get("order_id")
    if not isinstance(order, str) or not 0 < len(order) <= MAX_ORDER_ID or not order.isprintable():
        raise PermanentError(f"input.order_id must be a printable string of 1 to {MAX_ORDER_ID} characters")
    amount = data.get("amount_cents")
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_AMOUNT_CENTS:
        raise PermanentError("input.amount_cents must be a whole number of cents from 1 to "
                             f"{MAX_AMOUNT_CENTS}")
    return {"order_id": order, "amount_cents": amount}


def _earlier(ctx: StepContext, name: str, key: str) -> str:
    """Return ``key`` of the output of the earlier step ``name`` (a gateway id)."""
    output = ctx.outputs.get(name)
    value = output.get(key) if isinstance(output, dict) else None
    if not isinstance(value, str) or not value:
        raise PermanentError(f"{ctx.step} needs {key!r} in the output of an earlier step named {name!r}")
    return value


def _segment(value: str) -> str:
    """Quote a gateway id for a URL path, so that an edited output cannot name another route."""
    return urllib.parse.quote(value, safe="")


def _call(ctx: StepContext, path: str, body: dict[str, Any], refused: str | None = None) -> dict[str, Any]:
    """POST ``body`` to the gateway with the step's idempotency key; return the JSON answer."""
    url = gateway_url() + path
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Idempotency-Key": ctx.idempotency_key,
                 "User-Agent": "detflow-payments"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            detail = _detail(exc.read())
        if exc.code >= 500 or exc.code in RETRYABLE_STATUSES:
            raise RetryableError(f"the payment gateway answered HTTP {exc.code} to {path}: "
                                 f"{detail}") from None
        if exc.code == 402:
            raise PermanentError(f"the payment gateway declined {path} for order {body.get('order_id')}: "
                                 f"{detail}") from None
        raise PermanentError(f"{refused}: HTTP {exc.code} {detail}" if refused else
                             f"the payment gateway refused {path}: HTTP {exc.code} {detail}") from None
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError) as exc:
        raise RetryableError(f"cannot reach the payment gateway for {path}: "
                             f"{getattr(exc, 'reason', None) or exc!r}") from None
    try:
        answer = json.loads(raw)
    except ValueError:
        raise RetryableError(f"the payment gateway's answer to {path} is not JSON") from None
    if not isinstance(answer, dict):
        raise RetryableError(f"the payment gateway's answer to {path} is not a JSON object")
    return answer


def _detail(raw: bytes) -> str:
    """Return the gateway's error code and message from an error body, cut short."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw[:200].decode("utf-8", "replace")
    if isinstance(body, dict) and "error" in body:
        return f"{body['error']}: {str(body.get('message', ''))[:300]}"
    return str(body)[:200]
