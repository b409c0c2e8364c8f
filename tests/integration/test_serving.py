"""Serving with no settings: ``gunicorn detflow_site.wsgi`` as a deployment runs it (its own process,
a fresh directory, the settings from the environment) shows no debug page and does not start on a
well-known secret key or a bad ``DETFLOW_*`` value; ``rundev`` keeps its debug pages."""
from __future__ import annotations

import http.client
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from detflow_site import checks
from tests.integration.test_rundev import free_port

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = str(Path(sys.executable).parent / "gunicorn")
#: What Django's debug pages show and its production pages never do.
DEBUG_MARKERS = ("DEBUG = True", "Traceback", "SECRET_KEY", "DJANGO_SETTINGS_MODULE", "URLconf", str(ROOT))


def environment(tmp_path: Path, **env: str) -> dict[str, str]:
    """The caller's environment without any Django or detflow setting, plus ``env``; Python finds
    the project through PYTHONPATH only."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DETFLOW_"))}
    (tmp_path / "static").mkdir(exist_ok=True)
    clean.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", DJANGO_SQLITE_PATH=str(tmp_path / "db.sqlite3"),
                 DJANGO_STATIC_ROOT=str(tmp_path / "static"), DETFLOW_STORAGE_DIR=str(tmp_path / "storage"))
    clean.update(env)
    return clean


def gunicorn(tmp_path: Path, port: int, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [GUNICORN, "detflow_site.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1",
         "--control-socket", str(tmp_path / "gunicorn.ctl")],
        cwd=tmp_path, env=environment(tmp_path, **env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )


def get(port: int, path: str, **headers: str) -> tuple[int, str]:
    """GET ``path`` as through a TLS proxy (``X-Forwarded-Proto: https``); return status and body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"X-Forwarded-Proto": "https", **headers})
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[int]:
    """gunicorn on a free port with a strong random key and nothing else set; its port once it answers."""
    port = free_port()
    child = gunicorn(tmp_path, port, DJANGO_SECRET_KEY=secrets.token_urlsafe(50))
    try:
        deadline = time.monotonic() + 60
        while True:
            assert child.poll() is None, child.communicate()[0]
            assert time.monotonic() < deadline, "gunicorn did not answer /healthz within 60 s"
            try:
                if get(port, "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        yield port
    finally:
        child.terminate()
        try:
            child.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()


@pytest.mark.slow
def test_gunicorn__with_no_settings_serves_no_debug_page(served: int) -> None:
    answers = {
        "/api/v1/nope": get(served, "/api/v1/nope"),
        "/admin/nope": get(served, "/admin/nope"),
        "/nope": get(served, "/nope"),
        # Django's tables were never migrated here: the token lookup fails, a real server error.
        "/api/v1/executions/": get(served, "/api/v1/executions/", Authorization="Token " + "0" * 40),
        "Host: evil.example": get(served, "/api/v1/health/", Host="evil.example"),
    }

    assert {name: status for name, (status, _) in answers.items()} == {
        "/api/v1/nope": 404, "/admin/nope": 302, "/nope": 404, "/api/v1/executions/": 500,
        "Host: evil.example": 400}
    assert "Server Error (500)" in answers["/api/v1/executions/"][1]
    for name, (_, body) in answers.items():
        shown = [marker for marker in DEBUG_MARKERS if marker in body]
        assert not shown, f"{name} shows {shown}: {body[:2000]}"


@pytest.mark.slow
@pytest.mark.parametrize("key", [None, "change-me-in-production", "django-insecure-" + "s3cr3t-k3y" * 5,
                                 "x" * 20 + "y" * 30])
def test_gunicorn__refuses_to_start_on_a_well_known_or_weak_secret_key(tmp_path: Path,
                                                                       key: str | None) -> None:
    env = {} if key is None else {"DJANGO_SECRET_KEY": key}
    child = gunicorn(tmp_path, free_port(), **env)
    output, _ = child.communicate(timeout=60)

    assert child.returncode != 0, output
    assert "detflow: configuration error: (detflow.E002) DEBUG is off but DJANGO_SECRET_KEY" in output
    assert "Traceback" not in output


@pytest.mark.slow
def test_gunicorn__refuses_to_start_on_a_bad_detflow_setting(tmp_path: Path) -> None:
    child = gunicorn(tmp_path, free_port(), DETFLOW_LEASE_S="abc",
                     DJANGO_SECRET_KEY=secrets.token_urlsafe(50))
    output, _ = child.communicate(timeout=60)

    assert child.returncode != 0, output
    assert ("detflow: configuration error: (detflow.E001) DETFLOW_LEASE_S='abc' must be a number. "
            "Fix or unset the environment variable.") in output
    assert "detflow.E002" not in output
    assert "Traceback" not in output


@pytest.mark.slow
def test_rundev__turns_debug_on_unless_told_otherwise(tmp_path: Path) -> None:
    port = free_port()
    child = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "rundev", "--port", str(port),
                              "--threads", "1"], cwd=tmp_path, env=environment(tmp_path),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert child.poll() is None, child.communicate()[0]
            assert time.monotonic() < deadline, "rundev did not answer within 60 s"
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                connection.request("GET", "/nope")  # plain HTTP: no redirect to HTTPS
                response = connection.getresponse()
                status, body = response.status, response.read().decode()
                break
            except OSError:
                time.sleep(0.2)
            finally:
                connection.close()
    finally:
        child.terminate()
        child.communicate(timeout=30)

    assert status == 404
    assert "DEBUG = True" in body


@pytest.mark.slow
def test_rundev__with_debug_turned_off_refuses_the_development_key(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), "rundev", "--port", str(free_port()),
                             "--threads", "1"], cwd=tmp_path, env=environment(tmp_path, DJANGO_DEBUG="0"),
                            capture_output=True, text=True, timeout=120)

    assert result.returncode != 0, result.stdout + result.stderr
    assert "detflow: configuration error: (detflow.E002)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("key", "reason"), [
    ("detflow-insecure-development-key", "is the development key"),
    ("change-me-in-production", "is the published example key 'change-me-in-production'"),
    ("django-insecure-" + "k3y" * 20, "starts with 'django-insecure-'"),
    ("abcdefghijklmnopqrstuvwxyz12345", "is 31 characters long; at least 32 are needed"),
    ("0123456789" * 3 + "01", None),
    ("abababababababababababababababababab", "has only 2 distinct characters; at least 10"),
])
def test_check_production__names_why_a_secret_key_is_refused(settings: Any, key: str,
                                                             reason: str | None) -> None:
    settings.DEBUG = False
    settings.SECRET_KEY = key
    found = checks.check_production()

    if reason is None:
        assert found == []
    else:
        [error] = found
        assert error.id == "detflow.E002" and reason in error.msg, error.msg


def test_check_production__accepts_any_key_with_debug_on(settings: Any) -> None:
    settings.DEBUG = True
    settings.SECRET_KEY = "change-me-in-production"
    assert checks.check_production() == []
