"""The production topology file: valid for docker compose, with the four services it promises."""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

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


def test_compose_file__has_mongo_redis_api_and_worker() -> None:
    result = config("--services", DJANGO_SECRET_KEY=secrets.token_urlsafe(50))
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {"mongo", "redis", "api", "worker"}


def test_compose_file__has_no_fallback_secret_key() -> None:
    result = config("-q")
    assert result.returncode != 0
    assert "set DJANGO_SECRET_KEY" in result.stderr
