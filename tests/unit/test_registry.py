"""The handler registry: registering by name, finding handlers, importing handler modules."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from workflows import registry
from workflows.errors import DefinitionError, UnknownHandler


@pytest.fixture(autouse=True)
def handlers(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """An empty registry for each test; the real one comes back afterwards."""
    isolated: dict[str, object] = {}
    monkeypatch.setattr(registry, "_handlers", isolated)
    return isolated


def checksum(ctx: object) -> None:
    """Compute the checksum of a file.

    More text that describe() leaves out.
    """


def other_checksum(ctx: object) -> None:
    pass


def test_step__registers_the_function_under_its_name():
    assert registry.step("files.checksum")(checksum) is checksum
    assert registry.get_handler("files.checksum") is checksum
    assert registry.known_handlers() == ["files.checksum"]
    assert registry.describe("files.checksum") == {
        "name": "files.checksum",
        "origin": f"{__name__}.checksum",
        "summary": "Compute the checksum of a file.",
    }


@pytest.mark.parametrize(
    "name", ["", "Files.checksum", "files..checksum", "1files", "files.check sum", "files."]
)
def test_step__rejects_a_name_that_is_not_dotted_lowercase_words(name):
    with pytest.raises(DefinitionError) as caught:
        registry.step(name)
    assert caught.value.field == "handler"
    assert repr(name) in str(caught.value)


def test_step__refuses_a_second_function_under_a_taken_name_but_allows_the_same_one_again():
    registry.step("files.checksum")(checksum)
    registry.step("files.checksum")(checksum)
    with pytest.raises(DefinitionError, match=rf"already registered by {__name__}\.checksum"):
        registry.step("files.checksum")(other_checksum)
    assert registry.get_handler("files.checksum") is checksum


def test_get_handler__raises_unknown_handler_listing_the_known_ones():
    registry.step("files.store")(other_checksum)
    registry.step("files.checksum")(checksum)
    with pytest.raises(UnknownHandler) as caught:
        registry.get_handler("files.chekcsum", "steps[2].handler")
    assert (caught.value.field, caught.value.name) == ("steps[2].handler", "files.chekcsum")
    assert str(caught.value) == (
        "steps[2].handler: unknown handler 'files.chekcsum'; known handlers: files.checksum, files.store"
    )


def test_get_handler__says_when_no_handler_is_registered():
    with pytest.raises(UnknownHandler, match="none are registered"):
        registry.get_handler("files.checksum")


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on ``sys.path`` for throw-away modules, forgotten after the test."""
    monkeypatch.syspath_prepend(tmp_path)
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("unit_handlers_")]:
        del sys.modules[name]


def test_import_handler_modules__imports_each_module_so_its_handlers_register(modules):
    (modules / "unit_handlers_ok.py").write_text(
        "from workflows.registry import step\n\n@step('unit.noop')\ndef noop(ctx):\n    return None\n"
    )
    registry.import_handler_modules(("json", "unit_handlers_ok"))
    assert registry.known_handlers() == ["unit.noop"]


@pytest.mark.parametrize(
    ("module", "error"),
    [("unit_handlers_missing", "ModuleNotFoundError"), ("unit_handlers_broken", "RuntimeError: kaputt")],
)
def test_import_handler_modules__names_the_module_that_cannot_be_imported(modules, module, error):
    (modules / "unit_handlers_broken.py").write_text("raise RuntimeError('kaputt')\n")
    with pytest.raises(ImproperlyConfigured) as caught:
        registry.import_handler_modules(("json", module))
    assert str(caught.value).startswith(f"DETFLOW_HANDLER_MODULES: cannot import {module!r}: {error}")
