"""System checks: every bad ``DETFLOW_*`` value is reported with its name and the fix."""
from __future__ import annotations

from typing import Any

from django.core.checks import Error, register

from detflow_site import conf


@register("detflow")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Report each ``DETFLOW_*`` setting whose value cannot be used."""
    return [
        Error(problem, hint="Fix or unset the environment variable.", id="detflow.E001")
        for problem in conf.problems()
    ]
