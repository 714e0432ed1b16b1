"""thelca_client.AsyncClient against the real worker: many tasks at once, every status, losses.

Each test runs its coroutine with asyncio.run. The in-process worker (conftest's
`worker`) uses the stand-in Authority: mallory may not read, `explode` breaks it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from tests.integration.conftest import RunningSystem, close_connections, queue_depth
from thelca.stores.sqlite import SQLiteStore
from thelca_client import (
    AccessRefused,
    AsyncClient,
    BadRequest,
    CommandFailed,
    Conflict,
    ConnectionFailed,
    Forbidden,
    ItemReply,
    NotFound,
    PayloadTooLarge,
    PublishFailed,
    ServerError,
    Unauthorized,
)
from thelca_client.contract import Names, encode_command

pytestmark = pytest.mark.broker

NO_BROKER = "amqp://guest:guest@127.0.0.1:1/%2F"


def client_for(amqp_url: str, names: Names, **options: Any) -> AsyncClient:
    return AsyncClient(amqp_url, prefix=names.prefix, token="abcd", **options)


# ---------------------------------------------------------------- many at once


def test_many_tasks_at_once_each_get_their_own_replies(amqp_url: str, worker: Names) -> None:
    async def task(client: AsyncClient, n: int) -> tuple[ItemReply, ItemReply, ItemReply]:
        created = await client.create({"task": n})
        read = await client.read(created.item["id"])
        updated = await client.update(created.item["id"],
                                      {**created.item, "properties": {"task": n, "done": True}},
                                      expected_version=created.version)
        return created, read, updated

    async def scenario() -> list[tuple[ItemReply, ItemReply, ItemReply]]:
        async with client_for(amqp_url, worker, timeout=30) as client:
            return await asyncio.gather(*(task(client, n) for n in range(150)))

    results = asyncio.run(scenario())

    ids = {created.item["id"] for created, _, _ in results}
    assert len(ids) == 150
    for n, (created, read, updated) in enumerate(results):
        assert created.item["properties"] == {"task": n} and created.version == 1
        assert read.item == created.item and read.version == 1
        assert updated.item["properties"] == {"task": n, "done": True}
        assert updated.version == 2


def test_fire_and_forget_many_at_once_each_confirmed_and_applied(
    amqp_url: str, worker: Names
) -> None:
    async def scenario() -> list[ItemReply]:
        async with client_for(amqp_url, worker) as client:
            message_ids = await asyncio.gather(
                *(client.create_async({"n": n}) for n in range(200)))
            assert len(set(message_ids)) == 200
            # The same message_id again, with a reply this time: the stored reply of each.
            return await asyncio.gather(*(
                client.create({"n": n}, message_id=message_id)
                for n, message_id in enumerate(message_ids)))

    replies = asyncio.run(scenario())

    assert [reply.item["properties"] for reply in replies] == [{"n": n} for n in range(200)]
    assert all(reply.version == 1 for reply in replies)


def test_a_retry_with_the_same_message_id_changes_nothing(amqp_url: str, worker: Names) -> None:
    async def scenario() -> tuple[ItemReply, ItemReply]:
        async with client_for(amqp_url, worker) as client:
            message_id = str(uuid.uuid4())
            return (await client.create({"n": 1}, message_id=message_id),
                    await client.create({"n": 1}, message_id=message_id))

    first, again = asyncio.run(scenario())

    assert again == first


# ---------------------------------------------------------------- every status


def test_every_status_is_a_typed_error_with_its_status(amqp_url: str, worker: Names) -> None:
    async def refusal(call: Awaitable[object], kind: type[CommandFailed],
                      status: int) -> CommandFailed:
        with pytest.raises(kind) as raised:
            await call
        assert raised.value.status == status and raised.value.error
        return raised.value

    async def scenario() -> None:
        async with client_for(amqp_url, worker) as client:
            item = (await client.create({})).item
            await refusal(client.create({"x": "a" * (1024 * 1024)}), PayloadTooLarge, 413)
            await refusal(client.create({}, token="BAAD"), Unauthorized, 401)
            bad = await refusal(client.send(b"nope"), BadRequest, 400)
            assert bad.error == "The data is not a JSON string"
            await refusal(client.send(encode_command("create", item={"id": "x"})),
                          BadRequest, 400)
            missing = await refusal(client.read("no-such-id"), NotFound, 404)
            assert "no-such-id" in missing.error
            await refusal(client.update(item["id"], {**item, "id": "other"}), BadRequest, 400)
            await refusal(client.read(item["id"], token="mallory"), Forbidden, 403)
            await refusal(client.update(item["id"], item, expected_version=4), Conflict, 409)
            broken = await refusal(client.create({"explode": True}), ServerError, 500)
            assert "error id" in broken.error
            unraised = await client.send(b"nope", raise_for_status=False)
            assert unraised.status == 400

    asyncio.run(scenario())


def test_no_commands_queue_is_publish_failed(amqp_url: str, prefix: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(amqp_url, prefix=prefix, token="abcd", timeout=5) as client:
            with pytest.raises(PublishFailed, match="does not exist"):
                await client.create({})
            with pytest.raises(PublishFailed, match="does not exist"):
                await client.create_async({})

    asyncio.run(scenario())


@pytest.fixture
def full_commands_queue(amqp_url: str, prefix: str) -> Iterator[str]:
    """The prefix's commands queue, holding one message and refusing more (reject-publish)."""
    queue = Names(prefix).commands
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as connection:
        channel = connection.channel()
        channel.queue_declare(queue, arguments={"x-max-length": 1,
                                                "x-overflow": "reject-publish"})
        channel.basic_publish("", queue, b"filler")
    yield queue
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as connection:
        connection.channel().queue_delete(queue)


