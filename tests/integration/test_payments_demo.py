"""``manage.py demo --workflow payments``, run as a user runs it: its own process, a fresh directory,
settings from the environment (embedded services), and the payment gateway's own ledger checked."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from detflow_site.processes import manage_command


def demo(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DETFLOW_")}
    environ.update(DJANGO_SETTINGS_MODULE="detflow_site.settings", DJANGO_SQLITE_PATH=":memory:")
    return subprocess.run(manage_command("demo", "--workflow", "payments", *args), cwd=tmp_path, env=environ,
                          capture_output=True, text=True, timeout=timeout)


def summary_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr[-3000:]
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def test_payments_demo__json_exits_0_with_every_check_true(tmp_path: Path) -> None:
    summary = summary_of(demo(tmp_path, "--json"))

    assert [c for c in summary["checks"] if not c["ok"]] == []
    assert len(summary["checks"]) == 10
    rows = {r["order"]: r for r in summary["orders"]}
    assert len(rows) == 20
    assert {r["status"] for r in rows.values()} == {"SUCCEEDED", "COMPENSATED", "COMPENSATION_FAILED"}
    declined = rows["order-0010"]
    assert declined["status"] == "COMPENSATED" and declined["ledger"] == "rolled_back"
    assert [(c["step"], c["status"]) for c in declined["compensations"]] == [
        ("charge", "SUCCEEDED"), ("reserve", "SUCCEEDED")]
    assert declined["steps"]["receipt"]["attempts"] == 0  # strict order: nothing after the failed capture
    crashed = rows["order-0005"]
    assert crashed["status"] == "COMPENSATED" and crashed["lost_attempts"] == 1
    refused = rows["order-0020"]
    assert refused["status"] == "COMPENSATION_FAILED" and "retry/" in refused["operator_action"]
    assert [(c["step"], c["status"]) for c in refused["compensations"]] == [
        ("charge", "FAILED"), ("reserve", "PENDING")]
    # The post-mortem of a rolled-back order is there, written by the rules (no model is configured).
    assert declined["postmortem"] and refused["postmortem"]
    # The three rolled-back orders' refunds and releases, each applied once (the crashed refund too).
    assert summary["ledger"]["effects"]["refund"] == summary["ledger"]["effects"]["release"] == 3


@pytest.mark.slow
def test_payments_demo__500_orders_balance_the_gateways_ledger(tmp_path: Path) -> None:
    summary = summary_of(demo(tmp_path, "--json", "--orders", "500", "--threads", "8"))

    assert [c["check"] for c in summary["checks"] if not c["ok"]] == []
    statuses = [r["status"] for r in summary["orders"]]
    counts = tuple(statuses.count(s) for s in ("SUCCEEDED", "COMPENSATED", "COMPENSATION_FAILED"))
    assert counts == (400, 99, 1)
    assert summary["ledger"]["effects"]["refund"] == summary["ledger"]["effects"]["release"] == 99


def test_payments_demo__prints_the_table_and_the_checks(tmp_path: Path) -> None:
    result = demo(tmp_path, "--orders", "10")

    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "payment gateway: http://127.0.0.1:" in out
    assert "order-0005  COMPENSATED" in out and "charge succeeded, reserve succeeded" in out
    assert "order-0010  COMPENSATION_FAILED" in out and "\n    operator: " in out
    assert out.count("[ok]") == 10 and "[FAILED]" not in out


@pytest.mark.parametrize(("args", "message"), [
    (["--orders", "3"], "--orders must be 5 to 2000, got 3"),
    (["--serve"], "--files and --serve go with the file-processing demo, not payments"),
    (["--threads", "0"], "--threads must be at least 1"),
])
def test_payments_demo__bad_arguments_are_one_line_errors(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = demo(tmp_path, *args, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"CommandError: {message}"]
