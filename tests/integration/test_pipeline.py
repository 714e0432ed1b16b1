"""The core pipeline against a real RabbitMQ, through a client that is plain pika.

Every row of the contract's status table, the replies' properties, the event
log's lines, idempotency, fire-and-forget and direct reply-to.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from tests.integration.conftest import RunningSystem
from tests.integration.plain import PlainClient, next_message, watch

pytestmark = pytest.mark.broker

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def client(shared_system: RunningSystem) -> Iterator[PlainClient]:
    plain = PlainClient(shared_system.amqp_url, shared_system.prefix)
    yield plain
    plain.close()


@pytest.fixture
def item(client: PlainClient) -> dict[str, Any]:
    reply = client.send({"command": "create", "item": {"properties": {"type": "STORY"}}})
    assert reply.status == 200
    return dict(reply.body["item"])


# ---------------------------------------------------------------- 200


def test_create_replies_with_the_stored_item_at_version_1(client: PlainClient) -> None:
    reply = client.send({"command": "create", "item": {"properties": {"type": "STORY"},
                                                       "colour": "ignored"}})
    assert reply.status == 200
    assert reply.properties.headers == {"status": 200}
    assert reply.properties.content_type == "application/json"
    item = reply.body["item"]
    assert set(item) == {"id", "created_at", "created_by", "properties"}
    assert UUID4.match(item["id"])
    assert TIME.match(item["created_at"])
    assert item["created_by"] == "a-test-only-id-abcd"
    assert item["properties"] == {"type": "STORY"}
    assert reply.body["version"] == 1


@pytest.mark.parametrize("item", [{}, {"properties": None}, None])
def test_create_without_properties_stores_an_empty_object(
    client: PlainClient, item: dict[str, Any] | None
) -> None:
    body: dict[str, Any] = {"command": "create"}
    if item is not None:
        body["item"] = item
    reply = client.send(body)
    assert reply.status == 200
    assert reply.body["item"]["properties"] == {}


def test_read_returns_the_item_and_does_not_change_its_version(
    client: PlainClient, item: dict[str, Any]
) -> None:
    for _ in range(2):
        reply = client.send({"command": "read", "id": item["id"]})
        assert reply.status == 200
        assert reply.body == {"status": 200, "item": item, "version": 1}


def test_update_replaces_the_properties_and_bumps_the_version(
    client: PlainClient, item: dict[str, Any]
) -> None:
    changed = {**item, "properties": {"type": "BUG"}, "extra": "ignored"}
    first = client.send({"command": "update", "id": item["id"], "item": changed,
                         "expected_version": 1})
    assert first.status == 200
    assert first.body["version"] == 2
    assert first.body["item"] == {**item, "properties": {"type": "BUG"}}
    again = client.send({"command": "update", "id": item["id"],
                         "item": {**item, "properties": None}})
    assert again.body["version"] == 3
    assert again.body["item"]["properties"] == {}
    read = client.send({"command": "read", "id": item["id"]})
    assert read.body["version"] == 3


def test_correlation_id_is_echoed_and_message_id_stands_in_for_it(
    client: PlainClient, item: dict[str, Any]
) -> None:
    reply = client.send({"command": "read", "id": item["id"]}, correlation_id="corr-1")
    assert reply.properties.correlation_id == "corr-1"
    reply = client.send({"command": "read", "id": item["id"]}, message_id="msg-only-1")
    assert reply.properties.correlation_id == "msg-only-1"


# ---------------------------------------------------------------- the status table


def test_413_a_body_over_the_limit(client: PlainClient) -> None:
    body = json.dumps({"command": "create", "item": {"properties": {"x": "a" * 1048576}}})
    reply = client.send(body.encode(), token=None)  # 413 comes before the token check
    assert reply.status == 413
    assert "1048576" in reply.body["error"]


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({}, "no Authorization header"),
        ({"Authorization": "Basic abcd"}, "Bearer"),
        ({"Authorization": "Bearer BAAD"}, "refused"),
        ({"Authorization": "Bearer "}, "empty"),
    ],
)
def test_401_without_a_usable_token(
    client: PlainClient, headers: dict[str, str], why: str
) -> None:
    reply = client.send({"command": "create"}, headers=headers)
    assert reply.status == 401
    assert why in reply.body["error"]


def test_401_comes_before_400(client: PlainClient) -> None:
    assert client.send(b"not json", headers={}).status == 401


def test_the_authorization_header_name_is_case_insensitive(client: PlainClient) -> None:
    reply = client.send({"command": "create"}, headers={"authorization": "bearer abcd"})
    assert reply.status == 200


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", "The data is not a JSON string"),
        (b"", "The data is not a JSON string"),
        (b"\xff\xfe", "The data is not a JSON string"),
        (b"[" * 100_000, "The data is not a JSON string"),
        (b"[1, 2]", "JSON object"),
        (b'"create"', "JSON object"),
        (b"{}", "command"),
        (b'{"command": "delete", "id": "x"}', "command"),
        (b'{"command": 7}', "command"),
        (b'{"command": "read"}', "id"),
        (b'{"command": "read", "id": 7}', "id"),
        (b'{"command": "create", "item": []}', "item"),
        (b'{"command": "create", "item": {"properties": "x"}}', "properties"),
        (b'{"command": "update", "id": "x"}', "item"),
        (b'{"command": "update", "id": "x", "item": {}, "expected_version": "3"}',
         "expected_version"),
        (b'{"command": "update", "id": "x", "item": {}, "expected_version": true}',
         "expected_version"),
    ],
)
def test_400_for_bodies_that_break_the_contract(
    client: PlainClient, body: bytes, error: str
) -> None:
    reply = client.send(body)
    assert reply.status == 400
    assert error in reply.body["error"]


@pytest.mark.parametrize("field", ["id", "created_at", "created_by"])
def test_400_create_may_not_set_server_fields(client: PlainClient, field: str) -> None:
    reply = client.send({"command": "create", "item": {field: "x", "properties": {}}})
    assert reply.status == 400
    assert reply.body["error"] == f"{field} cannot be set externally"


@pytest.mark.parametrize("command", ["read", "update"])
def test_404_an_id_no_item_has(client: PlainClient, command: str) -> None:
    missing = str(uuid.uuid4())
    reply = client.send({"command": command, "id": missing, "item": {"id": "other"}})
    assert reply.status == 404  # before the 400 of a differing item.id
    assert missing in reply.body["error"]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"id": None}, "id cannot be modified"),
        ({"id": "another"}, "id cannot be modified"),
        ({"created_at": "2020-01-01T00:00:00.000000+00:00"}, "created_at cannot be modified"),
        ({"created_at": None}, "created_at cannot be modified"),
        ({"created_by": "someone-else"}, "created_by cannot be modified"),
    ],
)
def test_400_update_may_not_change_server_fields(
    client: PlainClient, item: dict[str, Any], change: dict[str, Any], error: str
) -> None:
    proposed = {k: v for k, v in {**item, **change}.items() if v is not None}
    reply = client.send({"command": "update", "id": item["id"], "item": proposed})
    assert reply.status == 400
    assert reply.body["error"] == error
    assert client.send({"command": "read", "id": item["id"]}).body["version"] == 1


def test_409_a_stale_expected_version_changes_nothing(
    client: PlainClient, item: dict[str, Any]
) -> None:
    changed = {**item, "properties": {"type": "BUG"}}
    reply = client.send({"command": "update", "id": item["id"], "item": changed,
                         "expected_version": 7})
    assert reply.status == 409
    assert "7" in reply.body["error"] and "1" in reply.body["error"]
    read = client.send({"command": "read", "id": item["id"]})
    assert read.body["item"] == item and read.body["version"] == 1


# ---------------------------------------------------------------- idempotency


def test_a_repeated_message_id_gets_the_first_reply_and_changes_nothing(
    client: PlainClient, shared_system: RunningSystem
) -> None:
    message_id = str(uuid.uuid4())
    body = {"command": "create", "item": {"properties": {"n": 1}}}
    first = client.send(body, message_id=message_id)
    second = client.send(body, message_id=message_id)
    assert first.status == 200
    assert second.body == first.body
    events = shared_system.events_for(message_id)
    assert [e["type"] for e in events] == ["Item created"]


def test_a_repeated_refusal_is_remembered_too(client: PlainClient, item: dict[str, Any]) -> None:
    message_id = str(uuid.uuid4())
    stale = {"command": "update", "id": item["id"], "item": item, "expected_version": 9}
    refused = client.send(stale, message_id=message_id)
    assert refused.status == 409
    # The same command again gets its first answer...
    assert client.send(stale, message_id=message_id).body == refused.body
    # ...and a different command under the same message_id is refused as such.
    fixed = {**stale, "expected_version": 1}
    assert client.send(fixed, message_id=message_id).body == {
        "status": 409, "error": "message_id already used for a different command"}


def test_the_same_message_id_from_another_user_is_409(client: PlainClient) -> None:
    message_id = str(uuid.uuid4())
    body = {"command": "create", "item": {"properties": {}}}
    assert client.send(body, message_id=message_id, token="alice").status == 200
    other = client.send(body, message_id=message_id, token="mallory")
    assert other.status == 409
    assert "message_id" in other.body["error"]


def test_refusals_before_authentication_are_not_remembered(client: PlainClient) -> None:
    message_id = str(uuid.uuid4())
    body = {"command": "create", "item": {"properties": {}}}
    assert client.send(body, message_id=message_id, token="BAAD").status == 401
    assert client.send(body, message_id=message_id).status == 200


# ---------------------------------------------------------------- events and the log


def _check_event_shape(event: dict[str, Any], kind: str, user: str | None) -> None:
    assert list(event)[:5] == ["time", "type", "user", "value", "id"]
    assert TIME.match(event["time"])
    assert event["type"] == kind
    assert event["user"] == user


def test_the_log_holds_created_read_and_updated_in_the_contracts_shape(
    client: PlainClient, shared_system: RunningSystem
) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    created = client.send({"command": "create", "item": {"properties": {"type": "STORY"}}},
                          message_id=ids[0]).body
    item = created["item"]
    client.send({"command": "read", "id": item["id"]}, message_id=ids[1])
    updated = client.send({"command": "update", "id": item["id"],
                           "item": {**item, "properties": {"type": "EPIC"}}},
                          message_id=ids[2]).body
    events = [shared_system.events_for(i)[0] for i in ids]
    _check_event_shape(events[0], "Item created", "a-test-only-id-abcd")
    assert events[0]["value"] == item
    _check_event_shape(events[1], "Item read", "a-test-only-id-abcd")
    assert events[1]["value"] == item["id"]
    _check_event_shape(events[2], "Item updated", "a-test-only-id-abcd")
    assert events[2]["value"] == updated["item"]
    assert [e["version"] for e in events] == [1, 1, 2]
    assert len({e["id"] for e in events}) == 3
    raw = shared_system.event_log.read_bytes()
    assert raw.endswith(b"\n")
    for line in raw.splitlines():
        assert json.dumps(json.loads(line), separators=(",", ":"), ensure_ascii=False) == \
            line.decode()


def test_a_refused_token_is_an_access_refused_event_with_no_user(
    client: PlainClient, shared_system: RunningSystem, item: dict[str, Any]
) -> None:
    message_id = str(uuid.uuid4())
    client.send({"command": "read", "id": item["id"]}, token="BAAD", message_id=message_id)
    (event,) = shared_system.events_for(message_id)
    _check_event_shape(event, "Access refused", None)
    assert event["value"] == {"command": "read", "id": item["id"], "status": 401}


def test_a_body_that_cannot_be_read_is_refused_without_command_or_id(
    client: PlainClient, shared_system: RunningSystem
) -> None:
    message_id = str(uuid.uuid4())
    client.send(b"garbage", token="BAAD", message_id=message_id)
    (event,) = shared_system.events_for(message_id)
    assert event["value"] == {"status": 401}


def test_events_are_published_on_the_fanout_exchange_with_their_type(
    client: PlainClient, shared_system: RunningSystem
) -> None:
    channel, queue = watch(client, shared_system.names.events)
    message_id = str(uuid.uuid4())
    client.send({"command": "create", "item": {"properties": {}}}, message_id=message_id)
    while True:
        properties, event = next_message(channel, queue)
        if event.get("command_id") == message_id:
            break
    assert properties.type == "Item created"
    assert properties.delivery_mode == 2
    assert properties.message_id == event["id"]
    channel.close()


def test_fire_and_forget_creates_the_item_and_sends_no_reply(
    client: PlainClient, shared_system: RunningSystem
) -> None:
    message_id = client.publish({"command": "create", "item": {"properties": {"async": True}}})
    (event,) = shared_system.events_for(message_id)
    assert event["type"] == "Item created"
    read = client.send({"command": "read", "id": event["value"]["id"]})
    assert read.body["item"]["properties"] == {"async": True}


def test_a_reply_queue_of_the_clients_own_works_as_well_as_direct_reply_to(
    client: PlainClient, item: dict[str, Any]
) -> None:
    channel = client.connection.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.basic_publish(
        "", client.queue, json.dumps({"command": "read", "id": item["id"]}).encode(),
        pika.BasicProperties(reply_to=queue, correlation_id="own-queue",
                             message_id=str(uuid.uuid4()),
                             headers={"Authorization": "Bearer abcd"}),
    )
    properties, reply = next_message(channel, queue)
    assert properties.correlation_id == "own-queue"
    assert reply["item"] == item
    channel.close()


def test_no_token_appears_in_any_output_or_in_the_log(
    client: PlainClient, shared_system: RunningSystem
) -> None:
    client.send({"command": "create"}, headers={"Authorization": "Bearer BAAD"})
    client.send(b"{", headers={"Authorization": "Basic c2VjcmV0LXBhc3N3b3Jk"})
    shared_system.wait_for_log(lambda lines: len(lines) > 0)
    everything = shared_system.output() + shared_system.event_log.read_text()
    assert "Bearer" not in everything
    assert "c2VjcmV0LXBhc3N3b3Jk" not in everything
    # A refused token is no user id, so it has no business in the audit trail.
    assert "BAAD" not in shared_system.event_log.read_text()
