"""Small readers of stored executions and of the handlers' ledger, shared by the integration tests."""
from __future__ import annotations

import datetime as dt
from typing import Any

from executions import store
from tests.handlers import LEDGER


def loaded(execution_id: str) -> dict[str, Any]:
    """Return the stored document of an execution that must exist."""
    doc = store.load(execution_id)
    assert doc is not None, f"execution {execution_id} is not stored"
    return doc


def ms(value: dt.datetime | None) -> int:
    """Return a stored time in integer milliseconds (it must be set)."""
    converted = store.to_ms(value)
    assert converted is not None
    return converted


def events_of(doc: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """Return the events of one type, oldest first."""
    return [e for e in doc["events"] if e["type"] == kind]


def the_event(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    """Return the one event of a type (fail if there is none or more than one)."""
    [event] = events_of(doc, kind)
    return event


def runs_of(execution_id: str, step: str) -> dict[int, int]:
    """Return ``{attempt: runs}`` of one step, from the handlers' ledger."""
    key = f"{execution_id}:{step}"
    return {attempt: n for (k, attempt), n in LEDGER.items() if k == key}


def fingerprint(doc: dict[str, Any]) -> tuple[Any, ...]:
    """Return what any state change would alter."""
    return (doc["version"], doc["event_seq"], doc["status"], len(doc["events"]),
            tuple(s["status"] for s in doc["steps"]), tuple(s["attempt"] for s in doc["steps"]))
