"""detflow's settings: parsing the ``DETFLOW_*`` values and the ``detflow.E001`` system check."""
from __future__ import annotations

import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from detflow_site import conf
from detflow_site.checks import check_settings
from detflow_site.conf import DetflowSettings


def test_parse__gives_the_defaults_when_nothing_is_set():
    assert conf.parse({}) == (DetflowSettings(), [])


def test_parse__reads_environment_strings():
    parsed, problems = conf.parse({
        "MONGODB_URL": " mongodb+srv://db.example/x ", "MONGODB_DB": "jobs_2", "REDIS_URL": "",
        "HANDLER_MODULES": "media.handlers, ,billing.handlers", "OUTPUT_CAP_BYTES": "1024",
        "LEASE_S": "0.1", "SWEEP_INTERVAL_S": "0.5", "SWEEP_GRACE_S": "0", "QUEUE": "_work.q-1",
        "LOG_LINES_CAP": "0", "ATTEMPTS_KEPT": "1", "BULK_LEASE_S": "2.5",
    })
    assert problems == []
    assert parsed == DetflowSettings(
        MONGODB_URL="mongodb+srv://db.example/x", MONGODB_DB="jobs_2", REDIS_URL=None,
        HANDLER_MODULES=("media.handlers", "billing.handlers"), OUTPUT_CAP_BYTES=1024, LEASE_S=0.1,
        SWEEP_INTERVAL_S=0.5, SWEEP_GRACE_S=0.0, QUEUE="_work.q-1", LOG_LINES_CAP=0, ATTEMPTS_KEPT=1,
        BULK_LEASE_S=2.5,
    )


@pytest.mark.parametrize("url", ["redis://localhost:6379/0", "rediss://h:6380", "unix:///tmp/redis.sock"])
def test_parse__accepts_redis_urls(url):
    assert conf.parse({"REDIS_URL": url}) == (DetflowSettings(REDIS_URL=url), [])


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("LEASE_S", "abc", "must be a number"),
        ("LEASE_S", "0.05", "must be at least 0.1"),
        ("REDIS_URL", "http://x", "must start with redis:// or rediss:// or unix://"),
        ("REDIS_URL", "localhost:6379", "must start with redis://"),
        ("MONGODB_URL", "localhost", "must start with mongodb:// or mongodb+srv://"),
        ("MONGODB_DB", "my db", "must be a non-empty name"),
        ("MONGODB_DB", " ", "must be a non-empty name"),
        ("OUTPUT_CAP_BYTES", "0", "must be at least 1"),
        ("OUTPUT_CAP_BYTES", "1.5", "must be an integer"),
        ("SWEEP_INTERVAL_S", "0", "must be greater than 0"),
        ("SWEEP_GRACE_S", "-1", "must be at least 0"),
        ("QUEUE", "9lives", "must start with a letter or '_'"),
        ("QUEUE", "a queue", "must start with a letter or '_'"),
        ("LOG_LINES_CAP", "-1", "must be at least 0"),
        ("ATTEMPTS_KEPT", "0", "must be at least 1"),
        ("BULK_LEASE_S", "0.5", "must be at least 1"),
        ("BULK_LEASE_S", "3601", "must be at most 3600"),
        ("ATTEMPTS_KEPT", None, "must be an integer"),
        ("LEASE_S", "nan", "must be a number"),
        ("SWEEP_INTERVAL_S", "inf", "must be a number"),
        ("OUTPUT_CAP_BYTES", 2.7, "must be an integer"),
        ("HANDLER_MODULES", 5, "must be a comma-separated list of module names"),
        ("HANDLER_MODULES", ["ok", 3], "must be a comma-separated list of module names"),
        ("LOG_LEVEL", "LOUD", "must be DEBUG, INFO, WARNING, ERROR or CRITICAL"),
        ("LOG_FORMAT", "xml", "must be one of plain, json"),
    ],
)
def test_parse__reports_a_bad_value_naming_the_variable_and_keeps_the_default(name, value, reason):
    parsed, problems = conf.parse({name: value})
    assert len(problems) == 1
    assert problems[0].startswith(f"DETFLOW_{name}={value!r} ")
    assert reason in problems[0]
    assert getattr(parsed, name) == getattr(DetflowSettings(), name)


def test_parse__reports_every_bad_value_and_unknown_names():
    _, problems = conf.parse({"LEASE_S": "abc", "QUEUE": "ok", "REDIS_URL": "http://x", "LEASE": "3"})
    assert [p.split("=")[0].split(" ")[0] for p in problems] == [
        "DETFLOW_LEASE_S", "DETFLOW_REDIS_URL", "DETFLOW_LEASE",
    ]
    assert "DETFLOW_LEASE is not a detflow setting (known: MONGODB_URL, " in problems[2]


def test_from_environ__collects_only_the_detflow_variables_without_their_prefix():
    environ = {"DETFLOW_LEASE_S": "3", "DETFLOW_QUEUE": "q", "LEASE_S": "9", "OPENAI_API_KEY": "k"}
    assert conf.from_environ(environ) == {"LEASE_S": "3", "QUEUE": "q"}


def test_from_environ__keeps_a_misspelt_variable_so_that_the_check_reports_it():
    raw = conf.from_environ({"DETFLOW_LEASE": "3"})
    assert conf.parse(raw)[1] == [
        f"DETFLOW_LEASE is not a detflow setting (known: {', '.join(conf._PARSERS)})"
    ]


def test_check__reports_each_bad_setting_as_detflow_e001(settings):
    settings.DETFLOW = {"LEASE_S": "abc", "MONGODB_URL": "localhost", "QUEUE": "detflow"}
    errors = check_settings()
    assert [e.id for e in errors] == ["detflow.E001", "detflow.E001"]
    assert all(isinstance(e, checks.Error) for e in errors)
    assert errors[0].msg.startswith("DETFLOW_LEASE_S='abc'")
    assert errors[1].msg.startswith("DETFLOW_MONGODB_URL='localhost'")
    assert [e.id for e in checks.run_checks(tags=["detflow"])] == ["detflow.E001", "detflow.E001"]


def test_check__is_silent_for_good_settings(settings):
    settings.DETFLOW = {"LEASE_S": "2", "REDIS_URL": "redis://localhost:6379/1"}
    assert check_settings() == []


def test_get__refuses_bad_settings_and_returns_good_ones(settings):
    settings.DETFLOW = {"LEASE_S": "2", "HANDLER_MODULES": ["a.handlers", "b.handlers"]}
    assert conf.get() == DetflowSettings(LEASE_S=2.0, HANDLER_MODULES=("a.handlers", "b.handlers"))
    settings.DETFLOW = {"REDIS_URL": "http://x"}
    with pytest.raises(ImproperlyConfigured, match="DETFLOW_REDIS_URL='http://x' must start with redis://"):
        conf.get()


def test_get__sees_a_setting_replaced_or_edited_in_place(settings):
    settings.DETFLOW = {"HANDLER_MODULES": ["a.handlers"], "LEASE_S": "2"}
    first = conf.get()
    settings.DETFLOW["HANDLER_MODULES"].append("b.handlers")  # a list edited in place
    edited = conf.get()
    settings.DETFLOW["LEASE_S"] = "3"
    changed = conf.get()

    assert first.HANDLER_MODULES == ("a.handlers",)
    assert edited.HANDLER_MODULES == ("a.handlers", "b.handlers")
    assert changed.LEASE_S == 3.0 and conf.get() is changed  # unchanged: the same parse again
