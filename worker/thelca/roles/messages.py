"""Plain message types passed between the AMQP plumbing and the application.

The plumbing turns pika deliveries into `Incoming` and publishes `Outgoing`;
nothing outside thelca.amqp sees a pika object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from thelca.logtext import shown
from thelca_client.contract import DEAD_REASON_HEADER, DEAD_REPLY_TO_HEADER, DEAD_USER_HEADER

# What thelca and the broker add on a message's way to the dead queue. A client can
# write any of them on its own command, so a dead letter never keeps the client's.
BOOKKEEPING_HEADERS = ("authorization", "x-death", "x-delivery-count", "x-acquired-count")
BOOKKEEPING_PREFIXES = ("x-thelca-", "x-first-death-", "x-last-death-")


@dataclass(frozen=True)
class Incoming:
    """A message as the broker delivered it, without pika's types.

    `unreadable` names the properties that cannot be used as sent, and why (a
    message_id that is not UTF-8, a reply_to that no reply can reach): their
    values here only show what came.
    """

    body: bytes
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    type: str | None = None
    redelivered: bool = False
    unreadable: dict[str, str] = field(default_factory=dict)
    # Where it came from: the exchange it was published to ("" for the default
    # exchange, that is straight to a queue), and the user_id property, which the
    # broker checks against the publisher's login (None when not set).
    exchange: str = ""
    user_id: str | None = None


def unreadable(message: Incoming) -> dict[str, str]:
    """The properties a reply depends on that cannot be used as sent, and why."""
    return {name: why for name, why in message.unreadable.items()
            if name in ("message_id", "correlation_id", "reply_to")}


def unreadable_why(unusable: dict[str, str]) -> str:
    """Why a message with these unreadable properties is refused, in one line."""
    return "; ".join(f"the {name} property is {what}" for name, what in sorted(unusable.items()))


@dataclass(frozen=True)
class Outgoing:
    """A message for the plumbing to publish (and to wait for the broker's confirm)."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str | None = None
    correlation_id: str | None = None
    type: str | None = None
    headers: dict[str, Any] | None = None
    persistent: bool = True
    content_type: str = "application/json"


class BatchHandler(Protocol):
    """The application side of a consumer. Every method runs on the connection's thread."""

    def recover(self) -> list[Outgoing]:
        """Messages to publish after each (re)connect, before consuming starts."""
        ...

    def handle(self, batch: list[Incoming]) -> list[Outgoing]:
        """Do the batch's work; the batch is acked once all returned messages are confirmed."""
        ...

    def confirmed(self, published: list[Outgoing]) -> None:
        """Called once the broker has confirmed every message a recover or handle returned."""
        ...

    def nacked(self, published: list[Outgoing]) -> bool:
        """The broker refused some of published: keep what must not be lost and return True
        (the deliveries are then acked and recover() is published again later), or return
        False to have the deliveries requeued."""
        ...

    def tidy(self) -> None:
        """Commit bookkeeping left by confirmed(); called when idle and before stopping."""
        ...


class EventStream(Protocol):
    """Messages to publish one after another, a few at a time (a replay)."""

    finished: bool
    user: str | None  # who asked; None for an answer that costs nothing (a refusal)

    def take(self, limit: int) -> list[Outgoing]:
        """Up to `limit` next messages (maybe none yet); `finished` once the last is given."""
        ...

    def close(self) -> None:
        """Stop early and release what the stream holds (files)."""
        ...


class StreamOpener(Protocol):
    """The application side of the replay consumer. Runs on the connection's thread."""

    def open(self, request: Incoming) -> EventStream:
        """The stream that answers a request; acked once its last message is confirmed."""
        ...

    def broken(self, request: Incoming, error_id: str) -> EventStream:
        """A stream of one end marker, status 500, for a request that hit a bug."""
        ...

    def refused(self, request: Incoming, status: int, error: str) -> EventStream:
        """A stream of one end marker with this status and error (429: too many at once)."""
        ...


def dead_letter(
    message: Incoming, exchange: str, reason: str, *, user: str | None = None
) -> Outgoing:
    """A message as it came, minus its token and any bookkeeping header it brought, with
    why it could not be processed (the contract's dead-letter headers)."""
    headers = {k: v for k, v in message.headers.items() if not bookkeeping(k)}
    headers[DEAD_REASON_HEADER] = reason
    if user is not None:
        headers[DEAD_USER_HEADER] = user
    if message.reply_to:
        headers[DEAD_REPLY_TO_HEADER] = message.reply_to
    return Outgoing(exchange, "", message.body, message_id=message.message_id,
                    correlation_id=message.correlation_id, headers=headers)


def hijacked_reason(reply_to: str | None, unanswered: str) -> str:
    """Why a message whose reply_to names one of thelca's own queues is dead-lettered, not
    served (`unanswered`: "not executed", "not answered")."""
    return (f"reply_to names thelca's own queue {shown(reply_to)}: replies go to clients, "
            f"never into thelca; {unanswered}")


def bookkeeping(header: object) -> bool:
    """Whether a header is the token, or one that thelca or the broker writes on dead letters.

    A header name that is not UTF-8 reaches us as bytes; it is never bookkeeping.
    """
    if not isinstance(header, str):
        return False
    name = header.lower()
    return name in BOOKKEEPING_HEADERS or name.startswith(BOOKKEEPING_PREFIXES)
