"""The payment gateway over real HTTP (idempotency, declines, outages, refusals, the ledger check),
and the payment handlers called with a real StepContext against it."""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from detflow_site.demo import balance
from detflow_site.demo.gateway import Gateway
from detflow_site.demo.ledger import Faults
from workflows import payments, registry
from workflows.context import AttemptLog, StepContext
from workflows.errors import PermanentError, RetryableError

EID = "0123456789abcdef0123456789abcdef"
ORDER = {"order_id": "o-1", "amount_cents": 1250}


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    """A gateway that declines o-declined and refuses o-refused's refund, serving until the test ends."""
    gate = Gateway(Faults(declines={"o-declined"}, refund_refusals={"o-refused"}), seed=7)
    gate.start()
    yield gate
    gate.stop()


@pytest.fixture
def url(gateway: Gateway, settings: Any) -> str:
    """The gateway's URL, set as DETFLOW_PAYMENTS_URL for the handlers."""
    assert gateway.url is not None
    point_at(settings, gateway.url)
    return gateway.url


def point_at(settings: Any, url: str | None) -> None:
    """Set DETFLOW_PAYMENTS_URL (``None``: unset it) for this test."""
    settings.DETFLOW = {k: v for k, v in settings.DETFLOW.items() if k != "PAYMENTS_URL"}
    if url is not None:
        settings.DETFLOW = {**settings.DETFLOW, "PAYMENTS_URL": url}


