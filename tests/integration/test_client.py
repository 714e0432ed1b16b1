"""thelca_client.Client against a real RabbitMQ, with a stand-in responder instead of a worker.

Each test has a prefix of its own; the queues it declares are deleted at the end.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from thelca_client import (
    BadRequest,
    Client,
    CommandFailed,
    Conflict,
    Forbidden,
    ItemReply,
    NotFound,
    PayloadTooLarge,
    PublishFailed,
    Reply,
    ReplyTimeout,
    ServerError,
    ThelcaClientError,
    Unauthorized,
)
from thelca_client.contract import (
    CONTENT_TYPE,
    DIRECT_REPLY_TO,
    STATUS_HEADER,
    CreateItem,
    Names,
    decode_command,
    encode_reply,
    loads_object,
)

pytestmark = pytest.mark.broker

TOKEN = "tok-0123456789-secret"
ITEM_ID = "5f73f540-c125-435d-8a5e-6fea05672b7a"
ITEM: dict[str, Any] = {
    "id": ITEM_ID,
    "created_at": "2020-02-18T16:37:09.654917+00:00",
    "created_by": "a-test-only-id-tok",
    "properties": {"type": "STORY"},
}

Answer = Callable[[BasicProperties, bytes], Reply]


class Responder(threading.Thread):
    """Stands in for a worker: answers each command on its reply_to, on its own connection."""

    def __init__(self, url: str, queue: str, answer: Answer) -> None:
        super().__init__(daemon=True)
        self.url, self.queue, self.answer = url, queue, answer
        self.received: list[tuple[BasicProperties, bytes]] = []
        self.ready = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            channel = connection.channel()
            channel.basic_consume(self.queue, self._on_command, auto_ack=True)
            self.ready.set()
            while not self.stopping.is_set():
                connection.process_data_events(time_limit=0.05)
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)

    def _on_command(
        self,
        channel: BlockingChannel,
        method: Basic.Deliver,
        properties: BasicProperties,
        body: bytes,
    ) -> None:
        self.received.append((properties, body))
        if not properties.reply_to:
            return
        reply = self.answer(properties, body)
        reply_properties = BasicProperties(
            correlation_id=properties.correlation_id,
            content_type=CONTENT_TYPE,
            headers={STATUS_HEADER: reply.status},
        )
        channel.basic_publish("", properties.reply_to, encode_reply(reply), reply_properties)


def answer_with(status: int, error: str | None = None) -> Answer:
    def answer(properties: BasicProperties, body: bytes) -> Reply:
        if status == 200:
            return Reply(200, item=ITEM, version=1)
        return Reply(status, error=error)

    return answer


def echo_message_id(properties: BasicProperties, body: bytes) -> Reply:
    return Reply(200, item={**ITEM, "properties": {"message_id": properties.message_id}},
                 version=1)


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def admin(amqp_url: str, prefix: str) -> Iterator[BlockingChannel]:
    """A plain pika channel; the prefix's commands queue is deleted after the test."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    yield connection.channel()
    connection.channel().queue_delete(Names(prefix).commands)
    connection.close()


@pytest.fixture
def commands(admin: BlockingChannel, prefix: str) -> str:
    """The commands queue, declared by the test since no worker runs."""
    queue = Names(prefix).commands
    admin.queue_declare(queue)
    return queue


@pytest.fixture
def client(amqp_url: str, prefix: str) -> Iterator[Client]:
    with Client(amqp_url, prefix=prefix, token=TOKEN, timeout=5) as client:
        yield client


@pytest.fixture
def respond(amqp_url: str, commands: str) -> Iterator[Callable[[Answer], Responder]]:
    started: list[Responder] = []

    def start(answer: Answer) -> Responder:
        responder = Responder(amqp_url, commands, answer)
        responder.start()
        assert responder.ready.wait(10), "the stand-in responder did not start"
        started.append(responder)
        return responder

    yield start
    for responder in started:
        responder.stop()


def get_one(admin: BlockingChannel, queue: str) -> tuple[BasicProperties, bytes]:
    method, properties, body = admin.basic_get(queue, auto_ack=True)
    assert method is not None, f"no message in {queue}"
    assert properties is not None
    assert body is not None
    return properties, body


def is_uuid4(text: object) -> bool:
    return isinstance(text, str) and uuid.UUID(text).version == 4


# ---------------------------------------------------------------- replies


def test_a_200_reply_is_returned(client: Client, respond: Callable[[Answer], Responder]) -> None:
    responder = respond(answer_with(200))

    reply = client.create({"type": "STORY"})

    assert reply == ItemReply(200, item=ITEM, version=1)
    assert reply.ok
    ((_, body),) = responder.received
    assert decode_command(body) == CreateItem({"properties": {"type": "STORY"}})


