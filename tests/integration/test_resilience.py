"""Graceful stop, dropped connections, and set-up the broker refuses.

Connections are closed one by one by their name, so other tests sharing the
broker are not disturbed.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from tests.integration.conftest import (
    RunningSystem,
    close_connections,
    delete_prefix,
    queue_depth,
    run_prepared,
    system_env,
    wait_for_consumers,
)
from tests.integration.plain import PlainClient
from thelca.stores.sqlite import SQLiteStore

pytestmark = pytest.mark.broker


def _tags(system: RunningSystem) -> Counter[str]:
    store = SQLiteStore(system.store_path, writer=False)
    try:
        return Counter(str(s.item.properties.get("tag")) for s in store.items())
    finally:
        store.close()


def _send_tagged(client: PlainClient, count: int) -> dict[str, str]:
    sent = {}
    for n in range(count):
        tag = f"t{n}-{uuid.uuid4().hex[:6]}"
        message_id = client.publish({"command": "create", "item": {"properties": {"tag": tag}}})
        sent[message_id] = tag
    return sent


def test_sigterm_finishes_the_work_in_flight_and_exits_0(system: RunningSystem) -> None:
    client = PlainClient(system.amqp_url, system.prefix)
    try:
        sent = _send_tagged(client, 400)
        worker = system.processes["worker"]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=40) == 0
        system.processes.pop("worker")
        assert "worker: stopped" in system.output()
        system.start("worker")
        system.wait_for_log(lambda lines: set(sent) <= {x.get("command_id") for x in lines},
                            timeout=30)
    finally:
        client.close()
    tags = _tags(system)
    assert all(tags[tag] == 1 for tag in sent.values())
    assert "republishing" not in system.output()  # a graceful stop leaves no outbox behind


def test_a_second_signal_exits_at_once(system: RunningSystem) -> None:
    worker = system.processes.pop("worker")
    worker.send_signal(signal.SIGTERM)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=5) in (0, 128 + signal.SIGTERM)


def test_worker_and_logger_come_back_when_the_broker_drops_them(
    system: RunningSystem,
) -> None:
    client = PlainClient(system.amqp_url, system.prefix)
    try:
        sent = _send_tagged(client, 300)
        assert close_connections(f"thelca worker {system.prefix}.") == 1
        assert close_connections(f"thelca logger {system.prefix}.") == 1
        sent.update(_send_tagged(client, 300))
        wait_for_consumers(system.amqp_url, system.names.commands,
                           list(system.processes.values()))
        reply = client.send({"command": "create", "item": {"properties": {"after": True}}})
        assert reply.status == 200
        lines = system.wait_for_log(
            lambda ls: set(sent) <= {x.get("command_id") for x in ls}, timeout=30)
    finally:
        client.close()
    events = Counter(line.get("command_id") for line in lines)
    assert all(events[message_id] == 1 for message_id in sent)
    tags = _tags(system)
    assert all(tags[tag] == 1 for tag in sent.values())
    assert "worker: disconnected: channel closed: (320, 'CONNECTION_FORCED" in system.output()
    assert "logger: disconnected" in system.output()


def test_a_queue_declared_with_other_arguments_stops_the_worker_with_advice(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    connection.channel().queue_declare(f"{prefix}.commands", durable=True)  # classic
    connection.close()
    try:
        result = subprocess.run([sys.executable, "-m", "thelca", "worker"],
                                env=system_env(amqp_url, prefix, tmp_path),
                                capture_output=True, text=True, timeout=60, check=False)
    finally:
        delete_prefix(amqp_url, prefix)
    assert result.returncode == 3
    assert "inequivalent arg" in result.stderr
    assert "another prefix" in result.stderr


def test_the_logger_keeps_one_line_per_event_id_across_its_restarts(
    system: RunningSystem,
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(system.amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    body = b'{"time":"2020-01-01T00:00:00.000000+00:00","type":"Item read","user":"u",' \
           b'"value":"x","id":"fixed-event-id"}'
    try:
        channel.basic_publish(system.names.events, "", body)
        system.wait_for_log(lambda lines: len(lines) == 1)
        assert system.stop("logger") == 0
        system.start("logger")
        channel.basic_publish(system.names.events, "", body)
        channel.basic_publish(system.names.events, "", body.replace(b"fixed", b"other"))
        lines = system.wait_for_log(lambda lines: len(lines) == 2)
    finally:
        connection.close()
    time.sleep(0.3)
    assert [line["id"] for line in system.log_lines()] == ["fixed-event-id", "other-event-id"]
    assert len(lines) == 2


def test_a_broker_list_is_tried_in_turn_when_the_first_is_down(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    dead_first = f"amqp://guest:guest@127.0.0.1:1/%2F,{amqp_url}"
    running = RunningSystem(amqp_url, prefix, tmp_path,
                            system_env(dead_first, prefix, tmp_path))
    for system in run_prepared(running):
        client = PlainClient(amqp_url, prefix)
        try:
            assert client.send({"command": "create"}).status == 200
        finally:
            client.close()
        assert "127.0.0.1:1" in system.output()  # it said which broker it could not reach


def test_events_the_broker_refuses_are_kept_and_logged_once_it_accepts_them(
    system: RunningSystem,
) -> None:
    """A subscriber's full reject-publish queue makes the broker nack every event.

    The commands took effect, so they are acked rather than redelivered in a loop;
    their events stay in the outbox and are published again until confirmed, and
    the logger keeps one line for each.
    """
    connection = pika.BlockingConnection(pika.URLParameters(system.amqp_url))
    channel = connection.channel()
    blocker = f"{system.prefix}.blocker"
    channel.queue_declare(blocker, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    channel.queue_bind(blocker, system.names.events)
    client = PlainClient(system.amqp_url, system.prefix)
    try:
        sent = [client.send({"command": "create", "item": {"properties": {"n": n}}})
                for n in range(5)]
        assert all(reply.status == 200 for reply in sent)
        ids = [reply.properties.correlation_id for reply in sent]
        time.sleep(2.5)  # long enough for a republish to be refused again
        assert queue_depth(system.amqp_url, system.names.commands) == 0  # acked, not looping
        # The broker refuses the publish but may still route it to the other queues:
        # the events may be logged already, and the republished copies are dropped.
        channel.queue_delete(blocker)
        lines = system.wait_for_log(
            lambda ls: set(ids) <= {line.get("command_id") for line in ls}, timeout=40)
    finally:
        client.close()
        connection.close()
    logged = Counter(line.get("command_id") for line in lines)
    assert all(logged[message_id] == 1 for message_id in ids)
    assert "its events are kept and published again" in system.output()
    assert "requeueing" not in system.output()  # no command went round again


REPUBLISH_LINE = re.compile(r"republishing (\d+) unconfirmed events"
                            r"|the broker (?:refused the republish of|confirmed the) (\d+)")


def test_refused_events_are_published_again_one_round_at_a_time(
    system: RunningSystem,
) -> None:
    """While the broker refuses every event, the outbox goes out again in rounds, each
    only once the one before was settled, and no event is sent twice at once.

    A queue of the test's own bound to the events exchange gets a copy of every event
    the worker publishes, refused ones included (the broker routes a refused message to
    the queues that take it): the originals, and one per round.
    """
    connection = pika.BlockingConnection(pika.URLParameters(system.amqp_url))
    channel = connection.channel()
    blocker, spy = f"{system.prefix}.blocker", f"{system.prefix}.spy"
    channel.queue_declare(blocker, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    channel.queue_bind(blocker, system.names.events)
    channel.queue_declare(spy, exclusive=True)
    channel.queue_bind(spy, system.names.events)
    client = PlainClient(system.amqp_url, system.prefix)
    try:
        sent = [client.send({"command": "create", "item": {"properties": {"n": n}}})
                for n in range(12)]  # one batch each, each refused
        assert all(reply.status == 200 for reply in sent)
        ids = {str(reply.properties.correlation_id) for reply in sent}
        _wait_for_output(system, lambda out: out.count("republishing") >= 3)
        channel.queue_delete(blocker)
        _wait_for_output(system, lambda out: "confirmed the" in out)
        lines = system.wait_for_log(
            lambda ls: ids <= {line.get("command_id") for line in ls}, timeout=40)
        copies = Counter(str(json.loads(body)["command_id"]) for body in _drain(channel, spy))
    finally:
        client.close()
        connection.close()

    rounds = [match for match in REPUBLISH_LINE.finditer(system.output())]
    kinds = ["round" if m.group(1) else "outcome" for m in rounds]
    sizes = [int(m.group(1)) for m in rounds if m.group(1)]
    assert kinds[:2] == ["round", "outcome"] and kinds[-1] == "outcome", kinds
    assert all(a != b for a, b in itertools.pairwise(kinds)), kinds  # one round at a time
    assert all(size <= len(ids) for size in sizes), sizes  # no more than the outbox holds
    assert set(copies) == ids
    assert sum(copies.values()) == len(ids) + sum(sizes)  # the originals, and the rounds'
    assert max(copies.values()) <= 1 + len(sizes)
    logged = Counter(line.get("command_id") for line in lines)
    assert all(logged[message_id] == 1 for message_id in ids)


def _wait_for_output(system: RunningSystem, condition: Callable[[str], bool]) -> None:
    deadline = time.monotonic() + 60
    while not condition(system.output()):
        assert time.monotonic() < deadline, system.output()[-3000:]
        time.sleep(0.1)


def _drain(channel: BlockingChannel, queue: str) -> list[bytes]:
    bodies: list[bytes] = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None or body is None:
            return bodies
        bodies.append(body)


def test_a_publish_the_broker_closes_the_channel_over_returns_no_command(
    system: RunningSystem,
) -> None:
    """The events exchange deleted under the worker: each event publish makes the broker
    close the channel it went out on (404). That is the publish channel alone: the
    commands that took effect are acked, never returned to their queue (where each
    return counts against the delivery limit, and the twentieth dead-letters them),
    and their events are logged once the exchange is back."""
    client = PlainClient(system.amqp_url, system.prefix)
    connection = pika.BlockingConnection(pika.URLParameters(system.amqp_url))
    channel = connection.channel()
    try:
        channel.exchange_delete(system.names.events)
        sent = [client.send({"command": "create", "item": {"properties": {"n": n}}})
                for n in range(5)]
        assert all(reply.status == 200 for reply in sent)
        ids = {str(reply.properties.correlation_id) for reply in sent}
        _wait_for_output(system, lambda out: out.count("closed the publish channel") >= 2)
        channel.exchange_declare(system.names.events, "fanout", durable=True)
        channel.queue_bind(system.names.events_log, system.names.events)
        lines = system.wait_for_log(
            lambda ls: ids <= {line.get("command_id") for line in ls}, timeout=40)
        depth = queue_depth(system.amqp_url, system.names.commands)
    finally:
        client.close()
        connection.close()
    output = system.output()
    logged = Counter(line.get("command_id") for line in lines)
    assert all(logged[message_id] == 1 for message_id in ids), logged
    assert depth == 0
    assert "worker: disconnected" not in output  # the consuming channel never closed
    assert "requeueing" not in output
