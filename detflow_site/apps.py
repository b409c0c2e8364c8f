"""The project app: registers the checks and the MongoDB connection at start-up."""
from __future__ import annotations

from django.apps import AppConfig
from django.contrib.admin.apps import AdminConfig as DjangoAdminConfig


class DetflowSiteConfig(AppConfig):
    name = "detflow_site"
    verbose_name = "detflow"

    def ready(self) -> None:
        from detflow_site import checks, conf, retention, services  # noqa: F401  (checks registers itself)
        from executions import signals

        signals.swept.connect(retention.on_swept, dispatch_uid="detflow.retention")

        # With a bad setting, leave the connection alone so that the system check can say what is
        # wrong instead of a connection error hiding it.
        if not conf.problems():
            services.connect_mongo()


class AdminConfig(DjangoAdminConfig):
    """Django's admin with detflow's site, which also serves mongoengine documents
    (``detflow_site.docadmin``)."""

    default_site = "detflow_site.docadmin.DocumentAdminSite"
