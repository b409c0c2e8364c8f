"""Admin logins are limited by django-axes: after 5 wrong passwords for one user name from one
address, even the right one is refused for 15 minutes, with a page that says so; API tokens work on."""
from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

LOGIN = "/admin/login/?next=/admin/"
PASSWORD = "the-right-password-1"


@pytest.fixture
def admin_user(db: None) -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_superuser("root", "", PASSWORD)


def log_in(client: Client, password: str, username: str = "root", **headers: str) -> Any:
    return client.post(LOGIN, {"username": username, "password": password}, headers=headers)


def signed_in(client: Client) -> bool:
    return bool(client.get("/admin/").status_code == 200)


def test_login__26_wrong_passwords_lock_the_account_from_that_address(admin_user: Any) -> None:
    from axes.models import AccessAttempt
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    browser = Client()
    wrong = [log_in(browser, f"guess-{n}", **{"User-Agent": f"bot/{n}"}).status_code for n in range(26)]
    locked = log_in(browser, PASSWORD)

    assert wrong[:4] == [200] * 4  # the login page again, with its error
    assert set(wrong[5:]) == {429}
    assert locked.status_code == 429
    assert "Too many failed logins: this account is locked from your address for 15 minutes" in \
        locked.content.decode()
    assert not signed_in(browser)
    assert sum(a.failures_since_start for a in AccessAttempt.objects.filter(username="root")) >= 26
    # The API does not log in with a password: its tokens are not locked out.
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=admin_user).key}")
    assert api.get("/api/v1/executions/").status_code == 200


def test_login__a_lockout_holds_one_user_name_not_another(admin_user: Any) -> None:
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_superuser("other", "", PASSWORD)
    browser = Client()
    for n in range(5):
        log_in(browser, f"guess-{n}")

    assert log_in(browser, PASSWORD).status_code == 429
    assert log_in(browser, PASSWORD, username="other").status_code == 302
    assert signed_in(browser)


def test_login__fewer_wrong_passwords_than_the_limit_still_let_the_right_one_in(admin_user: Any) -> None:
    browser = Client()
    for n in range(4):
        log_in(browser, f"guess-{n}")

    assert log_in(browser, PASSWORD).status_code == 302
    assert signed_in(browser)
