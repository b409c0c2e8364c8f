"""The landing page at ``/``: anyone sees where the admin, the API's docs and schema and health are,
and nothing of the data; the admin's "View site" leads to it."""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django.test import Client

LINKS = {"link-admin": "/admin/", "link-docs": "/api/v1/docs/", "link-schema": "/api/v1/schema/",
         "link-health": "/api/v1/health/", "link-healthz": "/healthz", "link-readyz": "/readyz"}


def test_landing__anyone_gets_the_links_to_the_admin_the_api_docs_the_schema_and_health(
    client: Client, db: None,
) -> None:
    response = client.get("/")

    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    found = dict(re.findall(r'<li id="(link-\w+)"><a href="([^"]+)"', html))
    assert found == LINKS
    for url in LINKS.values():
        assert client.get(url).status_code in (200, 302), url  # each leads somewhere (the admin: its login)


def test_landing__shows_no_data_even_with_executions_stored(client: Client, db: None, define: Any) -> None:
    from executions import operations

    define("secret-workflow-name", [{"handler": "test.echo"}])
    doc, _ = operations.start("secret-workflow-name", {"card": "4111"}, idempotency_key="order-77")
    html = client.get("/").content.decode()

    for shown in ("secret-workflow-name", doc["_id"], "order-77", "4111"):
        assert shown not in html


def test_admin__view_site_leads_to_the_landing_page(console_as: Callable[..., Client]) -> None:
    html = console_as("viewer").get("/admin/").content.decode()

    assert re.search(r'<a href="/">View site</a>', html)
