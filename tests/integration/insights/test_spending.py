"""The model is spent deliberately: reads never ask it, regenerations are throttled, the hour's calls
are budgeted, and an older post-mortem never replaces a newer one."""
from __future__ import annotations

import html
import re
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from executions import operations, store
from insights import service
from tests.conftest import wait_for, wait_terminal
from tests.integration.insights.support import FakeModel, run_to_end

API = "/api/v1/executions/{}/insight/"
EXECUTIONS = "/admin/executions/execution/"
INSIGHTS = "/admin/insights/insight/"
ANSWER = {"summary": "the model wrote this", "root_cause": "r", "evidence": [], "impact": "i",
          "suggested_actions": [], "confidence": "low"}
BUDGET_SPENT = "the model budget of 3 calls per hour is spent; the rules wrote this"


@pytest.fixture
def api(db: None) -> Callable[[str, str], APIClient]:
    """Return a function that makes an API client signed in as ``username`` with ``role``."""
    from executions import roles

    def make(username: str, role: str) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {roles.grant(username, role)}")
        return client

    return make


@pytest.fixture
def console(db: None) -> Client:
    """A browser session of a viewer in the admin console."""
    from django.contrib.auth import get_user_model

    from executions import roles

    roles.grant("watcher", roles.VIEWERS)
    client = Client()
    client.force_login(get_user_model().objects.get(username="watcher"))
    return client


def failures(define: Callable[..., Any], count: int, name: str = "spent") -> list[str]:
    """Return the ids of ``count`` executions that failed at their first step (run here)."""
    define(name, [{"handler": "test.permanent"}, {"handler": "test.echo"}])
    return [run_to_end(operations.start(name, {"n": n})[0]["_id"])["_id"] for n in range(count)]


def pages(client: Client, url: str) -> list[str]:
    """Return the HTML of a list page and of every page its "next" links lead to."""
    seen = []
    while url:
        response = client.get(url)
        assert response.status_code == 200, (url, response.content[:1000])
        seen.append(response.content.decode())
        link = re.search(r'<a href="([^"]+)" id="next-page"', seen[-1])
        url = url.split("?")[0] + html.unescape(link[1]) if link else ""
    return seen


def outside_the_hour_boundary() -> None:
    """Wait past the next clock hour if it is near: the budget is counted per clock hour."""
    left = 3600 - time.time() % 3600
    if left < 30:
        time.sleep(left + 0.1)


def test_reads__viewers_paging_the_admin_and_the_api_over_60_failed_executions_never_ask_the_model(
    define: Callable[..., Any], model: FakeModel, console: Client, api: Callable[[str, str], APIClient]
) -> None:
    from executions.roles import OPERATORS, VIEWERS

    model.answer = ANSWER
    ids = failures(define, 60)  # more than a page of each list
    stale = ids[:10]  # each has a post-mortem of its first failure; a retry failed again since
    for execution_id in stale:
        service.shown(execution_id)
        operations.retry(execution_id, by="op", reason="once more")
        run_to_end(execution_id)
    viewer = api("viewer", VIEWERS)

    listed = pages(console, EXECUTIONS + "?status=FAILED")
    for execution_id in ids:
        page = console.get(EXECUTIONS + f"{execution_id}/")
        assert page.status_code == 200 and 'id="postmortem-source">rules' in page.content.decode()
    insight_pages = pages(console, INSIGHTS)
    answers = [viewer.get(API.format(execution_id)) for execution_id in ids]

    assert len(listed) == 2 and all(execution_id in "".join(listed) for execution_id in ids)
    assert len(insight_pages) == 2 and all(execution_id in "".join(insight_pages) for execution_id in ids)
    assert [a.status_code for a in answers] == [200] * 60
    assert model.requests == []
    for execution_id, answer in zip(ids, answers, strict=True):
        body = answer.json()
        assert body["source"] == "rules" and body["current"] is True
        assert body["execution_version"] == store.load(execution_id)["version"]
        assert body["fallback"] == {"writer": "llm:test-model", "reason": service.ON_READ}
    # The model was there all along: an operator's regenerate asks it.
    regenerated = api("op", OPERATORS).post(API.format(ids[0]), {}, format="json")
    assert regenerated.status_code == 200 and regenerated.json()["source"] == "llm:test-model"
    assert len(model.requests) == 1


