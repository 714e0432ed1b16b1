"""The batch session's publishing: a publish channel of its own and the batches' confirms.

Publishes go out on a channel of their own, beside the one that consumes and
acks. A refused publish (a nack) retires that channel: on RabbitMQ 3.10 a
channel whose first publish to a quorum queue came while the queue's leader
was down has every later publish nacked until that node returns, while a new
channel works within half a second of the election. Its unconfirmed publishes
count as refused too, and a fresh channel opens, without touching the
deliveries: at once if the retired one had publishes confirmed (the refusal
was about a message, a full queue say), else after a pause (0.05 s, doubling
to 0.5 s while fresh channels are refused too). Batches handled meanwhile
wait for it, unacked; each message goes out once, and a refused one is left
to the republish (thelca.amqp.republish).

An event already on its way in one batch is not sent again by another, which
answers for it until the broker confirms it. What a batch does once all its
publishes are confirmed (ack, requeue, keep) is the batch consumer's
(thelca.amqp.batch), behind `_settle`.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import pika
import pika.channel
import pika.frame
import pika.spec

from thelca import metrics
from thelca.amqp.connection import broker_login
from thelca.amqp.convert import basic_properties
from thelca.amqp.session import ConnectionSession
from thelca.roles.messages import Outgoing

if TYPE_CHECKING:
    from thelca.amqp.batch import BatchConsumer

log = logging.getLogger(__name__)

# Seconds before a fresh publish channel when the one refused never had a publish confirmed,
# doubling while fresh ones are refused too: no churn of channels while a queue has no leader,
# and batches handled meanwhile wait no longer than this.
FRESH_CHANNEL_FIRST = 0.05
FRESH_CHANNEL_LONGEST = 0.5


@dataclass(eq=False)
class Batch:
    """Deliveries handled together, and the publishes that must be confirmed first."""

    delivery_tags: list[int]
    received: list[float]
    published: list[Outgoing]
    unconfirmed: int = 0
    nacked: bool = False
    unsent: list[Outgoing] | None = None  # waiting for a publish channel
    keys: list[tuple[str, str]] = field(default_factory=list)  # its messages in _on_their_way


class PublishingSession(ConnectionSession[Batch]):
    """A batch session's publish channel, and the batches whose publishes await confirms.

    Subclasses provide `_publisher_opened` (a fresh publish channel is ready) and
    `_settle` (finish the batches whose publishes are all confirmed).
    """

    def __init__(self, owner: BatchConsumer, params: pika.URLParameters) -> None:
        super().__init__(owner, params)
        self.owner: BatchConsumer = owner
        self._batches: deque[Batch] = deque()
        self.publisher: pika.channel.Channel | None = None  # publishes go out here
        self._opening_publisher = False
        self._publisher_works = False  # the broker has confirmed a publish on it
        self._fresh_channel_delay = 0.0
        self._on_their_way: set[tuple[str, str]] = set()  # (exchange, message_id) unconfirmed
        self._confirms_pending = metrics.CONFIRMS_PENDING.labels(owner.name)
        # Events and dead letters carry the login as user_id, which the broker checks: a
        # dead letter with the worker's user_id was dead-lettered by the worker, not forged.
        self._login = broker_login(params)

    def _publisher_opened(self) -> None:
        """A fresh publish channel is ready: publish what waited for it."""
        raise NotImplementedError

    def _settle(self) -> None:
        """Finish the batches whose publishes are all confirmed, oldest first."""
        raise NotImplementedError

    # ------------------------------------------------------------ the publish channel

    def _open_publisher(self) -> None:
        if (self._opening_publisher or self.publisher is not None or self._closing
                or self.connection is None or not self.connection.is_open):
            return
        self._opening_publisher = True
        self.connection.channel(on_open_callback=self._on_publisher_open)

    def _on_publisher_open(self, channel: pika.channel.Channel) -> None:
        self._opening_publisher = False
        if self._closing:
            channel.close()
            return
        channel.add_on_close_callback(self._on_publisher_closed)
        channel.confirm_delivery(ack_nack_callback=partial(self._on_publisher_confirm, channel))
        self.publisher = channel
        self._publisher_works = False
        self._next_seq = 1  # the session's confirm bookkeeping follows this channel
        self._publisher_opened()

    def _on_publisher_confirm(self, channel: pika.channel.Channel,
                              frame: pika.frame.Method[Any]) -> None:
        if channel is not self.publisher:
            return  # a retired channel's: its publishes were counted as refused already
        if isinstance(frame.method, pika.spec.Basic.Nack):
            self._on_confirm(frame)
            self._retire_publisher("the broker refused a publish")
        else:
            self._publisher_works = True
            self._fresh_channel_delay = 0.0
            self._on_confirm(frame)

    def _on_publisher_closed(self, channel: pika.channel.Channel, reason: Any) -> None:
        if channel is not self.publisher or self._closing:
            return
        if self.connection is None or not self.connection.is_open:
            self.publisher = None  # the connection went: so does the session, with its acks
            return
        self._retire_publisher(f"the broker closed the publish channel: {reason}")

    def _retire_publisher(self, why: str) -> None:
        """Publish no more on this channel: what it has not confirmed counts as refused."""
        channel, self.publisher = self.publisher, None
        if channel is None:
            return
        for batch in self._in_flight.values():
            batch.unconfirmed -= 1
            batch.nacked = True
        self._in_flight.clear()
        if channel.is_open:
            channel.close()
        # A channel that worked was refused a message (a full queue, say): a fresh one at
        # once. One that never did may be stuck (see the module docstring): let the
        # election end first.
        delay = 0.0 if self._publisher_works else min(
            FRESH_CHANNEL_LONGEST, max(FRESH_CHANNEL_FIRST, self._fresh_channel_delay * 2))
        self._fresh_channel_delay = delay
        log.warning("%s: %s; publishing on a fresh channel in %.1fs", self.owner.name, why,
                    delay)
        assert self.connection is not None
        self.connection.ioloop.call_later(delay, self._open_publisher)
        self._confirms_pending.set(0)
        self._settle()

    # ------------------------------------------------------------ publish

    def _publish_batch(
        self, delivery_tags: list[int], publish: list[Outgoing], received: list[float]
    ) -> Batch:
        """Publish what a batch produced (or, between publish channels, hold it for the next).

        Replies go out at once on the reply connection, and the batch's ack waits for none
        of them (see thelca.amqp.batch).
        """
        assert self.replies is not None
        rest = []
        for message in publish:
            if message.exchange:
                rest.append(message)
            else:  # thelca sends to the default exchange only to clients
                self.replies.publish(message)
        self.replies.flush()  # the replies leave before the events: a client waits for them
        batch = Batch(delivery_tags, received, [], unsent=rest or None)
        self._batches.append(batch)
        if self.publisher is not None and batch.unsent is not None:
            self._send(batch)
        self._settle()
        if self.connection is not None:
            self.connection.flush()  # the events leave now, not at the loop's next turn
        return batch

    def _send(self, batch: Batch) -> None:
        assert self.publisher is not None and batch.unsent is not None
        for message in batch.unsent:
            key = key_of(message)
            if key is not None and key in self._on_their_way:
                continue  # already on its way in another batch, which answers for it
            properties = basic_properties(message)
            properties.user_id = self._login
            self.publisher.basic_publish(
                message.exchange, message.routing_key, message.body, properties
            )
            self._published(batch)
            batch.published.append(message)
            if key is not None:
                self._on_their_way.add(key)
                batch.keys.append(key)
        batch.unsent = None
        self._confirms_pending.set(len(self._in_flight))

    def _confirmed(self, confirmed: list[Batch], refused: bool) -> None:
        if refused:
            for batch in confirmed:
                batch.nacked = True
        self._confirms_pending.set(len(self._in_flight))
        self._settle()


def key_of(message: Outgoing) -> tuple[str, str] | None:
    """What tells one event (or dead letter) from another; replies have none."""
    if message.exchange and message.message_id:
        return message.exchange, message.message_id
    return None
