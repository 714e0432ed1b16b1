"""The batch consumer: consume in batches, publish with confirms, ack once confirmed.

The long-lived consumers (worker, logger) run one: deliveries read from the
socket together are handed to a BatchHandler as one batch (group commit),
what it returns is published, and the batch's deliveries are acked with one
multiple ack once the broker has confirmed every message the batch produced
on this connection (events, dead letters). Replies go to clients' queues on
the reply connection (thelca.amqp.replies) and the ack waits for none of them:
a reply is at most once anyway (direct reply-to drops one whose client is
gone), and a client that gets none sends the command again with the same
message_id and gets the reply the store kept.

A batch that fails is tried again with backoff, counted in
thelca_batch_retries_total. After STUCK_AFTER failures in a row the consumer
is stuck: it stops taking deliveries (other consumers get the new ones), keeps
what it holds (returning it would count against the queue's delivery limit,
and after twenty returns the broker dead-letters commands with their tokens)
and goes on trying, and it holds `<queue>.stuck` (exclusive, on a channel of
its own) until the batch goes through: that is where `thelca health` sees it.
A quorum queue still counts a cancelled consumer that holds deliveries, so the
consumer count alone cannot tell. thelca_batch_stuck is 1 meanwhile.

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
to the republish.

A refused batch's events stay in the handler's outbox and its deliveries are
acked (nacked()); the outbox is then published again, one republish at a
time, with backoff: refusals while one is scheduled or in flight only ask
for the next, and an event already on its way is never sent a second time,
so no more events are in flight than the outbox holds.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pika
import pika.channel
import pika.frame
import pika.spec

from thelca import metrics
from thelca.amqp.connection import Reconnecting, SessionLike, broker_login
from thelca.amqp.convert import basic_properties, incoming_of
from thelca.amqp.session import ConnectionSession
from thelca.amqp.topology import Topology, stuck_marker
from thelca.errors import AuthorityUnavailable, StoreUnavailable
from thelca.roles.messages import BatchHandler, Incoming, Outgoing
from thelca_client.tls import TlsFiles

log = logging.getLogger(__name__)

STUCK_AFTER = 5  # failures in a row of the same batch before the consumer stops consuming
ACCESS_REFUSED = 403
# Seconds before a fresh publish channel when the one refused never had a publish confirmed,
# doubling while fresh ones are refused too: no churn of channels while a queue has no leader,
# and batches handled meanwhile wait no longer than this.
FRESH_CHANNEL_FIRST = 0.05
FRESH_CHANNEL_LONGEST = 0.5
REPUBLISH_FIRST = 0.5  # seconds before republishing the outbox after a refusal, doubling
REPUBLISH_LONGEST = 10.0
PASSING_RETRY_LONGEST = 1.0  # seconds between tries of a batch the store or Authority failed
OUTBOX_ROUND = 1000  # events one republish takes from the outbox at most (its default)


class BatchConsumer(Reconnecting):
    """Consumes one queue in batches and feeds them to a BatchHandler.

    Reconnects with backoff when the broker goes away; deliveries that were
    not acked are redelivered by the broker, so the handler must be idempotent.

    `tick`, when given, is called on the connection's thread about every
    TICK seconds, busy or idle, and once more with True when stopping, after
    the last batch; what it returns is published under confirms like a
    batch's publishes (the logger's checkpoints).
    """

    TICK = 1.0

    def __init__(
        self,
        urls: str,
        queue: str,
        handler: BatchHandler,
        topology: Topology,
        *,
        prefetch: int = 200,
        max_batch: int = 200,
        name: str = "consumer",
        on_state: Callable[[str], None] | None = None,
        tls: TlsFiles | None = None,
        tick: Callable[[bool], list[Outgoing]] | None = None,
    ) -> None:
        super().__init__(urls, queue, topology, prefetch=prefetch, name=name, on_state=on_state,
                         tls=tls)
        self.handler = handler
        self.max_batch = max_batch
        self.tick = tick

    def new_session(self, params: pika.URLParameters) -> SessionLike:
        return _BatchSession(self, params)


@dataclass(eq=False)
class _Batch:
    """Deliveries handled together, and the publishes that must be confirmed first."""

    delivery_tags: list[int]
    received: list[float]
    published: list[Outgoing]
    unconfirmed: int = 0
    nacked: bool = False
    unsent: list[Outgoing] | None = None  # waiting for a publish channel
    keys: list[tuple[str, str]] = field(default_factory=list)  # its messages in _on_their_way


class _BatchSession(ConnectionSession[_Batch]):
    """A batch consumer's connection: batches of deliveries, acked once their publishes confirm."""

    DRAIN_TIMEOUT = 30.0

    def __init__(self, owner: BatchConsumer, params: pika.URLParameters) -> None:
        super().__init__(owner, params)
        self.owner: BatchConsumer = owner
        self._waiting: list[tuple[int, Incoming, float]] = []
        self._flush_scheduled = False
        self._tidy_scheduled = False
        self._batches: deque[_Batch] = deque()
        self._retry_delay = 0.0
        self.publisher: pika.channel.Channel | None = None  # publishes go out here
        self._opening_publisher = False
        self._publisher_works = False  # the broker has confirmed a publish on it
        self._fresh_channel_delay = 0.0
        self._on_their_way: set[tuple[str, str]] = set()  # (exchange, message_id) unconfirmed
        self._failures = 0  # of the batch at the head, in a row
        self._marker: pika.channel.Channel | None = None  # holds <queue>.stuck while stuck
        self._marking = False
        self._republish_delay = 0.0
        self._republish_due = False  # a refusal left events in the outbox to publish again
        self._republish_timer = False
        self._republishing: _Batch | None = None  # the one republish in flight
        self._delivery_seconds = metrics.DELIVERY_SECONDS.labels(owner.name)
        self._confirms_pending = metrics.CONFIRMS_PENDING.labels(owner.name)
        # Events and dead letters carry the login as user_id, which the broker checks: a
        # dead letter with the worker's user_id was dead-lettered by the worker, not forged.
        self._login = broker_login(params)

    def _start(self) -> None:
        metrics.BATCH_STUCK.labels(self.owner.name).set(0)
        self._open_publisher()  # then the outbox is republished, and consuming starts
        if self.owner.tick is not None:
            self._schedule_tick()

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
        if not self.consumed:  # the session starts: the outbox first, then the queue
            self._republish()
            self._consume(self._on_message)
            return
        for batch in self._batches:
            if batch.unsent is not None:
                self._send(batch)
        if self._republish_due and not self._republish_timer:
            self._schedule_republish()
        self._settle()

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

    # ------------------------------------------------------------ consume

    def _on_message(
        self,
        channel: pika.channel.Channel,
        method: pika.spec.Basic.Deliver,
        properties: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        incoming = incoming_of(method, properties, body)
        self._waiting.append((int(method.delivery_tag or 0), incoming, time.monotonic()))
        self._schedule_flush(0)

    def _schedule_flush(self, delay: float) -> None:
        # Deliveries read from the socket together are dispatched before timers
        # run, so a zero delay gathers them into one batch (group commit).
        if not self._flush_scheduled and self.connection is not None:
            self._flush_scheduled = True
            self.connection.ioloop.call_later(delay, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._waiting or self._closing or self.channel is None:
            return
        batch = self._waiting[: self.owner.max_batch]
        try:
            publish = self.owner.handler.handle([incoming for _, incoming, _ in batch])
        except (StoreUnavailable, AuthorityUnavailable) as error:
            # Known and passing (a database restart, a deadlock, an unreachable key
            # set): one line is enough; the batch is kept and tried again, at most a
            # second apart, so that it goes through within a second of the store's return.
            self._retry_later(batch, f"{type(error).__name__}: {error}", PASSING_RETRY_LONGEST)
            return
        except Exception:
            log.exception("%s: a batch of %d failed unexpectedly", self.owner.name, len(batch))
            self._retry_later(batch, "see the traceback above")
            return
        self._retry_delay = 0.0
        if self._failures:
            self._unstuck()
        del self._waiting[: len(batch)]
        metrics.BATCH_SIZE.labels(self.owner.name).observe(len(batch))
        self._publish_batch([tag for tag, _, _ in batch], publish, [t for _, _, t in batch])
        if self._waiting:
            self._schedule_flush(0)

    def _retry_later(self, batch: list[tuple[int, Incoming, float]], why: str,
                     longest: float = 30.0) -> None:
        self._failures += 1
        metrics.BATCH_RETRIES.labels(self.owner.name).inc()
        self._retry_delay = min(longest, max(0.5, self._retry_delay * 2))
        log.warning("%s: a batch of %d is retried in %.1fs (%s)", self.owner.name, len(batch),
                    self._retry_delay, why)
        if self._failures == STUCK_AFTER and self.consumer_tag is not None:
            log.error("%s: stuck batch: a batch of %d failed %d times in a row; no longer "
                      "consuming %s until it goes through (it is tried again, at most %.0f s "
                      "apart)", self.owner.name, len(batch), self._failures, self.owner.queue,
                      longest)
            metrics.BATCH_STUCK.labels(self.owner.name).set(1)
            self._cancel_consumer()
            self.owner.on_state(f"stuck batch: not consuming {self.owner.queue}")
        if self._failures >= STUCK_AFTER:
            self._mark_stuck()  # again at each failure: another stuck consumer may have let go
        self._schedule_flush(self._retry_delay)

    def _unstuck(self) -> None:
        """The batch that failed went through: consume again if a stuck batch had stopped it."""
        self._failures = 0
        self._unmark_stuck()
        if self.consumer_tag is None and not self._stop_deadline and not self._closing:
            log.info("%s: the stuck batch went through; consuming %s again", self.owner.name,
                     self.owner.queue)
            metrics.BATCH_STUCK.labels(self.owner.name).set(0)
            self._consume(self._on_message)

    # ------------------------------------------------------------ the stuck marker

    def _mark_stuck(self) -> None:
        """Hold <queue>.stuck, on a channel of its own: a refusal (another stuck consumer holds
        it, or the broker user may not declare it) closes that channel, not the consumer's."""
        if self._marker is not None or self._marking or self._closing or self.connection is None:
            return
        self._marking = True
        self.connection.channel(on_open_callback=self._on_marker_channel)

    def _on_marker_channel(self, channel: pika.channel.Channel) -> None:
        self._marking = False
        if self._failures < STUCK_AFTER or self._closing:  # went through meanwhile
            channel.close()
            return
        self._marker = channel
        channel.add_on_close_callback(self._on_marker_closed)
        channel.queue_declare(stuck_marker(self.owner.queue), exclusive=True,
                              callback=lambda _frame: None)

    def _on_marker_closed(self, channel: pika.channel.Channel, reason: Any) -> None:
        if self._marker is channel:
            self._marker = None
        if getattr(reason, "reply_code", None) == ACCESS_REFUSED:
            log.warning("%s: cannot hold %s for `thelca health` to see this stuck batch: %s "
                        "(the README's \"Broker users\" section lists the permission)",
                        self.owner.name, stuck_marker(self.owner.queue), reason)

    def _unmark_stuck(self) -> None:
        marker, self._marker = self._marker, None
        if marker is not None and marker.is_open:
            marker.queue_delete(stuck_marker(self.owner.queue),
                                callback=lambda _frame: marker.close())

    # ------------------------------------------------------------ publish and ack

    def _publish_batch(
        self, delivery_tags: list[int], publish: list[Outgoing], received: list[float]
    ) -> _Batch:
        """Publish what a batch produced (or, between publish channels, hold it for the next).

        Replies go out at once on the reply connection, and the batch's ack waits for none
        of them (see the module docstring).
        """
        assert self.replies is not None
        rest = []
        for message in publish:
            if message.exchange:
                rest.append(message)
            else:  # thelca sends to the default exchange only to clients
                self.replies.publish(message)
        batch = _Batch(delivery_tags, received, [], unsent=rest or None)
        self._batches.append(batch)
        if self.publisher is not None and batch.unsent is not None:
            self._send(batch)
        self._settle()
        return batch

    def _send(self, batch: _Batch) -> None:
        assert self.publisher is not None and batch.unsent is not None
        for message in batch.unsent:
            key = _key(message)
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

    def _confirmed(self, confirmed: list[_Batch], refused: bool) -> None:
        if refused:
            for batch in confirmed:
                batch.nacked = True
        self._confirms_pending.set(len(self._in_flight))
        self._settle()

    def _settle(self) -> None:
        """Ack (or requeue) batches whose publishes are all confirmed, oldest first."""
        if self.channel is None or not self.channel.is_open:
            return  # the session is ending: what is unacked goes back to the queue
        kept = 0
        while (self._batches and self._batches[0].unsent is None
               and not self._batches[0].unconfirmed):
            batch = self._batches.popleft()
            self._on_their_way.difference_update(batch.keys)
            if batch is self._republishing:
                self._republishing = None
                if batch.nacked:
                    log.warning("%s: the broker refused the republish of %d events",
                                self.owner.name, len(batch.published))
                else:
                    log.info("%s: the broker confirmed the %d republished events",
                             self.owner.name, len(batch.published))
                    self._republish_delay = 0.0  # it takes them again: no more backoff
            if batch.nacked:
                if not self._kept(batch):
                    log.warning("%s: the broker refused a publish; requeueing %d deliveries",
                                self.owner.name, len(batch.delivery_tags))
                    for tag in batch.delivery_tags:
                        self.channel.basic_nack(tag, requeue=True)
                    continue
                kept += 1
            if batch.delivery_tags:
                self.channel.basic_ack(max(batch.delivery_tags), multiple=True)
            self._observe(batch)
            if batch.published and not batch.nacked:
                self.owner.handler.confirmed(batch.published)
                self._schedule_tidy()
        if kept:
            self._republish_due = True
            log.warning("%s: the broker refused a publish; its events are kept and published "
                        "again %s (%d batches)", self.owner.name, self._next_republish(), kept)
        if self._republish_due:
            self._schedule_republish()
        self._close_if_drained()

    def _kept(self, batch: _Batch) -> bool:
        """After a refused publish, whether the handler kept what must not be lost.

        Requeueing commands that already took effect would redeliver them in a loop
        for as long as the broker refuses (and on RabbitMQ 3.10 count each return
        against the delivery limit); instead the handler keeps the batch's events in
        its outbox, the deliveries are acked, and the outbox is published again.
        """
        try:
            return self.owner.handler.nacked(batch.published)
        except Exception:
            log.exception("%s: keeping refused publishes failed", self.owner.name)
            return False

    # ------------------------------------------------------------ republishing the outbox

    def _next_republish(self) -> str:
        if self._republishing is not None or self._republish_timer:
            return "after the republish already under way"
        return f"in {self._backoff_republish():.1f}s"

    def _backoff_republish(self) -> float:
        self._republish_delay = min(REPUBLISH_LONGEST,
                                    max(REPUBLISH_FIRST, self._republish_delay * 2))
        return self._republish_delay

    def _schedule_republish(self) -> None:
        """One republish at a time: none while one is scheduled or awaits its confirms."""
        if (self._republishing is not None or self._republish_timer or self._closing
                or self.connection is None):
            return
        delay = self._republish_delay or self._backoff_republish()
        self._republish_timer = True
        self.connection.ioloop.call_later(delay, self._republish_later)

    def _republish_later(self) -> None:
        self._republish_timer = False
        if self._republish_due:
            self._republish()

    def _republish(self) -> None:
        """Publish the handler's unconfirmed messages (at connect, and after a refusal)."""
        if self._closing or self.channel is None:
            return
        if self.publisher is None:
            self._republish_due = True  # the fresh channel asks again when it opens
            return
        self._republish_due = False
        try:
            self.owner.handler.tidy()  # confirmed events leave the outbox: none goes again
            recovered = self.owner.handler.recover()
        except Exception as error:
            if isinstance(error, (StoreUnavailable, AuthorityUnavailable)):
                log.warning("%s: cannot read the outbox now (%s); trying again in 5s",
                            self.owner.name, error)
            else:
                log.exception("%s: reading the outbox failed; trying again in 5s",
                              self.owner.name)
            self._republish_due = True
            self._republish_timer = True
            assert self.connection is not None
            self.connection.ioloop.call_later(5.0, self._republish_later)
            return
        fresh = [m for m in recovered if _key(m) not in self._on_their_way]
        if len(recovered) >= OUTBOX_ROUND:
            self._republish_due = True  # the outbox may hold more: the next round takes them
        if fresh:
            log.info("%s: republishing %d unconfirmed events", self.owner.name, len(fresh))
            self._republishing = self._publish_batch([], fresh, [])
        elif self._republish_due:
            self._schedule_republish()

    def _observe(self, batch: _Batch) -> None:
        role = self.owner.name
        now = time.monotonic()
        delivery_seconds = self._delivery_seconds
        for received in batch.received:
            delivery_seconds.observe(now - received)
        for message in batch.published:
            if message.exchange:  # the reply connection counts the replies it delivered
                metrics.PUBLISHED.labels(role, message.exchange).inc()

    def _schedule_tidy(self) -> None:
        # Lets the handler commit its bookkeeping (such as clearing confirmed
        # events from the outbox) when traffic stops.
        if not self._tidy_scheduled and self.connection is not None:
            self._tidy_scheduled = True
            self.connection.ioloop.call_later(1.0, self._tidy)

    def _tidy(self) -> None:
        self._tidy_scheduled = False
        if self._waiting or self._closing:
            return
        self._run_tidy()

    def _run_tidy(self) -> None:
        try:
            self.owner.handler.tidy()
        except Exception:
            log.exception("%s: tidying up failed; will try again", self.owner.name)

    # ------------------------------------------------------------ tick

    def _schedule_tick(self) -> None:
        if self.connection is not None:
            self.connection.ioloop.call_later(self.owner.TICK, self._tick)

    def _tick(self) -> None:
        if self._closing or self._stop_deadline or self.channel is None:
            return  # stopping: the last tick comes once drained
        if not self.channel.is_open:
            return  # the session is ending: the next one ticks again
        self._publish_ticked(stopping=False)
        self._schedule_tick()

    def _publish_ticked(self, *, stopping: bool) -> bool:
        """Publish what the tick returns; whether there was anything."""
        assert self.owner.tick is not None and self.channel is not None
        try:
            publish = self.owner.tick(stopping)
        except Exception:
            log.exception("%s: the periodic step failed; will try again", self.owner.name)
            return False
        if publish:
            self._publish_batch([], publish, [])
        return bool(publish)

    # ------------------------------------------------------------ stop

    def _drained(self) -> bool:
        if self._waiting or self._batches or (self.replies is not None
                                              and self.replies.outstanding):
            return False
        # Drained: the tick's last word (the logger's final checkpoint) goes out now and
        # is waited for like any publish; the tick returns nothing the second time. A
        # session that never started (replies None) has nothing to say.
        if (self.owner.tick is None or self.replies is None or self.channel is None
                or not self.channel.is_open):
            return True
        return not self._publish_ticked(stopping=True)

    def _before_close(self) -> None:
        self._run_tidy()


def _key(message: Outgoing) -> tuple[str, str] | None:
    """What tells one event (or dead letter) from another; replies have none."""
    if message.exchange and message.message_id:
        return message.exchange, message.message_id
    return None
