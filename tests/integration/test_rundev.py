"""``manage.py rundev`` in a real child process: its banner, the admin answering, a clean Ctrl-C."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def environment(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETFLOW_")}
    env.update(DJANGO_SETTINGS_MODULE="detflow_site.settings",
               DJANGO_SQLITE_PATH=str(tmp_path / "db.sqlite3"),
               DETFLOW_STORAGE_DIR=str(tmp_path / "storage"), PYTHONUNBUFFERED="1")
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def test_rundev__serves_the_admin_says_what_it_runs_on_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, "manage.py", "rundev", "--port", str(port), "--threads", "2"],
        cwd=ROOT, env=environment(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not answers(f"http://127.0.0.1:{port}/admin/login/"):
            assert child.poll() is None, child.communicate()[0]
            assert time.monotonic() < deadline, "rundev did not serve the admin within 60 s"
            time.sleep(0.2)
        serves_api = answers(f"http://127.0.0.1:{port}/api/v1/health/")
        child.send_signal(signal.SIGINT)
        output, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()

    assert child.returncode == 0, output
    assert serves_api, "rundev does not serve GET /api/v1/health/"
    assert f"detflow on http://127.0.0.1:{port}/ (API: /api/v1/, admin: /admin/), 2 worker thread(s)" \
        in output
    assert "store: embedded mongomock" in output
    assert "redis: embedded redis-server started by this process" in output
    assert "state lives in this process's memory" in output
    assert output.rstrip().endswith("stopped"), output
    assert "Traceback" not in output


def test_rundev__a_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "manage.py", "rundev", "--port", str(port)], cwd=ROOT,
            env=environment(tmp_path), capture_output=True, text=True, timeout=60,
        )

    assert result.returncode == 1
    assert result.stderr.strip() == (f"CommandError: cannot serve on 127.0.0.1:{port} "
                                     "(Address already in use); choose another with --port")
