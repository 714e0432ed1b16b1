"""The batch session's periodic work: the handler's tidy, and the owner's tick.

The tidy lets the handler commit its bookkeeping (the worker clears confirmed
events from its outbox) when traffic stops: a second after a confirm, unless
batches came meanwhile, which did that bookkeeping in their own transactions,
so that commands arriving steadily never meet a transaction (and an fsync)
of the tidy's own on the loop. The tick (the logger's checkpoints) runs about
every TICK seconds, busy or idle, and what it returns is published like a
batch's publishes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pika

from thelca.amqp.republish import RepublishingSession

if TYPE_CHECKING:
    from thelca.amqp.batch import BatchConsumer

log = logging.getLogger(__name__)

TIDY_AFTER = 1.0  # seconds after a confirm before the tidy, if no batch came meanwhile


class PeriodicSession(RepublishingSession):
    """A batch session's tidy and tick; `_handled` counts the batches it handled."""

    def __init__(self, owner: BatchConsumer, params: pika.URLParameters) -> None:
        super().__init__(owner, params)
        self._tidy_scheduled = False
        self._handled = 0  # batches handled, so that a tidy can tell whether traffic went on
        self._handled_at_tidy = 0

    def _busy(self) -> bool:
        """Whether deliveries wait to be handled."""
        raise NotImplementedError

    # ------------------------------------------------------------ tidy

    def _schedule_tidy(self) -> None:
        if not self._tidy_scheduled and self.connection is not None:
            self._tidy_scheduled = True
            self._handled_at_tidy = self._handled
            self.connection.ioloop.call_later(TIDY_AFTER, self._tidy)

    def _tidy(self) -> None:
        self._tidy_scheduled = False
        if self._busy() or self._closing:
            return
        if self._handled != self._handled_at_tidy:  # traffic goes on: once it stops
            self._schedule_tidy()
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
