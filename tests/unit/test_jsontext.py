"""The one capped JSON encoding: canonical text, or why a value has none, or how far past its cap."""
from __future__ import annotations

import math
import re
from typing import Any

import pytest

from workflows.jsontext import JSONTooLarge, NotJSON, capped, dumps, lone_surrogate


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
    ({"name": "caf\udce9"}, "the text holds a lone surrogate (\\udce9), which is not text: no store can "
                            "keep it (at name; "),
    ({"a": [1, {"b\ud800": 2}]}, "a key holds a lone surrogate (\\ud800)"),
])
def test_capped__a_value_with_no_storable_json_says_why(value: Any, reason: str) -> None:
    with pytest.raises(NotJSON, match=re.escape(reason)):
        capped(value, 1_000)


@pytest.mark.parametrize(("value", "found"), [
    ({"a": "ok", "b": ["x", "y\udfff"]}, ("b[1]", "the text holds a lone surrogate (\\udfff), which is not "
                                                 "text: no store can keep it")),
    ({"k\ud800": 1}, ("", "a key holds a lone surrogate (\\ud800), which is not text: no store can keep it")),
    ("\ud800", ("", "the text holds a lone surrogate (\\ud800), which is not text: no store can keep it")),
    ({"smile": "\U0001f600", "n": [1, None, 2.5]}, None),
])
def test_lone_surrogate__names_where_it_sits(value: Any, found: tuple[str, str] | None) -> None:
    assert lone_surrogate(value) == found
