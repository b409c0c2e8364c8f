"""Browser fixtures: Debian's chromium driven by Playwright, the site on a live server, and workers.

A missing chromium or Playwright skips these tests on a developer's machine and fails them in CI
(``.ci/run`` installs chromium). No browser is ever downloaded.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI

CHROMIUM = os.environ.get("DETFLOW_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
#: Screenshots of the pages, kept as test artifacts.
ARTIFACTS = Path(__file__).resolve().parents[2] / "var" / "test-artifacts"
PASSWORD = "a-long-test-password-1"


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"browser tests must run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Debian chromium, shared by a module's tests.

    Playwright's sync API keeps an event loop in this thread while it runs, and Django refuses
    database calls from a thread with a running loop unless ``DJANGO_ALLOW_ASYNC_UNSAFE`` is set;
    the calls are synchronous and safe here, so it is set while the browser runs, and only then.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _missing(f"Playwright is not installed ({exc}); pip install -r requirements-dev.txt")
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"no chromium at {CHROMIUM}; apt-get install chromium")
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def pool(redis_client: Any, broker: Any) -> Iterator[Any]:
    """Worker threads and the sweeper in this process: what the operator starts really runs."""
    from executions.workers import WorkerPool

    redis_client.flushdb()
    broker.flush_all()
    running = WorkerPool(threads=2).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def signed_in(browser: Any, live_server: Any, transactional_db: None) -> Iterator[Callable[[str], Any]]:
    """Return a function that opens a browser page signed in to the admin with ``role``."""
    from django.contrib.auth import get_user_model

    from executions import roles

    contexts = []

    def open_as(role: str) -> Any:
        roles.grant(role, {"viewer": roles.VIEWERS, "operator": roles.OPERATORS}[role])
        user = get_user_model().objects.get(username=role)
        user.set_password(PASSWORD)
        user.save()
        context = browser.new_context(base_url=live_server.url, viewport={"width": 1400, "height": 1000})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto("/admin/login/?next=/admin/")
        page.fill("#id_username", role)
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url("**/admin/")
        return page

    yield open_as
    for context in contexts:
        context.close()


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as a test artifact; return its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
