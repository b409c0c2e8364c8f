"""The README's rules for handler authors state the values the code holds (names, defaults, limits,
worker threads)."""
from __future__ import annotations

import re
from pathlib import Path

from detflow_site.conf import DetflowSettings
from executions import operations
from executions.management.commands.runworker import Command as RunWorker
from workflows import registry, spec

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def table() -> dict[str, tuple[str, str]]:
    """Return the handler-defaults table: ``{field: (default, allowed)}``."""
    block = README.split("<!-- handler-defaults -->\n", 1)[1].split("\n\n", 1)[0]
    rows = [line.strip("|").split("|") for line in block.splitlines()[2:]]
    return {cells[0].strip().strip("`"): (cells[1].strip().strip("`"), cells[2].strip()) for cells in rows}


def number(text: str) -> float:
    return float(text.replace(",", ""))


def test_readme__the_retry_and_timeout_defaults_and_bounds_are_the_code_s() -> None:
    rows, policy = table(), spec.RetryPolicy()

    for name in ("max_attempts", "initial_delay_s", "multiplier", "max_delay_s", "jitter"):
        assert number(rows[f"retry.{name}"][0]) == getattr(policy, name), name
    assert number(rows["timeout_s"][0]) == spec.DEFAULT_TIMEOUT_S
    assert rows["retry.max_attempts"][1] == f"1 to {spec.MAX_ATTEMPTS}"
    assert rows["retry.initial_delay_s"][1].startswith(f"0 to {spec.MAX_DELAY_S:g} ")
    assert rows["retry.max_delay_s"][1].startswith(f"0 to {spec.MAX_DELAY_S:g} ")
    assert rows["retry.multiplier"][1] == f"1 to {spec.MAX_MULTIPLIER:g}"
    assert rows["timeout_s"][1].startswith(f"over 0, up to {spec.MAX_TIMEOUT_S:g} ")


def test_readme__the_input_and_output_caps_are_the_code_s() -> None:
    rows = table()

    assert rows["input of a start"][1].startswith(f"{operations.INPUT_CAP_BYTES} bytes")
    assert rows["output of a step"][1].startswith(f"{DetflowSettings.OUTPUT_CAP_BYTES} bytes")


def test_readme__the_handler_name_rule_and_the_worker_s_threads_are_the_code_s() -> None:
    import argparse

    assert f"`{registry.NAME_RE.pattern}`" in README
    parser = argparse.ArgumentParser()
    RunWorker().add_arguments(parser)  # type: ignore[arg-type]
    defaults = parser.parse_args([])
    assert f"starts {defaults.processes} processes of {defaults.threads} threads by default" in \
        re.sub(r"\s+", " ", README)
