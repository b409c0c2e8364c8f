"""Handlers the tests run: each records its runs in ``LEDGER`` so tests can count them."""
from __future__ import annotations

import os
import threading
import time
from collections import Counter
from typing import Any

from workflows.context import StepContext
from workflows.errors import PermanentError, RetryableError
from workflows.registry import step

#: Runs per (idempotency key, attempt).
LEDGER: Counter[tuple[str, int]] = Counter()
_guard = threading.Lock()


def _note(ctx: StepContext) -> None:
    with _guard:
        LEDGER[(ctx.idempotency_key, ctx.attempt)] += 1


@step("test.echo")
def echo(ctx: StepContext) -> dict[str, Any]:
    """Return the input and the names of the earlier outputs."""
    _note(ctx)
    ctx.log.info("echo attempt %d", ctx.attempt)
    return {"step": ctx.step, "input": ctx.input, "seen": sorted(ctx.outputs)}


@step("test.flaky")
def flaky(ctx: StepContext) -> dict[str, Any]:
    """Fail with RetryableError until attempt ``input["succeed_on"]``."""
    _note(ctx)
    if ctx.attempt < int(ctx.input.get("succeed_on", 1)):
        raise RetryableError(f"transient failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@step("test.permanent")
def permanent(ctx: StepContext) -> None:
    """Fail with PermanentError."""
    _note(ctx)
    raise PermanentError("the input can never be processed")


@step("test.boom")
def boom(ctx: StepContext) -> None:
    """Fail with a plain ValueError."""
    _note(ctx)
    raise ValueError(f"boom on attempt {ctx.attempt}")


@step("test.sleep")
def sleep(ctx: StepContext) -> dict[str, float]:
    """Sleep ``input["sleep_s"]`` seconds in small slices (interruptible)."""
    _note(ctx)
    seconds = float(ctx.input.get("sleep_s", 0.1))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)
    return {"slept": seconds}


@step("test.until_cancelled")
def until_cancelled(ctx: StepContext) -> dict[str, bool]:
    """Run until the execution is cancelled (``input["limit_s"]`` at most, 10 by default), then
    succeed: a step surely still running when a test cancels it, however slow the machine."""
    from executions import store

    _note(ctx)
    end = time.monotonic() + float(ctx.input.get("limit_s", 10))
    while time.monotonic() < end:
        doc = store.load_working(ctx.execution_id)
        if doc is not None and doc["status"] == "CANCELLED":
            return {"cancelled": True}
        time.sleep(0.01)
    return {"cancelled": False}


@step("test.big")
def big(ctx: StepContext) -> str:
    """Return ``input["size"]`` characters."""
    _note(ctx)
    return "x" * int(ctx.input.get("size", 10))


@step("test.context")
def context(ctx: StepContext) -> dict[str, Any]:
    """Return every field of the context, the earlier outputs included, and log one line."""
    _note(ctx)
    ctx.log.info("context of %s attempt %d", ctx.step, ctx.attempt)
    return {
        "execution_id": ctx.execution_id,
        "workflow": ctx.workflow,
        "workflow_version": ctx.workflow_version,
        "step": ctx.step,
        "attempt": ctx.attempt,
        "idempotency_key": ctx.idempotency_key,
        "fencing_token": ctx.fencing_token,
        "input": ctx.input,
        "outputs": dict(ctx.outputs),
    }


@step("test.unserializable")
def unserializable(ctx: StepContext) -> dict[str, Any]:
    """Return an output that JSON cannot encode (a set)."""
    _note(ctx)
    return {"tags": {"a", "b"}}


@step("test.chatty")
def chatty(ctx: StepContext) -> None:
    """Log ``input["lines"]`` numbered lines, then fail with ValueError if ``input["fail"]``."""
    _note(ctx)
    for n in range(int(ctx.input.get("lines", 1))):
        ctx.log.info("line %d of attempt %d", n, ctx.attempt)
    if ctx.input.get("fail"):
        raise ValueError(f"chatty failure on attempt {ctx.attempt}")


