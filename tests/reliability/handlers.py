"""Handlers the fault-injection tests steer: some arm a crash point, one blocks until released.

They note their runs in ``tests.handlers.LEDGER`` like every test handler, so that a test can
check that each attempt ran its handler once.
"""
from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from executions import faults
from tests.handlers import _note
from workflows.context import StepContext
from workflows.errors import LeaseLost, PermanentError
from workflows.registry import step

#: Longest a gated handler waits for its gate; a test that forgets to open it fails, not hangs.
GATE_TIMEOUT_S = 30.0


@step("test.arm_crash")
def arm_crash(ctx: StepContext) -> dict[str, Any]:
    """On attempt 1 of step ``input["arm_in"]``, arm crash point ``input["point"]``; then echo."""
    _note(ctx)
    if ctx.step == ctx.input.get("arm_in") and ctx.attempt == 1:
        faults.arm(ctx.input["point"])
    return {"step": ctx.step, "attempt": ctx.attempt}


def _arms(ctx: StepContext) -> None:
    """Arm crash point ``input["point"]`` on attempt 1 of what ``input["arm_in"]`` names: a step
    (``s2``) or the compensation of one (``s2:compensate``)."""
    here = f"{ctx.step}:compensate" if ctx.compensation is not None else ctx.step
    if here == ctx.input.get("arm_in") and ctx.attempt == 1:
        faults.arm(ctx.input["point"])


@step("test.arm_crash_then_fail")
def arm_crash_then_fail(ctx: StepContext) -> None:
    """Arm as ``test.arm_crash`` does, then fail for good (a rollback's cause)."""
    _note(ctx)
    _arms(ctx)
    raise PermanentError(f"{ctx.step} refused for good")


class Refunds:
    """What a payment gateway does with refunds: each applied once per idempotency key, however
    often it is asked (every request counted)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        #: Every request: (idempotency key, attempt), in the order they came.
        self.requests: list[tuple[str, int]] = []
        #: Refunds applied, by idempotency key.
        self.applied: defaultdict[str, int] = defaultdict(int)

    def refund(self, key: str, attempt: int) -> bool:
        """Apply the refund of ``key`` unless it was applied; return whether this request did."""
        with self._guard:
            self.requests.append((key, attempt))
            if self.applied[key]:
                return False
            self.applied[key] += 1
            return True

    def reset(self) -> None:
        with self._guard:
            self.requests.clear()
            self.applied.clear()


#: The refunds ``test.undo_arm_crash`` asks for.
REFUNDS = Refunds()


@step("test.undo_arm_crash")
def undo_arm_crash(ctx: StepContext) -> dict[str, Any]:
    """Compensate: ask for the refund under the idempotency key (its side effect), then arm as
    ``test.arm_crash`` does (a point after the claim then falls after the effect)."""
    _note(ctx)
    applied = REFUNDS.refund(ctx.idempotency_key, ctx.attempt)
    _arms(ctx)
    return {"undone": ctx.step, "key": ctx.idempotency_key, "applied": applied}


class Gates:
    """One gate per (idempotency key, attempt): the handler waits at it until the test opens it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._entered: defaultdict[tuple[str, int], threading.Event] = defaultdict(threading.Event)
        self._open: defaultdict[tuple[str, int], threading.Event] = defaultdict(threading.Event)
        #: What each attempt's heartbeat after its gate did: "renewed" or the exception's name.
        self.heartbeats: dict[tuple[str, int], str] = {}

    def _events(self, key: str, attempt: int) -> tuple[threading.Event, threading.Event]:
        with self._guard:
            return self._entered[(key, attempt)], self._open[(key, attempt)]

    def pass_through(self, key: str, attempt: int) -> None:
        """Say the attempt arrived, then wait until its gate opens."""
        entered, opened = self._events(key, attempt)
        entered.set()
        if not opened.wait(GATE_TIMEOUT_S):
            raise TimeoutError(f"gate {key} attempt {attempt} was never opened")

    def wait_entered(self, key: str, attempt: int, timeout: float = 20.0) -> None:
        """Wait until the attempt's handler is blocked at its gate."""
        entered, _ = self._events(key, attempt)
        if not entered.wait(timeout):
            raise AssertionError(f"attempt {attempt} of {key} never reached its gate")

    def open(self, key: str, attempt: int) -> None:
        """Let the attempt's handler return."""
        self._events(key, attempt)[1].set()

    def reset(self) -> None:
        """Open every gate (so that no handler thread is left waiting) and forget them all."""
        with self._guard:
            for event in self._open.values():
                event.set()
            self._entered.clear()
            self._open.clear()
            self.heartbeats.clear()


#: The gates ``test.gate`` waits at.
GATES = Gates()


@step("test.gate")
def gate(ctx: StepContext) -> dict[str, Any]:
    """Wait at the gate of this attempt when it is listed in ``input["block"]``, heartbeat after it
    when ``input["heartbeat"]`` says so; return the attempt."""
    _note(ctx)
    if ctx.attempt in ctx.input.get("block", ()):
        GATES.pass_through(ctx.idempotency_key, ctx.attempt)
        if ctx.input.get("heartbeat"):
            try:
                ctx.heartbeat()
            except LeaseLost:
                GATES.heartbeats[(ctx.idempotency_key, ctx.attempt)] = "LeaseLost"
                raise
            GATES.heartbeats[(ctx.idempotency_key, ctx.attempt)] = "renewed"
    return {"step": ctx.step, "attempt": ctx.attempt, "fencing_token": ctx.fencing_token}


#: (store faults, seconds): each run of ``test.election`` takes one and starts that election.
ELECTIONS: list[tuple[Any, float]] = []


@step("test.election")
def election(ctx: StepContext) -> dict[str, Any]:
    """Start the next planned election as the handler returns, so that its outcome write meets it."""
    _note(ctx)
    if ELECTIONS:
        store_faults, seconds = ELECTIONS.pop(0)
        store_faults.election(seconds)
    return {"step": ctx.step, "attempt": ctx.attempt}
