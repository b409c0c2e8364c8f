"""``manage.py runstore`` in a real child process, for tests that need the store over the wire.

Not a conftest: a test module (or a conftest) takes the fixture ``wire_store`` with
``from tests.wire import wire_store_fixture``, or the root conftest with
``pytest_plugins = ["tests.wire"]``.
"""
from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
import pytest

from detflow_site import processes

ROOT = Path(__file__).resolve().parents[1]


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
    process, url = processes.start_store(directory, faults=faults, timeout_s=timeout_s)
    return WireStore(process, url, directory)


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
