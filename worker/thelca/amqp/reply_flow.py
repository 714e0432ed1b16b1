"""What flows on the reply connection: what waits, what is in flight, what a death costs.

A dead connection costs only the message that killed it: whatever was
unconfirmed when it died becomes a suspect, sent again one at a time on the
next connection, each after the previous one's confirm. A suspect in flight
alone when the broker closes the connection again is the culprit: it is
dropped with everything queued for the same owner (the same replay request,
or the same reply_to) and reported. A suspect may have been delivered before
the first death, so a client can get a reply twice; clients drop replies
they no longer wait for (correlation_id), subscribers duplicate events (id).

Messages are published pipelined under confirms; each one's owner (a replay
request), when it has one, counts it until the broker confirms it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import pika.channel
import pika.exceptions
import pika.frame
import pika.spec

from thelca import metrics
from thelca.amqp.confirms import take_confirmed
from thelca.amqp.convert import basic_properties
from thelca.roles.messages import Outgoing

log = logging.getLogger(__name__)

CONNECTION_FORCED = 320  # the broker shuts down, or an operator closed us: not a message's fault


class Owned(Protocol):
    """What a publish belongs to (a replay request): how many of its publishes await a confirm."""

    unconfirmed: int


T = TypeVar("T", bound=Owned)


@dataclass(eq=False)
class Entry(Generic[T]):
    """One message to deliver, whose it is, and whether it was in flight when a connection died."""

    message: Outgoing
    owner: T | None
    mandatory: bool
    suspect: bool = False

    def same_place(self, other: Entry[T]) -> bool:
        """Whether other goes where this one goes: the same owner, or without one the same queue."""
        if self.owner is not None:
            return other.owner is self.owner
        return other.owner is None and other.message.routing_key == self.message.routing_key


class ReplyFlow(Generic[T]):
    """The messages of a reply connection, from waiting to confirmed (or dropped).

    The connection's life is the subclass's (thelca.amqp.replies.ReplyConnection),
    which sets `_channel` while a channel is open and calls `_lost` when it dies.
    """

    def __init__(
        self,
        role: str,
        login: str | None,
        *,
        on_confirmed: Callable[[list[T], bool], None],
        on_undeliverable: Callable[[T | None, Outgoing, str], None],
        on_returned: Callable[[str], None] | None = None,
    ) -> None:
        self.role = role
        self.login = login  # every reply carries it as user_id, broker-checked
        self.on_confirmed = on_confirmed
        self.on_undeliverable = on_undeliverable
        self.on_returned = on_returned or (lambda routing_key: None)
        self._channel: pika.channel.Channel | None = None
        self._queue: deque[Entry[T]] = deque()
        self._in_flight: dict[int, Entry[T]] = {}  # publish sequence number -> entry
        self._next_seq = 1
        self._waiting_bytes = 0
        self._deaths = 0  # in a row, without a confirm in between: backoff
        # Held: labels() takes a lock and checks its arguments at every call.
        self._replies_published = metrics.PUBLISHED.labels(role, "(default)")

    @property
    def outstanding(self) -> int:
        """Messages queued or awaiting their confirm."""
        return len(self._queue) + len(self._in_flight)

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
        entries, refused = take_confirmed(self._in_flight, frame)
        owners: list[T] = []
        for entry in entries:
            self._waiting_bytes -= len(entry.message.body)
            if entry.owner is not None:
                entry.owner.unconfirmed -= 1
                owners.append(entry.owner)
            if not refused:
                self._replies_published.inc()
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

    def _drop(self, culprit: Entry[T], reason: str) -> None:
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
