"""The replay consumer's fairness: which requests are streamed now, and which wait.

The prefetch is `streams + waiting`, so requests beyond those served are
taken from the queue and wait here, in order, each for a slot its user may
have; one user's many requests cannot keep another's in the broker's queue.
A user with `waiting_per_user` requests waiting already, or a request that
waited `max_wait` seconds, is answered 429 at once (acked, not requeued: a
requeue would count towards the queue's delivery limit).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pika

from thelca.amqp.session import ConnectionSession
from thelca.logtext import shown
from thelca.roles.messages import EventStream, Incoming

if TYPE_CHECKING:
    from thelca.amqp.streams import ReplayConsumer

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Request:
    """A request being answered, and where its stream stands."""

    tag: int
    incoming: Incoming
    stream: EventStream
    user: str | None = None  # who asked; None: an answer that costs nothing, never waits
    taken: float = 0.0  # when it was delivered (monotonic)
    unconfirmed: int = 0
    ended: bool = False  # the stream gave its last message, or was abandoned
    requeue: bool = False  # nack it (a refused publish, or stopping) instead of acking

    @property
    def reply_to(self) -> str | None:
        return self.incoming.reply_to


class FairSession(ConnectionSession[Request]):
    """A replay session's requests: those being streamed, taking turns, and those waiting."""

    def __init__(self, owner: ReplayConsumer, params: pika.URLParameters) -> None:
        super().__init__(owner, params)
        self.owner: ReplayConsumer = owner
        self._requests: deque[Request] = deque()  # being served, taking turns
        self._waiting: deque[Request] = deque()  # taken from the queue, waiting for a turn

    def _place(self, request: Request) -> None:
        """Serve the request now if its user may have one more stream, else let it wait."""
        if request.user is None or self._room_for(request.user):
            self._requests.append(request)
        elif sum(w.user == request.user for w in self._waiting) >= self.owner.waiting_per_user:
            self._refuse(request, f"too many replay requests from this user at once: "
                         f"{self.owner.per_user} are streamed and {self.owner.waiting_per_user} "
                         "wait; ask again when some have ended")
        else:
            self._waiting.append(request)

    def _room_for(self, user: str) -> bool:
        serving = [r.user for r in self._requests if r.user is not None and not r.ended]
        return len(serving) < self.owner.streams and serving.count(user) < self.owner.per_user

    def _admit(self) -> None:
        """Move waiting requests, oldest first, to the streams their users have room for."""
        now = time.monotonic()
        for request in list(self._waiting):
            if now - request.taken >= self.owner.max_wait:
                self._waiting.remove(request)
                self._refuse(request, f"this replay request waited {self.owner.max_wait:.0f}s "
                             "for its turn; ask again later")
            elif request.user is not None and self._room_for(request.user):
                self._waiting.remove(request)
                self._requests.append(request)

    def _refuse(self, request: Request, why: str) -> None:
        """Answer 429 at once: an end marker, and the request acked like any other."""
        log.warning("%s: replay request %s refused with 429: %s", self.owner.name,
                    shown(request.incoming.correlation_id), why)
        request.stream.close()
        request.stream = self.owner.opener.refused(request.incoming, 429, why)
        request.user = None
        self._requests.append(request)
