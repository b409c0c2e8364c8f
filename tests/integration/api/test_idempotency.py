"""``Idempotency-Key``: the same key and body answer the first execution; another body is 409."""
from __future__ import annotations

import threading
from typing import Any

import pytest

from executions import store
from tests.integration.api.conftest import assert_error

API = "/api/v1/"


def start(client: Any, key: str | None, **body: Any) -> Any:
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return client.post(API + "executions/", body, format="json", **headers)


@pytest.fixture
def pay(define: Any) -> None:
    define("pay", [{"handler": "test.echo"}])
    define("pay", [{"handler": "test.echo"}, {"handler": "test.echo"}])
    define("mail", [{"handler": "test.echo"}])


def test_idempotency__same_key_and_body_answer_200_with_the_first_execution(
    operator: Any, pay: None
) -> None:
    first = start(operator, "order-42", workflow="pay", input={"a": 1, "b": [1, 2]})
    again = start(operator, "order-42", workflow="pay", input={"b": [1, 2], "a": 1})
    pinned = start(operator, "order-42", workflow="pay", version=2, input={"a": 1, "b": [1, 2]})

    assert (first.status_code, again.status_code, pinned.status_code) == (201, 200, 200)
    assert first.json()["id"] == again.json()["id"] == pinned.json()["id"]
    assert first.json()["idempotency_key"] == "order-42"
    assert store.collection().count_documents({}) == 1


@pytest.mark.parametrize(
    "other",
    [
        {"workflow": "pay", "input": {"a": 2, "b": [1, 2]}},
        {"workflow": "pay", "input": {"a": 1, "b": [2, 1]}},
        {"workflow": "pay", "input": {"a": True, "b": [1, 2]}},
        {"workflow": "pay", "input": {"a": 1.0, "b": [1, 2]}},
        {"workflow": "pay"},
        {"workflow": "pay", "version": 1, "input": {"a": 1, "b": [1, 2]}},
    ],
)
def test_idempotency__same_key_with_another_body_is_409_and_changes_nothing(
    operator: Any, pay: None, other: dict[str, Any]
) -> None:
    first = start(operator, "order-42", workflow="pay", input={"a": 1, "b": [1, 2]})

    response = start(operator, "order-42", **other)

    body = assert_error(response, 409, "idempotency_conflict")
    assert first.json()["id"] in body["detail"]
    assert store.collection().count_documents({}) == 1


def test_idempotency__a_key_is_scoped_to_its_workflow(operator: Any, pay: None) -> None:
    paid = start(operator, "order-42", workflow="pay", input={"a": 1})
    mailed = start(operator, "order-42", workflow="mail", input={"a": 1})

    assert (paid.status_code, mailed.status_code) == (201, 201)
    assert paid.json()["id"] != mailed.json()["id"]


def test_idempotency__without_a_key_each_request_starts_an_execution(operator: Any, pay: None) -> None:
    ids = {start(operator, None, workflow="pay", input={"a": 1}).json()["id"] for _ in range(3)}

    assert len(ids) == 3


@pytest.mark.parametrize("key", ["", " x", "x" * 201, "ключ", "a\tb"])
def test_idempotency__a_malformed_key_is_400(operator: Any, pay: None, key: str) -> None:
    response = operator.post(API + "executions/", {"workflow": "pay"}, format="json",
                             headers={"Idempotency-Key": key})

    assert_error(response, 400, "invalid", "Idempotency-Key")
    assert store.collection().count_documents({}) == 0


@pytest.mark.django_db(transaction=True)
def test_idempotency__ten_concurrent_repeats_create_one_execution(client_as: Any, pay: None) -> None:
    clients = [client_as("operator") for _ in range(10)]
    barrier = threading.Barrier(len(clients))
    answers: list[Any] = [None] * len(clients)

    def repeat(n: int) -> None:
        barrier.wait()
        answers[n] = start(clients[n], "order-7", workflow="pay", input={"n": 7})

    threads = [threading.Thread(target=repeat, args=(n,)) for n in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(a.status_code for a in answers) == [200] * 9 + [201]
    assert len({a.json()["id"] for a in answers}) == 1
    assert store.collection().count_documents({}) == 1
