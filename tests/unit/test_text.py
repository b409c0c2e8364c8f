"""Handler text made storable: lone surrogates escaped, every other string left as it is."""
from __future__ import annotations

import os

import bson
import pytest

from workflows.text import storable


@pytest.mark.parametrize("text", ["", "plain ascii", "café 東京 🎉", "tab\tnew\nline"])
def test_storable__leaves_text_bson_encodes_as_it_is(text: str) -> None:
    assert storable(text) == text


@pytest.mark.parametrize(("text", "stored"), [
    (os.fsdecode(b"\xff.txt"), "\\udcff.txt"),
    ("é \udc80 and \ud83d\ude00", "é \\udc80 and \\ud83d\\ude00"),
])
def test_storable__escapes_lone_surrogates_so_bson_encodes_the_text(text: str, stored: str) -> None:
    with pytest.raises(UnicodeEncodeError):
        bson.encode({"t": text})
    assert storable(text) == stored
    assert bson.decode(bson.encode({"t": storable(text)})) == {"t": stored}
