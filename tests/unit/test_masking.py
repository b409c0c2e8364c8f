"""Secret inputs masked by path, scrubbed from text, kept through an edit that leaves them masked."""
from __future__ import annotations

import json

import pytest

from workflows import masking
from workflows.masking import MASK

PATHS = ["card.number", "cvv", "items.token"]
VALUE = {"card": {"number": "4111111111114242", "holder": "Ada"}, "cvv": 825,
         "items": [{"token": "tok-aaaa", "n": 1}, {"n": 2}], "other": "4111"}


def test_mask__replaces_each_path_list_items_included_and_leaves_the_rest() -> None:
    assert masking.mask(VALUE, PATHS) == {
        "card": {"number": MASK, "holder": "Ada"}, "cvv": MASK,
        "items": [{"token": MASK, "n": 1}, {"n": 2}], "other": "4111"}
    assert VALUE["cvv"] == 825, "the value itself is not changed"


def test_mask__a_path_that_is_absent_or_meets_a_scalar_changes_nothing() -> None:
    assert masking.mask({"card": "x"}, ["card.number", "nothing.here"]) == {"card": "x"}
    assert masking.mask(None, PATHS) is None


def test_values__are_the_texts_secrets_appear_as_long_enough_to_scrub() -> None:
    assert masking.values(VALUE, PATHS) == {"4111111111114242", "tok-aaaa"}  # 825: too short
    assert masking.values({"cvv": 12345}, ["cvv"]) == {"12345"}


def test_scrub__replaces_every_occurrence_longest_first() -> None:
    assert masking.scrub("card 4111111111114242 and 411111", {"411111", "4111111111114242"}) == (
        f"card {MASK} and {MASK}")


def test_unmask__a_secret_left_masked_keeps_the_old_value_a_changed_one_is_taken() -> None:
    old = {"card": {"number": "4111", "holder": "Ada"}, "cvv": "825"}
    new = {"card": {"number": MASK, "holder": "Bob"}, "cvv": "999"}

    assert masking.unmask(new, old, PATHS) == {"card": {"number": "4111", "holder": "Bob"}, "cvv": "999"}


@pytest.mark.parametrize(("change", "shown"), [
    ({"path": "/cvv", "op": "replace", "old": "825", "new": "999"},
     {"path": "/cvv", "op": "replace", "old": MASK, "new": MASK}),
    ({"path": "/card", "op": "replace", "old": {"number": "1"}, "new": {"number": "2", "h": 1}},
     {"path": "/card", "op": "replace", "old": {"number": MASK}, "new": {"number": MASK, "h": 1}}),
    ({"path": "/card/holder", "op": "add", "new": "Ada"},
     {"path": "/card/holder", "op": "add", "new": "Ada"}),
])
def test_diff__masks_old_and_new_at_or_inside_a_secret(change: dict, shown: dict) -> None:
    assert masking.diff([change], PATHS) == [shown]


def test_execution__masks_inputs_and_diffs_and_scrubs_every_text_leaving_the_document_alone() -> None:
    doc = {"_id": "e1", "definition": {"secret_inputs": ["cvv"]}, "input_json": json.dumps({"cvv": "8251"}),
           "steps": [{"input_json": json.dumps({"cvv": "77777"}),
                      "attempts": [{"message": "cvv 8251 bad", "logs": [{"message": "try 77777"}]}]}],
           "events": [{"type": "retried", "input_diff_json": json.dumps(
               [{"path": "/cvv", "op": "replace", "old": "8251", "new": "77777"}])}]}

    shown = masking.execution(doc)

    assert "8251" not in json.dumps(shown) and "77777" not in json.dumps(shown)
    assert json.loads(shown["input_json"]) == {"cvv": MASK}
    assert shown["steps"][0]["attempts"][0]["logs"][0]["message"] == f"try {MASK}"
    assert json.loads(doc["input_json"]) == {"cvv": "8251"}
    assert masking.execution({"definition": {}, "input_json": "1"}) == {"definition": {}, "input_json": "1"}