def test_read_and_update_send_the_contract_bodies(
    client: Client, respond: Callable[[Answer], Responder]
) -> None:
    responder = respond(answer_with(200))

    client.read(ITEM_ID)
    client.update(ITEM_ID, ITEM, expected_version=3)

    bodies = [loads_object(body) for _, body in responder.received]
    assert bodies == [
        {"command": "read", "id": ITEM_ID},
        {"command": "update", "id": ITEM_ID, "item": ITEM, "expected_version": 3},
    ]


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, BadRequest),
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (409, Conflict),
        (413, PayloadTooLarge),
        (500, ServerError),
        (418, ServerError),
    ],
)
def test_a_refusal_raises_the_error_of_its_status(
    client: Client,
    respond: Callable[[Answer], Responder],
    status: int,
    error_class: type[CommandFailed],
) -> None:
    respond(answer_with(status, error=f"refused with {status}"))

    with pytest.raises(error_class) as raised:
        client.read("some-id", message_id="refused-1")

    assert type(raised.value) is error_class
    assert raised.value.status == status
    assert raised.value.error == f"refused with {status}"
    assert raised.value.reply == Reply(status, error=f"refused with {status}")
    assert raised.value.message_id == "refused-1"
    assert f"refused with {status}" in str(raised.value)


def test_raise_for_status_false_returns_the_refusal(
    client: Client, respond: Callable[[Answer], Responder]
) -> None:
    respond(answer_with(400, error="The data is not a JSON string"))

    reply = client.send(b"not json {", raise_for_status=False)

    assert reply == Reply(400, error="The data is not a JSON string")


def test_a_reply_without_an_integer_status_raises_a_client_error(
    client: Client, respond: Callable[[Answer], Responder]
) -> None:
    def broken(properties: BasicProperties, body: bytes) -> Reply:
        return Reply(200, extra={"status": "not a number"})  # extra overrides the status

    respond(broken)

    with pytest.raises(ThelcaClientError, match="does not follow the contract"):
        client.read("some-id")


# ---------------------------------------------------------------- what goes on the wire


def test_an_rpc_command_carries_the_contract_properties(
    client: Client, respond: Callable[[Answer], Responder]
) -> None:
    responder = respond(answer_with(200))

    client.create({"type": "STORY"})

    ((properties, _),) = responder.received
    assert properties.headers == {"Authorization": f"Bearer {TOKEN}"}
    assert properties.content_type == "application/json"
    assert properties.delivery_mode == 2
    assert str(properties.reply_to).startswith(DIRECT_REPLY_TO)
    assert is_uuid4(properties.message_id)
    assert is_uuid4(properties.correlation_id)
    assert properties.correlation_id != properties.message_id


def test_a_token_given_to_a_call_replaces_the_clients(
    client: Client, respond: Callable[[Answer], Responder]
) -> None:
    responder = respond(answer_with(200))

    client.read("some-id", token="other-token")

    ((properties, _),) = responder.received
    assert properties.headers == {"Authorization": "Bearer other-token"}


def test_without_a_token_no_authorization_header_is_sent(
    amqp_url: str, prefix: str, respond: Callable[[Answer], Responder]
) -> None:
    responder = respond(answer_with(401, error="no Authorization header"))

    with Client(amqp_url, prefix=prefix, timeout=5) as client, pytest.raises(Unauthorized):
        client.read("some-id")

    ((properties, _),) = responder.received
    assert not properties.headers


def test_a_given_message_id_is_used_as_is(
    client: Client, respond: Callable[[Answer], Responder]
) -> None:
    respond(echo_message_id)

    reply = client.create({}, message_id="my-own-id-42")

    assert reply.item is not None
    assert reply.item["properties"] == {"message_id": "my-own-id-42"}


# ---------------------------------------------------------------- timeouts


def test_no_reply_raises_reply_timeout_with_the_message_id(client: Client, commands: str) -> None:
    started = time.monotonic()

    with pytest.raises(ReplyTimeout) as raised:
        client.read("some-id", message_id="retry-me", timeout=0.3)

    elapsed = time.monotonic() - started
    assert raised.value.message_id == "retry-me"
    assert raised.value.timeout == 0.3
    assert "retry-me" in str(raised.value)
    assert 0.3 <= elapsed < 3


def test_a_late_reply_to_a_timed_out_call_is_ignored(
    client: Client, respond: Callable[[Answer], Responder]
) -> None:
    with pytest.raises(ReplyTimeout):
        client.read("some-id", message_id="first", timeout=0.2)
    # The responder starts late: it answers "first" too, on the same reply-to channel.
    responder = respond(echo_message_id)

    reply = client.read("some-id", message_id="second")

    assert reply.item is not None
    assert reply.item["properties"] == {"message_id": "second"}
    assert [p.message_id for p, _ in responder.received] == ["first", "second"]


# ---------------------------------------------------------------- publish failures


