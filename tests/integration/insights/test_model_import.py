"""The model writer's client is loaded with the process, so that a process's first post-mortem
counts only the model's time in its ``took_ms``, not the second or so ``import openai`` takes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

#: A worker process as ``runworker`` boots it (every actor, the post-mortem's included); then, as the
#: post-mortem actor's call does before it starts timing (``insights.service._store``), the service.
SCRIPT = """\
import sys
import executions.worker_boot
from executions.broker import broker
print("detflow.postmortem" in broker.actors or sorted(broker.actors))
print("openai" in sys.modules)
import insights.service
print("openai" in sys.modules)
"""


def test_first_postmortem_of_a_process__finds_openai_imported_before_its_write_is_timed(
    tmp_path: Path,
) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DETFLOW_")}
    # Services nobody answers at: booting connects to neither (the test settings refuse a database
    # not named as a test one: tests/safety.py).
    environ.update(DETFLOW_MONGODB_URL="mongodb://127.0.0.1:9", DETFLOW_MONGODB_DB="detflow_test",
                   DETFLOW_REDIS_URL="redis://127.0.0.1:9", DJANGO_SQLITE_PATH=":memory:",
                   PROMETHEUS_MULTIPROC_DIR=str(tmp_path), OPENAI_API_KEY="test-key")
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=environ,
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    has_actor, booted, served = result.stdout.split()
    assert has_actor == "True", f"no post-mortem actor in the worker: {has_actor}"
    assert booted == "True", "a booted worker has not loaded openai: its first post-mortem would"
    assert served == "True"
