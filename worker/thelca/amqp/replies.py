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

A dead connection costs only the message that killed it; what waits, what
is in flight, and how the culprit is found are thelca.amqp.reply_flow's.

Everything runs on the session's ioloop thread, like the session itself.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import pika
import pika.connection

from thelca.amqp.connection import broker_login
from thelca.amqp.reply_flow import Entry, Owned, ReplyFlow
from thelca.roles.messages import Outgoing

log = logging.getLogger(__name__)

MAX_WAITING_BYTES = 64 * 1024 * 1024  # replies held while the connection is down, at most
SHUTDOWN_SECONDS = 2.0  # closing after the session's loop stopped waits this long at most

T = TypeVar("T", bound=Owned)


class ReplyConnection(ReplyFlow[T]):
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
        super().__init__(role, broker_login(params), on_confirmed=on_confirmed,
                         on_undeliverable=on_undeliverable, on_returned=on_returned)
        self.params = copy.copy(params)  # the same broker, under a name of its own
        self.params.client_properties = {"connection_name": name}
        self.ioloop = ioloop
        self._connection: pika.SelectConnection | None = None
        self._closed = False
        self._closed_why: Exception | None = None  # a channel closed by the broker, and why
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
        self._queue.append(Entry(message, owner, mandatory))
        if self._channel is not None:
            self._pump()
        elif self._connection is None:
            self._schedule_reopen()

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
            self._connection = pika.SelectConnection(
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
