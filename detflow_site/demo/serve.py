"""The web side of the single-process modes (``rundev``, ``demo --serve``): port check, one-time
login, and Django's server on 127.0.0.1 until Ctrl-C."""
from __future__ import annotations

import contextlib
import secrets
import signal
import socket
from collections.abc import Iterator
from typing import Any

from django.core.management import call_command
from django.core.management.base import CommandError

from detflow_site import services

#: Said at start-up when state lives in this process's memory.
EMBEDDED_NOTICE = ("nothing is persisted: executions are gone when this process stops, and no other "
                   "process (runworker, a second rundev) can see them")


def check_port(port: int) -> int:
    """Return ``port`` if it can be served on 127.0.0.1; raise ``CommandError`` saying why not."""
    if not 1 <= port <= 65535:
        raise CommandError(f"--port {port}: a port is a number from 1 to 65535")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise CommandError(f"cannot serve on 127.0.0.1:{port} ({exc.strerror}); "
                               "choose another with --port") from None
    return port


def banner(port: int, threads: int) -> list[str]:
    """Say what this process runs and on which services."""
    lines = [
        f"detflow on http://127.0.0.1:{port}/ (API: /api/v1/, admin: /admin/), {threads} worker "
        "thread(s) and the recovery sweeper in this process",
        f"  store: {services.store_description()}",
        f"  redis: {services.redis_description()}",
    ]
    if services.is_embedded_store():
        lines.append(f"  note: {EMBEDDED_NOTICE}")
    return lines


def migrate() -> None:
    """Create Django's own tables (auth, sessions, admin log) if they are missing."""
    call_command("migrate", interactive=False, verbosity=0)


@contextlib.contextmanager
def one_time_login() -> Iterator[tuple[str, str]]:
    """Create a superuser with a random name and password for this run; delete it afterwards."""
    from django.contrib.auth import get_user_model

    username, password = f"demo-{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    user = get_user_model().objects.create_superuser(username, "", password)
    try:
        yield username, password
    finally:
        user.delete()


def run_server(port: int) -> None:
    """Serve on 127.0.0.1:``port`` until Ctrl-C or SIGTERM, then return."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        call_command("runserver", f"127.0.0.1:{port}", use_reloader=False)
    except KeyboardInterrupt:
        pass
    except SystemExit as exc:
        if exc.code:  # detflow_site.wsgi refused the configuration (it said why)
            raise
        # runserver turns Ctrl-C into SystemExit(0): "stop"
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(port: int, out: Any) -> None:
    """Serve the admin with a one-time login (``demo --serve``) until Ctrl-C."""
    migrate()
    with one_time_login() as (username, password):
        out.write(f"\nserving http://127.0.0.1:{port}/admin/  login: {username}  password: {password}\n"
                  "(this login is deleted when you stop the demo with Ctrl-C)\n")
        if services.is_embedded_store():
            out.write(f"{EMBEDDED_NOTICE}\n")
        out.flush()
        run_server(port)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
