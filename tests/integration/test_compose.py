"""The production topology file: valid for docker compose, with the services it promises, the
indexes ensured once before anything serves."""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> list[str]:
    """Return the compose command line available here (the v2 plugin, or docker-compose v1)."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("neither 'docker compose' nor 'docker-compose' is installed (.ci/run installs it)")
    pytest.skip("no docker compose here")


def config(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``compose config`` with the caller's environment, less DJANGO_SECRET_KEY, plus ``env``."""
    environ = {k: v for k, v in os.environ.items() if k != "DJANGO_SECRET_KEY"}
    return subprocess.run([*compose(), "-f", "docker-compose.yml", "config", *args], cwd=ROOT,
                          env={**environ, **env}, capture_output=True, text=True, timeout=60)


def test_compose_file__is_valid() -> None:
    result = config("-q", DJANGO_SECRET_KEY=secrets.token_urlsafe(50))
    assert result.returncode == 0, result.stderr


def test_compose_file__has_mongo_redis_indexes_api_and_worker() -> None:
    result = config("--services", DJANGO_SECRET_KEY=secrets.token_urlsafe(50))
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {"mongo", "redis", "indexes", "api", "worker"}


def test_compose_file__api_and_worker_start_after_ensure_indexes_has_run_once() -> None:
    result = config(DJANGO_SECRET_KEY=secrets.token_urlsafe(50))
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    indexes = services["indexes"]
    assert indexes["command"] == ["python", "manage.py", "ensure_indexes"]
    # (compose v2 adds ``required`` and ``restart`` to each dependency: compare the conditions)
    assert {k: v["condition"] for k, v in indexes["depends_on"].items()} == {"mongo": "service_healthy"}
    assert indexes["environment"] == services["api"]["environment"]
    assert indexes.get("restart", "no") == "no"
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["indexes"]["condition"] == "service_completed_successfully"
    assert all("ensure_indexes" not in str(services[name]["command"]) for name in ("api", "worker"))


def test_compose_file__has_no_fallback_secret_key() -> None:
    result = config("-q")
    assert result.returncode != 0
    assert "set DJANGO_SECRET_KEY" in result.stderr
