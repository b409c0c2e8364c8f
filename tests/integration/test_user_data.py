"""The suite never touches a user's data: pointed at a database or a Redis it may not empty, a test
run stops in one line before any test, without connecting to either."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MESSAGE_MONGO = ("ERROR: refusing to run the tests on MongoDB database 'detflow' at {url}: they delete "
                 "every execution and definition in it; set DETFLOW_MONGODB_DB to a name that starts "
                 "with 'test_' or ends with '_test' (e.g. detflow_test)")


def run_pytest(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the suite as a user does: its own process, a fresh directory, settings from the environment."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DETFLOW_") and k != "PYTEST_ADDOPTS"}
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "pytest", *args, "-q", "-p", "no:cacheprovider"],
                          cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=120)


@contextlib.contextmanager
def listening() -> Iterator[tuple[int, list[object]]]:
    """Listen on a free local port; yield it and the list of connections it accepted."""
    accepted: list[object] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.1)
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                connection, _ = server.accept()
                accepted.append(connection)
                connection.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], accepted
    finally:
        done.set()
        thread.join()
        server.close()


def test_suite__on_a_database_not_named_as_a_test_one__refuses_in_one_line_before_any_test(
    tmp_path: Path,
) -> None:
    result = run_pytest(tmp_path, str(ROOT / "tests" / "unit"), DETFLOW_MONGODB_URL="mongodb://127.0.0.1:9/",
                        DETFLOW_MONGODB_DB="detflow")
    assert result.returncode == 4, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [MESSAGE_MONGO.format(url="mongodb://127.0.0.1:9/")]
    assert result.stdout == ""  # no test collected, none run
    assert list(tmp_path.iterdir()) == []


def test_suite__refusing_a_database__never_connects_to_the_server(tmp_path: Path) -> None:
    with listening() as (port, accepted):
        url = f"mongodb://127.0.0.1:{port}/"
        result = run_pytest(tmp_path, str(ROOT / "tests" / "unit"), DETFLOW_MONGODB_URL=url,
                            DETFLOW_MONGODB_DB="detflow")
    assert result.returncode == 4, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [MESSAGE_MONGO.format(url=url)]
    assert accepted == []


def test_suite__on_a_test_database__gets_past_the_check(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, str(ROOT / "tests" / "unit"), "--collect-only",
                        DETFLOW_MONGODB_URL="mongodb://127.0.0.1:9/", DETFLOW_MONGODB_DB="detflow_test")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "refusing" not in result.stdout + result.stderr
    assert " collected" in result.stdout


def test_suite__on_a_redis_it_did_not_start__refuses_in_one_line_unless_allowed_to_flush(
    tmp_path: Path,
) -> None:
    with listening() as (port, accepted):
        url = f"redis://127.0.0.1:{port}/5"
        refused = run_pytest(tmp_path, str(ROOT / "tests" / "unit"), DETFLOW_REDIS_URL=url)
        allowed = run_pytest(tmp_path, str(ROOT / "tests" / "unit"), "--collect-only", "--allow-flush",
                             DETFLOW_REDIS_URL=url)
    assert refused.returncode == 4, (refused.stdout, refused.stderr)
    assert refused.stderr.strip().splitlines() == [
        f"ERROR: refusing to run the tests on the Redis at {url}: they flush its database between tests; "
        "pass --allow-flush if nothing else uses that database, or unset DETFLOW_REDIS_URL to use a "
        "redis-server the tests start"]
    assert refused.stdout == ""
    assert allowed.returncode == 0, (allowed.stdout, allowed.stderr)
    assert "refusing" not in allowed.stdout + allowed.stderr
    assert accepted == []
