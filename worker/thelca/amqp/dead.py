"""Dead letters for operators: read `<prefix>.dead` without removing anything, send commands back.

Reading takes messages with basic_get and never acks them: closing the
connection returns every one to the queue, in its order. A retry acks a dead
message only after the broker has confirmed the command it republished, so a
crash in between leaves it dead, to be retried again (commands are idempotent
by message_id). Tokens stay in this module: a DeadLetter only says whether the
message carries one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import pika
import pika.exceptions
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel

from thelca.amqp.admin import close_quietly, connect
from thelca.errors import BrokerUnavailable, ThelcaError
from thelca_client.contract import (
    AUTHORIZATION_HEADER,
    CONTENT_TYPE,
    DEAD_REASON_HEADER,
    DEAD_REPLY_TO_HEADER,
    DEAD_USER_HEADER,
    DIRECT_REPLY_TO,
    Names,
)
from thelca_client.tls import TlsFiles

# What the broker and thelca add on the way to the dead queue; a retried command drops them.
DROPPED_HEADERS = ("x-death", "x-delivery-count", "x-acquired-count")
DROPPED_PREFIXES = ("x-thelca-", "x-first-death-", "x-last-death-")

DeadBy = Literal["worker", "logger", "broker", "unknown"]
RetryStatus = Literal[
    "sent-own-token", "sent-given-token", "no-token", "not-a-command", "unroutable", "refused"
]


class DeadLettersUnavailable(ThelcaError):
    """Raised when the dead letters cannot be reached: no broker, no queue, or a lost channel."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.retried: list[Retried] = []  # what a retry had done before the broker went away


@dataclass(frozen=True)
class Death:
    """Why the broker dead-lettered a message (one x-death entry)."""

    reason: str
    queue: str | None
    count: int | None


@dataclass(frozen=True)
class DeadLetter:
    """A message of the dead queue as an operator may see it: never its token."""

    position: int
    message_id: str | None
    correlation_id: str | None
    reply_to: str | None
    by: DeadBy
    reason: str | None
    user: str | None
    deaths: tuple[Death, ...]
    has_token: bool
    is_command: bool
    body: bytes


@dataclass(frozen=True)
class DeadQueue:
    """The head of the dead queue, and how many messages it holds."""

    name: str
    count: int
    letters: list[DeadLetter]


@dataclass(frozen=True)
class Retried:
    """What became of one dead letter a retry was asked for."""

    letter: DeadLetter
    status: RetryStatus

    @property
    def sent(self) -> bool:
        return self.status.startswith("sent")


def list_dead(
    urls: str, names: Names, limit: int, timeout: float = 10.0, *, tls: TlsFiles | None = None
) -> DeadQueue:
    """The first `limit` dead letters, oldest first; all of them stay in the queue."""
    with _session(urls, timeout, tls) as channel:
        count = _ready(channel, names.dead)
        letters = []
        # Every message is taken, not only the first `limit`: a quorum queue puts
        # returned messages behind the ones already returned, so taking only the
        # head would rotate it.
        for position in range(1, count + 1):
            method, properties, body = channel.basic_get(names.dead, auto_ack=False)
            if method is None or properties is None or body is None:
                break
            if position <= limit:
                letters.append(_letter(position, names, properties, body))
    return DeadQueue(names.dead, count, letters)


def retry_dead(
    urls: str,
    names: Names,
    *,
    message_ids: set[str] | None,
    token: str | None,
    timeout: float = 10.0,
    tls: TlsFiles | None = None,
) -> list[Retried]:
    """Send the chosen dead commands (None: all) back to `<prefix>.commands`, ack once confirmed."""
    outcomes: list[Retried] = []
    try:
        with _session(urls, timeout, tls) as channel:
            channel.confirm_delivery()
            # Only what is there now: a retried command that fails again comes back behind.
            for position in range(1, _ready(channel, names.dead) + 1):
                method, properties, body = channel.basic_get(names.dead, auto_ack=False)
                if method is None or properties is None or body is None:
                    break
                letter = _letter(position, names, properties, body)
                if message_ids is None or letter.message_id in message_ids:
                    status = _retry_one(channel, names, letter, properties, token)
                    if status.startswith("sent"):
                        channel.basic_ack(int(method.delivery_tag or 0))
                    outcomes.append(Retried(letter, status))
    except DeadLettersUnavailable as error:
        error.retried = outcomes
        raise
    return outcomes


