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

The publish channel and its confirms are thelca.amqp.publishing's, the
republish of what the broker refused thelca.amqp.republish's, and the stuck
marker thelca.amqp.marker's, the tidy and the tick thelca.amqp.periodic's; this
module is the consume loop and the acks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.channel
import pika.spec

from thelca import metrics
from thelca.amqp.connection import Reconnecting, SessionLike
from thelca.amqp.convert import incoming_of
from thelca.amqp.marker import StuckMarker
from thelca.amqp.periodic import PeriodicSession
from thelca.amqp.publishing import Batch
from thelca.amqp.topology import Topology
from thelca.errors import AuthorityUnavailable, StoreUnavailable
from thelca.roles.messages import BatchHandler, Incoming, Outgoing
from thelca_client.tls import TlsFiles

log = logging.getLogger(__name__)

STUCK_AFTER = 5  # failures in a row of the same batch before the consumer stops consuming
PASSING_RETRY_LONGEST = 1.0  # seconds between tries of a batch the store or Authority failed


class BatchConsumer(Reconnecting):
    """Consumes one queue in batches and feeds them to a BatchHandler.

    Reconnects with backoff when the broker goes away; deliveries that were
    not acked are redelivered by the broker, so the handler must be idempotent.

    `linger` (seconds) is how long a batch may wait, after its first delivery, for more
    to join it, unless it is full: the logger's (thelca.roles.logwriter.LINGER), so
    that commands sent one at a time do not each cost an fsync, an ack and a wakeup.
    0, the worker's, handles what one read from the socket brought at once.

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
        linger: float = 0.0,
    ) -> None:
        super().__init__(urls, queue, topology, prefetch=prefetch, name=name, on_state=on_state,
                         tls=tls)
        self.handler = handler
        self.max_batch = max_batch
        self.tick = tick
        self.linger = linger

    def new_session(self, params: pika.URLParameters) -> SessionLike:
        return _BatchSession(self, params)


class _BatchSession(PeriodicSession):
    """A batch consumer's connection: batches of deliveries, acked once their publishes confirm."""

    DRAIN_TIMEOUT = 30.0

    def __init__(self, owner: BatchConsumer, params: pika.URLParameters) -> None:
        super().__init__(owner, params)
        self._waiting: list[tuple[int, Incoming, float]] = []
        self._flush_scheduled = False
        self._lingering: Any = None  # the timer of a batch waiting for more to join it
        self._retry_delay = 0.0
        self._failures = 0  # of the batch at the head, in a row
        self._marker = StuckMarker(owner.name, owner.queue)  # held while stuck
        # The labelled metrics' children, held: labels() checks and joins its arguments
        # under a lock at every call, which every batch would pay.
        self._delivery_seconds = metrics.DELIVERY_SECONDS.labels(owner.name)
        self._batch_size = metrics.BATCH_SIZE.labels(owner.name)
        self._published_by_exchange: dict[str, Any] = {}  # thelca_published_total's

    def _start(self) -> None:
        metrics.BATCH_STUCK.labels(self.owner.name).set(0)
        self._open_publisher()  # then the outbox is republished, and consuming starts
        if self.owner.tick is not None:
            self._schedule_tick()

    def _publisher_opened(self) -> None:
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
        full = len(self._waiting) >= self.owner.max_batch
        if full and self._lingering is not None:  # no reason to wait any longer
            assert self.connection is not None
            self.connection.ioloop.remove_timeout(self._lingering)
            self._lingering = None
            self._flush_scheduled = False
        if self.owner.linger and not full and not self._flush_scheduled \
                and self.connection is not None:
            self._flush_scheduled = True
            self._lingering = self.connection.ioloop.call_later(self.owner.linger, self._flush)
        else:
            self._schedule_flush(0)

    def _schedule_flush(self, delay: float) -> None:
        # Deliveries read from the socket together are dispatched before timers
        # run, so a zero delay gathers them into one batch (group commit).
        if not self._flush_scheduled and self.connection is not None:
            self._flush_scheduled = True
            self.connection.ioloop.call_later(delay, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._lingering = None
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
        self._handled += 1
        if self._failures:
            self._unstuck()
        del self._waiting[: len(batch)]
        self._publish_batch([tag for tag, _, _ in batch], publish, [t for _, _, t in batch])
        # Counted once the replies are written: not on their way.
        self._batch_size.observe(len(batch))
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
        self._marker.release()
        if self.consumer_tag is None and not self._stop_deadline and not self._closing:
            log.info("%s: the stuck batch went through; consuming %s again", self.owner.name,
                     self.owner.queue)
            metrics.BATCH_STUCK.labels(self.owner.name).set(0)
            self._consume(self._on_message)

    def _mark_stuck(self) -> None:
        """Hold <queue>.stuck for `thelca health` to see (see thelca.amqp.marker)."""
        if self._closing or self.connection is None:
            return
        self._marker.hold(self.connection, self._still_stuck)

    def _still_stuck(self) -> bool:
        return self._failures >= STUCK_AFTER and not self._closing

    # ------------------------------------------------------------ ack

    def _settle(self) -> None:
        """Ack (or requeue) batches whose publishes are all confirmed, oldest first."""
        if self.channel is None or not self.channel.is_open:
            return  # the session is ending: what is unacked goes back to the queue
        kept = 0
        while (self._batches and self._batches[0].unsent is None
               and not self._batches[0].unconfirmed):
            batch = self._batches.popleft()
            self._on_their_way.difference_update(batch.keys)
            self._republish_settled(batch)
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
        self._republish_kept(kept)
        self._close_if_drained()

    def _observe(self, batch: Batch) -> None:
        now = time.monotonic()
        delivery_seconds = self._delivery_seconds
        for received in batch.received:
            delivery_seconds.observe(now - received)
        for message in batch.published:
            if message.exchange:  # the reply connection counts the replies it delivered
                self._published_to(message.exchange).inc()

    def _published_to(self, exchange: str) -> Any:
        """thelca_published_total's child for this role and exchange, made once."""
        held = self._published_by_exchange
        counter = held.get(exchange)
        if counter is None:
            counter = held[exchange] = metrics.PUBLISHED.labels(self.owner.name, exchange)
        return counter

    def _busy(self) -> bool:
        return bool(self._waiting)

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

