#!/usr/bin/env python
"""Run detflow's management commands."""
from __future__ import annotations

import os
import sys


def main() -> None:
    """Run a management command with detflow's settings; a configuration error is one line."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "detflow_site.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        sys.stderr.write(f"detflow: configuration error: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