def _retry_one(
    channel: BlockingChannel,
    names: Names,
    letter: DeadLetter,
    properties: pika.spec.BasicProperties,
    token: str | None,
) -> RetryStatus:
    if not letter.is_command:
        return "not-a-command"
    if token is None and not letter.has_token:
        return "no-token"
    try:
        channel.basic_publish("", names.commands, letter.body,
                              _command_properties(letter, properties, token), mandatory=True)
    except pika.exceptions.UnroutableError:
        return "unroutable"
    except pika.exceptions.NackError:
        return "refused"
    return "sent-given-token" if token is not None else "sent-own-token"


def _command_properties(
    letter: DeadLetter, properties: pika.spec.BasicProperties, token: str | None
) -> pika.BasicProperties:
    headers = {k: v for k, v in (properties.headers or {}).items() if not _dropped(k)}
    if token is not None:
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        headers[AUTHORIZATION_HEADER] = f"Bearer {token}"
    # The bare direct reply-to name is only valid on the channel that consumes it.
    reply_to = None if letter.reply_to == DIRECT_REPLY_TO else letter.reply_to
    return pika.BasicProperties(
        content_type=properties.content_type or CONTENT_TYPE, delivery_mode=2,
        message_id=letter.message_id, correlation_id=letter.correlation_id,
        reply_to=reply_to, headers=headers,
    )


def _dropped(header: str) -> bool:
    name = header.lower()
    return name in DROPPED_HEADERS or name.startswith(DROPPED_PREFIXES)


def _letter(
    position: int, names: Names, properties: pika.spec.BasicProperties, body: bytes
) -> DeadLetter:
    headers = dict(properties.headers or {})
    reason = _text(headers.get(DEAD_REASON_HEADER))
    deaths = _deaths(headers)
    by = _dead_by(reason, deaths)
    first_queue = _text(headers.get("x-first-death-queue")) or (
        deaths[-1].queue if deaths else None)
    return DeadLetter(
        position=position,
        message_id=properties.message_id,
        correlation_id=properties.correlation_id,
        reply_to=_text(headers.get(DEAD_REPLY_TO_HEADER)) or properties.reply_to,
        by=by,
        reason=reason,
        user=_text(headers.get(DEAD_USER_HEADER)),
        deaths=deaths,
        has_token=any(str(k).lower() == "authorization" for k in headers),
        is_command=by == "worker" or (by == "broker" and first_queue == names.commands),
        body=body,
    )


def _dead_by(reason: str | None, deaths: tuple[Death, ...]) -> DeadBy:
    if reason is not None:
        return "logger" if reason.startswith("logger:") else "worker"
    return "broker" if deaths else "unknown"


def _deaths(headers: dict[str, Any]) -> tuple[Death, ...]:
    """x-death, most recent first; failing that, x-first-death-reason and -queue."""
    entries = headers.get("x-death")
    if isinstance(entries, list) and entries:
        return tuple(
            Death(_text(e.get("reason")) or "unknown", _text(e.get("queue")), _int(e.get("count")))
            for e in entries if isinstance(e, dict)
        )
    reason = _text(headers.get("x-first-death-reason"))
    if reason is None:
        return ()
    return (Death(reason, _text(headers.get("x-first-death-queue")), None),)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) else None


def _ready(channel: BlockingChannel, queue: str) -> int:
    try:
        return int(channel.queue_declare(queue, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker as error:
        raise DeadLettersUnavailable(
            f"no queue {queue}: a wrong prefix, or no thelca process has started with it "
            f"({error.reply_text})") from None


@contextmanager
def _session(urls: str, timeout: float, tls: TlsFiles | None) -> Iterator[BlockingChannel]:
    """A channel on the first broker that answers; closing it returns every unacked message."""
    try:
        connection = connect(urls, timeout, "thelca dead letters", tls=tls)
    except BrokerUnavailable as error:
        raise DeadLettersUnavailable(str(error)) from None
    try:
        yield connection.channel()
    except DeadLettersUnavailable:
        raise
    except pika.exceptions.AMQPError as error:
        raise DeadLettersUnavailable(f"the broker dropped the connection: {error!r}") from None
    finally:
        close_quietly(connection)
