"""The replay consumer's plumbing: many replay streams on one connection, with flow control.

Each request delivered from `<prefix>.replay` becomes a stream (the
application's EventStream). Up to `streams` requests are served at once, at
most `per_user` of them for one user; they take turns: each turn a stream
publishes at most `chunk` messages, then the next one goes. Every publish is
confirmed and at most `in_flight` of them are unconfirmed at any time, so a
request for a million events neither floods the broker nor holds the log in
memory, and a small request is not stuck behind a big one.

Fairness: a user's requests beyond what it may have streamed wait here, in
order (thelca.amqp.fairness), or are answered 429.

The streams go out on the session's reply connection (thelca.amqp.replies),
since their reply_to is the subscriber's: a reply_to the broker chokes on
costs that request alone (abandoned and acked), never the connection that
holds the other requests. A request is acked only once every message of its
stream, the end marker included, is confirmed. If the consumer dies before that, the broker
redelivers the request and the stream starts again from the beginning (a
subscriber drops the duplicates by event id). A stream whose subscriber
queue is gone (the publish comes back unroutable) is abandoned and its
request acked; one the broker refused (nack) is abandoned and requeued.

Everything runs on the connection's thread, in short steps: pika connections
are single-threaded, and a long step would starve the heartbeats.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

import pika
import pika.channel
import pika.spec

from thelca.amqp.connection import Reconnecting, SessionLike
from thelca.amqp.convert import incoming_of
from thelca.amqp.fairness import FairSession, Request
from thelca.amqp.topology import Topology
from thelca.errors import AuthorityUnavailable
from thelca.logtext import shown
from thelca.roles.messages import Outgoing, StreamOpener
from thelca_client.tls import TlsFiles

log = logging.getLogger(__name__)

IN_FLIGHT = 500  # unconfirmed publishes at most, over all streams
CHUNK = 100  # messages one stream publishes in its turn
PER_USER = 2  # streams of one user at once
WAITING = 128  # requests taken from the queue that wait for a turn, over all users
WAITING_PER_USER = 16
MAX_WAIT = 600.0  # seconds a request waits for its turn at most (the broker's
# consumer_timeout, 30 minutes by default, closes the channel of an unacked delivery)


class ReplayConsumer(Reconnecting):
    """Serves replay requests: `streams` at once, taking turns, with confirms."""

    def __init__(
        self,
        urls: str,
        queue: str,
        opener: StreamOpener,
        topology: Topology,
        *,
        streams: int = 4,
        per_user: int = PER_USER,
        waiting: int = WAITING,
        waiting_per_user: int = WAITING_PER_USER,
        max_wait: float = MAX_WAIT,
        in_flight: int = IN_FLIGHT,
        chunk: int = CHUNK,
        name: str = "replay",
        on_state: Callable[[str], None] | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        super().__init__(urls, queue, topology, prefetch=streams + waiting, name=name,
                         on_state=on_state, tls=tls)
        self.opener = opener
        self.streams = streams
        self.per_user = min(per_user, streams)
        self.waiting_per_user = waiting_per_user
        self.max_wait = max_wait
        self.in_flight = in_flight
        self.chunk = chunk

    def new_session(self, params: pika.URLParameters) -> SessionLike:
        return _ReplaySession(self, params)



class _ReplaySession(FairSession):
    """One connection and its channel, serving requests until it closes."""

    DRAIN_TIMEOUT = 10.0

    def __init__(self, owner: ReplayConsumer, params: pika.URLParameters) -> None:
        super().__init__(owner, params)
        self._pump_scheduled = False
        self._unavailable = 0.0  # the last backoff for an Authority that did not answer

    def _ended(self) -> None:
        for request in (*self._requests, *self._waiting):  # unacked: delivered again
            request.stream.close()
        self._requests.clear()
        self._waiting.clear()

    def _start(self) -> None:
        self._consume(self._on_message)

    # ------------------------------------------------------------ requests

    def _on_message(
        self,
        channel: pika.channel.Channel,
        method: pika.spec.Basic.Deliver,
        properties: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        incoming = incoming_of(method, properties, body)
        tag = int(method.delivery_tag or 0)
        if self._stop_deadline:
            channel.basic_nack(tag, requeue=True)
            return
        try:
            stream = self.owner.opener.open(incoming)
        except AuthorityUnavailable as error:
            # Not the request's fault: give it back later, when the keys may answer.
            self._unavailable = min(30.0, max(1.0, self._unavailable * 2))
            log.warning("%s: a replay request goes back to the queue in %.0fs (%s)",
                        self.owner.name, self._unavailable, error)
            self._requeue_later(channel, tag, self._unavailable)
            return
        except Exception:
            stream = self.owner.opener.broken(incoming, self._bug("a replay request failed"))
        self._unavailable = 0.0
        self._place(Request(tag, incoming, stream, stream.user, time.monotonic()))
        self._schedule_pump()

    def _bug(self, what: str) -> str:
        """Log the current exception under a new error id, and return the id."""
        error_id = uuid.uuid4().hex[:12]
        log.exception("%s: %s (error id %s); answered 500", self.owner.name, what, error_id)
        return error_id

    def _requeue_later(self, channel: pika.channel.Channel, tag: int, delay: float) -> None:
        def requeue() -> None:
            if self.channel is channel and channel.is_open:  # else it came back by itself
                channel.basic_nack(tag, requeue=True)

        assert self.connection is not None
        self.connection.ioloop.call_later(delay, requeue)

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled and not self._closing and self.connection is not None:
            self._pump_scheduled = True
            self.connection.ioloop.call_later(0, self._pump)

    def _pump(self) -> None:
        """One turn for each stream, as far as the confirms in flight allow."""
        self._pump_scheduled = False
        if self._closing or self.channel is None or self.replies is None:
            return
        self._admit()
        for _ in range(len(self._requests)):
            room = self.owner.in_flight - self.replies.outstanding
            if room <= 0 or not self._requests:
                return  # a confirm will schedule the next turn
            request = self._requests[0]
            self._requests.rotate(-1)
            if not request.ended:
                self._turn(request, min(self.owner.chunk, room))
            self._settle(request)
        if any(not r.ended for r in self._requests):
            self._schedule_pump()

    def _turn(self, request: Request, limit: int) -> None:
        try:
            messages = request.stream.take(limit)
        except Exception:
            # A bug, not the request's fault: end the answer with a 500 the subscriber
            # can see, rather than a crash loop or a dead letter that keeps its token.
            request.stream.close()
            request.stream = self.owner.opener.broken(
                request.incoming, self._bug("a replay stream failed"))
            messages = request.stream.take(limit)
        self._publish(request, messages)

    def _publish(self, request: Request, messages: list[Outgoing]) -> None:
        assert self.replies is not None
        for message in messages:
            self.replies.publish(message, request, mandatory=True)
        if request.stream.finished:
            request.ended = True

    def _returned(self, routing_key: str) -> None:
        """A publish came back unroutable: that subscriber's queue is gone; stop its streams."""
        for request in self._requests:
            if request.reply_to == routing_key and not request.ended:
                log.warning("%s: the subscriber queue %s is gone; its replay is abandoned",
                            self.owner.name, shown(routing_key))
                request.stream.close()
                request.ended = True

    def _undeliverable(self, pending: Request | None, message: Outgoing, why: str) -> None:
        """The broker chokes on this request's reply_to: abandon it, ack it, serve the others."""
        if pending is None or pending not in self._requests:
            return
        log.warning("%s: replay request %r is abandoned: %s", self.owner.name,
                    pending.incoming.correlation_id or pending.incoming.message_id, why)
        pending.stream.close()
        pending.ended = True
        self._settle(pending)
        self._schedule_pump()
        self._close_if_drained()

    def _confirmed(self, confirmed: list[Request], refused: bool) -> None:
        for request in confirmed:
            if refused and not request.requeue:
                log.warning("%s: the broker refused a replay message; the request goes back "
                            "to the queue and will start again", self.owner.name)
                request.stream.close()
                request.ended = request.requeue = True
        for request in confirmed:
            self._settle(request)
        self._schedule_pump()
        self._close_if_drained()

    def _settle(self, request: Request) -> None:
        """Ack (or requeue) a request whose stream ended and whose messages are confirmed."""
        if not request.ended or request.unconfirmed or request not in self._requests:
            return
        assert self.channel is not None
        self._requests.remove(request)
        request.stream.close()
        if request.requeue:
            self.channel.basic_nack(request.tag, requeue=True)
        else:
            self.channel.basic_ack(request.tag)
        if not self._stop_deadline:
            self._admit()

    # ------------------------------------------------------------ stop

    def _abandon_unfinished(self) -> None:
        """Finish acking streams already ended; requeue the others, and those waiting."""
        if self.channel is not None and self.channel.is_open:
            for request in self._waiting:
                self.channel.basic_nack(request.tag, requeue=True)
        self._waiting.clear()
        for request in list(self._requests):
            if not request.ended:
                request.stream.close()
                request.ended = request.requeue = True
            if self.channel is not None and self.channel.is_open:
                self._settle(request)

    def _drained(self) -> bool:
        return not self._requests and not self._waiting
