"""The base of the management commands that read or change executions from a process of their own."""
from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from detflow_site import services


class StoreCommand(BaseCommand):
    """A command that reads or changes the stored executions: refused where it would see none.

    The embedded store lives in the memory of the process that runs it and starts empty with that
    process. Started as a process of its own (``manage.py verify``: the process's command line is the
    command's), a command would read an empty store of its own, not the one ``rundev`` or the demo
    holds, and report on nothing: it refuses in one line instead. Called inside a process
    (``call_command``, or ``execute_from_command_line`` with arguments of its own, as the tests do),
    it reads that process's store, and runs.
    """

    _own_process = False

    def run_from_argv(self, argv: list[str]) -> None:
        self._own_process = argv[1:] == sys.argv[1:]
        super().run_from_argv(argv)

    def execute(self, *args: Any, **options: Any) -> Any:
        if self._own_process and services.is_embedded_store():
            raise CommandError(elsewhere(self.command_name()))
        return super().execute(*args, **options)

    def command_name(self) -> str:
        """Return the name this command is run by (its module's)."""
        return type(self).__module__.rsplit(".", 1)[-1]


def elsewhere(command: str) -> str:
    """Say, in one line, why ``command`` cannot work on the embedded store of another process."""
    return (f"{command} cannot see the embedded store: DETFLOW_MONGODB_URL is unset, and the embedded "
            "store lives in the memory of the process that runs it (rundev, demo); this command runs "
            "in another process and sees none of it. Set DETFLOW_MONGODB_URL to a MongoDB both use, "
            "or use the API or admin of the running rundev")
