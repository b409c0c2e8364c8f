"""``manage.py bulk``: counts with --dry-run, retries every match once, and refuses a bad filter in
one line; in-process and in its own process against a runstore."""
from __future__ import annotations

import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from executions import store
from tests.integration.test_bulk import failed_executions, retried_by
from tests.wire import WireStore, wire_store_fixture  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


def test_bulk_command__dry_run_then_retry(worker: Any, define: Any) -> None:
    failed = failed_executions(define, 12)
    out = StringIO()
    call_command("bulk", "retry", "--workflow", "fails", "--status", "FAILED", "--dry-run", stdout=out)
    assert out.getvalue().startswith("12 execution(s) match; the first: " + sorted(failed)[0])
    assert {store.load(i)["status"] for i in failed} == {"FAILED"}  # type: ignore[index]

    out = StringIO()
    call_command("bulk", "retry", "--workflow", "fails", "--status", "FAILED", "--reason", "fixed",
                 stdout=out)
    op_id = out.getvalue().split()[2].rstrip(":")
    assert "SUCCEEDED: 12 of 12 handled, 12 retried, 0 skipped, 0 failed" in out.getvalue()
    assert [retried_by(i, op_id) for i in failed] == [1] * 12


@pytest.mark.parametrize("args,says", [
    (["retry", "--reason", "x", "--status", "BROKEN"], "--status: "),
    (["retry", "--reason", "x", "--created-after", "yesterday"], "--created-after: "),
    (["retry", "--reason", " "], "--reason: "),
])
def test_bulk_command__bad_input_is_one_line(args: list[str], says: str) -> None:
    with pytest.raises(CommandError, match=says):
        call_command("bulk", *args)


def test_bulk_command__in_its_own_process_against_a_runstore(
    worker: Any, define: Any, wire_store: WireStore,
) -> None:
    failed = failed_executions(define, 5)
    env = {**wire_store.environ("test_bulk_command"), "DJANGO_SQLITE_PATH": ":memory:"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    with wire_store.client() as client:
        database = client["test_bulk_command"]
        try:
            assert run("ensure_indexes").returncode == 0
            database["executions"].insert_many([store.load_working(i) for i in failed])
            counted = run("bulk", "retry", "--workflow", "fails", "--dry-run")
            assert counted.returncode == 0, counted.stderr
            assert counted.stdout.startswith("5 execution(s) match"), counted.stdout
            done = run("bulk", "retry", "--workflow", "fails", "--status", "FAILED", "--reason", "fixed")
            assert done.returncode == 0, done.stderr
            assert "5 retried" in done.stdout, done.stdout
            for doc in database["executions"].find():
                assert doc["status"] != "FAILED" and len(doc["bulk_operations"]) == 1
                assert [e["type"] for e in doc["events"]].count("retried") == 1
            bad = run("bulk", "cancel", "--reason", "x", "--workflow-version", "2")
            assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
            assert "--workflow-version: " in bad.stderr
        finally:
            client.drop_database("test_bulk_command")


def test_bulk__an_operation_never_acts_twice_on_one_execution(worker: Any, define: Any) -> None:
    from executions import operations
    from executions.errors import OperationNotAllowed
    from tests.conftest import wait_terminal

    [eid] = failed_executions(define, 1)
    operations.retry(eid, "ops", "fixed", bulk="bulk_one")
    [again] = wait_terminal(eid)
    assert again["status"] == "FAILED"  # failed once more: it would qualify again

    with pytest.raises(OperationNotAllowed, match="bulk operation bulk_one already"):
        operations.retry(eid, "ops", "fixed", bulk="bulk_one")
    assert retried_by(eid, "bulk_one") == 1
    operations.retry(eid, "ops", "fixed", bulk="bulk_two")  # another operation may
    assert retried_by(eid, "bulk_two") == 1
