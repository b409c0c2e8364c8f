"""Who may do what: the ``viewers``, ``operators`` and ``signallers`` Django groups, and API tokens
for their members.

Viewers read workflows and executions; operators also register workflows, start executions and
uploads, cancel, retry, skip, compensate and send signals. Signallers may only send signals (an
approval service, a webhook): they read nothing and start nothing, and do not get the admin console.
A superuser has every role.
"""
from __future__ import annotations

from typing import Any

#: Read-only role.
VIEWERS = "viewers"
#: Read and act: start, cancel, retry, skip, register workflows.
OPERATORS = "operators"
#: Send signals to executions (``POST executions/{id}/signals/{name}/``) and nothing else.
SIGNALLERS = "signallers"
ROLES = (VIEWERS, OPERATORS, SIGNALLERS)


def ensure_roles() -> None:
    """Create the role groups that are missing."""
    from django.contrib.auth.models import Group

    for name in ROLES:
        Group.objects.get_or_create(name=name)


def roles_of(user: Any) -> frozenset[str]:
    """Return the roles of ``user`` (none for an anonymous or inactive one)."""
    if user is None or not user.is_authenticated or not user.is_active:
        return frozenset()
    if user.is_superuser:
        return frozenset(ROLES)
    return frozenset(user.groups.filter(name__in=ROLES).values_list("name", flat=True))


def grant(username: str, role: str, new_token: bool = False) -> str:
    """Give ``username`` (created without a password if missing) exactly ``role``, and the admin
    console with it (not with ``signallers``: a signaller reads nothing); return its API token.

    The token is kept unless ``new_token``, which replaces it (the old one stops working).
    """
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.core.exceptions import ValidationError
    from rest_framework.authtoken.models import Token

    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    users = get_user_model()
    try:
        users.username_validator(username)
        if not 0 < len(username) <= 150:
            raise ValidationError("a user name is 1 to 150 characters")
    except ValidationError as exc:
        raise ValueError(f"user name {username!r}: {' '.join(exc.messages)}") from None
    ensure_roles()
    user, created = users.objects.get_or_create(username=username)
    if created:
        user.set_unusable_password()
    # A role also opens the admin console (Django's admin lets staff users in).
    user.is_staff = role != SIGNALLERS
    user.save()
    user.groups.remove(*Group.objects.filter(name__in=ROLES).exclude(name=role))
    user.groups.add(Group.objects.get(name=role))
    if new_token:
        Token.objects.filter(user=user).delete()
    token, _ = Token.objects.get_or_create(user=user)
    return token.key
