#!/usr/bin/env python
"""Run detflow's management commands."""
from __future__ import annotations

import os
import sys


def main() -> None:
    """Run a management command with detflow's settings."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "detflow_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
