"""The API's permission: viewers read, operators also write, signallers only send signals;
anonymous requests get 401."""
from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission

from executions.roles import OPERATORS, SIGNALLERS, VIEWERS, roles_of


class HasRole(BasePermission):
    """Allow reads to viewers and operators, writes to operators, and a signal (a view with
    ``signallers_may_post``, POST) to operators and signallers (DRF makes one per request)."""

    message = "this needs the 'operators' role"

    def has_permission(self, request: Any, view: Any) -> bool:
        roles = roles_of(request.user)
        if request.method in SAFE_METHODS:
            self.message = "this needs the 'viewers' or 'operators' role"
            return bool(roles & {VIEWERS, OPERATORS})
        if request.method == "POST" and getattr(view, "signallers_may_post", False):
            self.message = "this needs the 'operators' or 'signallers' role"
            return bool(roles & {OPERATORS, SIGNALLERS})
        return OPERATORS in roles
