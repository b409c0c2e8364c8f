"""``/api/v1/schedules/``: operators create, pause, resume and delete; viewers read; 400s name the field."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from executions import schedules
from tests.integration.api.conftest import assert_error

URL = "/api/v1/schedules/"


@pytest.fixture(autouse=True)
def no_schedules() -> Iterator[None]:
    schedules.collection().delete_many({})
    yield
    schedules.collection().delete_many({})


def test_schedules__create_list_pause_resume_delete(operator: Any, viewer: Any, define: Any) -> None:
    define("tick", [{"handler": "test.echo"}])
    made = operator.post(URL, {"workflow": "tick", "cron": "*/5 * * * *", "input": {"a": 1},
                               "timezone": "Europe/Paris", "overlap": "cancel_previous",
                               "catch_up_s": 30}, format="json")
    assert made.status_code == 201, made.json()
    body = made.json()
    sid = body["id"]
    assert (body["workflow"], body["timezone"], body["overlap"], body["paused"]) == (
        "tick", "Europe/Paris", "cancel_previous", False)
    assert body["created_by"] and isinstance(body["next_fire_at"], int)
    assert [s["id"] for s in viewer.get(URL).json()["results"]] == [sid]
    assert viewer.get(f"{URL}{sid}/").json()["input"] == {"a": 1}
    paused = operator.post(f"{URL}{sid}/pause/", {"reason": "maintenance"}, format="json")
    assert paused.status_code == 200 and paused.json()["paused"] is True
    pause = viewer.get(f"{URL}{sid}/").json()["pause"]
    assert (pause["by"], pause["reason"]) == ("operator", "maintenance") and isinstance(pause["at"], int)
    resumed = operator.post(f"{URL}{sid}/resume/").json()
    assert resumed["paused"] is False and "pause" not in resumed
    bad_reason = operator.post(f"{URL}{sid}/pause/", {"reason": ["x"]}, format="json")
    assert_error(bad_reason, 400, "invalid", "reason")
    assert operator.delete(f"{URL}{sid}/").status_code == 204
    assert_error(viewer.get(f"{URL}{sid}/"), 404, "schedule_not_found")


@pytest.mark.parametrize(("change", "field"), [
    ({"cron": "every minute"}, "cron"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"workflow": "nope"}, "workflow"),
    ({"overlap": "sometimes"}, "overlap"),
    ({"catch_up_s": "soon"}, "catch_up_s"),
    ({"version": 0}, "version"),
    ({"colour": "red"}, "colour"),
])
def test_schedules__bad_field_is_a_400_naming_it(
    operator: Any, define: Any, change: dict[str, Any], field: str
) -> None:
    define("tick", [{"handler": "test.echo"}])
    answer = operator.post(URL, {"workflow": "tick", "cron": "* * * * *", **change}, format="json")
    assert_error(answer, 400, "invalid", field)
    assert schedules.listed() == []


def test_schedules__viewers_cannot_write(viewer: Any, operator: Any, define: Any) -> None:
    define("tick", [{"handler": "test.echo"}])
    assert viewer.post(URL, {"workflow": "tick", "cron": "* * * * *"}, format="json").status_code == 403
    sid = operator.post(URL, {"workflow": "tick", "cron": "* * * * *"}, format="json").json()["id"]
    assert viewer.post(f"{URL}{sid}/pause/").status_code == 403
    assert viewer.delete(f"{URL}{sid}/").status_code == 403
    assert schedules.get(sid)["paused"] is False
