"""Sleeps, waits and signals as the console shows them: what a step waits for, the signals an
execution received, and what sending one did.

Everything here reads a stored (and masked) execution document; nothing is written.
"""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

from executions import operations
from executions.engine import StepStatus


def signal_names(doc: dict[str, Any]) -> list[str]:
    """Return the signals the wait steps of ``doc``'s definition wait for, in step order, once each."""
    found: list[str] = []
    for spec in doc["definition"]["steps"]:
        name = (spec.get("wait") or {}).get("signal")
        if name and name not in found:
            found.append(name)
    return found


def awaited(doc: dict[str, Any]) -> str | None:
    """Return the signal an operator most likely means: the one a WAITING step waits for, else the
    first wait step's that has not ended yet, else the first one."""
    specs = doc["definition"]["steps"]
    pairs = [(step, spec["wait"]["signal"]) for step, spec in zip(doc["steps"], specs, strict=True)
             if "wait" in spec]
    for wanted in ({StepStatus.WAITING}, {StepStatus.PENDING}):
        for step, name in pairs:
            if step["status"] in wanted:
                return str(name)
    return str(pairs[0][1]) if pairs else None


def is_approval(name: str | None) -> bool:
    """Whether a signal's name reads as an approval (it contains ``approv``)."""
    return bool(name) and "approv" in str(name).lower()


def waiting_steps(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the wait steps of ``doc`` with their signal, status and what they wait for."""
    return [{"name": step["name"], "status": step["status"], "signal": spec["wait"]["signal"],
             "describe": describe(step, spec)}
            for step, spec in zip(doc["steps"], doc["definition"]["steps"], strict=True) if "wait" in spec]


def describe(step: dict[str, Any], spec: dict[str, Any]) -> str:
    """Say what a sleep or wait step is (``""`` for a handler step): ``waits for signal 'approved'
    until 2026-12-02T05:43:33.673Z, then on_timeout fail``; ``sleeps until ...``."""
    wake_at = _iso(step.get("wake_at"))
    if "sleep" in spec:
        sleep = spec["sleep"]
        if "seconds" in sleep:
            what = f"sleeps {sleep['seconds']:g} s"
        else:
            what = f"sleeps until the time at {sleep.get('until')}"
        if wake_at:
            what += f" (until {wake_at})"
        return what
    if "wait" in spec:
        wait = spec["wait"]
        what = f"waits for signal {wait['signal']!r}"
        what += f" until {wake_at}" if wake_at else f" for up to {wait.get('timeout_s', 0):g} s"
        rule = wait.get("on_timeout", "fail")
        what += f", then on_timeout {rule}"
        if rule == "continue" and "default_output" in wait:
            what += " with default_output " + json.dumps(wait["default_output"], sort_keys=True)
        return what
    return ""


def signals(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the signals ``doc`` received, in arrival order, each with its payload shown and who
    took it (``None``: kept until a wait for it starts)."""
    shown = []
    for index, signal in enumerate(doc.get("signals") or []):
        payload = signal.get("payload_json")
        shown.append({**signal, "index": index,
                      "payload": None if payload is None else json.dumps(
                          json.loads(payload), indent=2, ensure_ascii=False, sort_keys=True)})
    return shown


def result_text(result: operations.SignalResult, doc: dict[str, Any] | None) -> str:
    """Say what sending a signal did: taken by a step (now), or kept until its wait starts."""
    head = f"Signal {result.name!r} recorded as signal #{result.signal_index + 1}"
    if not result.created:
        head = f"Signal {result.name!r} was already sent with this key (signal #{result.signal_index + 1})"
    stored = ((doc or {}).get("signals") or [])
    taken = result.consumed_by or (stored[result.signal_index].get("consumed_by")
                                   if result.signal_index < len(stored) else None)
    if taken:
        return f"{head}; taken by step {taken!r}."
    if doc is not None:
        specs = doc["definition"]["steps"]
        for step, spec in zip(doc["steps"], specs, strict=True):
            if (spec.get("wait") or {}).get("signal") != result.name:
                continue
            if step["status"] == StepStatus.WAITING:
                return f"{head}; step {step['name']!r} waits for it and takes it now."
            if step["status"] == StepStatus.PENDING:
                return f"{head}; kept until the wait of step {step['name']!r} starts."
    return f"{head}; kept: no wait for it has started."


def _iso(value: Any) -> str | None:
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="milliseconds") + "Z"
    return None
