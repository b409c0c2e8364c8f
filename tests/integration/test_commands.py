"""Management commands: thin wrappers whose failures are one clear line and a non-zero exit."""
from __future__ import annotations

import os
import signal
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


@pytest.mark.parametrize("command", [["verify", "--all"], ["verify", "some-id"], ["recover"],
                                     ["postmortem", "some-id"]], ids=" ".join)
def test_store_commands__from_a_process_of_their_own_refuse_the_embedded_store_in_one_line(
        tmp_path: Path, command: list[str]) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DETFLOW_")}
    environ.update(DJANGO_SETTINGS_MODULE="detflow_site.settings", DJANGO_SQLITE_PATH=":memory:",
                   TMPDIR=str(tmp_path))
    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), *command], cwd=tmp_path,
                            env=environ, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"CommandError: {command[0]} cannot see the embedded store: "
                           "DETFLOW_MONGODB_URL is unset"), line
    assert "lives in the memory of the process that runs it (rundev, demo)" in line
    assert "this command runs in another process and sees none of it" in line
    assert "Set DETFLOW_MONGODB_URL to a MongoDB both use, or use the API or admin" in line
    assert result.stdout == ""


def test_recover__resends_due_work_with_no_message(redis_client: Any, define: Any) -> None:
    define("cmd", [{"handler": "test.echo"}])
    execution_id = operations.start("cmd", {})[0]["_id"]
    redis_client.flushdb()  # the start message is gone; no worker runs
    out = StringIO()
    call_command("recover", "--grace", "0", stdout=out)
    assert "1 message(s) re-sent" in out.getvalue()
    assert f"message sent: {execution_id}" in out.getvalue()


def worker_environ(tmp_path: Path, **env: str) -> dict[str, str]:
    """The environment of a worker on a fresh machine: real-service settings, its own empty TMPDIR,
    no metrics directory named unless ``env`` names one."""
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("DETFLOW_") and k not in ("PROMETHEUS_MULTIPROC_DIR", "dramatiq_prom_db")}
    fresh = tmp_path / "tmp"
    fresh.mkdir()
    # (the test settings it inherits refuse a database not named as a test one: tests/safety.py)
    environ.update(DETFLOW_MONGODB_URL="mongodb://127.0.0.1:9", DETFLOW_MONGODB_DB="detflow_test",
                   DETFLOW_REDIS_URL="redis://127.0.0.1:9", DJANGO_SQLITE_PATH=":memory:",
                   TMPDIR=str(fresh), **env)
    return environ


@pytest.mark.parametrize("named", [False, True], ids=["no-metrics-dir-set", "metrics-dir-missing"])
def test_worker_boot__sets_up_django_metrics_and_every_actor_on_a_fresh_machine(
        tmp_path: Path, named: bool) -> None:
    script = ("import os, executions.worker_boot\n"
              "from executions.broker import broker\n"
              "print(sorted(type(m).__name__ for m in broker.middleware))\n"
              "print(sorted(broker.actors))\n"
              "print(os.environ['PROMETHEUS_MULTIPROC_DIR'])\n")
    wanted = tmp_path / "not" / "there"
    environ = worker_environ(tmp_path, **({"PROMETHEUS_MULTIPROC_DIR": str(wanted)} if named else {}))
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environ,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    middleware, actors, directory = result.stdout.splitlines()
    assert "'Prometheus'" in middleware and "'ConsumerSupervisor'" in middleware
    assert "'detflow.advance'" in actors
    expected = wanted if named else tmp_path / "tmp" / f"detflow-metrics-{os.getuid()}"
    assert Path(directory) == expected
    assert expected.stat().st_mode & 0o777 == 0o700
    assert list(expected.glob("counter_*.db")), "the engine's metrics are written there"


def test_worker_boot__refuses_a_metrics_directory_others_can_write_to(tmp_path: Path) -> None:
    environ = worker_environ(tmp_path)
    (tmp_path / "tmp" / f"detflow-metrics-{os.getuid()}").mkdir(mode=0o777)
    os.chmod(tmp_path / "tmp" / f"detflow-metrics-{os.getuid()}", 0o777)
    result = subprocess.run([sys.executable, "-c", "import executions.worker_boot"], cwd=ROOT,
                            env=environ, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "is not a private directory of this user: set PROMETHEUS_MULTIPROC_DIR" in result.stderr


def start_runworker(environ: dict[str, str]) -> subprocess.Popen[str]:
    """Start ``manage.py runworker`` with one worker process and wait until it is ready."""
    # A queue no actor declares: this worker takes nothing from the Redis the other tests use.
    command = [sys.executable, "manage.py", "runworker", "--processes", "1", "--threads", "1",
               "--queues", "runworker-boot-test", "--no-sweeper"]
    process = subprocess.Popen(command, cwd=ROOT, env=environ, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        if "Worker process is ready for action" in line:
            return process
    process.communicate(timeout=30)
    raise AssertionError("runworker stopped before its worker was ready:\n" + "".join(seen))


def stop_runworker(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 0, rest


@pytest.mark.parametrize("named", [False, True], ids=["private-dir", "named-dir"])
def test_runworker__boots_on_a_fresh_machine_with_a_metrics_directory_of_its_own(
        redis_client: Any, tmp_path: Path, named: bool) -> None:
    from detflow_site import services

    fresh = tmp_path / "tmp"
    named_dir = tmp_path / "metrics"
    env = {"dramatiq_prom_port": "0", "dramatiq_prom_host": "127.0.0.1"}
    if named:
        named_dir.mkdir()
        (named_dir / "counter_999999999.db").write_bytes(b"an earlier run's")
        env["PROMETHEUS_MULTIPROC_DIR"] = str(named_dir)
    environ = worker_environ(tmp_path, **env)
    environ["DETFLOW_REDIS_URL"] = services.redis_url()
    process = start_runworker(environ)
    try:
        if named:
            directory = named_dir
            assert not (named_dir / "counter_999999999.db").exists(), "stale files are removed"
        else:
            (directory,) = fresh.glob("detflow-metrics-*")
            assert directory.stat().st_mode & 0o777 == 0o700
        assert list(directory.glob("counter_*.db")), "the worker writes its metrics there"
    finally:
        stop_runworker(process)
    assert named_dir.exists() if named else not list(fresh.glob("detflow-metrics-*"))
