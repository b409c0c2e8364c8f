"""The README's billing example, run with the handler authors' test kit (``executions.testing``):
its handler (``charge``) and its definition as the README writes them (copied verbatim in
``tests/integration/readme_billing.py``; the first test keeps the copies equal to the README)."""
from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executions.testing import TestKit
from tests.integration import readme_billing
from tests.integration.readme_billing import INVALID, NOTIFIED, payments, register_billing
from tests.integration.test_testkit import no_redis  # noqa: F401 (a fixture: no Redis is used)

ROOT = Path(__file__).resolve().parents[2]
CARD = {"number": "4111111111111111", "exp": "12/30"}

pytestmark = pytest.mark.usefixtures("no_redis")


def readme_block(heading: str) -> str:
    """Return the first ``python`` block of the README's section ``heading``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1]
    found = re.search(r"^```python\n(.*?)^```$", section, re.S | re.M)
    assert found is not None, f"the README's section {heading!r} has no python block"
    return found.group(1)


def copied_block(heading: str) -> str:
    """Return the copy of that block between its ``README:`` markers, dedented."""
    source = Path(readme_billing.__file__).read_text(encoding="utf-8")
    found = re.search(rf"^[ ]*# README: {heading}\n(.*?)^[ ]*# end README$", source, re.S | re.M)
    assert found is not None, f"no copy of {heading!r} in {readme_billing.__file__}"
    return textwrap.dedent(found.group(1))


@pytest.fixture
def kit() -> Iterator[TestKit]:
    payments.reset()
    INVALID.clear()
    NOTIFIED.clear()
    with TestKit() as opened:
        register_billing()
        yield opened


@pytest.mark.parametrize("heading", ["Writing a handler", "Defining a workflow"])
def test_the_copies_equal_the_readmes_blocks(heading: str) -> None:
    assert copied_block(heading) == readme_block(heading)


def test_billing__validates_charges_once_and_notifies(kit: TestKit) -> None:
    run = kit.run("billing", {"order_id": 42, "card": CARD})
    assert run.status == "SUCCEEDED"
    assert run.steps == {"validate": "SUCCEEDED", "charge": "SUCCEEDED", "notify": "SUCCEEDED"}
    assert run.output("charge") == {"receipt": "rcpt-42-1"}
    assert run.output("notify") == {"sent": True, "receipt": "rcpt-42-1"}
    assert list(payments.charges) == [f"{run.id}:charge"] and NOTIFIED == [42]
    [attempt] = run.attempts("charge")
    assert [line["message"] for line in attempt["logs"]] == ["charging order 42 (attempt 1)"]


def test_billing__a_gateway_down_twice_is_retried_per_the_policy_at_once(kit: TestKit) -> None:
    payments.down_for = 2
    run = kit.run("billing", {"order_id": 7, "card": CARD})
    assert run.status == "SUCCEEDED" and run.output("charge") == {"receipt": "rcpt-7-1"}
    assert [a["outcome"] for a in run.attempts("charge")] == ["failed", "failed", "succeeded"]
    errors = [a.get("error_type") for a in run.attempts("charge")]
    assert errors == ["workflows.errors.RetryableError"] * 2 + [None]
    # 1 s then 2 s of backoff, less up to a tenth (the jitter), on the kit's clock.
    assert 2.7 <= kit.elapsed_s <= 3.0
    assert payments.calls == 3 and len(payments.charges) == 1


def test_billing__an_invalid_order_fails_at_once_and_is_never_charged(kit: TestKit) -> None:
    INVALID.add(9)
    run = kit.run("billing", {"order_id": 9, "card": CARD})
    assert run.status == "FAILED" and run.steps["charge"] == "FAILED" and run.steps["notify"] == "PENDING"
    error: Any = run.error("charge")
    assert error["message"] == "order failed validation" and len(run.attempts("charge")) == 1
    assert payments.calls == 0 and kit.elapsed_s == 0


def test_billing__a_crash_after_the_charge_charges_once(kit: TestKit) -> None:
    run = kit.run("billing", {"order_id": 5, "card": CARD}, crash_after="charge")
    assert run.crashed == ["charge"] and run.status == "SUCCEEDED"
    # The handler ran twice (the first outcome died with the worker); the gateway charged once,
    # deduplicated by the idempotency key, and the step succeeded once.
    assert payments.calls == 2 and list(payments.charges) == [f"{run.id}:charge"]
    assert [a["outcome"] for a in run.attempts("charge")] == ["lost", "succeeded"]
    assert run.events.count("attempt_lost") == 1 and run.output("charge") == {"receipt": "rcpt-5-1"}
    assert NOTIFIED == [5]


def test_readme__the_testing_example_runs_as_written() -> None:
    payments.reset()
    INVALID.clear()
    NOTIFIED.clear()
    register_billing()
    example: dict[str, Any] = {}
    exec(compile(readme_block("Testing your handlers"), "README.md", "exec"), example)

    example["test_charge_is_charged_once_even_if_the_worker_dies"]()

    assert payments.calls == 2 and len(payments.charges) == 1  # it crashed, and charged once
