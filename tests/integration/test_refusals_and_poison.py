"""403 and 500 through the real plumbing, with an Authority that can say no or break.

The test-only Authority never refuses an authenticated user, so these tests
run the real worker (bootstrap, plumbing, store, handler) in a thread with the
stand-in Authority of conftest. What is under test is how the worker answers,
audits and dead-letters; the Authority is only the trigger.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pika
import pytest

from tests.integration.plain import PlainClient, next_message, watch
from thelca_client.contract import Names

pytestmark = pytest.mark.broker


@pytest.fixture
def client(amqp_url: str, worker: Names) -> Iterator[PlainClient]:
    plain = PlainClient(amqp_url, worker.prefix)
    yield plain
    plain.close()


def test_403_is_answered_and_audited_with_the_user(client: PlainClient, worker: Names) -> None:
    created = client.send({"command": "create", "item": {"properties": {}}}).body["item"]
    channel, queue = watch(client, worker.events)
    message_id = str(uuid.uuid4())
    reply = client.send({"command": "read", "id": created["id"]}, token="mallory",
                        message_id=message_id)
    assert reply.status == 403
    assert "mallory may not" in reply.body["error"]
    properties, event = next_message(channel, queue)
    assert properties.type == "Access refused"
    assert event["user"] == "a-test-only-id-mallory"
    assert event["value"] == {"command": "read", "id": created["id"], "status": 403}


def test_403_comes_after_the_400s_and_before_409(client: PlainClient) -> None:
    item = client.send({"command": "create", "item": {"properties": {}}}).body["item"]
    changed_id = {**item, "id": "other"}
    assert client.send({"command": "update", "id": item["id"], "item": changed_id},
                       token="mallory").status == 400
    stale = {"command": "update", "id": item["id"], "item": item, "expected_version": 5}
    assert client.send(stale, token="mallory").status == 403
    assert client.send(stale).status == 409


def test_an_unexpected_failure_is_a_500_and_a_dead_letter_without_the_token(
    client: PlainClient, worker: Names
) -> None:
    channel, _ = watch(client, worker.dead)
    message_id = str(uuid.uuid4())
    body = {"command": "create", "item": {"properties": {"explode": True}}}
    reply = client.send(body, token="secret-token-123", message_id=message_id)
    assert reply.status == 500
    assert "error id" in reply.body["error"]
    properties, dead = next_message(channel, worker.dead)
    assert dead == body
    assert properties.message_id == message_id
    headers = dict(properties.headers or {})
    assert "Authorization" not in headers
    assert "Bearer" not in json.dumps(headers)  # (test-only user ids hold the token by design)
    assert headers["x-thelca-user"] == "a-test-only-id-secret-token-123"
    assert reply.body["error"].split()[-1] in str(headers["x-thelca-reason"])
    # The worker keeps serving, and the failed command took no effect.
    ok = client.send({"command": "create", "item": {"properties": {"fine": True}}})
    assert ok.status == 200
    assert client.send(body, message_id=message_id).status == 500  # not remembered


def test_the_worker_declares_every_broker_object_of_the_contract(
    amqp_url: str, worker: Names
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        for queue in (worker.commands, worker.events_log, worker.dead, worker.replay):
            connection.channel().queue_declare(queue, passive=True)
        for exchange in (worker.events, worker.dead):
            connection.channel().exchange_declare(exchange, passive=True)
    finally:
        connection.close()