def test_a_nack_is_publish_failed_once_the_time_is_out(
    amqp_url: str, prefix: str, full_commands_queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="thelca_client")

    async def scenario() -> None:
        async with AsyncClient(amqp_url, prefix=prefix, token="abcd", timeout=1.5) as client:
            with pytest.raises(PublishFailed, match="nack") as raised:
                await client.create_async({}, message_id="full-1")
            assert raised.value.message_id == "full-1"

    asyncio.run(scenario())
    assert caplog.text.count("nack from") >= 2, caplog.text  # not given up at the first


def test_a_nacked_command_goes_through_on_a_new_channel_once_the_queue_has_room(
    amqp_url: str, prefix: str, full_commands_queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="thelca_client")

    def make_room() -> None:
        with pika.BlockingConnection(pika.URLParameters(amqp_url)) as connection:
            while "nack from" not in caplog.text:
                time.sleep(0.02)
            method, _, _ = connection.channel().basic_get(full_commands_queue, auto_ack=True)
            assert method is not None

    async def scenario() -> str:
        async with AsyncClient(amqp_url, prefix=prefix, token="abcd", timeout=30) as client:
            return await client.create_async({}, message_id="wanted")

    helper = threading.Thread(target=make_room, daemon=True)
    helper.start()
    assert asyncio.run(scenario()) == "wanted"
    helper.join(timeout=30)
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as connection:
        method, properties, _ = connection.channel().basic_get(full_commands_queue,
                                                               auto_ack=True)
    assert method is not None and properties is not None and properties.message_id == "wanted"


def test_no_broker_is_one_line_naming_it_and_never_says_the_command_went(prefix: str) -> None:
    async def scenario() -> ConnectionFailed:
        async with AsyncClient(NO_BROKER, prefix=prefix, token="abcd", timeout=1) as client:
            with pytest.raises(ConnectionFailed) as raised:
                await client.create({}, message_id="nowhere")
            return raised.value

    failed = asyncio.run(scenario())

    assert str(failed).startswith("no broker answered at 127.0.0.1:1 within 1 s (connection "
                                  "refused")
    assert "\n" not in str(failed)
    assert failed.message_id == "nowhere" and not failed.sent
    assert "may or may not" not in str(failed)


