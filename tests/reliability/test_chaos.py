"""Chaos runs: many faults at once, checked; and the checker catching what a broken build does."""
from __future__ import annotations

import json
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from detflow_site.chaos.handlers import effects, ledger
from detflow_site.chaos.run import WORKFLOWS, Options, run
from detflow_site.chaos.schedule import KINDS, STORE_KINDS
from detflow_site.conf import DetflowSettings
from executions import store

#: How a chaos execution may end: a failure for good either stops it or rolls it back.
ENDINGS = {"SUCCEEDED", "FAILED", "COMPENSATED", "COMPENSATION_FAILED"}


@pytest.fixture
def default_timing(settings: Any) -> DetflowSettings:
    """The shipped lease, sweep interval and grace (tests otherwise run with shorter ones)."""
    defaults = DetflowSettings()
    settings.DETFLOW = {**settings.DETFLOW, "LEASE_S": defaults.LEASE_S,
                        "SWEEP_INTERVAL_S": defaults.SWEEP_INTERVAL_S,
                        "SWEEP_GRACE_S": defaults.SWEEP_GRACE_S}
    return defaults


@pytest.fixture
def forget_broken_runs(redis_client: Any) -> Iterator[None]:
    """Remove a broken build's executions after the test: they break invariants on purpose."""
    yield
    store.collection().delete_many({"workflow": {"$in": list(WORKFLOWS)}})
    ledger().delete_many({})
    effects().delete_many({})


@pytest.mark.slow
# Killing Redis makes a Dramatiq consumer thread die while it closes (a connection error escapes
# ConsumerThread.close in Dramatiq 2.2); the broker's ConsumerSupervisor restarts it, and this run
# checks that nothing is lost meanwhile. The thread's death itself is expected here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_chaos__ci_sized_run_keeps_every_invariant_with_the_default_settings(
    redis_client: Any, default_timing: DetflowSettings
) -> None:
    report = run(Options(executions=200, steps=5, threads=8, seed=2026, drain_timeout=150))
    summary = report.as_dict()

    assert summary["violations"] == []
    assert sum(summary["statuses"].values()) == 200
    assert set(summary["statuses"]) <= ENDINGS
    # A quarter of the executions roll back, every rollback under the same faults as the steps.
    rollbacks = summary["rollbacks"]
    # (A planted permanent failure before anything to undo ends one FAILED instead.)
    assert rollbacks["planned"] >= 30 and rollbacks["started"] >= 30
    assert summary["statuses"]["COMPENSATED"] >= 1
    assert rollbacks["compensation_attempts"] >= 1  # (crashes in them: see the rollback runs below)
    print(f"\nchaos CI-sized: {rollbacks}, statuses {summary['statuses']}")
    # A quarter of the others sleep and wait: signals before the wait, during it, during a crash
    # and never (a timeout), some twice with one key, wake-ups lost (only the sweeper wakes them).
    waits = summary["waits"]
    print(f"chaos CI-sized waits: {waits}")
    assert waits["executions"] >= 20 and waits["waits"] >= waits["executions"]
    assert waits["sent_early"] >= 1 and waits["sent_during_crash"] >= 1 and waits["duplicates"] >= 1
    assert waits["timeouts"] >= 1 and waits["lost_wakeups"] >= 1 and waits["signals_taken"] >= 1
    for kind in KINDS:
        assert summary["faults"][kind]["injected"] >= 1, f"{kind} was never injected"
    # Operators pause a twentieth of the executions and every chaos workflow, through the real
    # operations, and resume them: nothing started while held, every hold lifted.
    pauses = summary["pauses"]
    print(f"chaos CI-sized pauses: {pauses}")
    assert pauses["paused"] >= 3 and pauses["workflow_holds"] >= 10, pauses
    assert pauses["resumed"] + pauses["ended_while_paused"] == pauses["paused"], pauses
    assert pauses["workflows_paused"] == pauses["workflows_resumed"] == 3, pauses
    bound_ms = (default_timing.LEASE_S + default_timing.SWEEP_INTERVAL_S + 2) * 1000
    latency = summary["recovery_latency_ms"]
    assert latency["count"] >= 1
    assert latency["max"] <= bound_ms, f"worst recovery {latency['max']} ms > {bound_ms} ms"
    assert summary["recoveries"]["lost attempts recorded"] >= 1


def test_chaos__checker_reports_violations_when_the_version_fence_is_off(
    redis_client: Any, forget_broken_runs: None
) -> None:
    # A paused runner finishes after its successor claimed the step: only the fence stops its
    # write, so without the fence every paused execution shows a broken history.
    report = run(Options(executions=6, steps=2, threads=4, seed=5, faults=("pause",),
                         broken=("fence",), drain_timeout=60))

    checks = {v.check for v in report.findings.violations}
    assert not report.ok
    # The stalled runner's outcome lands after its attempt was recorded lost.
    assert {"contiguous", "verify", "lost and recorded"} <= checks, checks


@pytest.mark.slow
def test_chaos__store_faults_lose_nothing_and_every_kind_strikes(
    redis_client: Any, default_timing: DetflowSettings
) -> None:
    report = run(Options(executions=60, steps=3, threads=8, seed=14, faults=("store",),
                         drain_timeout=90))
    summary = report.as_dict()

    assert summary["violations"] == []
    # Nothing fails for good but the planned causes of the rollbacks, which all complete.
    assert summary["statuses"] == {"SUCCEEDED": 60 - summary["rollbacks"]["planned"],
                                   "COMPENSATED": summary["rollbacks"]["planned"]}
    assert set(summary["faults"]) == set(STORE_KINDS)
    for kind in STORE_KINDS:
        assert summary["faults"][kind]["injected"] >= 1, f"{kind} was never injected"
    assert set(summary["store_calls_struck"]) == {"before", "after", "not_primary", "latency",
                                                  "spike"}
    # Errors before and after writes, an election shorter than the lease, latency: every
    # outcome is late at worst, none is lost.
    assert summary["recoveries"]["lost attempts recorded"] == 0


