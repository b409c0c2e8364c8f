"""The streaming JSON structure check: same verdict whatever the chunking, reasons in words."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workflows.jsonscan import KEYS_KEPT, JsonError, JsonScan


def scan(text: str, size: int) -> JsonScan:
    scanner = JsonScan()
    for start in range(0, len(text), size):
        scanner.feed(text[start:start + size])
    scanner.close()
    return scanner


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_scan__collects_top_level_keys_whatever_the_chunk_size(size: int) -> None:
    text = '{"a": 1, "b\\"q": [1, {"inner": 2}], "c": {"d": "}"}, "e\\u00e9": null}'

    scanner = scan(text, size)

    assert (scanner.root, scanner.keys, scanner.items) == ("object", ["a", 'b"q', "c", "eé"], 4)


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_scan__counts_top_level_items_of_an_array(size: int) -> None:
    scanner = scan('[1, "two, three", {"x": [4, 5]}, [], -0.5e3, true]', size)

    assert (scanner.root, scanner.keys, scanner.items) == ("array", [], 6)


def test_scan__keeps_the_first_keys_and_counts_all() -> None:
    text = json.dumps({f"k{n}": n for n in range(KEYS_KEPT + 5)})

    scanner = scan(text, 10)

    assert (len(scanner.keys), scanner.items) == (KEYS_KEPT, KEYS_KEPT + 5)


@pytest.mark.parametrize(("text", "reason"), [
    ('{"a": [1, 2', "the text ends with 2 bracket(s) still open: the file looks truncated"),
    ('{"a": "unfinished', "the text ends inside a string: the file looks truncated"),
    ('[1, 2]]', "unexpected ']' after the JSON value, near character 6"),
    ('{"a": 1]', "a ']' near character 7 closes nothing that is open"),
    ('{"a": tru}', "'tru' near character 6 is not a JSON value"),
    ('{"a": [1, {"b": "x\\"y", "c": fals}]}', "'fals' near character 29 is not a JSON value"),
    ('[[1, 2}]', "a '}' near character 6 closes nothing that is open"),
    ('[[1, 2], [3, "x]', "the text ends inside a string: the file looks truncated"),
    ('[1] x', "unexpected text after the JSON value, near character 4"),
    ('', "there is no JSON object or array in it"),
])
def test_scan__says_why_text_is_not_json(text: str, reason: str) -> None:
    for size in (1, 4, 1000):
        with pytest.raises(JsonError) as caught:
            scan(text, size)
        assert str(caught.value) == reason


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


# Keys short enough to be kept whole (KEY_CHARS counts the escaped text: up to 12 characters each).
@given(value=st.dictionaries(st.text(max_size=15), json_values) | st.lists(json_values),
       size=st.integers(1, 50))
def test_scan__accepts_every_json_document_and_finds_its_keys(value: object, size: int) -> None:
    scanner = scan(json.dumps(value), size)

    if isinstance(value, dict):
        assert scanner.keys == list(value)[:KEYS_KEPT]
    else:
        assert isinstance(value, list)
        assert scanner.items == len(value)