def test_publishing_without_a_commands_queue_raises_publish_failed(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    with pytest.raises(PublishFailed) as raised:
        client.create({"type": "STORY"}, message_id="lost-1")
    with pytest.raises(PublishFailed):
        client.publish(b"{}")

    assert raised.value.message_id == "lost-1"
    assert f"{client.names.commands!r} does not exist" in str(raised.value)
    assert "same prefix" in str(raised.value)
    assert "Published message was returned" in caplog.text  # pika's own warning, redacted
    assert TOKEN not in caplog.text


def test_the_client_still_works_after_a_publish_failed(
    client: Client, admin: BlockingChannel
) -> None:
    with pytest.raises(PublishFailed):
        client.create_async({})
    admin.queue_declare(client.names.commands)

    message_id = client.create_async({})

    properties, _ = get_one(admin, client.names.commands)
    assert properties.message_id == message_id


def test_a_nack_raises_publish_failed_once_the_time_is_out(
    client: Client, admin: BlockingChannel, caplog: pytest.LogCaptureFixture
) -> None:
    # A full queue that rejects publishes makes the broker nack them.
    caplog.set_level(logging.DEBUG, logger="thelca_client")
    arguments = {"x-max-length": 0, "x-overflow": "reject-publish"}
    admin.queue_declare(client.names.commands, arguments=arguments)

    with pytest.raises(PublishFailed, match="nack") as raised:
        client.create_async({}, message_id="full-1", timeout=1.5)

    assert raised.value.message_id == "full-1"
    tries = caplog.text.count("refused message full-1 (nack); trying again")
    assert tries >= 2, caplog.text  # not given up at the first nack


def test_a_nacked_publish_goes_through_on_a_fresh_channel_once_the_broker_takes_it(
    amqp_url: str, client: Client, admin: BlockingChannel, caplog: pytest.LogCaptureFixture
) -> None:
    """Nacked while the queue is full, taken once it has room: the call succeeds."""
    caplog.set_level(logging.DEBUG, logger="thelca_client")
    queue = client.names.commands
    admin.queue_declare(queue, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    admin.basic_publish("", queue, b"filler", BasicProperties(message_id="filler"))

    def make_room() -> None:
        with pika.BlockingConnection(pika.URLParameters(amqp_url)) as connection:
            channel = connection.channel()
            while "refused message wanted (nack)" not in caplog.text:
                time.sleep(0.02)
            method, _, _ = channel.basic_get(queue, auto_ack=True)
            assert method is not None

    helper = threading.Thread(target=make_room, daemon=True)
    helper.start()
    client.create_async({}, message_id="wanted", timeout=30)
    helper.join(timeout=30)

    properties, _ = get_one(admin, queue)
    assert properties.message_id == "wanted"


# ---------------------------------------------------------------- fire-and-forget


def test_fire_and_forget_sets_no_reply_to(
    client: Client, admin: BlockingChannel, commands: str
) -> None:
    message_id = client.create_async({"type": "STORY"})

    properties, body = get_one(admin, commands)
    assert is_uuid4(message_id)
    assert properties.message_id == message_id
    assert properties.reply_to is None
    assert properties.correlation_id is None
    assert properties.delivery_mode == 2
    assert properties.content_type == "application/json"
    assert properties.headers == {"Authorization": f"Bearer {TOKEN}"}
    assert decode_command(body) == CreateItem({"properties": {"type": "STORY"}})


def test_fire_and_forget_uses_a_given_message_id_and_token(
    client: Client, admin: BlockingChannel, commands: str
) -> None:
    returned = client.publish(b'{"command": "read"}', token="t2", message_id="mine-7")

    properties, body = get_one(admin, commands)
    assert returned == properties.message_id == "mine-7"
    assert properties.headers == {"Authorization": "Bearer t2"}
    assert body == b'{"command": "read"}'


# ---------------------------------------------------------------- connection


def test_a_comma_separated_url_list_is_tried_in_turn(
    amqp_url: str, prefix: str, respond: Callable[[Answer], Responder]
) -> None:
    respond(answer_with(200))
    urls = f"amqp://guest:guest@127.0.0.1:1/%2F, {amqp_url}"

    with Client(urls, prefix=prefix, token=TOKEN, timeout=5) as client:
        assert client.read("some-id").ok


def test_the_token_is_in_no_repr_or_error_message(client: Client, commands: str) -> None:
    with pytest.raises(ReplyTimeout) as raised:
        client.read("some-id", timeout=0.1)

    assert TOKEN not in repr(client)
    assert TOKEN not in str(raised.value)
    assert "prefix=" in repr(client)


def test_a_closed_client_refuses_to_publish(client: Client, commands: str) -> None:
    client.close()
    client.close()

    with pytest.raises(ThelcaClientError, match="closed"):
        client.create_async({})