def test_chaos__checker_reports_a_lost_success_when_outcome_writes_are_not_retried(
    redis_client: Any, forget_broken_runs: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A build that gives a failed write up at once: an outcome write that meets a store error is
    # dropped, the lease runs out and the sweeper records lost a handler that succeeded.
    monkeypatch.setattr(store, "PATIENCE_S", 0.0)
    report = run(Options(executions=12, steps=2, threads=4, seed=9, faults=("store_before",),
                         drain_timeout=60))

    checks = {v.check for v in report.findings.violations}
    assert checks == {"success lost"}, report.findings.violations
    assert all("committed its effect and was recorded lost" in v.detail
               for v in report.findings.violations)


def test_chaos__checker_reports_double_side_effects_without_deduplication(
    redis_client: Any, forget_broken_runs: None
) -> None:
    report = run(Options(executions=6, steps=2, threads=4, seed=6, faults=("pause",),
                         deduplicate=False, drain_timeout=60))

    doubled = [v for v in report.findings.violations if v.check == "side effects"]
    assert doubled, report.findings.violations
    assert all("committed its side effect 2 times" in v.detail for v in doubled)
    assert {v.check for v in report.findings.violations} == {"side effects"}


def test_chaos__every_execution_rolling_back_under_crashes_and_faults_keeps_every_invariant(
    redis_client: Any,
) -> None:
    # Every execution rolls back, and half of each one's faults are aimed at its compensations:
    # crashes at every boundary, pauses, transient and permanent failures, hangs, store errors.
    report = run(Options(executions=40, steps=4, threads=8, seed=21, rollbacks=1.0,
                         faults=("crash", "pause", "retryable", "permanent", "hang", "store_before",
                                 "store_after", "duplicate"), drain_timeout=120))
    summary = report.as_dict()

    assert summary["violations"] == []
    rollbacks = summary["rollbacks"]
    assert rollbacks["planned"] == 40
    # A permanent failure planted before a step that has something to undo rolls back early; one
    # planted in a compensation ends the rollback COMPENSATION_FAILED.
    assert set(summary["statuses"]) <= {"COMPENSATED", "COMPENSATION_FAILED", "FAILED"}
    assert summary["statuses"]["COMPENSATED"] >= 30
    assert rollbacks["struck"] >= 1 and rollbacks["compensation_attempts_lost"] >= 1, rollbacks
    assert any(line.startswith("rollbacks: 40 started of 40 planned") for line in report.lines())
    print(f"\nchaos, every execution rolling back: {rollbacks}, statuses {summary['statuses']}")


def test_chaos__crashes_aimed_at_compensations_leave_every_rollback_completed_once(
    redis_client: Any,
) -> None:
    report = run(Options(executions=60, steps=4, threads=8, seed=33, rollbacks=1.0,
                         faults=("crash",), drain_timeout=120))
    summary = report.as_dict()

    assert summary["violations"] == []
    assert summary["statuses"] == {"COMPENSATED": 60}
    rollbacks = summary["rollbacks"]
    # Half the crashes are aimed at a pass through their point among the compensations'.
    assert rollbacks["struck"] >= 5 and rollbacks["compensation_attempts_lost"] >= 1, rollbacks
    print(f"\nchaos, crashes in rollbacks: {rollbacks}, crashes {summary['faults']['crash']}")


def test_chaos__checker_reports_a_compensated_execution_with_a_compensation_undone_when_the_fence_is_off(
    redis_client: Any, forget_broken_runs: None
) -> None:
    # Pauses aimed at compensations: a stalled runner's outcome (timed out) lands after its
    # successor's success and the execution's end, which only the fence would refuse; the
    # execution stays COMPENSATED with that compensation back in RETRY_WAIT.
    report = run(Options(executions=8, steps=2, threads=4, seed=5, faults=("pause",), rollbacks=1.0,
                         broken=("fence",), drain_timeout=60))

    found = report.findings.violations
    assert not report.ok
    early = [v for v in found if v.check == "compensated early"]
    assert early and all("compensation(s) of ['step-1'] neither succeeded" in v.detail for v in early)
    assert any(v.check == "one runner" and "compensation of 'step-1'" in v.detail for v in found)


def test_chaos_command__prints_a_json_report_and_passes(redis_client: Any) -> None:
    out = StringIO()
    call_command("chaos", "--executions", "8", "--steps", "2", "--threads", "4", "--seed", "3",
                 "--faults", "retryable,duplicate,late,redis_flush", "--json", stdout=out)
    report = json.loads(out.getvalue())
    assert report["ok"] is True
    assert report["violations"] == []
    rolled_back = report["rollbacks"]["planned"]
    assert rolled_back >= 1 and report["rollbacks"]["started"] == rolled_back
    assert report["statuses"] == {"SUCCEEDED": 8 - rolled_back, "COMPENSATED": rolled_back}
    assert set(report["faults"]) == {"retryable", "duplicate", "late", "redis_flush"}
    assert report["faults"]["redis_flush"] == {"planned": 1, "injected": 1}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--faults", "crash,meteor"], "unknown fault kind(s) meteor"),
        (["--executions", "0"], "--executions must be at least 1"),
        # The tests' lease (2 s) is too short for an election to pass within it.
        (["--faults", "store"], "election needs DETFLOW_LEASE_S of at least"),
    ],
)
def test_chaos_command__rejects_bad_options_in_one_line(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call_command("chaos", *args, stdout=StringIO())
