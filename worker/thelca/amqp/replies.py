"""The reply connection: what goes to clients' queues (replies, replay streams) goes out here.

On RabbitMQ 3.10 a publish by direct reply-to to a made-up
`amq.rabbitmq.reply-to.X.Y` name, or to a client whose node died, crashes the
broker's channel process, and the broker closes the WHOLE connection (541
INTERNAL_ERROR), not only that channel (upstream issue 6396). Published on the
connection that consumes the commands, one such reply took the commands' acks
down with it: the batch came back, crashed it again, and after twenty rounds
the broker dead-lettered commands that had taken effect, tokens and all. So a
session publishes to clients on a second connection of its own, on the same
ioloop, opened when the session starts and again whenever it died and
something waits to go out. Its loss costs replies, never the consumer's
connection, and nothing the consumer acks waits for it.

A dead connection costs only the message that killed it: whatever was
unconfirmed when it died becomes a suspect, sent again one at a time on the
next connection, each after the previous one's confirm. A suspect in flight
alone when the broker closes the connection again is the culprit: it is
dropped with everything queued for the same owner (the same replay request,
or the same reply_to) and reported. A suspect may have been delivered before
the first death, so a client can get a reply twice; clients drop replies
they no longer wait for (correlation_id), subscribers duplicate events (id).

Everything runs on the session's ioloop thread, like the session itself.
"""

from __future__ import annotations

import copy
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import takewhile
from typing import Any, Generic, Protocol, TypeVar

import pika
import pika.channel
import pika.connection
import pika.exceptions
import pika.frame
import pika.spec

from thelca import metrics
from thelca.amqp.connection import broker_login
from thelca.amqp.convert import basic_properties
from thelca.amqp.flushing import FlushingConnection
from thelca.roles.messages import Outgoing

log = logging.getLogger(__name__)

CONNECTION_FORCED = 320  # the broker shuts down, or an operator closed us: not a message's fault
MAX_WAITING_BYTES = 64 * 1024 * 1024  # replies held while the connection is down, at most
SHUTDOWN_SECONDS = 2.0  # closing after the session's loop stopped waits this long at most


class Owned(Protocol):
    """What a publish belongs to (a replay request): how many of its publishes await a confirm."""

    unconfirmed: int


T = TypeVar("T", bound=Owned)


@dataclass(eq=False)
class _Entry(Generic[T]):
    """One message to deliver, whose it is, and whether it was in flight when a connection died."""

    message: Outgoing
    owner: T | None
    mandatory: bool
    suspect: bool = False

    def same_place(self, other: _Entry[T]) -> bool:
        """Whether other goes where this one goes: the same owner, or without one the same queue."""
        if self.owner is not None:
            return other.owner is self.owner
        return other.owner is None and other.message.routing_key == self.message.routing_key