def test_reads__the_automatic_writer_replaces_a_read_s_rules_post_mortem_with_the_model_s(
    define: Callable[..., Any], model: FakeModel
) -> None:
    model.answer = ANSWER
    [execution_id] = failures(define, 1)
    read, _ = service.shown(execution_id)  # a viewer came first, before the insights actor ran

    done = service.on_finished(execution_id)
    again = service.on_finished(execution_id)

    assert read["source"] == "rules" and read["fallback"]["reason"] == service.ON_READ
    assert (done, again) == ("written", "current")
    assert service.find(execution_id)["source"] == "llm:test-model"
    assert len(model.requests) == 1


def test_one_model_call__a_read_and_a_second_writer_while_the_model_writes_ask_it_nothing(
    define: Callable[..., Any], model: FakeModel, api: Callable[[str, str], APIClient]
) -> None:
    from executions.roles import VIEWERS

    model.answer, model.behaviour, model.delay_s = ANSWER, "slow", 30.0
    [execution_id] = failures(define, 1)
    done: dict[str, str] = {}
    first = threading.Thread(target=lambda: done.update(first=service.on_finished(execution_id)))
    first.start()
    try:
        wait_for(lambda: len(model.requests) == 1, what="the automatic writer asking the model")
        read = api("viewer", VIEWERS).get(API.format(execution_id)).json()  # read at once
        second = service.on_finished(execution_id)  # the same finish's message, delivered twice
    finally:
        model.release.set()
        first.join(timeout=30)
    later = service.on_finished(execution_id)

    assert read["source"] == "rules" and read["fallback"]["reason"] == service.WHILE_WRITING
    assert (done["first"], second, later) == ("written", "being written", "current")
    assert service.find(execution_id)["source"] == "llm:test-model"
    assert len(model.requests) == 1


def test_one_model_call__reading_at_once_after_the_failure_while_the_worker_writes(
    worker: Any, define: Callable[..., Any], model: FakeModel, api: Callable[[str, str], APIClient],
    settings: Any,
) -> None:
    from executions.roles import VIEWERS

    settings.DETFLOW = {**settings.DETFLOW, "INSIGHTS_AUTO": "true"}
    model.answer, model.behaviour, model.delay_s = ANSWER, "slow", 30.0
    define("read-at-once", [{"handler": "test.permanent"}])
    execution_id = operations.start("read-at-once", {})[0]["_id"]
    wait_terminal(execution_id)
    viewer = api("viewer", VIEWERS)
    try:
        at_once = viewer.get(API.format(execution_id)).json()
        wait_for(lambda: len(model.requests) == 1, what="the insights actor asking the model")
        meanwhile = viewer.get(API.format(execution_id)).json()
    finally:
        model.release.set()
    written = wait_for(lambda: (found := service.find(execution_id)) and found["source"] != "rules" and found,
                       what="the model's post-mortem")

    assert at_once["source"] == meanwhile["source"] == "rules"
    assert written["source"] == "llm:test-model"
    assert viewer.get(API.format(execution_id)).json()["summary"] == ANSWER["summary"]
    assert len(model.requests) == 1


