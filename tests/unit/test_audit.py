"""The determinism audit on hand-built documents: a faithful history passes, each forgery is found."""
from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any

import pytest

from executions.audit import verify
from executions.engine import backoff_ms
from executions.store import to_dt
from workflows.spec import RetryPolicy

POLICY = RetryPolicy(max_attempts=2, initial_delay_s=1.0, jitter=0.5)
T0 = 1_700_000_000_000
RETRY_AT = T0 + 100 + backoff_ms(POLICY, "e1", "a", 1, 1)


def history() -> dict[str, Any]:
    """One step that fails once, is retried after its backoff, and succeeds."""
    events: list[dict[str, Any]] = [
        {"at": T0, "type": "created"},
        {"at": T0, "type": "step_claimed", "step_index": 0, "attempt": 1, "lease_expires_at": T0 + 30_000},
        {"at": T0 + 100, "type": "attempt_failed", "step_index": 0, "outcome": "retry",
         "next_retry_at": RETRY_AT},
        {"at": RETRY_AT, "type": "step_claimed", "step_index": 0, "attempt": 2,
         "lease_expires_at": RETRY_AT + 30_000},
        {"at": RETRY_AT + 5, "type": "step_succeeded", "step_index": 0},
        {"at": RETRY_AT + 5, "type": "execution_succeeded"},
    ]
    for seq, event in enumerate(events, 1):
        event["seq"] = seq
        for name in ("at", "lease_expires_at", "next_retry_at"):
            if name in event:
                event[name] = to_dt(event[name])
    return {
        "_id": "e1",
        "definition": {"steps": [{"name": "a", "retry": asdict(POLICY)}]},
        "events": events,
        "event_seq": len(events),
        "status": "SUCCEEDED",
        "steps": [{"status": "SUCCEEDED", "attempt": 2, "budget_base": 0}],
    }


def test_verify__finds_nothing_wrong_with_a_faithful_history():
    assert verify(history()) == []


@pytest.mark.parametrize(
    ("forge", "seq", "words"),
    [
        (lambda d: d["events"][3].update(attempt=3), 4, "engine decides Claim(step=0, attempt=2)"),
        (lambda d: d["events"][3].update(at=to_dt(RETRY_AT - 1)), 4, "engine decides Wait"),
        (lambda d: d["events"][2].update(next_retry_at=to_dt(RETRY_AT + 1)), 3, "engine says"),
        (lambda d: d["events"][2].update(outcome="failed"), 3, "engine says"),
        (lambda d: d["events"][4].update(seq=9), 9, "expected sequence number 5"),
        (lambda d: d["events"].insert(5, {**d["events"][4], "seq": 6}), 6, "illegal event 'step_succeeded'"),
        (lambda d: d.update(status="FAILED"), None, "status is FAILED, history gives SUCCEEDED"),
        (lambda d: d["steps"][0].update(attempt=3), None, "step 'a' attempt is 3, history gives 2"),
    ],
)
def test_verify__reports_where_a_forged_history_diverges(forge, seq, words):
    doc = copy.deepcopy(history())
    forge(doc)
    found = verify(doc)
    assert any(d.seq == seq and words in d.problem for d in found), [str(d) for d in found]
