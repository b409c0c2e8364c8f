"""Test handlers stay in tests: a production process registers no chaos or test handler, and the
chaos handler's knobs cannot hold a worker thread without bound."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings

from detflow_site.chaos import handlers
from workflows import registry
from workflows.context import AttemptLog, StepContext
from workflows.errors import PermanentError

MANAGE = Path(django_settings.BASE_DIR) / "manage.py"
LIST_HANDLERS = "import json; from workflows import registry; print(json.dumps(registry.known_handlers()))"


def test_production_process__registers_no_chaos_or_test_handler(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DETFLOW_", "DJANGO_"))}
    env["DJANGO_SETTINGS_MODULE"] = "detflow_site.settings"

    run = subprocess.run([sys.executable, str(MANAGE), "shell", "-c", LIST_HANDLERS], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)

    assert run.returncode == 0, run.stderr
    known = json.loads(run.stdout.strip().splitlines()[-1])
    assert "files.receive" in known
    assert not [h for h in known if h.startswith(("chaos.", "test."))], known


@pytest.mark.parametrize(("kind", "key", "value"), [
    ("hang", "hang_s", "inf"), ("hang", "hang_s", "nan"), ("hang", "hang_s", -1),
    ("hang", "hang_s", "soon"), ("pause", "pause_s", "inf"), ("pause", "pause_s", [1]),
])
def test_chaos_step__an_unbounded_stall_is_refused(kind: str, key: str, value: Any) -> None:
    plan = {"run": "t", "faults": [{"kind": kind, "step": 0}], key: value}
    ctx = StepContext(execution_id="e" * 32, workflow="chaos", workflow_version=1, step="step-1",
                      attempt=1, idempotency_key=f"{'e' * 32}:step-1:{key}:{value!r}", input={"chaos": plan},
                      outputs={}, fencing_token=1, log=AttemptLog(200, {}))

    with pytest.raises(PermanentError, match=f"input.chaos.{key}"):
        registry.get_handler(handlers.HANDLER)(ctx)


def test_chaos_step__a_long_stall_is_capped() -> None:
    assert handlers._seconds({"hang_s": 10**9}, "hang_s", 60) == handlers.MAX_STALL_S
    assert handlers._seconds({}, "pause_s", 120) == 120