class ReplyConnection(Generic[T]):
    """A second connection on the session's ioloop, for messages to clients' queues."""

    def __init__(
        self,
        role: str,
        params: pika.URLParameters,
        ioloop: Any,
        *,
        name: str,
        on_confirmed: Callable[[list[T], bool], None],
        on_undeliverable: Callable[[T | None, Outgoing, str], None],
        on_returned: Callable[[str], None] | None = None,
    ) -> None:
        self.role = role
        self.params = copy.copy(params)  # the same broker, under a name of its own
        self.params.client_properties = {"connection_name": name}
        self.login = broker_login(params)  # every reply carries it as user_id, broker-checked
        self.ioloop = ioloop
        self.on_confirmed = on_confirmed
        self.on_undeliverable = on_undeliverable
        self.on_returned = on_returned or (lambda routing_key: None)
        self._connection: FlushingConnection | None = None
        self._channel: pika.channel.Channel | None = None
        self._queue: deque[_Entry[T]] = deque()
        self._in_flight: dict[int, _Entry[T]] = {}  # publish sequence number -> entry
        self._next_seq = 1
        self._waiting_bytes = 0
        self._closed = False
        self._closed_why: Exception | None = None  # a channel closed by the broker, and why
        self._deaths = 0  # in a row, without a confirm in between: backoff
        self._reopen_scheduled = False
        self._after_close: Callable[[], None] | None = None

    # ------------------------------------------------------------ what the session calls

    def open(self) -> None:
        """Open now (the session starts), so that the first reply waits for no handshake."""
        if self._connection is None and not self._closed:
            self._connect()

    def publish(self, message: Outgoing, owner: T | None = None, *, mandatory: bool = False
                ) -> None:
        """Send message to its client's queue when the connection allows; never raises."""
        if self._closed:
            return
        size = len(message.body)
        if owner is None and self._waiting_bytes + size > MAX_WAITING_BYTES:
            log.warning("%s: the reply connection is down and %d bytes of replies wait; a "
                        "reply is dropped (its client retries with the same message_id)",
                        self.role, self._waiting_bytes)
            return
        if owner is not None:
            owner.unconfirmed += 1
        self._waiting_bytes += size
        self._queue.append(_Entry(message, owner, mandatory))
        if self._channel is not None:
            self._pump()
        elif self._connection is None:
            self._schedule_reopen()

    def flush(self) -> None:
        """Write what was published now, rather than at the end of the loop's turn."""
        if self._connection is not None:
            self._connection.flush()

    @property
    def outstanding(self) -> int:
        """Messages queued or awaiting their confirm."""
        return len(self._queue) + len(self._in_flight)

    def close(self) -> None:
        """Stop for good (the session closes): what was not sent is not sent."""
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        connection = self._connection
        if connection is not None and not (connection.is_closing or connection.is_closed):
            connection.close()

    def shutdown(self) -> None:
        """After the session's loop stopped: close, running the loop until closed (2 s at most)."""
        self.close()
        connection = self._connection
        if connection is None or connection.is_closed:
            return
        self._after_close = self.ioloop.stop
        timer = self.ioloop.call_later(SHUTDOWN_SECONDS, self.ioloop.stop)
        try:
            self.ioloop.start()
        finally:
            self.ioloop.remove_timeout(timer)
            self._after_close = None

    # ------------------------------------------------------------ the connection's life

    def _connect(self) -> None:
        try:
            self._connection = FlushingConnection(
                self.params,
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_closed,
                custom_ioloop=self.ioloop,
            )
        except Exception as error:  # no socket could even be made
            log.warning("%s: cannot open the reply connection: %s", self.role, error)
            self._connection = None
            self._deaths += 1
            self._schedule_reopen()

    def _on_open(self, connection: pika.connection.Connection) -> None:
        if self._closed:
            connection.close()
            return
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel: pika.channel.Channel) -> None:
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm)
        self._channel = channel
        self._next_seq = 1
        self._pump()

    def _on_open_error(self, connection: pika.connection.Connection, error: Any) -> None:
        log.warning("%s: cannot open the reply connection: %s", self.role, error)
        self._deaths += 1
        self._ended()

    def _on_channel_closed(self, channel: pika.channel.Channel, reason: Any) -> None:
        # The broker closes a channel for a reply it refuses: start over on a new connection.
        self._closed_why = reason
        self._channel = None
        connection = self._connection
        if connection is not None and not (connection.is_closing or connection.is_closed):
            connection.close()

    def _on_closed(self, connection: pika.connection.Connection, reason: Any) -> None:
        why = self._closed_why or reason
        self._closed_why = None
        if not self._closed:
            self._lost(why)
        self._ended()

    def _ended(self) -> None:
        self._connection = self._channel = None
        if self._after_close is not None:
            self._after_close()
        elif not self._closed:
            self._schedule_reopen()

    def _schedule_reopen(self) -> None:
        """Open again when something waits to go out: at once after one death, then backing off."""
        if self._reopen_scheduled or self._closed or not self._queue:
            return
        self._reopen_scheduled = True
        delay = 0.0 if self._deaths <= 1 else min(5.0, 0.05 * 2 ** self._deaths)
        self.ioloop.call_later(delay, self._reopen)

    def _reopen(self) -> None:
        self._reopen_scheduled = False
        if self._connection is None and not self._closed and self._queue:
            self._connect()

    # ------------------------------------------------------------ publishing

    def _pump(self) -> None:
        """Publish what waits: pipelined, except a suspect, which goes alone."""
        channel = self._channel
        while channel is not None and channel.is_open and self._queue:
            entry = self._queue[0]
            if self._in_flight and (entry.suspect or self._suspect_in_flight()):
                return  # a suspect goes alone: after the others' confirms, before the next
            self._queue.popleft()
            message = entry.message
            properties = basic_properties(message)
            properties.user_id = self.login
            try:
                channel.basic_publish(message.exchange, message.routing_key, message.body,
                                      properties, mandatory=entry.mandatory)
            except Exception as error:  # pika cannot even encode it: this message alone
                self._drop(entry, f"it cannot be sent: {error!r}")
                continue
            self._in_flight[self._next_seq] = entry
            self._next_seq += 1

    def _suspect_in_flight(self) -> bool:
        return len(self._in_flight) == 1 and next(iter(self._in_flight.values())).suspect

    def _on_confirm(self, frame: pika.frame.Method[Any]) -> None:
        method = frame.method
        tag = int(method.delivery_tag)
        refused = isinstance(method, pika.spec.Basic.Nack)
        seqs = (list(takewhile(lambda seq: seq <= tag, self._in_flight))
                if method.multiple else [tag])
        owners: list[T] = []
        for seq in seqs:
            entry = self._in_flight.pop(seq, None)
            if entry is None:
                continue
            self._waiting_bytes -= len(entry.message.body)
            if entry.owner is not None:
                entry.owner.unconfirmed -= 1
                owners.append(entry.owner)
            if not refused:
                metrics.PUBLISHED.labels(self.role, "(default)").inc()
        self._deaths = 0
        self._pump()
        self.on_confirmed(owners, refused)

    def _on_return(
        self,
        channel: pika.channel.Channel,
        method: pika.spec.Basic.Return,
        properties: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        self.on_returned(str(method.routing_key))

    # ------------------------------------------------------------ a dead connection

    def _lost(self, why: Any) -> None:
        """The connection died: find the culprit, or make suspects of what was in flight."""
        entries = [self._in_flight[seq] for seq in sorted(self._in_flight)]
        self._in_flight.clear()
        if len(entries) == 1 and entries[0].suspect and _refused_by_broker(why):
            self._drop(entries[0], f"the broker closed the reply connection over it: {why}")
            return
        self._deaths += 1
        if entries:
            log.warning("%s: the reply connection was lost (%s); %d unconfirmed messages are "
                        "sent again, one at a time", self.role, why, len(entries))
        for entry in entries:
            entry.suspect = True
        self._queue.extendleft(reversed(entries))

    def _drop(self, culprit: _Entry[T], reason: str) -> None:
        """A message that cannot be delivered: drop it, and what goes to the same place."""
        dropped = [culprit, *(e for e in self._queue if culprit.same_place(e))]
        self._queue = deque(e for e in self._queue if not culprit.same_place(e))
        for entry in dropped:
            self._waiting_bytes -= len(entry.message.body)
            if entry.owner is not None:
                entry.owner.unconfirmed -= 1
        log.warning("%s: a message to %r cannot be delivered (%s); %d dropped", self.role,
                    culprit.message.routing_key, reason, len(dropped))
        metrics.REPLIES_UNDELIVERABLE.labels(self.role).inc(len(dropped))
        self.on_undeliverable(culprit.owner, culprit.message, reason)


def _refused_by_broker(why: Any) -> bool:
    """Whether the broker closed the connection (or channel) over something we sent."""
    if isinstance(why, (pika.exceptions.ConnectionClosedByBroker,
                        pika.exceptions.ChannelClosedByBroker)):
        return bool(why.reply_code != CONNECTION_FORCED)
    return False
