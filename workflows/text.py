"""Text from handlers made storable: BSON refuses strings with lone surrogates, and ``OSError``
text about a file name that is not UTF-8 holds them (``os.fsdecode(b"\\xff")`` is ``"\\udcff"``)."""
from __future__ import annotations


def storable(text: str) -> str:
    """Return ``text`` with each lone surrogate written as its escape (``\\udcff``), which keeps
    the undecodable byte readable; other text is returned as it is."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
