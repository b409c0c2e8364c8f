"""CSV detection: a delimiter that splits the first rows evenly, read by csv.reader in a bounded prefix."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from workflows import filetypes


def sniff(tmp_path: Path, text: str) -> dict[str, Any] | None:
    path = tmp_path / "file.txt"
    path.write_text(text, encoding="utf-8", newline="")
    return filetypes.sniff_csv(path, "utf-8")


@pytest.mark.parametrize(("text", "delimiter", "columns"), [
    ("id,name\n1,a\n2,b\n", ",", ["id", "name"]),
    ("id;name;city\n1;a;x\n2;b;y\n", ";", ["id", "name", "city"]),
    ("id\tname\n1\ta\n", "\t", ["id", "name"]),
    ("id|name\n1|a\n", "|", ["id", "name"]),
    ('"last, first",age\n"Doe, Jane",41\n"Roe, Ric",7\n', ",", ["last, first", "age"]),
    ('note,n\n"two\nlines",1\n"say ""hi""",2\n', ",", ["note", "n"]),
    ("id, name, city\n1, a, x\n", ",", ["id", "name", "city"]),
    ("a;b,c;d\n1;2,3;4\n", ";", ["a", "b,c", "d"]),  # the delimiter that makes more fields
    ("a,b;c\n1,2;3\n", ",", ["a", "b;c"]),  # a tie: the first of , tab ; |
    ("id,name\r\n1,a\r\n\r\n2,b\r\n", ",", ["id", "name"]),
])
def test_sniff_csv__finds_the_delimiter_and_the_header(
    tmp_path: Path, text: str, delimiter: str, columns: list[str]
) -> None:
    assert sniff(tmp_path, text) == {"delimiter": delimiter, "columns": columns, "column_count": len(columns)}


@pytest.mark.parametrize("text", [
    "one line, with a comma\n",
    "Hello, world\nno comma here\n",
    "a,b\n1,2,3\n",
    "plain\ntext\n",
    ',"a' * 1000,
])
def test_sniff_csv__text_that_is_not_csv_is_none(tmp_path: Path, text: str) -> None:
    assert sniff(tmp_path, text) is None


def test_sniff_csv__reads_only_a_bounded_prefix(tmp_path: Path) -> None:
    rows = "1,a\n" * (filetypes.SAMPLE // 4)
    text = "id,name\n" + rows + "x,y,z,w\n" * 10  # rows of another width after the sample

    assert sniff(tmp_path, text) == {"delimiter": ",", "columns": ["id", "name"], "column_count": 2}


def test_sniff_csv__compares_the_first_rows_only(tmp_path: Path) -> None:
    text = "id,name\n" + "1,a\n" * (filetypes.CSV_ROWS - 1) + "1,2,3\n"

    assert sniff(tmp_path, text) == {"delimiter": ",", "columns": ["id", "name"], "column_count": 2}
    assert sniff(tmp_path, "id,name\n" + "1,a\n" * (filetypes.CSV_ROWS - 2) + "1,2,3\n") is None