def test_regenerate__one_operator_is_stopped_at_the_rate_with_429_and_retry_after(
    define: Callable[..., Any], model: FakeModel, api: Callable[[str, str], APIClient], settings: Any
) -> None:
    from executions.roles import OPERATORS

    settings.DETFLOW = {**settings.DETFLOW, "INSIGHTS_REGENERATE_RATE": "3/hour"}
    model.answer = ANSWER
    ids = failures(define, 11)
    alice, bob = api("alice", OPERATORS), api("bob", OPERATORS)

    answers = [alice.post(API.format(execution_id), {}, format="json") for execution_id in ids[:10]]
    other = bob.post(API.format(ids[10]), {}, format="json")

    assert [a.status_code for a in answers] == [200] * 3 + [429] * 7
    for refused in answers[3:]:
        body = refused.json()
        assert body["code"] == "throttled" and "throttled" in body["detail"].lower()
        assert body["fields"] == {}
        assert 0 < int(refused["Retry-After"]) <= 3600
    assert other.status_code == 200  # the rate is per user
    assert len(model.requests) == 4
    assert service.collection().count_documents({}) == 4  # a refused request writes nothing


def test_regenerate__an_execution_is_regenerated_once_per_interval_whoever_asks(
    define: Callable[..., Any], model: FakeModel, api: Callable[[str, str], APIClient], settings: Any
) -> None:
    from django.core.cache import cache

    from executions.roles import OPERATORS

    settings.DETFLOW = {**settings.DETFLOW, "INSIGHTS_REGENERATE_INTERVAL_S": "3"}
    model.answer = ANSWER
    first, second = failures(define, 2)
    alice, bob = api("alice", OPERATORS), api("bob", OPERATORS)

    answers = [client.post(API.format(execution_id), {}, format="json")
               for client, execution_id in [(alice, first), (bob, first), (alice, first), (bob, second)]]

    assert [a.status_code for a in answers] == [200, 429, 429, 200]
    assert answers[1].json()["code"] == "throttled"
    assert 0 < int(answers[1]["Retry-After"]) <= 3
    assert len(model.requests) == 2
    wait_for(lambda: not cache.has_key(f"throttle_insights-regenerate-execution_{first}"),
             timeout=10, what="the execution's regenerate slot to expire")
    assert bob.post(API.format(first), {}, format="json").status_code == 200
    assert len(model.requests) == 3


def test_regenerate__operators_asking_at_once_take_an_execution_s_slot_once(redis_client: Any) -> None:
    from detflow_site.api.throttles import ExecutionRegenerateThrottle

    view = SimpleNamespace(kwargs={"execution_id": "contested"})
    start = threading.Barrier(8)
    allowed: list[bool] = []

    def ask() -> None:
        start.wait()
        allowed.append(ExecutionRegenerateThrottle().allow_request(None, view))  # type: ignore[arg-type]

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(allowed) == [False] * 7 + [True]


def test_regenerate__the_schema_documents_the_429(db: None) -> None:
    schema = APIClient().get("/api/v1/schema/", HTTP_ACCEPT="application/json").json()

    post = schema["paths"]["/api/v1/executions/{execution_id}/insight/"]["post"]
    assert "429" in post["responses"] and "DETFLOW_INSIGHTS_REGENERATE_RATE" in post["responses"]["429"][
        "description"]


