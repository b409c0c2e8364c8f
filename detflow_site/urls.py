"""URL routes: the Django admin for now; the REST API mounts under /api/v1/."""
from __future__ import annotations

from django.contrib import admin
from django.urls import path

urlpatterns = [
    path("admin/", admin.site.urls),
]
