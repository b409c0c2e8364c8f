#!/usr/bin/env python
"""Run detflow's management commands."""
from __future__ import annotations

import os
import sys

#: The single-process commands: they serve on 127.0.0.1 for one developer, so they show Django's
#: debug pages unless DJANGO_DEBUG says otherwise. Every other process runs with DEBUG off.
EMBEDDED_COMMANDS = frozenset({"rundev", "demo"})


def main() -> None:
    """Run a management command with detflow's settings; a configuration error is one line."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "detflow_site.settings")
    if len(sys.argv) > 1 and sys.argv[1] in EMBEDDED_COMMANDS:
        os.environ.setdefault("DJANGO_DEBUG", "1")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        sys.stderr.write(f"detflow: configuration error: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
