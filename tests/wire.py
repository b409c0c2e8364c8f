"""``manage.py runstore`` in a real child process, for tests that need the store over the wire.

Not a conftest: a test module (or a conftest) takes the fixture ``wire_store`` with
``from tests.wire import wire_store_fixture``, or the root conftest with
``pytest_plugins = ["tests.wire"]``.
"""
from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
import pytest

ROOT = Path(__file__).resolve().parents[1]
_LISTENING = re.compile(r"^listening on (mongodb://\S+)$")


@dataclass
class WireStore:
    """A running ``runstore`` process: its URL, its directory, and a way to set its fail point."""

    process: subprocess.Popen[str]
    url: str
    directory: Path

    def client(self, **options: Any) -> pymongo.MongoClient[dict[str, Any]]:
        """Return a new client of this store (short timeouts: a test never waits long)."""
        options = {"serverSelectionTimeoutMS": 5000, "socketTimeoutMS": 10000, **options}
        return pymongo.MongoClient(self.url, **options)

    def environ(self, database: str) -> dict[str, str]:
        """Return the environment of a detflow process that uses this store and ``database``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DETFLOW_")}
        env.update(DETFLOW_MONGODB_URL=self.url, DETFLOW_MONGODB_DB=database, PYTHONUNBUFFERED="1",
                   TMPDIR=str(self.directory))
        return env

    def fail(self, mode: Any, **data: Any) -> None:
        """Set the ``failCommand`` fail point (``mode="off"`` clears it)."""
        with self.client() as client:
            client.admin.command({"configureFailPoint": "failCommand", "mode": mode, "data": data})

    def stop(self, timeout_s: float = 10.0) -> int:
        """Stop the server with SIGTERM (SIGKILL after ``timeout_s``); return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        return int(self.process.returncode)


def start_store(directory: Path, *, faults: bool = True, timeout_s: float = 30.0) -> WireStore:
    """Start ``manage.py runstore --port 0`` with ``directory`` as its working and temp directory,
    and return when it prints the port it listens on."""
    directory.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETFLOW_")}
    env.update(DJANGO_SETTINGS_MODULE="detflow_site.settings", PYTHONUNBUFFERED="1",
               TMPDIR=str(directory), DJANGO_SQLITE_PATH=str(directory / "db.sqlite3"))
    command = [sys.executable, str(ROOT / "manage.py"), "runstore", "--port", "0"]
    with open(directory / "runstore.err", "w") as errors:
        process = subprocess.Popen(command + (["--faults"] if faults else []), cwd=directory, env=env,
                                   stdout=subprocess.PIPE, stderr=errors, text=True,
                                   start_new_session=True)
    assert process.stdout is not None
    seen = []
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(deadline - time.monotonic()):
                break
            line = process.stdout.readline()
            if not line:  # the process ended
                break
            seen.append(line)
            found = _LISTENING.match(line.strip())
            if found:
                return WireStore(process, found.group(1), directory)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait()
    err = (directory / "runstore.err").read_text(errors="replace")
    raise RuntimeError(f"runstore did not say where it listens within {timeout_s}s: "
                       f"{''.join(seen)[-500:]}{err[-1500:]}")


@pytest.fixture(scope="module", name="wire_store")
def wire_store_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WireStore]:
    """A ``runstore`` process with fail points on, shared by a module's tests (each uses its own
    database), stopped at the end: it must exit cleanly."""
    store = start_store(tmp_path_factory.mktemp("runstore"))
    try:
        yield store
    finally:
        code = store.stop()
        assert code == 0, (store.directory / "runstore.err").read_text(errors="replace")
