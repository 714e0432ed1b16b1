"""A quorum queue loses its leader's node: nothing confirmed is lost.

Three RabbitMQ nodes clustered on loopback (tests/cluster.py), beside the usual broker.
The queue is declared through node 1, so led from there. A publisher sends 200 messages
with publisher confirms, each re-sent until confirmed (on a fresh channel after a nack,
on the next node if its own went away): once from node 2, once from the leader's node
itself. When half are confirmed, the leader's node is SIGKILLed. A consumer on a
surviving node then receives every confirmed message, and the killed node, started
again, brings the queue's replica back.

Run alone with `pytest tests/integration/test_cluster.py -m faults -s` to see the figures.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from tests.cluster import NODES, RabbitCluster

pytest_plugins = ["tests.integration.cluster_fixture"]
pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

MESSAGES = 200
KILL_AFTER = 100  # confirmed messages before the leader's node is killed


def _connect(urls: list[str]) -> pika.BlockingConnection:
    """A connection to the first of `urls` that answers."""
    attempts = []
    for url in urls:
        params = pika.URLParameters(url)
        params.connection_attempts = 1
        params.socket_timeout = 3
        attempts.append(params)
    return pika.BlockingConnection(attempts)


@dataclass
class Publisher:
    """Publishes with confirms, re-sending each message until the broker confirms it."""

    urls: list[str]
    queue: str
    confirmed: dict[str, float] = field(default_factory=dict)  # message_id -> when
    sends: Counter[str] = field(default_factory=Counter)  # message_id -> times sent
    nacks: int = 0
    reconnects: int = 0
    give_up_after: float = 120.0  # seconds, so that a broken cluster cannot keep it busy
    _connection: pika.BlockingConnection | None = None
    _channel: BlockingChannel | None = None
    _give_up_at: float = 0.0

    def run(self, count: int) -> None:
        self._give_up_at = time.monotonic() + self.give_up_after
        try:
            # Back to back, so that the kill finds a publish waiting for its confirm.
            for n in range(count):
                self.publish(f"m-{n}")
        finally:
            self._drop_connection()

    def publish(self, message_id: str) -> None:
        properties = pika.BasicProperties(message_id=message_id, delivery_mode=2)
        while True:
            try:
                channel = self._open_channel()
                self.sends[message_id] += 1
                channel.basic_publish("", self.queue, message_id.encode(), properties,
                                      mandatory=True)
                self.confirmed[message_id] = time.monotonic()
                return
            except (pika.exceptions.NackError, pika.exceptions.UnroutableError):
                # On 3.10 a channel refused while the queue had no leader stays refused:
                # retry on a fresh one.
                self.nacks += 1
                self._drop_channel()
            except (pika.exceptions.AMQPError, OSError):
                self.reconnects += 1
                self._drop_connection()
            if time.monotonic() > self._give_up_at:
                raise TimeoutError(f"{message_id} not confirmed after {self.give_up_after}s")
            time.sleep(0.05)

    def _open_channel(self) -> BlockingChannel:
        if self._connection is None or not self._connection.is_open:
            self._connection = _connect(self.urls)
        if self._channel is None or not self._channel.is_open:
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
        return self._channel

    def _drop_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and channel.is_open:
            try:
                channel.close()
            except (pika.exceptions.AMQPError, OSError):
                self._drop_connection()

    def _drop_connection(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()


def _consume_all(url: str, queue: str) -> list[str]:
    """Every message left in the queue, acknowledged: their message ids, in order."""
    received: list[str] = []
    connection = _connect([url])
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=50)
        for method, properties, _body in channel.consume(queue, inactivity_timeout=2):
            if method is None or properties is None or method.delivery_tag is None:
                if channel.queue_declare(queue, passive=True).method.message_count == 0:
                    break
                continue
            received.append(str(properties.message_id))
            channel.basic_ack(method.delivery_tag)
        channel.cancel()
    finally:
        connection.close()
    return received


def _wait_for(check: str, probe: Callable[[], int | None], timeout: float) -> int:
    """Poll `probe` (each call a rabbitmqctl) until it answers; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while (answer := probe()) is None:
        assert time.monotonic() < deadline, f"{check}: not after {timeout}s"
        time.sleep(1)
    return answer


@pytest.fixture
def quorum_queue(rabbit_cluster: RabbitCluster) -> Iterator[str]:
    """A quorum queue declared through node 1 (so led from there), deleted afterwards."""
    name = f"thelca-cluster-{uuid.uuid4().hex[:12]}"
    connection = _connect([rabbit_cluster.url(1)])
    try:
        connection.channel().queue_declare(name, durable=True,
                                           arguments={"x-queue-type": "quorum"})
    finally:
        connection.close()
    yield name
    connection = _connect(rabbit_cluster.urls(1))
    try:
        connection.channel().queue_delete(name)
    finally:
        connection.close()


