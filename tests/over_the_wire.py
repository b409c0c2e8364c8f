"""The suite over the wire: the integration and reliability suites against ``manage.py runstore``.

``make test`` runs this after the in-process pass: ``python -m tests.over_the_wire [pytest args]``
starts ``runstore`` (the strict embedded store behind MongoDB's wire protocol) in a temporary
directory, runs pytest with ``DETFLOW_MONGODB_URL`` pointing at it, so that every query, write,
index and error travels through pymongo's own client as it would to a MongoDB server, and stops the
server. The tests are the same; those that cannot run there are listed in ``NOT_OVER_THE_WIRE``,
each with its reason (the README lists them too). The exit code is pytest's, or 1 when the server
does not stop cleanly.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.wire import ROOT, start_store

#: The suites this pass runs when no test paths are given.
SUITES = ("tests/integration", "tests/reliability")

#: Tests that cannot run over the wire, each with the one-line reason.
NOT_OVER_THE_WIRE: dict[str, str] = {}
#: Tests that start their own ``runstore`` and ignore ``DETFLOW_MONGODB_URL``: the first pass ran
#: them over the wire already; a second run would test the same thing again.
OWN_RUNSTORE = (
    "tests/integration/test_topology.py",
    "tests/integration/test_wire_store.py",
    "tests/integration/test_bench_wire.py",
    "tests/reliability/test_chaos_processes.py",
    "tests/reliability/test_asleep.py",
)


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="detflow-over-the-wire-") as scratch:
        directory = Path(scratch)
        store = start_store(directory / "runstore", faults=False)
        print(f"over the wire: runstore at {store.url}, the suites {' '.join(argv or SUITES)}", flush=True)
        for test, reason in NOT_OVER_THE_WIRE.items():
            print(f"over the wire: not run: {test}: {reason}", flush=True)
        print(f"over the wire: not run again (they start their own runstore): {', '.join(OWN_RUNSTORE)}",
              flush=True)
        env = {**os.environ, "DETFLOW_MONGODB_URL": store.url, "DETFLOW_MONGODB_DB": "test_wire"}
        deselected = [f"--deselect={test}" for test in (*NOT_OVER_THE_WIRE, *OWN_RUNSTORE)]
        try:
            tests = subprocess.run([sys.executable, "-m", "pytest", *deselected, *(argv or SUITES)],
                                   cwd=ROOT, env=env, check=False)
        finally:
            stopped = store.stop()
        if stopped != 0:
            error = (store.directory / "runstore.err").read_text(errors="replace")[-2000:]
            print(f"over the wire: runstore exited {stopped}: {error}", file=sys.stderr)
            return tests.returncode or 1
        return tests.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
