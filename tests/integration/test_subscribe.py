"""AsyncClient.subscribe against the real worker, logger and replay consumer (subprocesses).

History then live events, each event id once, no gap: across a burst of commands
sent while the subscription starts, and across its connection closed by the broker.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import RunningSystem, _running_system, close_connections
from thelca_client import AsyncClient, Event, Subscription, ThelcaClientError, Unauthorized

pytestmark = pytest.mark.broker

CREATED = "Item created"


@pytest.fixture
def live(amqp_url: str, prefix: str, tmp_path: Path) -> Iterator[RunningSystem]:
    """Worker, logger and replay consumer as real processes."""
    yield from _running_system(amqp_url, prefix, tmp_path, roles=("worker", "logger", "replay"))


def client_of(system: RunningSystem, **options: object) -> AsyncClient:
    return AsyncClient(system.amqp_url, prefix=system.prefix, token="abcd", timeout=30,
                       **options)  # type: ignore[arg-type]


class Follower:
    """Reads a subscription in a task of its own until told which item ids to expect."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self.events: list[Event] = []
        self.expected: set[str] | None = None
        self.progress = asyncio.Event()
        self.task = asyncio.create_task(self._follow())

    def created(self) -> set[str]:
        return {event.value["id"] for event in self.events if event.type == CREATED}

    async def _follow(self) -> None:
        async for event in self.subscription:
            self.events.append(event)
            self.progress.set()
            if self.expected is not None and self.expected <= self.created():
                return

    async def until(self, expected: set[str], timeout: float = 60) -> list[Event]:
        self.expected = expected
        if expected <= self.created():
            self.task.cancel()
        else:
            await asyncio.wait_for(self.task, timeout)
        return self.events

    async def until_count(self, count: int) -> None:
        while len(self.events) < count:
            self.progress.clear()
            await asyncio.wait_for(self.progress.wait(), 60)


def assert_each_once(events: list[Event], expected: set[str]) -> None:
    ids = Counter(event.id for event in events)
    assert all(n == 1 for n in ids.values()), "an event id came twice"
    created = Counter(event.value["id"] for event in events if event.type == CREATED)
    assert set(created) >= expected, f"{len(expected - set(created))} creates never came"
    assert all(n == 1 for n in created.values()), "an item's creation came twice"


def test_subscribe_catches_up_across_a_burst_of_commands_sent_while_it_starts(
    live: RunningSystem,
) -> None:
    async def scenario() -> tuple[list[Event], set[str]]:
        async with client_of(live) as client:
            history = await asyncio.gather(*(client.create({"n": n}) for n in range(50)))
            follower = Follower(client.subscribe(types=[CREATED]))
            # The burst starts with the subscription: some of it is history by the time
            # the replay reads the log, some comes live, some both.
            burst = await asyncio.gather(*(client.create({"burst": n}) for n in range(400)))
            expected = {reply.item["id"] for reply in [*history, *burst]}
            return await follower.until(expected), expected

    events, expected = asyncio.run(scenario())

    assert_each_once(events, expected)
    assert {event.type for event in events} == {CREATED}
    history = [event.value["properties"]["n"] for event in events
               if "n" in event.value["properties"]]
    assert history == list(range(50)), "the history came out of log order"


def test_events_published_before_the_bind_but_logged_after_the_replay_still_come(
    live: RunningSystem,
) -> None:
    """The gap the replay protocol must close: the logger is paused, so 30 events published
    before the subscription bound its queue are in nobody's hands when the first replay
    reads the log. They come all the same, by the replay asked again once the log moved."""
    logger = live.processes["logger"]

    async def scenario() -> tuple[list[Event], set[str]]:
        async with client_of(live) as client:
            history = await asyncio.gather(*(client.create({"n": n}) for n in range(50)))
            live.wait_for_log(lambda lines: len(lines) >= 50)
            logger.send_signal(signal.SIGSTOP)
            try:
                unlogged = await asyncio.gather(*(client.create({"m": m}) for m in range(30)))
                follower = Follower(client.subscribe(types=[CREATED]))
                await follower.until_count(50)  # the first replay: the log as it was
            finally:
                logger.send_signal(signal.SIGCONT)
            after = await asyncio.gather(*(client.create({"k": k}) for k in range(20)))
            expected = {reply.item["id"] for reply in [*history, *unlogged, *after]}
            return await follower.until(expected), expected

    events, expected = asyncio.run(scenario())

    assert_each_once(events, expected)


def test_a_subscription_whose_connection_is_closed_resumes_without_losing_events(
    live: RunningSystem, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="thelca_client")
    name = f"thelca-test-{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[list[Event], set[str], int]:
        async with client_of(live, connection_name=name) as client:
            follower = Follower(client.subscribe(types=[CREATED]))
            before = await asyncio.gather(*(client.create({"before": n}) for n in range(200)))
            await follower.until_count(20)
            # Commands flow while the broker closes the subscription's connection.
            during = asyncio.gather(*(client.create({"during": n}) for n in range(400)))
            closed = await asyncio.to_thread(close_connections, f"{name} subscription")
            after = await asyncio.gather(*(client.create({"after": n}) for n in range(100)))
            replies = [*before, *await during, *after]
            expected = {reply.item["id"] for reply in replies}
            return await follower.until(expected), expected, closed

    events, expected, closed = asyncio.run(scenario())

    assert closed == 1
    assert any("subscription: the connection was lost" in r.getMessage()
               for r in caplog.records), "the subscription never noticed the close"
    assert_each_once(events, expected)


def test_since_and_types_choose_the_history(live: RunningSystem) -> None:
    async def scenario() -> list[Event]:
        async with client_of(live) as client:
            created = await client.create({"v": 0})
            item = created.item
            first = await client.update(item["id"], {**item, "properties": {"v": 1}})
            await client.update(item["id"], {**first.item, "properties": {"v": 2}})
            lines = live.wait_for_log(lambda ls: sum(
                1 for line in ls if line["type"] == "Item updated") == 2)
            since = next(line["time"] for line in lines if line["type"] == "Item updated")
            async with client.subscribe(since=since, types=["Item updated"]) as updates:
                return [await anext(updates), await anext(updates)]

    events = asyncio.run(scenario())

    assert [event.value["properties"] for event in events] == [{"v": 1}, {"v": 2}]
    assert [event.extra["version"] for event in events] == [2, 3]


def test_a_refused_subscription_raises_the_typed_error(live: RunningSystem) -> None:
    async def scenario() -> None:
        async with client_of(live) as client:
            subscription = client.subscribe(token="BAAD")
            with pytest.raises(Unauthorized) as raised:
                await asyncio.wait_for(anext(subscription), 60)
            assert raised.value.status == 401

    asyncio.run(scenario())


def test_no_replay_consumer_is_an_error_not_a_hang(system: RunningSystem) -> None:
    async def scenario() -> None:
        async with AsyncClient(system.amqp_url, prefix=system.prefix, token="abcd",
                               timeout=1) as client:
            with pytest.raises(ThelcaClientError, match="no replay consumer answered"):
                await asyncio.wait_for(anext(client.subscribe()), 60)

    asyncio.run(scenario())
