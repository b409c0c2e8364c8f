"""A backlog is not a loss: the sweeper leaves due work whose message waits in the queue to that
message, and re-sends the work whose message is gone."""
from __future__ import annotations

from typing import Any

from detflow_site import conf
from executions import operations, sweeper
from executions.broker import messages_key, queue_key
from tests.conftest import running_worker, wait_terminal


def test_sweep__leaves_work_to_its_queued_message_and_resends_what_lost_its_message(
    broker: Any, redis_client: Any, define: Any
) -> None:
    define("backlog", [{"handler": "test.echo"}])
    redis_client.flushdb()
    queued = [operations.start("backlog", {"n": n})[0]["_id"] for n in range(5)]
    lost = operations.start("backlog", {"n": "lost"})[0]["_id"]
    # The last start's message is lost (as in a failed send); the others wait, no worker runs.
    queue = conf.get().QUEUE
    [message_id] = redis_client.lrange(queue_key(queue), -1, -1)
    redis_client.lrem(queue_key(queue), 0, message_id)
    redis_client.hdel(messages_key(queue), message_id)

    first = sweeper.sweep(grace_s=0)
    second = sweeper.sweep(grace_s=0)

    assert sorted(first.waiting) == sorted(queued)
    assert first.resent == [lost]
    assert "5 left to the message waiting in the queue" in first.summary()
    assert sorted(second.waiting) == sorted([*queued, lost])  # the re-sent message waits too
    assert second.resent == []
    assert redis_client.llen(queue_key(queue)) == 6  # one message each: no duplicate was added
    with running_worker(2):
        docs = wait_terminal(*queued, lost)
    assert [d["status"] for d in docs] == ["SUCCEEDED"] * 6


def test_sweep__without_a_readable_queue__resends_all_due_work(
    broker: Any, redis_client: Any, define: Any, monkeypatch: Any
) -> None:
    """Past ``QUEUE_READ_LIMIT`` waiting messages the queue is not read: everything due is re-sent."""
    define("long", [{"handler": "test.echo"}])
    redis_client.flushdb()
    ids = [operations.start("long", {"n": n})[0]["_id"] for n in range(3)]
    monkeypatch.setattr(sweeper, "QUEUE_READ_LIMIT", 2)

    report = sweeper.sweep(grace_s=0)

    assert sorted(report.resent) == sorted(ids)
    assert report.waiting == []
