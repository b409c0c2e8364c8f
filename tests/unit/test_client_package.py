"""The Python client stands alone (no Django, no detflow code loaded), yet speaks the engine's statuses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import detflow_client
from executions.engine import TERMINAL, ExecutionStatus

ROOT = Path(__file__).resolve().parents[2]
#: Packages a service using the client must not have to install or configure.
SERVER_SIDE = ("django", "rest_framework", "executions", "workflows", "insights", "detflow_site",
               "mongoengine", "pymongo", "redis", "dramatiq")
SCRIPT = f"""
import json, sys
import detflow_client
detflow_client.Client("http://127.0.0.1:1/api/v1", "token").close()
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {SERVER_SIDE!r})))
"""


def test_client_statuses__are_the_engines_in_its_order() -> None:
    assert tuple(s.value for s in ExecutionStatus) == detflow_client.STATUSES


def test_client_terminal__is_the_engines_terminal_set() -> None:
    assert {s.value for s in TERMINAL} == detflow_client.TERMINAL


def test_client__imports_without_django_settings_and_loads_no_server_package() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DETFLOW_"))}
    env["PYTHONPATH"] = str(ROOT)

    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