def test_refused_credentials_are_said_at_once(amqp_url: str, prefix: str) -> None:
    wrong = amqp_url.replace("guest:guest@", "guest:not-the-password@", 1)
    assert wrong != amqp_url

    async def scenario() -> AccessRefused:
        async with AsyncClient(wrong, prefix=prefix, token="abcd", timeout=60) as client:
            with pytest.raises(AccessRefused) as raised:
                await client.create({})
            return raised.value

    started = time.monotonic()
    refused = asyncio.run(scenario())

    assert time.monotonic() - started < 30  # not retried until the 60 s timeout
    assert "refused the login of user 'guest' (ACCESS_REFUSED)" in str(refused)
    assert "not-the-password" not in str(refused)


# ---------------------------------------------------------------- a connection closed mid-flight


@pytest.fixture
def items_of(system: RunningSystem) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The items the worker's store holds now (read-only, beside the live worker)."""

    def items() -> list[dict[str, Any]]:
        store = SQLiteStore(system.store_path, writer=False)
        try:
            return [stored.item.to_json() for stored in store.items()]
        finally:
            store.close()

    yield items


def test_a_connection_closed_mid_flight_applies_nothing_twice(
    system: RunningSystem, items_of: Callable[[], list[dict[str, Any]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The worker is paused while 400 creates wait for their replies; the broker closes the
    client's connection (by its name); the worker goes on and answers into the void; the
    client re-sends each with its message_id and gets the first replies: one item each."""
    caplog.set_level(logging.WARNING, logger="thelca_client")
    name = f"thelca-test-{uuid.uuid4().hex[:8]}"
    worker = system.processes["worker"]

    async def scenario() -> tuple[list[ItemReply], int]:
        async with AsyncClient(system.amqp_url, prefix=system.prefix, token="abcd",
                               timeout=60, connection_name=name) as client:
            first = await asyncio.gather(*(client.create({"n": n}) for n in range(100)))
            worker.send_signal(signal.SIGSTOP)
            try:
                calls = asyncio.gather(*(client.create({"n": n}) for n in range(100, 500)))
                await asyncio.to_thread(wait_for_depth, system, 200)
                closed = await asyncio.to_thread(close_connections, name)
            finally:
                worker.send_signal(signal.SIGCONT)
            return [*first, *await calls], closed

    replies, closed = asyncio.run(scenario())

    assert closed == 1
    assert any("no connection to the broker" in r.getMessage() for r in caplog.records), \
        "the client never noticed the close"
    assert [reply.item["properties"] for reply in replies] == [{"n": n} for n in range(500)]
    stored = Counter(item["properties"]["n"] for item in items_of())
    assert sorted(stored) == list(range(500))
    assert set(stored.values()) == {1}, "a create was applied twice"
    assert {reply.item["id"] for reply in replies} == {item["id"] for item in items_of()}


def wait_for_depth(system: RunningSystem, depth: int) -> None:
    """Until the commands queue holds at least depth commands ready (the worker is paused)."""
    deadline = time.monotonic() + 30
    while queue_depth(system.amqp_url, system.names.commands) < depth:
        assert time.monotonic() < deadline, "the commands never reached the queue"
        time.sleep(0.05)


def test_the_blocking_clients_pipeline_shares_the_retries(
    system: RunningSystem, items_of: Callable[[], list[dict[str, Any]]], tmp_path: Path
) -> None:
    from thelca_client import Client

    with Client(system.amqp_url, prefix=system.prefix, token="abcd", timeout=30) as client:
        created = client.create_many([{"n": n} for n in range(300)])
        published = client.publish_many(
            [encode_command("create", item={"properties": {"m": m}}) for m in range(100)])

    assert [reply.item["properties"] for reply in created] == [{"n": n} for n in range(300)]
    assert len(set(published)) == 100
    deadline = time.monotonic() + 30
    while len(items_of()) < 400 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(items_of()) == 400
