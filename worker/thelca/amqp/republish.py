"""The batch session's outbox rounds: what the broker refused is kept and published again.

A refused batch's events stay in the handler's outbox and its deliveries are
acked (nacked()); the outbox is then published again, one republish at a
time, with backoff: refusals while one is scheduled or in flight only ask
for the next, and an event already on its way is never sent a second time,
so no more events are in flight than the outbox holds. The outbox is also
published once when a session starts, before it consumes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pika

from thelca.amqp.publishing import Batch, PublishingSession, key_of
from thelca.errors import AuthorityUnavailable, StoreUnavailable

if TYPE_CHECKING:
    from thelca.amqp.batch import BatchConsumer

log = logging.getLogger(__name__)

REPUBLISH_FIRST = 0.5  # seconds before republishing the outbox after a refusal, doubling
REPUBLISH_LONGEST = 10.0
OUTBOX_ROUND = 1000  # events one republish takes from the outbox at most (its default)


class RepublishingSession(PublishingSession):
    """A batch session that keeps refused events in the handler's outbox and republishes it."""

    def __init__(self, owner: BatchConsumer, params: pika.URLParameters) -> None:
        super().__init__(owner, params)
        self._republish_delay = 0.0
        self._republish_due = False  # a refusal left events in the outbox to publish again
        self._republish_timer = False
        self._republishing: Batch | None = None  # the one republish in flight

    def _kept(self, batch: Batch) -> bool:
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

    def _republish_settled(self, batch: Batch) -> None:
        """A batch is settled; if it was the republish, the next may come."""
        if batch is not self._republishing:
            return
        self._republishing = None
        if batch.nacked:
            log.warning("%s: the broker refused the republish of %d events",
                        self.owner.name, len(batch.published))
        else:
            log.info("%s: the broker confirmed the %d republished events",
                     self.owner.name, len(batch.published))
            self._republish_delay = 0.0  # it takes them again: no more backoff

    def _republish_kept(self, kept: int) -> None:
        """After settling: `kept` refused batches left their events in the outbox."""
        if kept:
            self._republish_due = True
            log.warning("%s: the broker refused a publish; its events are kept and published "
                        "again %s (%d batches)", self.owner.name, self._next_republish(), kept)
        if self._republish_due:
            self._schedule_republish()

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
        fresh = [m for m in recovered if key_of(m) not in self._on_their_way]
        if len(recovered) >= OUTBOX_ROUND:
            self._republish_due = True  # the outbox may hold more: the next round takes them
        if fresh:
            log.info("%s: republishing %d unconfirmed events", self.owner.name, len(fresh))
            self._republishing = self._publish_batch([], fresh, [])
        elif self._republish_due:
            self._schedule_republish()
