"""``manage.py runstore``: the strict embedded store served over the MongoDB wire protocol."""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from detflow_site import wire


class Command(BaseCommand):
    help = ("Serve the strict embedded store (mongomock made strict) over the MongoDB wire protocol, "
            "so that many processes (runworker, gunicorn, management commands) share one store: "
            "point them at it with DETFLOW_MONGODB_URL=mongodb://HOST:PORT/. State lives in this "
            "process's memory and is gone when it stops: a store for tests and local multi-process "
            "runs, not for data anyone keeps. Prints 'listening on mongodb://HOST:PORT/' when ready.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=27018,
                            help="port to listen on (default 27018; 0: any free port, printed)")
        parser.add_argument("--faults", action="store_true",
                            help="accept configureFailPoint (MongoDB's failCommand fail point) to drop "
                                 "connections, delay answers or answer errors such as NotWritablePrimary")

    def handle(self, *args: Any, **options: Any) -> None:
        if not 0 <= options["port"] <= 65535:
            raise CommandError(f"--port {options['port']} is not a port: give 0-65535")
        try:
            wire.serve(options["host"], options["port"], options["faults"], self.stdout)
        except OSError as exc:
            raise CommandError(f"cannot listen on {options['host']}:{options['port']}: {exc.strerror}; "
                               "pick another --port (0: any free one)") from None
