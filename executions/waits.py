"""Sleeps and waits: the data the engine's decisions about them need, read from the stored execution.

A sleep or a wait step runs no handler. When ``decide`` says to start one (``StartWait``), end one
(``WakeUp``) or hand one its signal (``Resume``), :func:`events` builds the events from what the
document holds: when the step wakes (its ``seconds``, the time at its ``until`` path, a wait's
``timeout_s``), the signal's payload, a timed-out wait's ``default_output``. The worker writes them
with ``transitions.commit`` like any outcome; nothing holds a thread, a lock or a lease meanwhile.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from typing import Any

from executions import engine
from executions.engine import Resume, StartWait, WakeUp
from executions.events import Event
from executions.store import Snapshot
from workflows import jsontext
from workflows.spec import MAX_WAIT_S, until_step


def events(snap: Snapshot, decision: StartWait | Resume | WakeUp, now: int) -> list[Event]:
    """Return the events that carry ``decision`` out on ``snap``."""
    doc, state = snap.doc, snap.state
    if isinstance(decision, StartWait):
        wake_at, problem = wake_time(doc, decision.step, now)
        if wake_at is None:
            return engine.sleep_refused(state, decision, problem, now)
        return engine.wait_started(state, decision, wake_at)
    if isinstance(decision, Resume):
        return engine.resumed(state, decision, doc["signals"][decision.signal]["payload_json"], now)
    return engine.woke(state, decision, _output(doc, decision), now)


def wake_time(doc: Mapping[str, Any], index: int, now: int) -> tuple[int | None, str]:
    """Return when step ``index`` (a sleep or a wait) starting at ``now`` ends, or ``None`` and why
    its time cannot be read."""
    spec = doc["definition"]["steps"][index]
    if "wait" in spec:
        return now + math.ceil(float(spec["wait"]["timeout_s"]) * 1000), ""
    sleep = spec["sleep"]
    if "seconds" in sleep:
        return now + math.ceil(float(sleep["seconds"]) * 1000), ""
    path = sleep["until"]
    found, value = _at_path(doc, index, path)
    if not found:
        return None, f"sleep until {path}: nothing is there"
    at = _time_ms(value)
    if at is None:
        return None, (f"sleep until {path}: {jsontext.dumps(value)[:80]} is not an ISO 8601 time or "
                      "a number of seconds since the epoch")
    if at > now + MAX_WAIT_S * 1000:
        return None, f"sleep until {path}: {jsontext.dumps(value)[:80]} is more than a year ahead"
    return max(at, now), ""


def _at_path(doc: Mapping[str, Any], index: int, path: str) -> tuple[bool, Any]:
    if path.startswith("input."):
        stored = doc["steps"][index].get("input_json") or doc["input_json"]
        value, keys = json.loads(stored), path.split(".")[1:]
    else:
        earlier = doc["steps"][:index]
        named = until_step(path, [s["name"] for s in earlier])
        if named is None:
            return False, None
        step = next(s for s in earlier if s["name"] == named[0])
        if "output_json" not in step:
            return False, None
        value, keys = json.loads(step["output_json"]), named[1]
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return False, None
        value = value[key]
    return True, value


def _time_ms(value: Any) -> int | None:
    """An ISO 8601 time (UTC when it names no offset) or seconds since the epoch, in milliseconds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return round(value * 1000) if math.isfinite(value) and 0 <= value < 1e11 else None
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return round(parsed.timestamp() * 1000)


def _output(doc: Mapping[str, Any], decision: WakeUp) -> str:
    """A sleep's output (when it woke) or a timed-out wait's (its default, or null)."""
    spec = doc["definition"]["steps"][decision.step]
    if "sleep" in spec:
        wake_at = doc["steps"][decision.step].get("wake_at")
        woke = wake_at.isoformat() + "Z" if wake_at is not None else None
        return jsontext.dumps({"slept_until": woke})
    if decision.ends == "succeeded":
        return jsontext.dumps(spec["wait"].get("default_output"))
    return "null"

