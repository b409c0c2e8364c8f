"""``tests.safety``: which MongoDB database and which Redis the suite may empty."""
from __future__ import annotations

import pytest

from detflow_site.conf import DetflowSettings
from tests import safety


@pytest.mark.parametrize(
    ("name", "expected"),
    [("detflow_test", True), ("test_detflow", True), ("test_", True), ("_test", True),
     ("detflow", False), ("detflow_tests", False), ("latest", False), ("testdb", False),
     ("contest", False), ("detflow-test", False), ("Test_detflow", False)],
)
def test_is_test_database(name: str, expected: bool) -> None:
    assert safety.is_test_database(name) is expected


def test_database_refusal__only_for_a_server_database_not_named_as_a_test_one() -> None:
    assert safety.database_refusal(DetflowSettings()) is None  # embedded: lives in the test process
    assert safety.database_refusal(DetflowSettings(MONGODB_URL="mongodb://h/", MONGODB_DB="x_test")) is None
    server = DetflowSettings(MONGODB_URL="mongodb://u:pw@h:1/", MONGODB_DB="detflow")
    problem = safety.database_refusal(server)
    assert problem is not None and "\n" not in problem
    assert problem.startswith("refusing to run the tests on MongoDB database 'detflow' at h:1/: ")
    assert "'test_'" in problem and "'_test'" in problem and "pw" not in problem


def test_redis_refusal__only_for_a_server_the_suite_may_not_flush() -> None:
    assert safety.redis_refusal(DetflowSettings(), allow_flush=False) is None  # the embedded redis-server
    assert safety.redis_refusal(DetflowSettings(REDIS_URL="redis://h:1/0"), allow_flush=True) is None
    problem = safety.redis_refusal(DetflowSettings(REDIS_URL="redis://u:pw@h:1/3"), allow_flush=False)
    assert problem is not None and "\n" not in problem
    assert problem.startswith("refusing to run the tests on the Redis at redis://h:1/3: ")
    assert "--allow-flush" in problem and "pw" not in problem


def test_settings_from__reads_the_environment_as_the_test_settings_do() -> None:
    found = safety.settings_from({"DETFLOW_MONGODB_URL": "mongodb://h/", "DETFLOW_MONGODB_DB": "d",
                                  "DETFLOW_REDIS_URL": "redis://r/1", "PATH": "/bin"})
    assert (found.MONGODB_URL, found.MONGODB_DB, found.REDIS_URL) == ("mongodb://h/", "d", "redis://r/1")
    assert safety.settings_from({}).MONGODB_DB == "detflow"
