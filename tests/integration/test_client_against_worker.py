"""The status table through the client library, against the real worker.

Each refusal must arrive as the client's typed error carrying the status and
the worker's message; 403 and 500 come from the stand-in Authority of conftest.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from thelca_client import (
    BadRequest,
    Client,
    CommandFailed,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ServerError,
    Unauthorized,
)
from thelca_client.contract import Names, encode_command

pytestmark = pytest.mark.broker


@pytest.fixture
def client(amqp_url: str, worker: Names) -> Iterator[Client]:
    with Client(amqp_url, prefix=worker.prefix, token="abcd", timeout=10) as thelca:
        yield thelca


def test_create_read_update_round_trip(client: Client) -> None:
    created = client.create({"type": "STORY"})
    assert created.status == 200 and created.version == 1
    assert created.item is not None
    item = created.item
    assert client.read(item["id"]).item == item
    updated = client.update(item["id"], {**item, "properties": {"type": "BUG"}},
                            expected_version=1)
    assert updated.version == 2
    assert updated.item == {**item, "properties": {"type": "BUG"}}


def _refusal(call: object, kind: type[CommandFailed], status: int) -> CommandFailed:
    assert callable(call)
    with pytest.raises(kind) as raised:
        call()
    assert raised.value.status == status
    assert raised.value.error
    return raised.value


def test_every_refusal_is_a_typed_error_with_its_status(client: Client) -> None:
    item = client.create({}).item
    assert item is not None
    big = {"x": "a" * (1024 * 1024)}
    _refusal(lambda: client.create(big), PayloadTooLarge, 413)
    _refusal(lambda: client.create({}, token="BAAD"), Unauthorized, 401)
    bad = _refusal(lambda: client.send(b"nope"), BadRequest, 400)
    assert bad.error == "The data is not a JSON string"
    _refusal(lambda: client.send(encode_command("create", item={"id": "x"})), BadRequest, 400)
    missing = _refusal(lambda: client.read("no-such-id"), NotFound, 404)
    assert "no-such-id" in missing.error
    _refusal(lambda: client.update(item["id"], {**item, "id": "other"}), BadRequest, 400)
    _refusal(lambda: client.read(item["id"], token="mallory"), Forbidden, 403)
    _refusal(lambda: client.update(item["id"], item, expected_version=4), Conflict, 409)
    broken = _refusal(lambda: client.create({"explode": True}), ServerError, 500)
    assert "error id" in broken.error


def test_a_retry_with_the_same_message_id_changes_nothing(client: Client) -> None:
    message_id = str(uuid.uuid4())
    first = client.create({"n": 1}, message_id=message_id)
    again = client.create({"n": 1}, message_id=message_id)
    assert again == first


def test_fire_and_forget_through_the_client(client: Client) -> None:
    message_id = client.create_async({"async": True})
    # The same message_id with a reply: the stored reply of the async create.
    reply = client.send(encode_command("create", item={"properties": {"async": True}}),
                        message_id=message_id)
    assert reply.item is not None and reply.item["properties"] == {"async": True}
