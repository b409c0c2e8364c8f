# ruff: noqa: E402, I001, RUF059 (the README's blocks, copied verbatim, import where they stand)
"""The README's billing example, its code copied verbatim between the ``README:`` markers
(``test_readme_billing`` checks that the copies still equal the README's blocks), with what the
README leaves to the reader: the ``payments`` client the handler calls (a fake gateway here, which
charges once per idempotency key) and the ``billing.validate`` and ``billing.notify`` handlers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Receipt:
    id: str


@dataclass
class FakeGateway:
    """A payment gateway that charges once per idempotency key and may be down for a while."""

    class Unavailable(Exception):
        """The gateway did not answer."""

    #: Receipts by idempotency key: the charges that happened.
    charges: dict[str, Receipt] = field(default_factory=dict)
    #: Calls made, the refused ones included.
    calls: int = 0
    #: How many calls from now are refused as if the gateway were down.
    down_for: int = 0

    def charge(self, order: Any, idempotency_key: str) -> Receipt:
        self.calls += 1
        if self.down_for > 0:
            self.down_for -= 1
            raise self.Unavailable("gateway timed out")
        return self.charges.setdefault(idempotency_key, Receipt(f"rcpt-{order}-{len(self.charges) + 1}"))

    def reset(self) -> None:
        self.charges.clear()
        self.calls = self.down_for = 0


payments = FakeGateway()
#: Orders ``billing.validate`` refuses.
INVALID: set[Any] = set()
#: The orders ``billing.notify`` notified, in order.
NOTIFIED: list[Any] = []

# README: Writing a handler
# myapp/handlers.py  (listed in DETFLOW_HANDLER_MODULES=myapp.handlers)
from workflows.registry import step
from workflows.errors import PermanentError, RetryableError

@step("billing.charge")
def charge(ctx):
    order = ctx.input["order_id"]
    ctx.log.info("charging order %s (attempt %d)", order, ctx.attempt)
    if not ctx.outputs["validate"]["ok"]:
        raise PermanentError("order failed validation")        # fails the step at once
    try:
        receipt = payments.charge(order, idempotency_key=ctx.idempotency_key)
    except payments.Unavailable as exc:
        raise RetryableError(str(exc))                           # retried per the policy
    ctx.heartbeat()                                               # renew the lease in long work
    return {"receipt": receipt.id}
# end README


@step("billing.validate")
def validate(ctx: Any) -> dict[str, Any]:
    return {"ok": ctx.input["order_id"] not in INVALID}


@step("billing.notify")
def notify(ctx: Any) -> dict[str, Any]:
    NOTIFIED.append(ctx.input["order_id"])
    return {"sent": True, "receipt": ctx.outputs["charge"]["receipt"]}


def register_billing() -> Any:
    """Register the README's billing workflow; return the stored version."""
    # README: Defining a workflow
    from workflows import definitions

    stored, created = definitions.register({
        "name": "billing",
        "description": "Validate, charge and notify",
        "steps": [
            {"name": "validate", "handler": "billing.validate"},
            {"name": "charge", "handler": "billing.charge", "timeout_s": 30,
             "retry": {"max_attempts": 5, "initial_delay_s": 1, "multiplier": 2,
                       "max_delay_s": 60, "jitter": 0.1},
             "non_retryable": ["ValueError"]},
            {"name": "notify", "handler": "billing.notify", "max_concurrency": 4},
        ],
        "secret_inputs": ["card.number"],
    })
    # end README
    return stored
