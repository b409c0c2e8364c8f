"""The README's curl session, run as it is written against a live server with worker threads."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI

README = Path(__file__).resolve().parents[3] / "README.md"
#: A ```sh block right after this marker is one of the API examples.
EXAMPLE = re.compile(r"<!-- api-example -->\n```sh\n(.*?)```", re.DOTALL)


def examples() -> list[str]:
    return EXAMPLE.findall(README.read_text())


@pytest.fixture
def tools() -> None:
    missing = [tool for tool in ("bash", "curl", "jq") if shutil.which(tool) is None]
    if missing:
        if IN_CI:
            pytest.fail(f"the README's API examples need {', '.join(missing)}")
        pytest.skip(f"the README's API examples need {', '.join(missing)}")


def test_readme__documents_every_endpoint_with_a_curl_example() -> None:
    text = "\n".join(examples())

    assert len(examples()) >= 6
    for path in ["health/", "handlers/", "workflows/", "executions/", "/events/", "/diagnosis/",
                 "/cancel/", "/retry/", "/skip/", "files/"]:
        assert path in text, f"no README example calls {path}"


@pytest.mark.django_db(transaction=True)
def test_readme__curl_examples_run_as_written(
    tools: None, live_server: Any, worker: Any, token_for: Any, tmp_path: Path
) -> None:
    script = "\n".join(examples())
    env = {**os.environ, "DETFLOW_API": f"{live_server.url}/api/v1", "TOKEN": token_for("operator")}

    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert '"status": "SUCCEEDED"' in done.stdout
    assert '"action": "operator"' in done.stdout
    assert '"dry_run":true' in done.stdout
    assert '"reason": "retry"' in done.stdout
    assert '"workflow": "file-processing"' in done.stdout
