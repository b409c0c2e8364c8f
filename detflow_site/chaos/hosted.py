"""The services of a chaos run on worker processes when none is configured: ``runstore`` and a
redis-server in a temporary directory, stopped and removed at the end. The run itself is the same
command again, a child process that finds them in its environment (as the workers do)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from detflow_site.embedded import RedisServer
from detflow_site.processes import manage_command, start_store, stop

#: The database a chaos run uses on the store it started.
DATABASE = "detflow_chaos"
#: The sweeper's grace of a run over the services started for it, in seconds.
SWEEP_GRACE_S = 2.0


def run(args: list[str], say: Callable[[str], None]) -> int:
    """Start the services, run ``manage.py chaos <args>`` over them, stop them; return its status."""
    directory = Path(tempfile.mkdtemp(prefix="detflow-chaos-"))
    redis_server = RedisServer(directory / "redis")
    store_process = None
    try:
        store_process, url = start_store(directory / "store", faults=False)
        redis_server.directory.mkdir()
        redis_server.start()
        say(f"DETFLOW_MONGODB_URL is unset: started runstore ({url}) and redis-server "
            f"({redis_server.url}) in {directory} for this run; both stop at its end")
        environ = {**os.environ, "DETFLOW_MONGODB_URL": url, "DETFLOW_MONGODB_DB": DATABASE,
                   "DETFLOW_REDIS_URL": redis_server.url, "TMPDIR": str(directory)}
        # A kill takes the messages its worker had fetched with it: the sweeper re-sends their
        # work after the grace, which is short here unless the environment says otherwise.
        environ.setdefault("DETFLOW_SWEEP_GRACE_S", f"{SWEEP_GRACE_S:g}")
        indexes = subprocess.run(manage_command("ensure_indexes"), env=environ, cwd=directory,
                                 capture_output=True, text=True)
        if indexes.returncode:
            raise RuntimeError(f"ensure_indexes failed on the run's store: {indexes.stderr[-1500:]}")
        child = subprocess.Popen(manage_command("chaos", *args), env=environ, cwd=directory)
        try:
            return child.wait()
        finally:
            stop(child, timeout_s=60)  # interrupted: the run stops its workers, then itself
    finally:
        redis_server.stop()
        if store_process is not None:
            stop(store_process)
            if store_process.stdout:
                store_process.stdout.close()
        shutil.rmtree(directory, ignore_errors=True)
