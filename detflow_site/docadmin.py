"""The admin glue for mongoengine documents: their pages inside Django's own admin site.

Django's admin registers Django models only. A :class:`DocumentAdmin` is the small counterpart for a
document: it declares where it lives (``app_label``, ``name``), who may read it and who may act on
it, and its views; :class:`DocumentAdminSite` (Django's ``AdminSite``, installed as the default
site by ``detflow_site.apps.AdminConfig``) serves them under ``/admin/<app_label>/<name>/`` with the
admin's login, look and permissions, lists them on the index and app pages, and puts the
dashboard panels they offer above the app list. Other apps add panels to a document's page with
:meth:`DocumentAdminSite.add_panel` without importing the app that owns the document.

This module imports nothing from detflow's apps: their ``admin.py`` lean on it the way they lean on
``django.contrib.admin``.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from django.apps import apps
from django.contrib import admin
from django.contrib.admin.exceptions import AlreadyRegistered
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, include, path, re_path, reverse
from django.utils.safestring import SafeString

#: ``panel(request, document) -> HTML or None``: a section another app adds to a document's page.
Panel = Callable[[HttpRequest, Any], "SafeString | None"]


class DocumentAdmin:
    """The pages of one kind of document; subclass, set the names, add views in :meth:`get_urls`."""

    #: The app the pages are listed under (its verbose name is the heading).
    app_label = ""
    #: The URL segment under the app: ``/admin/<app_label>/<name>/``.
    name = ""
    verbose_name_plural = ""

    def __init__(self, site: DocumentAdminSite) -> None:
        self.site = site

    @property
    def key(self) -> str:
        return f"{self.app_label}.{self.name}"

    def has_view_permission(self, request: HttpRequest) -> bool:
        """Return whether ``request``'s user may read these pages (default: superusers)."""
        return bool(request.user.is_active and request.user.is_superuser)

    def has_action_permission(self, request: HttpRequest) -> bool:
        """Return whether ``request``'s user may change documents here (default: superusers)."""
        return bool(request.user.is_active and request.user.is_superuser)

    def get_urls(self) -> list[URLPattern | URLResolver]:
        """Return the routes under ``<app_label>/<name>/``; the first one is the list."""
        return []

    def dashboard_panel(self, request: HttpRequest) -> SafeString | None:
        """Return HTML to show above the admin index's app list, or ``None``."""
        return None

    def view(self, func: Callable[..., HttpResponse], *, action: bool = False) -> Callable[..., HttpResponse]:
        """Wrap a view: admin login and CSRF as every admin page, then this admin's permission
        (:meth:`has_action_permission` for a view that changes something)."""

        def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            allowed = self.has_action_permission if action else self.has_view_permission
            if not allowed(request):
                raise PermissionDenied
            return func(request, *args, **kwargs)

        checked.__name__ = func.__name__
        return self.site.admin_view(checked)

    def route(self, name: str) -> str:
        """Return the URL name of view ``name`` of this admin (in the ``admin`` namespace)."""
        return f"{self.app_label}_{self.name}_{name}"

    def url(self, name: str, *args: Any, query: str = "") -> str:
        """Return the URL of view ``name`` with ``args``, and ``?query`` if given."""
        found = reverse(f"admin:{self.route(name)}", args=args, current_app=self.site.name)
        return f"{found}?{query}" if query else found

    def render(self, request: HttpRequest, template: str | list[str], context: dict[str, Any],
               status: int = 200) -> TemplateResponse:
        """Render ``template`` as an admin page (site header, user links, theme)."""
        request.current_app = self.site.name
        app = apps.get_app_config(self.app_label)
        full = {**self.site.each_context(request), "document_admin": self, "app_label": self.app_label,
                "app_name": app.verbose_name, "app_url": self.site.app_url(self.app_label),
                "list_url": self.url("list"), "can_act": self.has_action_permission(request), **context}
        return TemplateResponse(request, template, full, status=status)

    def panels(self, request: HttpRequest, document: Any) -> list[SafeString]:
        """Return the panels other apps added to this document's page."""
        return self.site.panels(self.key, request, document)


