"""The statuses an execution shows, as the API spells them.

The client imports nothing from detflow: these are copies of ``executions.state.ExecutionStatus``
and ``executions.engine.TERMINAL``, and a test (``tests/unit/test_client_package.py``) keeps them equal.
"""
from __future__ import annotations

#: Every status of an execution, in the engine's order.
STATUSES: tuple[str, ...] = (
    "PENDING",  # stored; no step claimed yet
    "RUNNING",  # a step has been claimed and the execution has not finished
    "SUCCEEDED",  # every step succeeded or was skipped
    "FAILED",  # a step failed for good; an operator may retry or skip it
    "CANCELLED",  # an operator cancelled it; no further step starts
    "COMPENSATING",  # rolled back: its completed steps' compensations run, newest first
    "COMPENSATED",  # every compensation succeeded (or an operator skipped it)
    "COMPENSATION_FAILED",  # a compensation failed for good; an operator may retry or skip it
)

#: The statuses :meth:`detflow_client.Client.wait` stops at: the execution has ended, and only an
#: operator's action (a retry, a skip, a rollback) moves it on.
TERMINAL: frozenset[str] = frozenset(
    {"SUCCEEDED", "FAILED", "CANCELLED", "COMPENSATED", "COMPENSATION_FAILED"}
)
