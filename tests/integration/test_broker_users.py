"""The README's least-privilege broker users, for real.

The `rabbitmqctl` lines of the README's "Broker users" section are run on the
local broker (users of this test's own, with the prefix in place of
`thelca`, deleted afterwards); a worker and a logger then run as their users,
a client sends commands as its own, and each role is shown what it cannot do.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from tests.integration.conftest import (
    BrokerUser,
    RunningSystem,
    delete_prefix,
    readme_users,
    system_env,
    wait_for_consumers,
)
from thelca.audit.checkpoints import checkpoints_path
from thelca_client import Client
from thelca_client.contract import Names

pytestmark = pytest.mark.broker

ACCESS_REFUSED = 403


@pytest.fixture
def users(amqp_url: str, prefix: str) -> Iterator[dict[str, BrokerUser]]:
    """The README's users for this prefix: {role: user}, deleted afterwards."""
    with readme_users(amqp_url, prefix) as made:
        yield made


def refused(url: str, action: Callable[[BlockingChannel], object]) -> bool:
    """Whether the broker refuses this user the action with ACCESS_REFUSED."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        action(channel)
        connection.process_data_events(time_limit=0.2)
        return False
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == ACCESS_REFUSED, error
        return True
    finally:
        if connection.is_open:
            connection.close()


def get(queue: str) -> Callable[[BlockingChannel], object]:
    return lambda channel: channel.basic_get(queue, auto_ack=False)


def publish(exchange: str, routing_key: str = "") -> Callable[[BlockingChannel], object]:
    return lambda channel: channel.basic_publish(exchange, routing_key, b"{}")


def test_each_role_does_its_job_with_only_the_readme_permissions(
    amqp_url: str, prefix: str, tmp_path: Path, users: dict[str, BrokerUser]
) -> None:
    names = Names(prefix)
    system = RunningSystem(amqp_url, prefix, tmp_path, {})
    try:
        for role, queue in (("worker", names.commands), ("logger", names.events_log)):
            # The logger writes only the worker's events: the broker checks their user_id.
            system.env = system_env(users[role].url, prefix, tmp_path,
                                    THELCA_EVENT_PUBLISHERS=users["worker"].name)
            system.start(role)
            wait_for_consumers(amqp_url, queue, [system.processes[role]])
        with Client(users["client"].url, prefix=prefix, token="alice") as client:
            created = client.create({"type": "STORY"})
            assert client.read(str((created.item or {})["id"])).status == 200
        lines = system.wait_for_log(lambda ls: len(ls) >= 2)
        assert [line["type"] for line in lines] == ["Item created", "Item read"]
        output = system.output()
        assert all(user.password not in output for user in users.values())
        assert "ACCESS_REFUSED" not in output

        client_url = users["client"].url
        for what, action in [
            ("read the event log's queue", get(names.events_log)),
            ("read other clients' commands", get(names.commands)),
            ("read the dead letters", get(names.dead)),
            ("forge an event", publish(names.events)),
            ("forge a checkpoint", publish(names.checkpoints)),
            ("declare a queue", lambda ch: ch.queue_declare("", exclusive=True)),
        ]:
            assert refused(client_url, action), f"a client could {what}"
        logger_url = users["logger"].url
        for what, action in [
            ("read the commands", get(names.commands)),
            ("read the dead letters", get(names.dead)),
            ("send replies", publish("", names.commands)),
        ]:
            assert refused(logger_url, action), f"the logger could {what}"
        system.env = system_env(users["replay"].url, prefix, tmp_path)
        system.start("replay")
        wait_for_consumers(amqp_url, names.replay, [system.processes["replay"]])
        assert _replayed(amqp_url, names) == {"status": 200, "count": 2}
        _assert_dead_lettered_by_the_replay_user(amqp_url, users["client"].url, names)
        assert refused(users["replay"].url, get(names.events_log))
        assert refused(users["replay"].url, get(names.commands))
        listing = subprocess.run(
            [sys.executable, "-m", "thelca", "dead", "list"], capture_output=True, text=True,
            env=system_env(users["operator"].url, prefix, tmp_path), timeout=60, check=False)
        assert listing.returncode == 0, listing.stderr
        assert refused(users["operator"].url, get(names.commands))
        assert system.stop("logger") == 0  # its last checkpoint, published as its own user
        assert "ACCESS_REFUSED" not in system.output()
        assert checkpoints_path(system.event_log).read_bytes().count(b"\n") >= 1
    finally:
        for role in list(system.processes):
            system.stop(role)
        delete_prefix(amqp_url, prefix)


def _assert_dead_lettered_by_the_replay_user(amqp_url: str, client_url: str,
                                             names: Names) -> None:
    """A client's replay request aimed at the commands queue: the replay consumer, as its
    own user, may put it in the dead letters (and publishes nothing to the commands)."""
    connection = pika.BlockingConnection(pika.URLParameters(client_url))
    try:
        connection.channel().basic_publish("", names.replay, b"{}", pika.BasicProperties(
            reply_to=names.commands, correlation_id="aimed-at-the-commands",
            headers={"Authorization": "Bearer alice"}))
    finally:
        connection.close()
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        for method, properties, _body in channel.consume(names.dead, inactivity_timeout=20):
            assert method is not None and properties is not None, "no dead letter"
            channel.basic_ack(int(method.delivery_tag or 0))
            if properties.correlation_id == "aimed-at-the-commands":
                assert "Authorization" not in (properties.headers or {})
                break
        channel.cancel()
    finally:
        connection.close()


def _replayed(amqp_url: str, names: Names) -> dict[str, object]:
    """Ask the replay consumer (running as its own user) for everything; its end marker."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))  # a subscriber
    try:
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.basic_publish("", names.replay, b"{}", pika.BasicProperties(
            reply_to=queue, correlation_id="users", headers={"Authorization": "Bearer alice"}))
        for method, properties, body in channel.consume(queue, inactivity_timeout=20):
            assert method is not None and properties is not None and body is not None, \
                "no end marker"
            if (properties.headers or {}).get("x-replay-end"):
                end: dict[str, object] = json.loads(body)
                return end
    finally:
        connection.close()
    raise AssertionError("unreachable")