class DocumentAdminSite(admin.AdminSite):
    """Django's admin site, also serving the registered :class:`DocumentAdmin` pages."""

    index_template = "admin/detflow/index.html"

    def __init__(self, name: str = "admin") -> None:
        super().__init__(name)
        self._documents: dict[str, DocumentAdmin] = {}
        self._panels: dict[str, list[Panel]] = defaultdict(list)

    def register_document(self, admin_class: type[DocumentAdmin]) -> DocumentAdmin:
        """Serve the pages of ``admin_class``; return its instance."""
        instance = admin_class(self)
        if not instance.app_label or not instance.name:
            raise ImproperlyConfigured(f"{admin_class.__name__} needs app_label and name")
        if instance.key in self._documents:
            raise AlreadyRegistered(f"{instance.key} is already registered")
        self._documents[instance.key] = instance
        return instance

    def add_panel(self, key: str, panel: Panel) -> None:
        """Add ``panel`` to the page of each document of ``key`` (``"<app_label>.<name>"``); the
        document admin need not be registered yet."""
        self._panels[key].append(panel)

    def panels(self, key: str, request: HttpRequest, document: Any) -> list[SafeString]:
        """Return the panels added to ``key``'s pages, rendered for ``document``."""
        return [html for panel in self._panels[key] if (html := panel(request, document))]

    def document(self, key: str) -> DocumentAdmin:
        """Return the registered document admin of ``key`` (``"<app_label>.<name>"``)."""
        return self._documents[key]

    def documents(self, request: HttpRequest) -> list[DocumentAdmin]:
        """Return the document admins ``request``'s user may read."""
        return [d for d in self._documents.values() if d.has_view_permission(request)]

    def app_url(self, app_label: str) -> str:
        return reverse("admin:app_list", kwargs={"app_label": app_label}, current_app=self.name)

    def get_urls(self) -> list[URLPattern | URLResolver]:
        labels = sorted({d.app_label for d in self._documents.values()})
        ours: list[URLPattern | URLResolver] = [
            path(f"{d.app_label}/{d.name}/", include(d.get_urls())) for d in self._documents.values()
        ]
        if labels:
            regex = r"^(?P<app_label>" + "|".join(labels) + ")/$"
            ours.append(re_path(regex, self.admin_view(self.app_index), name="app_list"))
        # Before Django's own routes, which end with a catch-all.
        return ours + super().get_urls()

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[dict[str, Any]]:
        found = {app["app_label"]: app for app in super().get_app_list(request, app_label)}
        for document in self.documents(request):
            if app_label is not None and document.app_label != app_label:
                continue
            app = found.setdefault(document.app_label, {
                "name": apps.get_app_config(document.app_label).verbose_name,
                "app_label": document.app_label, "app_url": self.app_url(document.app_label),
                "has_module_perms": True, "models": [],
            })
            app["models"].append({
                "model": None, "name": document.verbose_name_plural, "object_name": document.name,
                "perms": {"add": False, "change": False, "delete": False, "view": True},
                "admin_url": document.url("list"), "add_url": None, "view_only": True,
            })
        listing = sorted(found.values(), key=lambda app: app["name"].lower())
        for app in listing:
            app["models"].sort(key=lambda model: model["name"])
        return listing

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        panels = [html for d in self.documents(request) if (html := d.dashboard_panel(request))]
        return super().index(request, {"dashboard_panels": panels, **(extra_context or {})})


def default_site() -> DocumentAdminSite:
    """Return Django's default admin site, which must be detflow's."""
    site = admin.site
    if not isinstance(site, DocumentAdminSite):
        raise ImproperlyConfigured(
            "the default admin site is not detflow's: install detflow_site.apps.AdminConfig "
            "instead of django.contrib.admin in INSTALLED_APPS")
    return site


def register(admin_class: type[DocumentAdmin]) -> type[DocumentAdmin]:
    """Class decorator: serve ``admin_class`` on Django's default admin site."""
    default_site().register_document(admin_class)
    return admin_class