#: (idempotency key, start, end) of every run of ``test.window``, monotonic seconds.
WINDOWS: list[tuple[str, float, float]] = []


@step("test.window")
def window(ctx: StepContext) -> dict[str, float]:
    """Sleep ``input["sleep_s"]`` and record when the run started and ended."""
    _note(ctx)
    start = time.monotonic()
    time.sleep(float(ctx.input.get("sleep_s", 0.05)))
    end = time.monotonic()
    with _guard:
        WINDOWS.append((ctx.idempotency_key, start, end))
    return {"start": start, "end": end}


@step("test.fail_with")
def fail_with(ctx: StepContext) -> None:
    """Log ``input["message"]``, then fail for good with it as the error message."""
    _note(ctx)
    ctx.log.warning("about to fail: %s", ctx.input.get("message"))
    raise PermanentError(str(ctx.input.get("message")))


@step("test.card")
def card(ctx: StepContext) -> dict[str, Any]:
    """Log and fail once with the card number of the input; then succeed with facts about it."""
    _note(ctx)
    number = str(ctx.input["card"]["number"])
    ctx.log.info("charging card %s", number)
    if ctx.attempt == 1:
        raise RetryableError(f"card {number} was declined")
    if ctx.input.get("fail"):
        raise PermanentError(f"card {number} refused for good")
    return {"last4": number[-4:], "digits": len(number), "cvv_given": bool(ctx.input.get("cvv"))}


@step("test.surrogate_output")
def surrogate_output(ctx: StepContext) -> dict[str, Any]:
    """Return a file name that is not UTF-8, as ``os.listdir`` gives it (a lone surrogate)."""
    _note(ctx)
    return {"name": os.fsdecode(b"report-\xff.txt")}


@step("test.noisy")
def noisy(ctx: StepContext) -> dict[str, Any]:
    """Log ``input["lines"]`` lines of 500 characters of non-ASCII text; fail for good when
    ``input["fail"]``, with a long message."""
    _note(ctx)
    text = ("é€😀ß中" * 100)[:500]
    for n in range(int(ctx.input.get("lines", 200))):
        ctx.log.info("%d %s", n, text)
    if ctx.input.get("fail"):
        raise PermanentError("noisy failure: " + text * 4)
    return {"step": ctx.step}


#: (execution id, step undone, attempt, the undone step's output, the rollback's cause) of every
#: run of a compensation handler below, in the order they ran.
UNDONE: list[tuple[str, str, int, Any, dict[str, Any]]] = []


def _undo_note(ctx: StepContext) -> None:
    _note(ctx)
    assert ctx.compensation is not None, "a compensation handler runs with ctx.compensation"
    with _guard:
        UNDONE.append((ctx.execution_id, ctx.step, ctx.attempt, ctx.compensation.step_output,
                       dict(ctx.compensation.cause)))


@step("test.undo")
def undo(ctx: StepContext) -> dict[str, Any]:
    """Undo a step: record it, return what was undone."""
    _undo_note(ctx)
    return {"undone": ctx.step, "key": ctx.idempotency_key}


@step("test.undo_flaky")
def undo_flaky(ctx: StepContext) -> dict[str, Any]:
    """Fail until attempt ``input["undo_succeed_on"]`` (counted per compensation), then undo."""
    _undo_note(ctx)
    if ctx.attempt < int(ctx.input.get("undo_succeed_on", 1)):
        raise RetryableError(f"undo failed on attempt {ctx.attempt}")
    return {"undone": ctx.step}


@step("test.undo_refused")
def undo_refused(ctx: StepContext) -> None:
    """A compensation that can never succeed (the outside world refuses it)."""
    _undo_note(ctx)
    raise PermanentError(f"{ctx.step} cannot be undone")