def post(url: str, path: str, body: Any = None, key: str | None = "k") -> tuple[int, dict[str, Any]]:
    """POST JSON; return the status and the JSON answer, whatever the status."""
    headers = {"Content-Type": "application/json"} | ({"Idempotency-Key": key} if key else {})
    request = urllib.request.Request(url + path, data=json.dumps(body or {}).encode(), method="POST",
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def ledger(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/ledger", timeout=10) as response:
        return json.loads(response.read())


def reserve_and_charge(url: str, order: str = "o-1", amount: int = 1250) -> tuple[str, str]:
    """Reserve and charge an order (keys named after it); return the reservation and charge ids."""
    _, held = post(url, "/reservations", {"order_id": order, "amount_cents": amount}, f"{order}:reserve")
    _, charged = post(url, "/charges", {"order_id": order, "reservation_id": held["reservation_id"],
                                        "amount_cents": amount}, f"{order}:charge")
    return held["reservation_id"], charged["charge_id"]


def complete(url: str, order: str = "o-1") -> None:
    """Take an order through reserve, charge, capture and receipt."""
    _, charge = reserve_and_charge(url, order)
    assert post(url, f"/charges/{charge}/capture", {}, f"{order}:capture")[0] == 200
    assert post(url, "/receipts", {"order_id": order, "charge_id": charge}, f"{order}:receipt")[0] == 201


def failing(results: dict[str, dict[str, Any]]) -> set[str]:
    return {name for name, result in results.items() if not result["ok"]}


# -- the gateway over HTTP ------------------------------------------------------------------------


def test_gateway__the_same_key_twice_applies_once_and_answers_the_first_answer(url: str) -> None:
    first = post(url, "/reservations", ORDER, "key-1")
    again = post(url, "/reservations", ORDER, "key-1")

    assert first == again
    assert first[0] == 201 and first[1]["status"] == "held"
    state = ledger(url)
    assert len(state["reservations"]) == 1
    assert state["requests"]["reserve"] == 2 and state["effects"]["reserve"] == 1
    assert state["keys"]["key-1"]["requests"] == 2 and state["keys"]["key-1"]["effects"] == 1


def test_gateway__the_same_key_with_another_body_is_422_and_applies_nothing(url: str) -> None:
    post(url, "/reservations", ORDER, "key-1")

    status, body = post(url, "/reservations", {**ORDER, "amount_cents": 99}, "key-1")

    assert (status, body["error"]) == (422, "idempotency_key_reused")
    assert len(ledger(url)["reservations"]) == 1


def test_gateway__the_same_key_from_many_threads_at_once_applies_once(url: str) -> None:
    start = threading.Barrier(8)
    answers: list[tuple[int, dict[str, Any]]] = []

    def send() -> None:
        start.wait()
        answers.append(post(url, "/reservations", ORDER, "key-1"))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(answers) == 8 and all(answer == answers[0] for answer in answers)
    state = ledger(url)
    assert state["requests"]["reserve"] == 8 and state["effects"]["reserve"] == 1


def test_gateway__a_mutating_request_without_a_key_is_refused(url: str) -> None:
    status, body = post(url, "/reservations", ORDER, key=None)

    assert (status, body["error"]) == (400, "idempotency_key_required")
    assert ledger(url)["reservations"] == {}


def test_gateway__bad_bodies_and_unknown_ids_are_refused_with_a_reason(url: str) -> None:
    assert post(url, "/reservations", {"order_id": "o-1", "amount_cents": "12"}, "a")[0] == 400
    assert post(url, "/reservations", {"amount_cents": 12}, "b")[0] == 400
    assert post(url, "/charges/ch_nothing/refund", {}, "c") == (
        404, {"error": "not_found", "message": "no charge 'ch_nothing'"})
    assert post(url, "/nowhere", {}, "d")[0] == 404


def test_gateway__ids_are_derived_from_the_seed_and_the_key(url: str) -> None:
    with Gateway(seed=7) as other:
        assert post(url, "/reservations", ORDER, "key-1") == post(other, "/reservations", ORDER, "key-1")
    with Gateway(seed=8) as third:
        assert post(url, "/reservations", ORDER, "key-1") != post(third, "/reservations", ORDER, "key-1")


def test_gateway__a_declined_capture_is_402_and_the_charge_stays_authorized(url: str) -> None:
    _, charge = reserve_and_charge(url, "o-declined")

    status, body = post(url, f"/charges/{charge}/capture", {}, "o-declined:capture")

    assert (status, body["error"]) == (402, "declined")
    assert post(url, f"/charges/{charge}/capture", {}, "o-declined:capture")[0] == 402
    assert ledger(url)["charges"][charge]["status"] == "authorized"
    assert balance.orders(ledger(url))["o-declined"] == {
        "reservation": "held", "charge": "authorized", "receipt": None, "declined": True,
        "refund_refused": False, "state": "unbalanced"}


def test_gateway__an_outage_answers_503_to_the_next_requests_and_applies_nothing(
    gateway: Gateway, url: str
) -> None:
    gateway.outage(requests=2)

    assert post(url, "/reservations", ORDER, "key-1")[0] == 503
    assert post(url, "/reservations", ORDER, "key-1")[0] == 503
    assert post(url, "/reservations", ORDER, "key-1")[0] == 201
    state = ledger(url)
    assert state["requests"]["reserve"] == 3 and state["effects"]["reserve"] == 1
    assert state["keys"]["key-1"]["requests"] == 3


def test_gateway__an_outage_window_lasts_until_it_ends_over_post_control(url: str) -> None:
    assert post(url, "/control", {"outage": {"seconds": 600}}, key=None)[0] == 200
    for _ in range(3):
        assert post(url, "/reservations", ORDER, "key-1") == (
            503, {"error": "unavailable", "message": "the gateway is in an outage; nothing was applied"})

    post(url, "/control", {"outage": {}}, key=None)

    assert post(url, "/reservations", ORDER, "key-1")[0] == 201


def test_gateway__control_sets_faults_and_refuses_unknown_ones(url: str) -> None:
    status, faults = post(url, "/control", {"declines": ["o-2"], "fail_first": {"charge": ["o-3"]}},
                          key=None)

    assert status == 200
    assert faults["declines"] == ["o-2", "o-declined"] and faults["fail_first"] == {"charge": ["o-3"]}
    assert post(url, "/control", {"crash": True}, key=None)[0] == 400
    assert post(url, "/control", {"fail_first": {"teleport": ["o-3"]}}, key=None)[0] == 400


def test_gateway__fail_first_fails_only_the_first_request_of_that_order() -> None:
    with Gateway(Faults(fail_first={"reserve": {"o-1"}})) as url:
        assert post(url, "/reservations", ORDER, "key-1")[0] == 503
        assert post(url, "/reservations", ORDER, "key-1")[0] == 201
        assert post(url, "/reservations", {**ORDER, "order_id": "o-2"}, "key-2")[0] == 201


def test_gateway__a_lost_answer_was_applied_and_the_retry_gets_it_without_a_second_effect() -> None:
    with Gateway(Faults(lose_first={"reserve": {"o-1"}})) as url:
        with pytest.raises((ConnectionError, urllib.error.URLError)):
            post(url, "/reservations", ORDER, "key-1")
        status, body = post(url, "/reservations", ORDER, "key-1")

        assert (status, body["status"]) == (201, "held")
        state = ledger(url)
        assert state["effects"]["reserve"] == 1 and state["requests"]["reserve"] == 2


def test_gateway__a_planned_refund_refusal_is_403_every_time(url: str) -> None:
    _, charge = reserve_and_charge(url, "o-refused")

    for key in ("o-refused:refund", "o-refused:refund", "another-key"):
        status, body = post(url, f"/charges/{charge}/refund", {}, key)
        assert (status, body["error"]) == (403, "refund_refused")
    assert ledger(url)["charges"][charge]["status"] == "authorized"


def test_gateway__a_release_before_the_refund_is_409_and_after_it_is_applied(url: str) -> None:
    reservation, charge = reserve_and_charge(url)
    post(url, f"/charges/{charge}/capture", {}, "o-1:capture")

    status, body = post(url, f"/reservations/{reservation}/release", {}, "release-early")
    assert (status, body["error"]) == (409, "conflict")
    assert "refund the charge before releasing" in body["message"]

    assert post(url, f"/charges/{charge}/refund", {}, "o-1:refund")[1]["status"] == "refunded"
    assert post(url, f"/reservations/{reservation}/release", {}, "o-1:release")[1]["status"] == "released"


def test_gateway__an_action_naming_another_order_is_refused(url: str) -> None:
    _, charge = reserve_and_charge(url)

    status, body = post(url, f"/charges/{charge}/refund", {"order_id": "o-2"}, "refund")

    assert status == 400 and "belongs to order o-1" in body["message"]


# -- the ledger check -----------------------------------------------------------------------------


def test_check__a_completed_order_and_a_rolled_back_one_balance(gateway: Gateway, url: str) -> None:
    complete(url, "o-1")
    reservation, charge = reserve_and_charge(url, "o-declined")
    post(url, f"/charges/{charge}/capture", {}, "o-declined:capture")
    post(url, f"/charges/{charge}/refund", {}, "o-declined:refund")
    post(url, f"/reservations/{reservation}/release", {}, "o-declined:release")

    results = balance.check(ledger(url))

    assert failing(results) == set(), list(balance.failed(results))
    assert results == gateway.check()
    assert {order: state["state"] for order, state in gateway.orders().items()} == {
        "o-1": "completed", "o-declined": "rolled_back"}


def test_check__a_charge_left_authorized_is_unbalanced_unless_excused(url: str) -> None:
    reserve_and_charge(url, "o-refused")

    results = balance.check(ledger(url))

    assert failing(results) == {"charges_settled", "reservations_settled"}
    assert "o-refused" in results["charges_settled"]["detail"]
    assert balance.orders(ledger(url))["o-refused"]["state"] == "unbalanced"
    assert failing(balance.check(ledger(url), excused={"o-refused"})) == set()


def test_check__a_second_charge_under_a_new_key_and_an_unknown_refund_are_reported(url: str) -> None:
    complete(url, "o-1")
    _, extra = post(url, "/reservations", ORDER, "o-1:reserve:attempt-2")
    post(url, "/charges/ch_never/refund", {}, "o-1:refund")
    post(url, f"/reservations/{extra['reservation_id']}/release", {}, "o-1:release")

    results = balance.check(ledger(url))

    assert failing(results) == {"one_of_each_per_order", "no_unknown_ids"}
    assert "order o-1: 2 reservations" in results["one_of_each_per_order"]["detail"]


def test_check__a_release_asked_for_before_the_refund_is_reported(url: str) -> None:
    reservation, charge = reserve_and_charge(url)
    post(url, f"/reservations/{reservation}/release", {}, "o-1:release")
    post(url, f"/charges/{charge}/refund", {}, "o-1:refund")

    results = balance.check(ledger(url))

    assert {"no_release_after_capture", "no_out_of_order_request"} <= failing(results)


def test_faults__the_seeded_choice_is_the_same_for_the_same_seed() -> None:
    orders = [f"o-{n}" for n in range(20)]
    plan = Faults.seeded(3, orders, declines=4, refund_refusals=1, fail_first={"charge": 3})

    assert plan == Faults.seeded(3, reversed(orders), declines=4, refund_refusals=1,
                                 fail_first={"charge": 3})
    assert len(plan.declines) == 4 and plan.refund_refusals <= plan.declines
    assert len(plan.fail_first["charge"]) == 3


# -- the handlers, with a StepContext, against the live gateway -----------------------------------


def context(step: str, outputs: dict[str, Any] | None = None, data: Any = None, attempt: int = 1,
            compensate: bool = False) -> StepContext:
    key = f"{EID}:{step}:compensate" if compensate else f"{EID}:{step}"
    return StepContext(
        execution_id=EID, workflow=payments.PAYMENTS, workflow_version=1, step=step, attempt=attempt,
        idempotency_key=key, input=ORDER if data is None else data, outputs=dict(outputs or {}),
        fencing_token=1, log=AttemptLog(200, {}),
    )


def forward(data: Any = None, upto: str = "receipt") -> dict[str, Any]:
    """Run the forward handlers in the definition's order up to ``upto``; return their outputs."""
    outputs: dict[str, Any] = {}
    for spec in payments.PAYMENTS_DEFINITION["steps"]:
        handler = registry.get_handler(spec["handler"])
        outputs[spec["name"]] = handler(context(spec["name"], outputs, data))
        if spec["name"] == upto:
            break
    return outputs


def test_handlers__an_order_runs_through_the_four_steps_and_the_ledger_balances(
    gateway: Gateway, url: str
) -> None:
    outputs = forward()

    assert outputs["reserve"]["status"] == "held" and outputs["capture"]["status"] == "captured"
    assert set(outputs["receipt"]) == {"receipt_id", "charge_id"}
    assert gateway.orders()["o-1"]["state"] == "completed"
    assert failing(gateway.check()) == set()
    assert set(ledger(url)["keys"]) == {f"{EID}:{name}" for name in ("reserve", "charge", "capture",
                                                                       "receipt")}


def test_handlers__a_503_is_retryable_and_the_next_attempt_succeeds(gateway: Gateway, url: str) -> None:
    outputs = forward(upto="reserve")
    gateway.outage(requests=1)

    with pytest.raises(RetryableError, match="HTTP 503"):
        payments.charge(context("charge", outputs))
    charged = payments.charge(context("charge", outputs, attempt=2))

    assert charged["status"] == "authorized"
    assert ledger(url)["effects"]["charge"] == 1


def test_handlers__a_lost_answer_is_retryable_and_the_rerun_applies_nothing_again(
    settings: Any,
) -> None:
    with Gateway(Faults(lose_first={"charge": {"o-1"}})) as url:
        point_at(settings, url)
        outputs = forward(upto="reserve")
        with pytest.raises(RetryableError, match="cannot reach the payment gateway"):
            payments.charge(context("charge", outputs))
        outputs["charge"] = payments.charge(context("charge", outputs, attempt=2))

        assert ledger(url)["effects"]["charge"] == 1
        assert list(ledger(url)["charges"]) == [outputs["charge"]["charge_id"]]


def test_handlers__an_unreachable_gateway_is_retryable(settings: Any) -> None:
    with Gateway() as url:
        pass
    point_at(settings, url)

    with pytest.raises(RetryableError, match="cannot reach the payment gateway"):
        payments.reserve(context("reserve"))


def test_handlers__a_decline_is_permanent_and_the_rollback_balances_the_ledger(
    gateway: Gateway, url: str
) -> None:
    declined = {"order_id": "o-declined", "amount_cents": 500}
    outputs = forward(declined, upto="charge")

    with pytest.raises(PermanentError, match="declined"):
        payments.capture(context("capture", outputs, declined))
    payments.refund(context("charge", outputs, declined, compensate=True))
    payments.release(context("reserve", outputs, declined, compensate=True))

    assert gateway.orders()["o-declined"]["state"] == "rolled_back"
    assert failing(gateway.check()) == set()


def test_handlers__the_refund_sent_twice_with_the_same_key_is_applied_once(
    gateway: Gateway, url: str
) -> None:
    outputs = forward(upto="capture")

    first = payments.refund(context("charge", outputs, attempt=1, compensate=True))
    again = payments.refund(context("charge", outputs, attempt=2, compensate=True))

    assert first == again == {"charge_id": outputs["charge"]["charge_id"], "status": "refunded"}
    state = ledger(url)
    key = f"{EID}:charge:compensate"
    assert state["keys"][key]["requests"] == 2 and state["keys"][key]["effects"] == 1
    assert state["effects"]["refund"] == 1
    payments.release(context("reserve", outputs, compensate=True))
    assert failing(gateway.check()) == set()


def test_handlers__a_refund_whose_answer_is_lost_is_retried_and_applied_once(
    settings: Any,
) -> None:
    with Gateway(Faults(lose_first={"refund": {"o-1"}})) as url:
        point_at(settings, url)
        outputs = forward(upto="capture")
        with pytest.raises(RetryableError):
            payments.refund(context("charge", outputs, compensate=True))
        assert payments.refund(context("charge", outputs, attempt=2, compensate=True))["status"] == "refunded"
        payments.release(context("reserve", outputs, compensate=True))

        state = ledger(url)
        assert state["effects"]["refund"] == 1 and state["requests"]["refund"] == 2
        assert failing(balance.check(state)) == set()
        assert balance.orders(state)["o-1"]["state"] == "rolled_back"


def test_handlers__a_refused_refund_is_permanent_and_says_to_refund_by_hand(url: str) -> None:
    refused = {"order_id": "o-refused", "amount_cents": 500}
    outputs = forward(refused, upto="charge")

    with pytest.raises(PermanentError, match=r"refused to refund charge .* refund it by hand"):
        payments.refund(context("charge", outputs, refused, compensate=True))
    assert balance.orders(ledger(url))["o-refused"]["refund_refused"] is True


@pytest.mark.parametrize(("data", "field"), [
    ("an order", "the input must be an object"),
    ({"amount_cents": 5}, "input.order_id"),
    ({"order_id": "", "amount_cents": 5}, "input.order_id"),
    ({"order_id": "o\n1", "amount_cents": 5}, "input.order_id"),
    ({"order_id": "o-1"}, "input.amount_cents"),
    ({"order_id": "o-1", "amount_cents": 0}, "input.amount_cents"),
    ({"order_id": "o-1", "amount_cents": 1.5}, "input.amount_cents"),
    ({"order_id": "o-1", "amount_cents": True}, "input.amount_cents"),
])
def test_handlers__bad_input_is_a_permanent_error_naming_the_field(url: str, data: Any, field: str) -> None:
    with pytest.raises(PermanentError, match=field):
        payments.reserve(context("reserve", data=data))
    assert ledger(url)["requests"]["reserve"] == 0


def test_handlers__a_missing_earlier_output_is_a_permanent_error(url: str) -> None:
    with pytest.raises(PermanentError, match="needs 'charge_id' in the output of an earlier step named"):
        payments.refund(context("charge", {}, compensate=True))


def test_handlers__the_gateway_url_comes_from_the_setting_only(settings: Any) -> None:
    point_at(settings, None)
    with pytest.raises(PermanentError, match="DETFLOW_PAYMENTS_URL is not set"):
        payments.reserve(context("reserve", data={**ORDER, "url": "http://127.0.0.1:1"}))
    point_at(settings, "file:///etc/passwd")
    with pytest.raises(ImproperlyConfigured, match="DETFLOW_PAYMENTS_URL='file:///etc/passwd' must start"):
        payments.gateway_url()


def test_definition__names_registered_handlers_and_a_compensation_for_reserve_and_charge() -> None:
    steps = payments.PAYMENTS_DEFINITION["steps"]

    assert [s["name"] for s in steps] == ["reserve", "charge", "capture", "receipt"]
    assert {s["name"]: s.get("compensate", {}).get("handler") for s in steps} == {
        "reserve": "payments.release", "charge": "payments.refund", "capture": None, "receipt": None}
    for name in [s["handler"] for s in steps] + ["payments.release", "payments.refund"]:
        registry.get_handler(name)
    assert payments.PAYMENTS_DEFINITION["on_failure"] == "compensate"
