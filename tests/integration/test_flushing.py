"""FlushingConnection against the real broker: one write for what a turn publishes, and
every byte in order when the socket takes only part of it."""

from __future__ import annotations

import hashlib
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.channel
import pytest

from thelca.amqp.flushing import FlushingConnection


class Writes:
    """Counts socket writes per file descriptor while installed."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def of(self, connection: FlushingConnection) -> int:
        return self.counts.get(_fd(connection), 0)


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Writes:
    counted = Writes()
    send = socket.socket.send

    def counting(sock: socket.socket, data: Any, *args: Any) -> int:
        counted.counts[sock.fileno()] = counted.counts.get(sock.fileno(), 0) + 1
        return send(sock, data, *args)

    monkeypatch.setattr(socket.socket, "send", counting)
    return counted


@pytest.fixture
def queue(amqp_url: str) -> Iterator[str]:
    name = f"test-flushing-{uuid.uuid4().hex[:8]}"
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    connection.channel().queue_declare(name, durable=True)
    try:
        yield name
    finally:
        connection.channel().queue_delete(name)
        connection.close()


def _transport(connection: FlushingConnection) -> Any:
    transport = connection._transport  # type: ignore[attr-defined]
    assert transport is not None
    return transport


def _fd(connection: FlushingConnection) -> int:
    return int(_transport(connection)._sock.fileno())


def run_on_channel(amqp_url: str, step: Callable[[FlushingConnection, pika.channel.Channel,
                                                   Callable[[], None]], None]) -> None:
    """Open a FlushingConnection and a channel with confirms, run step(connection, channel,
    done) on the loop, and run the loop until done() is called (20 s at most)."""
    finished: list[bool] = []

    connection: FlushingConnection

    def done() -> None:
        finished.append(True)
        connection.close()

    def on_channel(channel: pika.channel.Channel) -> None:
        channel.confirm_delivery(ack_nack_callback=lambda _frame: None,
                                 callback=lambda _frame: step(connection, channel, done))

    connection = FlushingConnection(
        pika.URLParameters(amqp_url),
        on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_open_error_callback=lambda _c, error: pytest.fail(f"cannot connect: {error}"),
        on_close_callback=lambda _c, _reason: connection.ioloop.stop())
    timer = connection.ioloop.call_later(20, connection.ioloop.stop)
    connection.ioloop.start()
    connection.ioloop.remove_timeout(timer)
    assert finished, "the loop stopped before the step was done"


def received(amqp_url: str, queue: str, count: int) -> list[bytes]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        bodies: list[bytes] = []
        for _ in range(count):
            _method, _properties, body = channel.basic_get(queue, auto_ack=True)
            assert body is not None, f"only {len(bodies)} of {count} messages arrived"
            bodies.append(body)
        return bodies
    finally:
        connection.close()


def test_what_a_batch_publishes_goes_out_in_one_write(amqp_url: str, queue: str,
                                                      writes: Writes) -> None:
    counted: list[int] = []

    def publish_five(connection: FlushingConnection, channel: pika.channel.Channel,
                     done: Callable[[], None]) -> None:
        before = writes.of(connection)
        for n in range(5):
            channel.basic_publish("", queue, f"message {n}".encode(),
                                  pika.BasicProperties(delivery_mode=2))
        assert writes.of(connection) == before, "nothing is written before the flush"
        connection.flush()
        counted.append(writes.of(connection) - before)
        connection.flush()  # nothing left: no write
        counted.append(writes.of(connection) - before)
        done()

    run_on_channel(amqp_url, publish_five)
    assert counted == [1, 1]  # five publishes, fifteen frames: one write
    assert received(amqp_url, queue, 5) == [f"message {n}".encode() for n in range(5)]


def test_frames_not_flushed_go_out_at_the_end_of_the_loops_turn(amqp_url: str,
                                                                 queue: str) -> None:
    def publish_and_wait(connection: FlushingConnection, channel: pika.channel.Channel,
                         done: Callable[[], None]) -> None:
        channel.basic_publish("", queue, b"unflushed", pika.BasicProperties(delivery_mode=2))
        # Without a flush, the declare and the publish still leave: the declare's answer
        # comes back, after the publish, on the same channel.
        channel.queue_declare(queue, passive=True, callback=lambda _frame: done())

    run_on_channel(amqp_url, publish_and_wait)
    assert received(amqp_url, queue, 1) == [b"unflushed"]


def test_what_the_socket_does_not_take_follows_in_order(amqp_url: str, queue: str) -> None:
    big = hashlib.sha256(b"seed").digest() * (8 * 1024 * 1024 // 32)  # 8 MiB: a partial write

    def publish_big_then_small(connection: FlushingConnection, channel: pika.channel.Channel,
                               done: Callable[[], None]) -> None:
        channel.basic_publish("", queue, big, pika.BasicProperties(delivery_mode=2))
        connection.flush()
        assert _transport(connection).get_write_buffer_size() > 0, \
            "the socket took 8 MiB at once: this test no longer reaches the partial write"
        channel.basic_publish("", queue, b"small", pika.BasicProperties(delivery_mode=2))
        connection.flush()  # behind the rest of the big one, never before it
        channel.queue_declare(queue, passive=True, callback=lambda _frame: done())

    run_on_channel(amqp_url, publish_big_then_small)
    first, second = received(amqp_url, queue, 2)
    assert hashlib.sha256(first).digest() == hashlib.sha256(big).digest()
    assert second == b"small"
