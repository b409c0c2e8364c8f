"""System checks: every bad ``DETFLOW_*`` value is reported with its name and the fix, and a
production process refuses a secret key anyone could know."""
from __future__ import annotations

from typing import Any

from django.core.checks import ERROR, Error, register, run_checks

from detflow_site import conf

#: Keys published somewhere (this project's compose file once fell back to it): never secret.
KNOWN_SECRET_KEYS = frozenset({"change-me-in-production"})
#: The prefix of the keys ``django-admin startproject`` writes: made for development.
INSECURE_PREFIX = "django-insecure-"
#: The shortest key accepted, and the fewest distinct characters (Django's own warning asks 5).
MIN_SECRET_KEY_LENGTH = 32
MIN_SECRET_KEY_CHARACTERS = 10


@register("detflow")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Report each ``DETFLOW_*`` setting whose value cannot be used."""
    return [
        Error(problem, hint="Fix or unset the environment variable.", id="detflow.E001")
        for problem in conf.problems()
    ]


@register("detflow", deploy=True)
def check_production(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Refuse a well-known or weak secret key when DEBUG is off."""
    from django.conf import settings

    if settings.DEBUG:
        return []
    weakness = secret_key_weakness(settings.SECRET_KEY, getattr(settings, "DEVELOPMENT_SECRET_KEY", None))
    if weakness is None:
        return []
    return [Error(f"DEBUG is off but DJANGO_SECRET_KEY {weakness}",
                  hint="Set DJANGO_SECRET_KEY to a long random value, e.g. the output of "
                       "python3 -c 'import secrets; print(secrets.token_urlsafe(50))'.",
                  id="detflow.E002")]


def secret_key_weakness(key: str, development_key: str | None) -> str | None:
    """Say why ``key`` is known or guessable (``None``: it is not)."""
    if key == development_key:
        return "is the development key (it is unset or empty)"
    if key in KNOWN_SECRET_KEYS:
        return f"is the published example key {key!r}"
    if key.startswith(INSECURE_PREFIX):
        return f"starts with {INSECURE_PREFIX!r}: it was made for development"
    if len(key) < MIN_SECRET_KEY_LENGTH:
        return f"is {len(key)} characters long; at least {MIN_SECRET_KEY_LENGTH} are needed"
    if len(set(key)) < MIN_SECRET_KEY_CHARACTERS:
        return (f"has only {len(set(key))} distinct characters; at least {MIN_SECRET_KEY_CHARACTERS} "
                "are needed")
    return None


def serving_errors() -> list[str]:
    """Return one line per system check error a server must not start with (deployment checks
    included, silenced ones left out)."""
    return [f"({issue.id}) {issue.msg}. {issue.hint or ''}".rstrip()
            for issue in run_checks(include_deployment_checks=True)
            if issue.level >= ERROR and not issue.is_silenced()]
