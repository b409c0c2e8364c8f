"""Management commands: thin wrappers whose failures are one clear line and a non-zero exit."""
from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from executions import operations, store
from tests.conftest import wait_terminal

ROOT = Path(__file__).resolve().parents[2]


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DETFLOW_")}
    environ.update(env, DJANGO_SETTINGS_MODULE="detflow_site.settings",
                   DJANGO_SQLITE_PATH=":memory:")
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=120)


def test_check__bad_setting_is_named_and_fails() -> None:
    result = manage("check", DETFLOW_LEASE_S="soon", DETFLOW_REDIS_URL="http://localhost")
    assert result.returncode != 0
    assert "DETFLOW_LEASE_S='soon' must be a number" in result.stderr
    assert "DETFLOW_REDIS_URL='http://localhost' must start with" in result.stderr
    assert "detflow.E001" in result.stderr


def test_check__passes_on_embedded_defaults() -> None:
    result = manage("check")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_startup__handler_module_that_fails_to_import_is_named_in_one_line() -> None:
    result = manage("check", DETFLOW_HANDLER_MODULES="tests.handlers,no_such_pkg.handlers")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "DETFLOW_HANDLER_MODULES: cannot import 'no_such_pkg.handlers'" in lines[0]


def test_runworker__refuses_the_embedded_store_and_points_to_rundev() -> None:
    result = manage("runworker")
    assert result.returncode == 1
    assert "DETFLOW_MONGODB_URL is unset" in result.stderr
    assert "rundev" in result.stderr
    assert "Traceback" not in result.stderr


def test_runworker__builds_the_dramatiq_command_for_real_services(settings: Any) -> None:
    # The broker is built from the settings on first use, once per process: built here, with the
    # test's own settings, it would stay pointed at the made-up Redis for the tests after this one.
    from executions.broker import broker
    from executions.management.commands.runworker import worker_command

    assert broker is not None
    settings.DETFLOW = {**settings.DETFLOW, "MONGODB_URL": "mongodb://db:27017",
                        "REDIS_URL": "redis://cache:6379/0"}
    command = worker_command(processes=3, threads=5, queues=None)
    assert command[1:4] == ["-m", "dramatiq", "executions.worker_boot"]
    assert command[command.index("--processes") + 1] == "3"
    assert command[command.index("--threads") + 1] == "5"
    assert command[command.index("--queues") + 1] == "detflow"


def test_verify__reports_clean_histories(worker: Any, define: Any) -> None:
    define("cmd", [{"handler": "test.echo"}, {"handler": "test.flaky"}])
    ids = [operations.start("cmd", {"succeed_on": 2})[0]["_id"] for _ in range(3)]
    wait_terminal(*ids)
    out = StringIO()
    call_command("verify", "--all", stdout=out)
    assert "verified 3 execution(s): no divergence" in out.getvalue()


def test_verify__exits_non_zero_on_a_tampered_history(worker: Any, define: Any) -> None:
    define("cmd", [{"handler": "test.echo"}, {"handler": "test.echo"}])
    execution_id = operations.start("cmd", {})[0]["_id"]
    wait_terminal(execution_id)
    # Pretend step 2 was claimed as attempt 5: the engine would have claimed attempt 1.
    doc = store.load(execution_id)
    assert doc is not None
    seq = next(e["seq"] for e in doc["events"]
               if e["type"] == "step_claimed" and e["step_index"] == 1)
    store.collection().update_one({"_id": execution_id},
                                  {"$set": {f"events.{seq - 1}.attempt": 5}})
    out = StringIO()
    with pytest.raises(CommandError, match="1 of 1 execution"):
        call_command("verify", execution_id, stdout=out)
    assert f"event {seq}: recorded step_claimed" in out.getvalue()
    store.collection().update_one({"_id": execution_id},
                                  {"$set": {f"events.{seq - 1}.attempt": 1}})
    call_command("verify", execution_id, stdout=StringIO())


def test_verify__needs_ids_or_all() -> None:
    with pytest.raises(CommandError, match="give execution ids or --all"):
        call_command("verify")
    with pytest.raises(CommandError, match="does not exist"):
        call_command("verify", "nope")


def test_recover__resends_due_work_with_no_message(redis_client: Any, define: Any) -> None:
    define("cmd", [{"handler": "test.echo"}])
    execution_id = operations.start("cmd", {})[0]["_id"]
    redis_client.flushdb()  # the start message is gone; no worker runs
    out = StringIO()
    call_command("recover", "--grace", "0", stdout=out)
    assert "1 message(s) re-sent" in out.getvalue()
    assert f"message sent: {execution_id}" in out.getvalue()


def test_worker_boot__sets_up_django_metrics_and_every_actor(tmp_path: Path) -> None:
    script = ("import executions.worker_boot\n"
              "from executions.broker import broker\n"
              "print(sorted(type(m).__name__ for m in broker.middleware))\n"
              "print(sorted(broker.actors))\n")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DETFLOW_")}
    # (the test settings it inherits refuse a database not named as a test one: tests/safety.py)
    environ.update(DETFLOW_MONGODB_URL="mongodb://127.0.0.1:9", DETFLOW_MONGODB_DB="detflow_test",
                   DETFLOW_REDIS_URL="redis://127.0.0.1:9", dramatiq_prom_db=str(tmp_path),
                   DJANGO_SQLITE_PATH=":memory:")
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environ,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    middleware, actors = result.stdout.splitlines()
    assert "'Prometheus'" in middleware and "'ConsumerSupervisor'" in middleware
    assert "'detflow.advance'" in actors
