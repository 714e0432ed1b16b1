"""Losing a RabbitMQ node loses no service: `thelca run` on a three-node cluster.

Three RabbitMQ nodes clustered on loopback (tests/cluster.py), beside the usual
broker. `thelca run` (worker, logger, replay, SQLite store) is given the three
URLs, node 1 first, so that its connections are on node 1 and, declared from
there, so are its queues' leaders. Six client threads send 3,000 creates, one
at a time each, every call given CALL_TIMEOUT and sent again with the same
message_id when it raises. When 40 % are answered, node 1 is SIGKILLed; it is
started again 10 s later. Twice: with the clients spread over the three nodes
(a third of them lose their connection too), and with the clients on the
surviving nodes.

Then: every create answered 200, once in the store and once in the log, nothing
dead-lettered, the events queue never above 1.5 times the events (sampled from a
surviving node), and `thelca verify` finds no difference once the outbox has
drained. The longest pause between two replies (any client's) is printed with
the other figures, not asserted: speed is not a test's business here.

Run alone with `pytest tests/integration/test_node_loss.py -m faults -s` to see
the figures.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from tests.cluster import NODES, RabbitCluster
from tests.integration.conftest import (
    RunningSystem,
    delete_prefix,
    system_env,
    wait_for_consumers,
)
from thelca.stores.sqlite import SQLiteStore
from thelca_client import Client, ThelcaClientError
from thelca_client.contract import encode_command

pytest_plugins = ["tests.integration.cluster_fixture"]
pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]

CREATES = 3000
CLIENTS = 6
KILL_AT = 0.4  # share of the creates answered when the node is killed
RESTART_AFTER = 10.0  # seconds from the kill to starting the node again
CALL_TIMEOUT = 5.0  # seconds a client waits for a reply before sending it again
GIVE_UP = 120.0  # seconds after which a create counts as unanswered
DRAIN_TIMEOUT = 180.0  # seconds for the log to catch up and the outbox to empty
TOKEN = "abcd"
THELCA_NODE = 1  # thelca connects here first, so its queues are led from here


@dataclass
class Tally:
    """What the clients sent and what came back, shared by their threads."""

    tags: dict[str, str] = field(default_factory=dict)  # message_id -> tag
    statuses: dict[str, int] = field(default_factory=dict)  # message_id -> reply status
    answered_at: list[float] = field(default_factory=list)  # monotonic, one per reply
    resends: Counter[str] = field(default_factory=Counter)  # by the error that caused it
    unanswered: list[str] = field(default_factory=list)
    slowest: float = 0.0  # the longest a create took, resends included
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, message_id: str, status: int, took: float) -> None:
        with self.lock:
            self.statuses[message_id] = status
            self.answered_at.append(time.monotonic())
            self.slowest = max(self.slowest, took)

    def resent(self, error: Exception) -> None:
        with self.lock:
            self.resends[type(error).__name__] += 1


def _client(number: int, url: str, prefix: str, count: int, tally: Tally) -> None:
    """Send `count` creates one after another, each until answered (or GIVE_UP)."""
    name = f"thelca node-loss client {number}"
    with Client(url, prefix=prefix, token=TOKEN, timeout=CALL_TIMEOUT,
                connection_name=name) as client:
        for step in range(count):
            message_id = f"nl-{number}-{step}-{uuid.uuid4().hex[:6]}"
            tag = f"tag-{number}-{step}"
            with tally.lock:
                tally.tags[message_id] = tag
            body = encode_command("create", item={"properties": {"tag": tag}})
            began = time.monotonic()
            while True:
                try:
                    reply = client.send(body, message_id=message_id, raise_for_status=False)
                except ThelcaClientError as error:  # timed out, or no broker: same message_id
                    tally.resent(error)
                    if time.monotonic() - began > GIVE_UP:
                        with tally.lock:
                            tally.unanswered.append(message_id)
                        break
                    continue
                tally.answer(message_id, reply.status, time.monotonic() - began)
                break


class QueueWatch(threading.Thread):
    """Samples the events queue's depth from a node that stays up, and counts every event
    published (a queue of its own bound to the events exchange gets a copy of each)."""

    def __init__(self, url: str, queue: str, exchange: str) -> None:
        super().__init__(daemon=True)
        self.url, self.queue, self.exchange = url, queue, exchange
        self.peak = 0
        self.samples = 0
        self.copies = -1
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.failure: BaseException | None = None
        self._spy = f"{queue}.spy-{uuid.uuid4().hex[:8]}"

    def run(self) -> None:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(self.url))
            try:
                self._watch(connection)
            finally:
                with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                    connection.close()
        except BaseException as error:  # reported by the test
            self.failure = error
            self.ready.set()

    def _watch(self, connection: pika.BlockingConnection) -> None:
        channel = connection.channel()
        channel.queue_declare(self._spy, exclusive=True)
        channel.queue_bind(self._spy, self.exchange)
        self.ready.set()
        while not self.stopping.wait(0.1):
            channel = self._sample(connection, channel)
        self.copies = int(channel.queue_declare(self._spy, passive=True)
                          .method.message_count)

    def _sample(self, connection: pika.BlockingConnection,
                channel: BlockingChannel) -> BlockingChannel:
        try:
            depth = channel.queue_declare(self.queue, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker:  # the queue is between leaders
            return connection.channel()
        self.peak = max(self.peak, int(depth))
        self.samples += 1
        return channel


@dataclass
class Thelca:
    """`thelca run` on the cluster, and where to reach its queues from."""

    system: RunningSystem
    cluster: RabbitCluster

    def any_url(self) -> str:
        """A node that is up, for the test's own look at the queues."""
        return self.cluster.url(self.cluster.running()[-1])


