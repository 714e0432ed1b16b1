"""The batch consumer: consume in batches, publish with confirms, ack once confirmed.

The long-lived consumers (worker, logger) run one: deliveries read from the
socket together are handed to a BatchHandler as one batch (group commit),
what it returns is published, and the batch's deliveries are acked with one
multiple ack once the broker has confirmed every message the batch produced.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import pika
import pika.channel
import pika.spec

from thelca import metrics
from thelca.amqp.connection import Reconnecting, SessionLike, broker_login
from thelca.amqp.convert import basic_properties, incoming_of
from thelca.amqp.session import ConnectionSession
from thelca.amqp.topology import Topology
from thelca.errors import AuthorityUnavailable, StoreUnavailable
from thelca.roles.messages import BatchHandler, Incoming, Outgoing
from thelca_client.tls import TlsFiles

log = logging.getLogger(__name__)


class BatchConsumer(Reconnecting):
    """Consumes one queue in batches and feeds them to a BatchHandler.

    Reconnects with backoff when the broker goes away; deliveries that were
    not acked are redelivered by the broker, so the handler must be idempotent.
    """

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
    ) -> None:
        super().__init__(urls, queue, topology, prefetch=prefetch, name=name, on_state=on_state,
                         tls=tls)
        self.handler = handler
        self.max_batch = max_batch

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
        self._republish_delay = 0.0
        self._delivery_seconds = metrics.DELIVERY_SECONDS.labels(owner.name)
        self._confirms_pending = metrics.CONFIRMS_PENDING.labels(owner.name)
        # Every publish carries the login as user_id, which the broker checks: a dead
        # letter with the worker's user_id was dead-lettered by the worker, not forged.
        self._login = broker_login(params)

    def _start(self) -> None:
        self._recover()
        self._consume(self._on_message)

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
            # set): one line is enough; the batch is kept and tried again.
            self._retry_later(batch, f"{type(error).__name__}: {error}")
            return
        except Exception:
            log.exception("%s: a batch of %d failed unexpectedly", self.owner.name, len(batch))
            self._retry_later(batch, "see the traceback above")
            return
        self._retry_delay = 0.0
        del self._waiting[: len(batch)]
        metrics.BATCH_SIZE.labels(self.owner.name).observe(len(batch))
        self._publish_batch([tag for tag, _, _ in batch], publish, [t for _, _, t in batch])
        if self._waiting:
            self._schedule_flush(0)

    def _retry_later(self, batch: list[tuple[int, Incoming, float]], why: str) -> None:
        self._retry_delay = min(30.0, max(0.5, self._retry_delay * 2))
        log.warning("%s: a batch of %d is retried in %.1fs (%s)", self.owner.name, len(batch),
                    self._retry_delay, why)
        self._schedule_flush(self._retry_delay)

    # ------------------------------------------------------------ publish and ack

    def _publish_batch(
        self, delivery_tags: list[int], publish: list[Outgoing], received: list[float]
    ) -> None:
        assert self.channel is not None
        batch = _Batch(delivery_tags, received, publish)
        for message in publish:
            properties = basic_properties(message)
            properties.user_id = self._login
            self.channel.basic_publish(
                message.exchange, message.routing_key, message.body, properties
            )
            self._published(batch)
        self._batches.append(batch)
        self._confirms_pending.set(len(self._in_flight))
        self._settle()

    def _confirmed(self, confirmed: list[_Batch], refused: bool) -> None:
        if refused:
            for batch in confirmed:
                batch.nacked = True
        self._confirms_pending.set(len(self._in_flight))
        self._settle()

    def _settle(self) -> None:
        """Ack (or requeue) batches whose publishes are all confirmed, oldest first."""
        assert self.channel is not None
        while self._batches and not self._batches[0].unconfirmed:
            batch = self._batches.popleft()
            if batch.nacked and not self._kept(batch):
                log.warning("%s: the broker refused a publish; requeueing %d deliveries",
                            self.owner.name, len(batch.delivery_tags))
                for tag in batch.delivery_tags:
                    self.channel.basic_nack(tag, requeue=True)
                continue
            if batch.delivery_tags:
                self.channel.basic_ack(max(batch.delivery_tags), multiple=True)
            self._observe(batch)
            if batch.published and not batch.nacked:
                self._republish_delay = 0.0
                self.owner.handler.confirmed(batch.published)
                self._schedule_tidy()
        self._close_if_drained()

    def _kept(self, batch: _Batch) -> bool:
        """After a refused publish, whether the handler kept what must not be lost.

        Requeueing commands that already took effect would redeliver them in a loop
        for as long as the broker refuses (and on RabbitMQ 3.10 count each return
        against the delivery limit); instead the handler keeps the batch's events in
        its outbox, the deliveries are acked, and the outbox is published again.
        """
        try:
            kept = self.owner.handler.nacked(batch.published)
        except Exception:
            log.exception("%s: keeping refused publishes failed", self.owner.name)
            return False
        if kept:
            self._republish_delay = min(30.0, max(1.0, self._republish_delay * 2))
            log.warning("%s: the broker refused a publish; its events are kept and published "
                        "again in %.0fs", self.owner.name, self._republish_delay)
            assert self.connection is not None
            self.connection.ioloop.call_later(self._republish_delay, self._recover)
        return kept

    def _recover(self) -> None:
        """Publish the handler's unconfirmed messages (at connect, and after a refusal)."""
        if self._closing or self.channel is None:
            return
        try:
            recovered = self.owner.handler.recover()
        except (StoreUnavailable, AuthorityUnavailable) as error:
            log.warning("%s: cannot read the outbox now (%s); trying again in 5s",
                        self.owner.name, error)
            assert self.connection is not None
            self.connection.ioloop.call_later(5.0, self._recover)
            return
        if recovered:
            log.info("%s: republishing %d unconfirmed events", self.owner.name, len(recovered))
            self._publish_batch([], recovered, [])

    def _observe(self, batch: _Batch) -> None:
        role = self.owner.name
        now = time.monotonic()
        delivery_seconds = self._delivery_seconds
        for received in batch.received:
            delivery_seconds.observe(now - received)
        for message in batch.published:
            metrics.PUBLISHED.labels(role, message.exchange or "(default)").inc()

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

    # ------------------------------------------------------------ stop

    def _drained(self) -> bool:
        return not self._waiting and not self._batches

    def _before_close(self) -> None:
        self._run_tidy()
