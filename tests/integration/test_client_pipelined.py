"""The blocking Client's pipelined calls against the real worker: many at once, in order."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from thelca.stores.sqlite import SQLiteStore
from thelca_client import BadRequest, Client, PublishFailed
from thelca_client.contract import Names, encode_command

pytestmark = pytest.mark.broker


@pytest.fixture
def client(amqp_url: str, worker: Names) -> Iterator[Client]:
    with Client(amqp_url, prefix=worker.prefix, token="abcd", timeout=30) as thelca:
        yield thelca


def test_create_many_answers_in_the_order_given(client: Client) -> None:
    replies = client.create_many([{"n": n} for n in range(500)], window=50)

    assert [reply.item["properties"] for reply in replies] == [{"n": n} for n in range(500)]
    assert {reply.version for reply in replies} == {1}
    assert len({reply.item["id"] for reply in replies}) == 500
    # The blocking connection and the pipelined one serve the same client.
    assert client.read(replies[7].item["id"]).item == replies[7].item


def test_send_many_without_raising_gives_every_reply_in_its_place(client: Client) -> None:
    item = client.create({"x": 1}).item
    bodies = [encode_command("read", id=item["id"]), b"not json",
              encode_command("read", id="no-such-id"), encode_command("create")]

    replies = client.send_many(bodies, raise_for_status=False)

    assert [reply.status for reply in replies] == [200, 400, 404, 200]
    assert replies[0].item == item


def test_send_many_raises_the_first_refusal_once_every_command_was_answered(
    client: Client, tmp_path: Path
) -> None:
    marker = uuid.uuid4().hex
    bodies = [encode_command("create", item={"properties": {"marker": marker, "n": n}})
              for n in range(100)]
    bodies[40] = b"not json"

    with pytest.raises(BadRequest) as raised:
        client.send_many(bodies)

    assert raised.value.message_id is not None
    store = SQLiteStore(tmp_path / "stand-in.db", writer=False)  # the worker fixture's
    try:
        created = [stored.item.properties for stored in store.items()
                   if stored.item.properties.get("marker") == marker]
    finally:
        store.close()
    assert sorted(p["n"] for p in created) == [n for n in range(100) if n != 40]


def test_publish_many_returns_once_every_publish_is_confirmed(client: Client) -> None:
    message_ids = client.publish_many([encode_command("create")] * 300)

    assert len(set(message_ids)) == 300
    # Each was applied: the same message_id with a reply gets the stored one.
    replies = [client.send(encode_command("create"), message_id=message_id)
               for message_id in message_ids[:5]]
    assert all(reply.version == 1 for reply in replies)


def test_publish_many_to_a_missing_queue_is_publish_failed(amqp_url: str, prefix: str) -> None:
    with Client(amqp_url, prefix=prefix, token="abcd", timeout=5) as client, \
            pytest.raises(PublishFailed, match="does not exist"):
        client.publish_many([encode_command("create")] * 10)
