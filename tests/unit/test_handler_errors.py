"""The errors a handler raises take arguments as any exception does, and keep their kind."""
from __future__ import annotations

import pytest

from detflow_site.errors import DetflowError
from workflows.errors import HandlerError, OutputTooLarge, PermanentError, RetryableError


@pytest.mark.parametrize("kind", [PermanentError, RetryableError])
def test_handler_errors__take_any_arguments_like_an_exception(kind: type[HandlerError]) -> None:
    many = kind("card declined", 402)
    one = kind("card declined")
    none = kind()

    assert (many.args, str(many)) == (("card declined", 402), "('card declined', 402)")
    assert (one.args, str(one)) == (("card declined",), "card declined")
    assert (none.args, str(none)) == ((), "")
    assert isinstance(many, DetflowError) and isinstance(many, kind)


def test_handler_errors__their_own_subclasses_keep_their_fields() -> None:
    error = OutputTooLarge(300, 256)

    assert (error.size, error.cap) == (300, 256)
    assert str(error) == "output is 300 bytes of JSON; the cap is 256 bytes"
    assert isinstance(error, PermanentError)