@pytest.fixture
def thelca(rabbit_cluster: RabbitCluster, tmp_path: Path) -> Iterator[Thelca]:
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    env = system_env(rabbit_cluster.amqp_url(first=THELCA_NODE), prefix, tmp_path,
                     THELCA_LOG_LEVEL="INFO")
    system = RunningSystem(rabbit_cluster.amqp_url(first=THELCA_NODE), prefix, tmp_path, env)
    watch_url = rabbit_cluster.url(NODES[-1])
    system.start("run")
    try:
        for queue in (system.names.commands, system.names.events_log, system.names.replay):
            wait_for_consumers(watch_url, queue, [system.processes["run"]], timeout=60)
        yield Thelca(system, rabbit_cluster)
    finally:
        if "run" in system.processes:
            system.stop("run")
        for node in NODES:  # a node killed by a failed test is started again
            if node not in rabbit_cluster.running():
                rabbit_cluster.restart(node)
        delete_prefix(rabbit_cluster.url(NODES[-1]), prefix)


# spread: two clients first on each node, so two of six lose their connection with the
# node; survivors: every client first on a node that stays up.
@pytest.mark.parametrize("clients_on", ["spread", "survivors"])
def test_losing_the_node_of_thelca_and_its_leaders_loses_no_service(
        thelca: Thelca, clients_on: str) -> None:
    cluster, system = thelca.cluster, thelca.system
    names = system.names
    leaders = {queue: cluster.node_of_queue_leader(queue)
               for queue in (names.commands, names.events_log, names.replay)}
    thelca_nodes = _nodes_of_connections(cluster, "thelca ")
    victim = THELCA_NODE
    survivors = [node for node in NODES if node != victim]
    client_nodes = ([NODES[n % len(NODES)] for n in range(CLIENTS)] if clients_on == "spread"
                    else [survivors[n % len(survivors)] for n in range(CLIENTS)])

    watch = QueueWatch(cluster.url(survivors[-1]), names.events_log, names.events)
    watch.start()
    watch.ready.wait(30)
    assert watch.failure is None, watch.failure

    tally = Tally()
    share = CREATES // CLIENTS
    clients = [threading.Thread(target=_client, daemon=True, args=(
        n, cluster.amqp_url(first=client_nodes[n]), system.prefix, share, tally))
        for n in range(CLIENTS)]
    started = time.monotonic()
    for thread in clients:
        thread.start()
    while len(tally.statuses) < KILL_AT * CREATES and any(t.is_alive() for t in clients):
        time.sleep(0.005)
    answered_before = len(tally.statuses)
    killed_at = cluster.kill(victim)
    restarted: list[float] = []
    restarter = threading.Thread(target=_restart_later, daemon=True,
                                 args=(cluster, victim, killed_at, restarted))
    restarter.start()
    for thread in clients:
        thread.join(timeout=GIVE_UP + 60)
    assert not any(t.is_alive() for t in clients), "a client is stuck"
    last_reply = max(tally.answered_at)
    sent_in = last_reply - started

    # The log holds every answered create, and the outbox has drained (whether or not the
    # killed node is back by then).
    logged_at, emptied_at = _wait_drained(system, set(tally.statuses))
    restarter.join(timeout=300)
    assert restarted, "the killed node did not start again"
    lines = system.log_lines()
    stopped = system.stop("run")
    watch.stopping.set()
    watch.join(timeout=30)
    output = (system.directory / "run.out").read_text(errors="replace")
    assert stopped == 0, output[-3000:]

    statuses = Counter(tally.statuses.values())
    by_tag = _tags_in_store(system.store_path)
    lost = [m for m, tag in tally.tags.items() if by_tag[tag] == 0]
    doubled = [m for m, tag in tally.tags.items() if by_tag[tag] > 1]
    events = Counter(line.get("command_id") for line in lines)
    lost_events = [m for m in tally.tags if events[m] == 0]
    doubled_events = [m for m in tally.tags if events[m] > 1]
    dead = _dead_letters(thelca.any_url(), names.dead)
    dead_took_effect = [m for m in dead if m in tally.tags and by_tag[tally.tags[m]]]
    pause, resumed = _longest_pause(tally.answered_at, killed_at)
    verified = _thelca(system, "verify", "--log", str(system.event_log), "--store",
                       f"sqlite:///{system.store_path}")
    differences = re.search(r"(\d+) differences", verified.stdout)
    audited = _thelca(system, "audit", "--log", str(system.event_log))
    audit = audited.stdout.strip().splitlines()

    print(
        f"\nnode loss (clients on {clients_on}: rt{'/rt'.join(map(str, client_nodes))}): "
        f"thelca's connections on rt{'/rt'.join(map(str, thelca_nodes)) or '?'}, leaders "
        f"commands rt{leaders[names.commands]}, events.log rt{leaders[names.events_log]}, "
        f"replay rt{leaders[names.replay]}; rt{victim} SIGKILLed after {answered_before} of "
        f"{CREATES} answered, started again {RESTART_AFTER:.0f}s later (in "
        f"{restarted[0]:.1f}s); sent {len(tally.tags)} in {sent_in:.1f}s, answered "
        f"{len(tally.statuses)} ({_statuses(statuses)}), unanswered {len(tally.unanswered)}, "
        f"client re-sends {sum(tally.resends.values())} {dict(tally.resends)}, slowest "
        f"create {tally.slowest:.2f}s; longest pause between replies {pause:.2f}s (target "
        f"<= 2s), replies resumed {resumed:.2f}s after the kill; lost {len(lost)}, "
        f"duplicated {len(doubled)}, events lost {len(lost_events)}, events duplicated "
        f"{len(doubled_events)}; dead-lettered {len(dead)} (took effect "
        f"{len(dead_took_effect)}); events queue peak {watch.peak} in {watch.samples} "
        f"samples (limit {int(1.5 * CREATES)}), events published {watch.copies} for "
        f"{len(tally.tags)} creates; the log complete {logged_at - last_reply:.1f}s and the "
        f"outbox empty {emptied_at - last_reply:.1f}s after the last reply; thelca: "
        f"{output.count('disconnected')} disconnections, "
        f"{output.count('republishing')} republishes, {output.count('refused a publish')} "
        f"refusals, {output.count('INTERNAL_ERROR')} INTERNAL_ERRORs; verify: "
        f"{differences.group(0) if differences else verified.stdout[-300:]}; audit: "
        f"{audit[-1] if audit else audited.stderr[-300:]}"
    )
    assert not tally.unanswered, tally.unanswered[:10]
    assert statuses == Counter({200: CREATES}), statuses
    assert not lost and not doubled, (lost[:10], doubled[:10])
    assert not lost_events and not doubled_events, (lost_events[:10], doubled_events[:10])
    assert not dead, dead[:10]
    assert watch.peak <= 1.5 * CREATES
    assert verified.returncode == 0 and differences and differences.group(1) == "0", \
        verified.stdout[-2000:]
    assert audited.returncode == 0, audited.stdout[-2000:] + audited.stderr[-2000:]


