"""Chaos over sleeps, waits and signals: every execution sleeps and waits, its signal sent before
the wait, while it waits, while a crash holds it, or never; some sent twice with one key; wake-ups
lost. The checker's wait invariants hold (each wait ends once, a signal taken once by its wait, a
key stored once, nothing claimed during a wait, a WAITING step holding nothing)."""
from __future__ import annotations

from typing import Any

from detflow_site.chaos.run import Options, run


def test_chaos__every_execution_waiting_under_crashes_lost_wakeups_and_duplicates_keeps_every_invariant(
    redis_client: Any,
) -> None:
    report = run(Options(executions=40, steps=3, threads=8, seed=18, rollbacks=0.0, waits=1.0,
                         faults=("crash", "lost_wakeup", "duplicate", "retryable", "redis_flush"),
                         drain_timeout=120))
    summary = report.as_dict()
    print("\n" + "\n".join(report.lines()))

    assert summary["violations"] == []
    assert summary["statuses"] == {"SUCCEEDED": 40}
    waits = summary["waits"]
    assert waits["executions"] == 40 and waits["sleeps"] >= 40 and waits["waits"] >= 40
    assert waits["sent_early"] >= 1 and waits["sent_during_crash"] >= 1 and waits["duplicates"] >= 1
    assert waits["timeouts"] >= 1 and waits["lost_wakeups"] >= 1
    # Every signal stored once (a duplicate stores nothing), taken at most once.
    assert waits["signals_stored"] == waits["signals_sent"] >= waits["signals_taken"] >= 1
    assert summary["faults"]["lost_wakeup"]["injected"] >= 1
