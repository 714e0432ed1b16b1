"""A subscription's connection: its live and replay queues, and one inbox for all it hears.

thelca_client.subscription follows the protocol (replay, then live, each event
once); this module does the broker's side of one connection of it. A Session
is made by Sessions.start: a queue bound to `<prefix>.events` and consumed, a
second queue for the replay, and an inbox that gets every delivery of both,
the loss of the connection, and the subscription's own ticks and wake-ups, in
the order they happen.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import pika.exceptions
from pika.channel import Channel
from pika.spec import Basic, BasicProperties

from thelca_client.asyncio_connection import AsyncConnection
from thelca_client.asyncio_link import Link, Lost
from thelca_client.broker import backoff, describe, is_connection_loss
from thelca_client.contract import ContractError, Event, Names, decode_event, loads_object
from thelca_client.errors import ThelcaClientError

log = logging.getLogger(__name__)

PREFETCH: Final = 500  # deliveries in flight per queue: the broker keeps the rest


@dataclass
class Delivery:
    live: bool
    tag: int
    properties: BasicProperties
    body: bytes

    def event(self) -> Event | None:
        """The event it carries; None (and a warning) when it is not a JSON event."""
        try:
            return decode_event(loads_object(self.body, "an event"))
        except ContractError:
            log.warning("subscription: dropped a message that is not a JSON event")
            return None


@dataclass
class LinkLost:
    error: BaseException


class Tick:
    """Time to ask for another replay."""


class Wake:
    """The subscription was closed."""


Inbox = asyncio.Queue[Delivery | LinkLost | Tick | Wake]


@dataclass
class Session:
    """What one connection of the subscription is doing."""

    link: Link
    channel: Channel
    inbox: Inbox
    replay_queue: str
    bound_at: float
    request: str | None = None  # correlation_id of the replay being streamed, if any
    replays: int = 0
    heard_at: float = 0.0  # when the replay last sent something
    catching_up: bool = True
    replayed: set[str] = field(default_factory=set)  # ids the replays of this session carried
    held: deque[tuple[Delivery, Event]] = field(default_factory=deque)  # live, during catch-up
    latest: datetime | None = None  # the latest time among the replayed events

    def ack(self, delivery: Delivery) -> None:
        if self.link.lost is None and self.channel.is_open:
            self.channel.basic_ack(delivery.tag)


class Sessions:
    """Opens the sessions of one subscription, one after another, on its connection.

    The first connect is bounded by the client's timeout; after a loss, the
    next session is tried for as long as it takes, with backoff.
    """

    def __init__(self, connection: AsyncConnection, names: Names, *, timeout: float) -> None:
        self.connection = connection
        self.names = names
        self.timeout = timeout
        self._connected_once = False

    async def start(self) -> Session:
        """Connect, bind, consume: a new session; retried while the broker is away."""
        delays = backoff()
        warned = False
        while True:
            try:
                return await self._open()
            except Lost as lost:
                if isinstance(lost.error, Exception) and not is_connection_loss(lost.error):
                    raise ThelcaClientError(f"the broker refused the subscription: "
                                            f"{describe(lost.error)}") from None
                delay = next(delays)
                log.log(logging.DEBUG if warned else logging.WARNING,
                        "subscription: no connection to the broker (%s); trying again in "
                        "%.2f s", describe(lost.error) if isinstance(lost.error, Exception)
                        else "lost", delay)
                warned = True
                await asyncio.sleep(delay)

    async def _open(self) -> Session:
        if self._connected_once:
            link = await self.connection.ready(None)
        else:
            link = await self.connection.connect(timeout=self.timeout)
            self._connected_once = True
        channel = link.channel
        assert channel is not None
        inbox: Inbox = asyncio.Queue()
        link.when_lost(lambda error: inbox.put_nowait(LinkLost(error)))
        await link.step(lambda done: channel.basic_qos(prefetch_count=PREFETCH, callback=done))
        live = await _queue(link, channel)
        try:
            await link.step(lambda done: channel.queue_bind(live, self.names.events,
                                                            callback=done))
        except Lost as lost:
            if isinstance(lost.error, pika.exceptions.ChannelClosedByBroker) \
                    and lost.error.reply_code == 404:
                raise ThelcaClientError(f"no exchange {self.names.events}: is a thelca worker "
                                        "running with the same prefix?") from None
            raise
        bound_at = asyncio.get_running_loop().time()
        await _consume(link, channel, live, inbox, live=True)
        replay = await _queue(link, channel)
        await _consume(link, channel, replay, inbox, live=False)
        return Session(link, channel, inbox, replay, bound_at)


async def _queue(link: Link, channel: Channel) -> str:
    declared = await link.step(lambda done: channel.queue_declare(
        "", exclusive=True, auto_delete=True, callback=done))
    return str(declared.method.queue)


async def _consume(link: Link, channel: Channel, queue: str, inbox: Inbox, *,
                   live: bool) -> None:
    def on_message(channel: Channel, method: Basic.Deliver, properties: BasicProperties,
                   body: bytes) -> None:
        inbox.put_nowait(Delivery(live, int(method.delivery_tag or 0), properties, body))

    await link.step(lambda done: channel.basic_consume(queue, on_message, callback=done))