def _restart_later(cluster: RabbitCluster, node: int, killed_at: float,
                   restarted: list[float]) -> None:
    time.sleep(max(0.0, killed_at + RESTART_AFTER - time.monotonic()))
    restarted.append(cluster.restart(node))


def _nodes_of_connections(cluster: RabbitCluster, name_part: str) -> list[int]:
    """The nodes holding the connections whose connection_name contains name_part."""
    listing = cluster.ctl(cluster.running()[-1], "list_connections", "pid",
                          "client_properties", "--quiet")
    nodes: set[int] = set()
    for line in listing.splitlines():
        if name_part in line:
            nodes.update(n for n in NODES if f"<{cluster.node_name(n)}." in line)
    return sorted(nodes)


def _wait_drained(system: RunningSystem, command_ids: set[str]) -> tuple[float, float]:
    """When the log held an event of every command, and when the outbox was empty."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    logged_at = emptied_at = 0.0
    while not (logged_at and emptied_at):
        if not logged_at and command_ids <= {line.get("command_id")
                                             for line in system.log_lines()}:
            logged_at = time.monotonic()
        if not emptied_at and not _outbox(system.store_path):
            emptied_at = time.monotonic()
        assert time.monotonic() < deadline, (
            f"after {DRAIN_TIMEOUT}s the log is complete: {bool(logged_at)}, the outbox holds "
            f"{_outbox(system.store_path)}")
        time.sleep(0.1)
    return logged_at, emptied_at


def _outbox(path: Path) -> int:
    store = SQLiteStore(path, writer=False)
    try:
        return len(store.pending_outbox())
    finally:
        store.close()


def _tags_in_store(path: Path) -> Counter[str]:
    store = SQLiteStore(path, writer=False)
    try:
        return Counter(str(s.item.properties.get("tag")) for s in store.items())
    finally:
        store.close()


def _dead_letters(url: str, queue: str) -> list[str]:
    """The message ids in the dead-letter queue, left there (unacked, returned on close)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        ids = []
        for method, properties, _ in channel.consume(queue, inactivity_timeout=1):
            if method is None or properties is None:
                break
            ids.append(str(properties.message_id))
        return ids
    finally:
        connection.close()


def _longest_pause(answered_at: list[float], killed_at: float) -> tuple[float, float]:
    """The longest gap between two replies from the last one before the kill on, and how long
    after the kill the first reply came."""
    times = sorted(answered_at)
    last_before = max((t for t in times if t < killed_at), default=killed_at)
    after = [t for t in times if t >= last_before]
    gaps = [b - a for a, b in itertools.pairwise(after)]
    first_after = min((t for t in times if t >= killed_at), default=killed_at)
    return max(gaps, default=0.0), first_after - killed_at


def _statuses(statuses: Counter[int]) -> str:
    return ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items()))


def _thelca(system: RunningSystem, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "thelca", *args], env=system.env,
                          capture_output=True, text=True, timeout=300, check=False)
