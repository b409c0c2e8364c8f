"""The settings that bound the model's spending: regenerate rate and interval, calls per hour."""
from __future__ import annotations

import pytest

from detflow_site import conf
from detflow_site.checks import check_settings
from detflow_site.conf import DetflowSettings


def test_parse__the_model_spending_defaults():
    defaults = DetflowSettings()
    assert (defaults.INSIGHTS_REGENERATE_RATE, defaults.INSIGHTS_REGENERATE_INTERVAL_S,
            defaults.INSIGHTS_MODEL_CALLS_PER_HOUR) == ("10/hour", 300, 60)


def test_parse__reads_the_model_spending_settings_from_strings():
    parsed, problems = conf.parse({"INSIGHTS_REGENERATE_RATE": " 2 / minute ",
                                   "INSIGHTS_REGENERATE_INTERVAL_S": "1",
                                   "INSIGHTS_MODEL_CALLS_PER_HOUR": "0"})
    assert problems == []
    assert parsed == DetflowSettings(INSIGHTS_REGENERATE_RATE="2/minute", INSIGHTS_REGENERATE_INTERVAL_S=1,
                                     INSIGHTS_MODEL_CALLS_PER_HOUR=0)


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("INSIGHTS_REGENERATE_RATE", "10", "must be a number of requests per second, minute, hour or day"),
        ("INSIGHTS_REGENERATE_RATE", "0/hour", "must be a number of requests per"),
        ("INSIGHTS_REGENERATE_RATE", "10/fortnight", "must be a number of requests per"),
        ("INSIGHTS_REGENERATE_INTERVAL_S", "0", "must be at least 1"),
        ("INSIGHTS_REGENERATE_INTERVAL_S", "2.5", "must be an integer"),
        ("INSIGHTS_REGENERATE_INTERVAL_S", "86401", "must be at most 86400"),
        ("INSIGHTS_MODEL_CALLS_PER_HOUR", "-1", "must be at least 0"),
        ("INSIGHTS_MODEL_CALLS_PER_HOUR", "lots", "must be an integer"),
        ("INSIGHTS_MODEL_CALLS_PER_HOUR", "inf", "must be an integer"),
        ("INSIGHTS_MODEL_CALLS_PER_HOUR", True, "must be an integer"),
    ],
)
def test_parse__a_bad_spending_setting_is_reported_and_keeps_the_default(name, value, reason):
    parsed, problems = conf.parse({name: value})
    assert len(problems) == 1 and problems[0].startswith(f"DETFLOW_{name}={value!r} ")
    assert reason in problems[0]
    assert getattr(parsed, name) == getattr(DetflowSettings(), name)


def test_check__a_bad_spending_setting_is_detflow_e001(settings):
    settings.DETFLOW = {"INSIGHTS_MODEL_CALLS_PER_HOUR": "-5", "INSIGHTS_REGENERATE_RATE": "often"}
    errors = check_settings()
    assert [e.id for e in errors] == ["detflow.E001", "detflow.E001"]
    assert errors[0].msg.startswith("DETFLOW_INSIGHTS_MODEL_CALLS_PER_HOUR='-5' must be at least 0")
    assert errors[1].msg.startswith("DETFLOW_INSIGHTS_REGENERATE_RATE='often' must be a number")