# The publisher on a node that survives (its channel outlives the election), or on the
# leader's node itself (it loses its connection, moves to the next node and, on 3.10, has
# publishes nacked on its first channel there).
@pytest.mark.parametrize("publisher_on", ["survivor", "leader"])
def test_losing_the_leaders_node_loses_no_confirmed_message(
        rabbit_cluster: RabbitCluster, quorum_queue: str, publisher_on: str) -> None:
    rss_idle = rabbit_cluster.rss_mib()
    leader = rabbit_cluster.node_of_queue_leader(quorum_queue)
    assert leader in NODES, f"the new queue has no leader: {rabbit_cluster.queues()}"
    survivors = [node for node in NODES if node != leader]
    publisher_node = leader if publisher_on == "leader" else survivors[0]
    consumer_node = survivors[-1]

    publisher = Publisher(rabbit_cluster.urls(publisher_node), quorum_queue)
    failure: list[BaseException] = []

    def publish() -> None:
        try:
            publisher.run(MESSAGES)
        except BaseException as error:  # reported by the test's thread below
            failure.append(error)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    while len(publisher.confirmed) < KILL_AFTER and thread.is_alive():
        time.sleep(0.001)
    killed_at = rabbit_cluster.kill(leader)
    killed_after = sum(1 for t in publisher.confirmed.values() if t < killed_at)
    thread.join(timeout=180)
    assert not thread.is_alive(), "the publisher is stuck"
    assert not failure, failure
    assert killed_after < MESSAGES, "the publisher was through before the kill"

    # Who leads now, as the cluster says once the stream is through.
    new_leader = _wait_for("a new leader", lambda: _among(
        rabbit_cluster.node_of_queue_leader(quorum_queue), survivors), timeout=60)

    received = _consume_all(rabbit_cluster.url(consumer_node), quorum_queue)

    restarted_in = rabbit_cluster.restart(leader)
    _wait_for("the restarted node's replica", lambda: _among(
        leader, rabbit_cluster.online_members(quorum_queue)), timeout=60)
    rss_after = rabbit_cluster.rss_mib()

    # The publisher's view of the election: the longest pause between confirms from the
    # last one before the kill on (a confirm already on its way may arrive just after the
    # signal), and how long after the kill the confirms resumed.
    times = sorted(publisher.confirmed.values())
    last_before = max((t for t in times if t < killed_at), default=killed_at)
    pause_start, pause_end = max(itertools.pairwise(t for t in times if t >= last_before),
                                 key=lambda gap: gap[1] - gap[0], default=(0.0, 0.0))
    counts = Counter(received)
    lost = sorted(set(publisher.confirmed) - set(counts))
    duplicated = sorted(m for m, n in counts.items() if n > 1)
    resent = {m for m, n in publisher.sends.items() if n > 1}
    strangers = sorted(set(counts) - set(publisher.sends))

    print(
        f"\ncluster: started in {rabbit_cluster.started_in or 0:.1f}s; leader rt{leader} "
        f"SIGKILLed after {killed_after} confirms; confirms resumed "
        f"{pause_end - killed_at:.2f}s after the kill (longest pause "
        f"{pause_end - pause_start:.2f}s), new leader rt{new_leader}; published {MESSAGES} "
        f"on rt{publisher_node}: confirmed {len(publisher.confirmed)}, nacks "
        f"{publisher.nacks}, reconnects "
        f"{publisher.reconnects}, re-sent {len(resent)}; received on rt{consumer_node} "
        f"{len(received)}: lost {len(lost)}, duplicated {len(duplicated)}; rt{leader} "
        f"restarted in {restarted_in:.1f}s; RSS MiB idle {_mib(rss_idle)}, "
        f"after {_mib(rss_after)}"
    )
    assert len(publisher.confirmed) == MESSAGES
    assert not lost, lost[:10]
    assert not strangers, strangers[:10]
    # A message is received twice only if its confirm was lost and it was sent again.
    assert set(duplicated) <= resent, sorted(set(duplicated) - resent)[:10]


def _among(node: int | None, nodes: list[int]) -> int | None:
    return node if node in nodes else None


def _mib(sizes: dict[int, float]) -> str:
    return "/".join(f"{sizes[node]:.0f}" if node in sizes else "-" for node in NODES)
