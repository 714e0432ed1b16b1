"""One connection and its channel, from opening to closing, with pipelined publisher confirms.

A session opens a SelectConnection, declares its owner's topology and
consumes. Every publish is counted against what it belongs to (a batch of
deliveries, a replay request) until the broker confirms it, so that a
subclass acks a delivery only after everything it produced is confirmed;
confirms are pipelined instead of waited for one by one. Stopping cancels
the consumer, lets what is in flight drain for up to DRAIN_TIMEOUT, then
closes: whatever is still unacked goes back to the queue.

Messages to clients' queues (replies, replay streams) go out on a second
connection, `replies` (see thelca.amqp.replies): a reply the broker chokes on
costs that reply, never this connection and the acks it carries.

Everything happens on the connection's own thread (pika connections are not
thread-safe); `request_stop()` is the one call that is safe from elsewhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import pika
import pika.channel
import pika.connection
import pika.frame
import pika.spec

from thelca import metrics
from thelca.amqp.confirms import take_confirmed
from thelca.amqp.connection import Reconnecting, refusal
from thelca.amqp.flushing import FlushingConnection
from thelca.amqp.replies import ReplyConnection
from thelca.amqp.topology import declare_steps, run_steps
from thelca.roles.messages import Outgoing

log = logging.getLogger(__name__)


class Pending(Protocol):
    """What publishes belong to (a batch, a replay request): how many await their confirm."""

    unconfirmed: int


P = TypeVar("P", bound=Pending)


class ConnectionSession(Generic[P]):
    """One connection and its channel, from opening to closing; subclasses do the work.

    Its state dies with it, so no delivery tag outlives its channel. Subclasses
    provide `_start` (declarations done: start consuming), `_confirmed` (what
    the broker confirmed or refused) and `_drained`, and may add to
    `_prepare_channel`, `_abandon_unfinished`, `_before_close` and `_ended`.
    """

    DRAIN_TIMEOUT = 30.0  # seconds a stop waits for what is in flight

    def __init__(self, owner: Reconnecting, params: pika.URLParameters) -> None:
        self.owner = owner
        self.params = params
        self.connection: FlushingConnection | None = None
        self.channel: pika.channel.Channel | None = None
        self.consumed = False
        self.consumer_tag: str | None = None
        self.replies: ReplyConnection[P] | None = None  # opened once the topology is declared
        self._closing = False
        self._stop_deadline = 0.0
        self._next_seq = 1
        self._in_flight: dict[int, P] = {}  # publish sequence number -> what it belongs to

    def run(self) -> None:
        try:
            self.connection = FlushingConnection(
                self.params,
                on_open_callback=self._on_connection_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_connection_closed,
            )
        except Exception as error:
            log.warning("%s: cannot connect to %s:%s: %s", self.owner.name, self.params.host,
                        self.params.port, error)
            return
        try:
            self.connection.ioloop.start()
        finally:
            if self.replies is not None:
                self.replies.shutdown()
            self._ended()

    def request_stop(self) -> None:
        connection = self.connection
        if connection is None:
            return
        try:
            connection.ioloop.add_callback_threadsafe(self._begin_stop)
        except Exception:  # the loop is already gone
            log.debug("stop requested after the loop closed")

    def _ended(self) -> None:
        """The loop has stopped; release what the session holds."""

    # ------------------------------------------------------------ connection and channel

    def _on_open_error(self, connection: pika.connection.Connection, error: Any) -> None:
        log.warning("%s: cannot connect to %s:%s: %s", self.owner.name,
                    self.params.host, self.params.port, error)
        self._stop_loop()

    def _on_connection_open(self, connection: pika.connection.Connection) -> None:
        self.owner.on_state(f"connected to {self.params.host}:{self.params.port}")
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_connection_closed(self, connection: pika.connection.Connection, reason: Any) -> None:
        if not self._closing:
            log.warning("%s: disconnected: connection lost: %s", self.owner.name, reason)
            metrics.RECONNECTS.labels(self.owner.name).inc()
        metrics.CONSUMING.labels(self.owner.name).set(0)
        self._stop_loop()

    def _on_channel_closed(self, channel: pika.channel.Channel, reason: Any) -> None:
        if not self._closing:
            log.warning("%s: disconnected: channel closed: %s", self.owner.name, reason)
            metrics.RECONNECTS.labels(self.owner.name).inc()
        metrics.CONSUMING.labels(self.owner.name).set(0)
        refusal(self.owner, self.consumed, reason)
        self._close_connection()

    def _close_connection(self) -> None:
        self._closing = True
        if self.replies is not None:
            self.replies.close()
        if self.connection is not None and not (
            self.connection.is_closing or self.connection.is_closed
        ):
            self.connection.close()
        else:
            self._stop_loop()

    def _stop_loop(self) -> None:
        if self.connection is not None:
            self.connection.ioloop.stop()

    def _on_channel_open(self, channel: pika.channel.Channel) -> None:
        self.channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        self._prepare_channel(channel)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm)
        run_steps(declare_steps(channel, self.owner.topology, self.owner.prefetch),
                  self._on_declared)

    def _prepare_channel(self, channel: pika.channel.Channel) -> None:
        """Add callbacks before publishing starts (the replay's returns)."""

    def _on_declared(self) -> None:
        if self.owner.stopping:  # a stop asked for while the declarations ran
            self._begin_stop()
            return
        assert self.connection is not None
        self.replies = ReplyConnection(
            self.owner.name, self.params, self.connection.ioloop,
            name=f"thelca {self.owner.name} replies {self.owner.queue}",
            on_confirmed=self._confirmed, on_undeliverable=self._undeliverable,
            on_returned=self._returned)
        self.replies.open()
        self._start()

    def _start(self) -> None:
        """The declarations are done: start consuming."""
        raise NotImplementedError

    def _cancel_consumer(self) -> None:
        """Stop taking deliveries; those already delivered stay ours until acked or closed."""
        if self.channel is not None and self.consumer_tag is not None and self.channel.is_open:
            self.channel.basic_cancel(self.consumer_tag)
        self.consumer_tag = None
        metrics.CONSUMING.labels(self.owner.name).set(0)

    def _consume(self, on_message: Callable[..., None]) -> None:
        assert self.channel is not None
        self.consumer_tag = self.channel.basic_consume(
            self.owner.queue, on_message_callback=on_message, auto_ack=False)
        self.consumed = True
        metrics.CONSUMING.labels(self.owner.name).set(1)
        self.owner.on_state(f"consuming {self.owner.queue}")

    # ------------------------------------------------------------ publisher confirms

    def _published(self, pending: P) -> None:
        """Count the publish just made as `pending`'s, until the broker confirms it."""
        self._in_flight[self._next_seq] = pending
        self._next_seq += 1
        pending.unconfirmed += 1

    def _on_confirm(self, frame: pika.frame.Method[Any]) -> None:
        confirmed, refused = take_confirmed(self._in_flight, frame)
        for pending in confirmed:
            pending.unconfirmed -= 1
        self._confirmed(confirmed, refused)

    def _confirmed(self, confirmed: list[P], refused: bool) -> None:
        """The broker confirmed (or, refused, nacked) one publish of each of these."""
        raise NotImplementedError

    def _undeliverable(self, pending: P | None, message: Outgoing, why: str) -> None:
        """The reply connection dropped a message that cannot be delivered (and its owner's)."""

    def _returned(self, routing_key: str) -> None:
        """A mandatory message to a client's queue came back: that queue is gone."""

    # ------------------------------------------------------------ stop

    def _begin_stop(self) -> None:
        """Stop consuming, let what is in flight drain (DRAIN_TIMEOUT at most), then close."""
        if self._stop_deadline:
            return
        self._stop_deadline = time.monotonic() + self.DRAIN_TIMEOUT
        self._cancel_consumer()
        self._abandon_unfinished()
        self._wait_for_drain()

    def _abandon_unfinished(self) -> None:
        """The consumer is cancelled: give up what need not be finished (the replay's streams)."""

    def _drained(self) -> bool:
        """Nothing is left to finish: no delivery waits, no publish awaits its confirm."""
        raise NotImplementedError

    def _close_if_drained(self) -> None:
        """Once stopping and drained, close at once rather than at the next look."""
        if self._stop_deadline and not self._closing and self._drained():
            self._before_close()
            self._close_connection()

    def _wait_for_drain(self) -> None:
        if self._closing:  # _close_if_drained closed it already
            return
        if self._drained() or time.monotonic() > self._stop_deadline:
            self._before_close()
            self._close_connection()  # whatever is still unacked goes back to the queue
        elif self.connection is not None:
            self.connection.ioloop.call_later(0.05, self._wait_for_drain)

    def _before_close(self) -> None:
        """The last step of a stop, drained or out of time (the batch session tidies here)."""
