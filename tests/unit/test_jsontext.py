"""The one capped JSON encoding: canonical text, or why a value has none, or how far past its cap."""
from __future__ import annotations

import math
from typing import Any

import pytest

from workflows.jsontext import JSONTooLarge, NotJSON, capped, dumps


def test_capped__returns_the_canonical_text_up_to_the_cap_in_utf8_bytes() -> None:
    value = {"b": [1, 2.5, None], "a": "é"}

    assert capped(value, 27) == dumps(value) == '{"b":[1,2.5,null],"a":"é"}'  # é is two bytes


def test_capped__past_the_cap_names_the_size_and_the_cap() -> None:
    with pytest.raises(JSONTooLarge) as raised:
        capped({"a": "é"}, 9)

    assert (raised.value.size, raised.value.cap, str(raised.value)) == (
        10, 9, "is 10 bytes of JSON; the cap is 9")


@pytest.mark.parametrize(("value", "reason"), [
    ({"a": {1, 2}}, "is not JSON-serialisable: Object of type set"),
    ([math.nan], "is not JSON-serialisable: Out of range float values"),
    ({"name": "caf\udce9"}, "a lone surrogate at character 12"),
])
def test_capped__a_value_with_no_storable_json_says_why(value: Any, reason: str) -> None:
    with pytest.raises(NotJSON, match=reason.replace("(", r"\(")):
        capped(value, 1_000)
