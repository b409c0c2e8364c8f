"""The handler registry: ``@step("files.checksum")`` makes a function runnable by name."""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from django.core.exceptions import ImproperlyConfigured

from workflows.errors import DefinitionError, UnknownHandler

if TYPE_CHECKING:
    from workflows.context import StepContext

Handler = Callable[["StepContext"], Any]
F = TypeVar("F", bound=Handler)

#: Handler names: dotted lowercase words, such as ``files.checksum``.
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")

_handlers: dict[str, Handler] = {}


def step(name: str) -> Callable[[F], F]:
    """Register the decorated function as the handler called ``name``."""
    if not NAME_RE.match(name):
        raise DefinitionError("handler", f"{name!r} is not a handler name such as 'files.checksum'")

    def register(func: F) -> F:
        existing = _handlers.get(name)
        if existing is not None and _origin(existing) != _origin(func):
            raise DefinitionError(
                "handler", f"{name!r} is already registered by {_origin(existing)}"
            )
        _handlers[name] = func
        return func

    return register


def _origin(func: Handler) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', '?')}"


def get_handler(name: str, field: str = "handler") -> Handler:
    """Return the handler called ``name``; raise :class:`UnknownHandler` listing the known ones."""
    try:
        return _handlers[name]
    except KeyError:
        raise UnknownHandler(field, name, known_handlers()) from None


def known_handlers() -> list[str]:
    """Return the registered handler names, sorted."""
    return sorted(_handlers)


def describe(name: str) -> dict[str, str]:
    """Return a handler's name, origin and first docstring line."""
    func = get_handler(name)
    doc = (func.__doc__ or "").strip().splitlines()
    return {"name": name, "origin": _origin(func), "summary": doc[0] if doc else ""}


def import_handler_modules(modules: tuple[str, ...]) -> None:
    """Import each module so that its handlers register; stop start-up naming one that fails."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise ImproperlyConfigured(
                f"DETFLOW_HANDLER_MODULES: cannot import {module!r}: {type(exc).__name__}: {exc}"
            ) from exc
