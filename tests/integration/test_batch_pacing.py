"""The pace of a BatchConsumer's batches and tidies.

With a linger (the logger's) deliveries that come one at a time wait for each other in
one batch, a full batch never waits, and everything handled is acked; without one (the
worker's) each delivery is handled as it comes. The tidy, a transaction of the
handler's own, runs once traffic stops, never while batches keep coming (they do its
bookkeeping in theirs)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pika
import pytest

from thelca.amqp import BatchConsumer
from thelca.amqp.topology import Queue, Topology
from thelca.roles.messages import Incoming, Outgoing

pytestmark = pytest.mark.broker


class Counting:
    """A BatchHandler that remembers the size of each batch and when it tidied; it publishes
    one message per delivery to `publish_to` when given (as the worker does its events)."""

    def __init__(self, publish_to: str | None = None) -> None:
        self.batches: list[int] = []
        self.publish_to = publish_to
        self.tidied: list[float] = []

    def recover(self) -> list[Outgoing]:
        return []

    def handle(self, batch: list[Incoming]) -> list[Outgoing]:
        self.batches.append(len(batch))
        if self.publish_to is None:
            return []
        return [Outgoing(self.publish_to, "", m.body, message_id=uuid.uuid4().hex)
                for m in batch]

    def confirmed(self, published: list[Outgoing]) -> None:
        return None

    def nacked(self, published: list[Outgoing]) -> bool:
        return False

    def tidy(self) -> None:
        self.tidied.append(time.monotonic())


Start = Callable[..., tuple[Counting, str]]


@pytest.fixture
def consumer(amqp_url: str) -> Iterator[Start]:
    """start(linger=..., max_batch=...): a consumer of a fresh queue, running in a thread."""
    running: list[tuple[BatchConsumer, threading.Thread, str]] = []

    def start(*, linger: float, max_batch: int = 50, publish: bool = False
              ) -> tuple[Counting, str]:
        queue = f"test-pacing-{uuid.uuid4().hex[:8]}"
        handler = Counting(f"{queue}.out" if publish else None)
        states: list[str] = []
        topology = Topology((f"{queue}.out",),
                            (Queue(queue), Queue(f"{queue}.sink", bind_to=f"{queue}.out")))
        consumer = BatchConsumer(amqp_url, queue, handler, topology,
                                 prefetch=max_batch, max_batch=max_batch, name="pacing-test",
                                 on_state=states.append, linger=linger)
        thread = threading.Thread(target=consumer.run, daemon=True)
        thread.start()
        running.append((consumer, thread, queue))
        _until(lambda: any(s.startswith("consuming") for s in states), "consuming")
        return handler, queue

    yield start
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    for consumer_, thread, queue in running:
        consumer_.stop()
        thread.join(timeout=30)
        for name in (queue, f"{queue}.sink"):
            connection.channel().queue_delete(name)
        connection.channel().exchange_delete(f"{queue}.out")
    connection.close()


def _until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not {what} within {timeout}s"
        time.sleep(0.01)


def _send(amqp_url: str, queue: str, count: int, spacing: float) -> float:
    """Publish count messages, spacing seconds apart; when the last went."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        for n in range(count):
            channel.basic_publish("", queue, str(n).encode())
            time.sleep(spacing)
        return time.monotonic()
    finally:
        connection.close()


def _left(amqp_url: str, queue: str) -> int:
    """Messages in the queue, ready or unacked."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        declared = connection.channel().queue_declare(queue, passive=True)
        return int(declared.method.message_count)
    finally:
        connection.close()


def test_deliveries_one_at_a_time_wait_for_each_other(amqp_url: str, consumer: Start) -> None:
    handler, queue = consumer(linger=1.0)
    _send(amqp_url, queue, 10, spacing=0.01)  # ten deliveries over 0.1 s, within the linger
    _until(lambda: sum(handler.batches) == 10, "all handled")
    assert handler.batches == [10]
    _until(lambda: _left(amqp_url, queue) == 0, "all acked")


def test_without_a_linger_each_delivery_is_handled_as_it_comes(amqp_url: str,
                                                               consumer: Start) -> None:
    handler, queue = consumer(linger=0.0)
    _send(amqp_url, queue, 10, spacing=0.05)
    _until(lambda: sum(handler.batches) == 10, "all handled")
    assert len(handler.batches) >= 5  # each apart, but for what a slow machine reads together


def test_a_full_batch_does_not_wait(amqp_url: str, consumer: Start) -> None:
    handler, queue = consumer(linger=60.0, max_batch=5)
    sent = _send(amqp_url, queue, 5, spacing=0.0)
    _until(lambda: sum(handler.batches) == 5, "the full batch handled", timeout=30)
    assert time.monotonic() - sent < 30  # not the linger's 60 s
    assert handler.batches == [5]
    _until(lambda: _left(amqp_url, queue) == 0, "all acked")


def test_the_tidy_waits_for_traffic_to_stop(amqp_url: str, consumer: Start) -> None:
    handler, queue = consumer(linger=0.0, publish=True)
    handler.tidied.clear()  # the session's start tidies before it consumes
    stopped = _send(amqp_url, queue, 120, spacing=0.02)  # a batch every 20 ms for 2.4 s
    assert handler.tidied == [], "a tidy ran while batches kept coming"
    _until(lambda: bool(handler.tidied), "tidied once traffic stopped", timeout=10)
    assert handler.tidied[0] > stopped
    assert sum(handler.batches) == 120
