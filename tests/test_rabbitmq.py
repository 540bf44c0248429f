"""RabbitMQ as the Celery broker, Redis as the event store: a real worker end to end.

It uses the RabbitMQ that runs on these machines as a system service
(127.0.0.1:5672, guest/guest); ``bash .ci/run`` starts it where it is not
running. Queues are named after this test's prefix, so nothing of anyone
else's is touched.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import replace

import pytest
from celery import Celery
from helpers import INSTRUMENTED_SUMMARY, WorkerProcess, events_of, summary, wait_finished

import taskcast
from taskcast.store import EventStore
from taskcast.worker_config import Settings

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture
def rabbitmq() -> str:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError:
        pytest.fail(
            "RabbitMQ is not running on 127.0.0.1:5672: install the Debian package "
            "rabbitmq-server and start it with `rabbitmq-server -detached` (bash .ci/run does)",
            pytrace=False,
        )
    return RABBITMQ


def test_a_task_through_rabbitmq_streams_its_whole_lifecycle(
    rabbitmq: str,
    task_settings: Settings,
    prefix: str,
    store: EventStore,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    worker = worker_process(settings=replace(task_settings, prefix=prefix, broker_url=rabbitmq))
    publisher = Celery("rabbit_publisher", broker=rabbitmq, backend=task_settings.result_backend)
    taskcast.instrument(publisher)
    result = publisher.send_task("test.instrumented", queue=worker.queue)
    assert result.get(timeout=30) == {"answer": 42}
    snapshot = wait_finished(store, result.id)
    worker.stop()
    with publisher.connection_for_write() as connection:  # leave no queue of ours behind
        connection.default_channel.queue_delete(worker.queue)
    assert snapshot["status"] == "completed" and snapshot["worker"].startswith(worker.queue)
    events = events_of(store, result.id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert summary(events) == INSTRUMENTED_SUMMARY