@pytest.mark.slow
def test_budget__three_calls_an_hour_then_the_rules_write_and_say_why(
    worker: Any, define: Callable[..., Any], model: FakeModel, api: Callable[[str, str], APIClient],
    settings: Any, redis_client: Any,
) -> None:
    from executions.roles import OPERATORS

    outside_the_hour_boundary()
    settings.DETFLOW = {**settings.DETFLOW, "INSIGHTS_AUTO": "true", "INSIGHTS_MODEL_CALLS_PER_HOUR": "3"}
    model.answer = ANSWER
    define("budgeted", [{"handler": "test.permanent"}, {"handler": "test.echo"}])
    operator = api("op", OPERATORS)

    automatic = [operations.start("budgeted", {"n": n})[0]["_id"] for n in range(2)]
    wait_terminal(*automatic)
    wait_for(lambda: service.collection().count_documents({}) == 2, what="two automatic post-mortems")
    by_the_actor = [service.find(execution_id) for execution_id in automatic]
    regenerated = [operator.post(API.format(execution_id), {}, format="json") for execution_id in automatic]
    late = operations.start("budgeted", {"n": 2})[0]["_id"]
    wait_terminal(late)
    last = wait_for(lambda: service.find(late), what="the third automatic post-mortem")

    assert len(model.requests) == 3
    assert [record["source"] for record in by_the_actor] == ["llm:test-model"] * 2
    assert [answer.status_code for answer in regenerated] == [200, 200]
    assert [answer.json()["source"] for answer in regenerated] == ["llm:test-model", "rules"]
    for record in (regenerated[1].json(), last):
        assert record["source"] == "rules"
        assert record["fallback"] == {"writer": "llm:test-model", "reason": BUDGET_SPENT}
    assert "FAILED at step 's1'" in last["summary"]  # the rules wrote a whole post-mortem
    key = service.BUDGET_KEY.format(window=int(time.time() // 3600))
    assert int(redis_client.get(key)) == 5 and 0 < redis_client.ttl(key) <= service.BUDGET_TTL_S


def test_budget__zero_never_asks_the_model(
    define: Callable[..., Any], model: FakeModel, api: Callable[[str, str], APIClient], settings: Any
) -> None:
    from executions.roles import OPERATORS

    settings.DETFLOW = {**settings.DETFLOW, "INSIGHTS_MODEL_CALLS_PER_HOUR": "0"}
    model.answer = ANSWER
    [execution_id] = failures(define, 1)

    answer = api("op", OPERATORS).post(API.format(execution_id), {}, format="json")
    automatic = service.on_finished(execution_id)

    assert answer.status_code == 200 and answer.json()["source"] == "rules"
    assert answer.json()["fallback"]["reason"].startswith("DETFLOW_INSIGHTS_MODEL_CALLS_PER_HOUR is 0")
    assert automatic == "current"  # a regenerate's rules post-mortem is not written again
    assert model.requests == []


def test_write__an_older_post_mortem_never_replaces_a_newer_one(define: Callable[..., Any]) -> None:
    [execution_id] = failures(define, 1)
    older = store.load(execution_id)
    operations.retry(execution_id, by="op", reason="once more")
    newer = run_to_end(execution_id)
    written = service.postmortem(execution_id)

    kept = service.write(older)

    assert older["version"] < newer["version"]
    assert kept == written and kept["execution_version"] == newer["version"]
    assert service.find(execution_id)["execution_version"] == newer["version"]
    assert service.collection().count_documents({}) == 1


def test_write__a_slow_model_s_answer_for_an_earlier_finish_loses_to_the_later_one(
    define: Callable[..., Any], model: FakeModel, settings: Any
) -> None:
    # The model answers once the later post-mortem is shown (released below), not after a time.
    settings.DETFLOW = {**settings.DETFLOW, "INSIGHTS_TIMEOUT_S": "30"}
    model.answer, model.behaviour, model.delay_s = ANSWER, "slow", 20
    [execution_id] = failures(define, 1)
    first = store.load(execution_id)
    results: list[dict[str, Any]] = []
    slow = threading.Thread(target=lambda: results.append(service.postmortem(execution_id, regenerate=True)))
    slow.start()
    wait_for(lambda: model.requests, what="the model to be asked")

    operations.retry(execution_id, by="op", reason="once more")
    later = run_to_end(execution_id)
    shown, current = service.shown(execution_id)
    model.release.set()
    slow.join(timeout=10)

    assert not slow.is_alive() and first["version"] < later["version"]
    assert shown["execution_version"] == later["version"] and shown["source"] == "rules" and current
    stored = service.find(execution_id)
    assert stored["execution_version"] == later["version"] and stored["source"] == "rules"
    assert results[0]["execution_version"] == later["version"]  # the model's answer was not stored
    assert len(model.requests) == 1
