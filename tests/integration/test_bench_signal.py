"""The bench's signal section (``bench/signal_latency.py``), run small: executions waiting one at a
time, each signalled through ``operations.signal``, the time to the next step's claim measured and
read as the goal's row."""
from __future__ import annotations

from typing import Any

from bench import report, signal_latency
from executions import store


def test_signal_section__measures_signal_to_next_claim_and_fills_its_goal_row(
    broker: Any, redis_client: Any
) -> None:
    result = signal_latency.measure(samples=8, threads=2, progress=lambda _line: None)

    assert result["samples"] == 8
    assert 0 <= result["p50_ms"] <= result["p95_ms"] <= result["max_ms"]
    # Every execution took its signal and ran its next step.
    docs = list(store.collection().find({"workflow": signal_latency.WORKFLOW}))
    assert len(docs) == 8 and {d["status"] for d in docs} == {"SUCCEEDED"}
    assert all(d["signals"][0]["consumed_by"] == "approval" for d in docs)

    row = next(r for r in report.evaluate({"signal": result}) if r["goal"].startswith("signal -> next"))
    assert row["measured"] == result["p50_ms"] and row["bound"] == "<= 50 ms"
    assert row["holds"] is (result["p50_ms"] <= 50)
    assert f"p95 {result['p95_ms']} ms" in row["note"]
    assert "signal -> next step claimed" in report.details({"signal": result})
    assert "ms |" in report.table([row])
