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


@register("detflow", deploy=True)
def check_production(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Refuse the development secret key when DEBUG is off."""
    from django.conf import settings

    if not settings.DEBUG and getattr(settings, "DEVELOPMENT_SECRET_KEY", None) == settings.SECRET_KEY:
        return [Error("DEBUG is off but DJANGO_SECRET_KEY is the development key",
                      hint="Set DJANGO_SECRET_KEY to a long random value.", id="detflow.E002")]
    return []
