"""Dead letters for operators: read `<prefix>.dead` without removing anything, send commands back.

Reading takes messages with basic_get and never acks them: closing the
connection returns every one to the queue, in its order. A retry acks a dead
message only after the broker has confirmed the command it republished, so a
crash in between leaves it dead, to be retried again (commands are idempotent
by message_id). Tokens stay in the broker's messages: a DeadLetter only says
whether the message carries one, and a retry sends the one it carries.

What a letter is, and who sent it, is told in thelca.amqp.letters.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import pika
import pika.exceptions
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel

from thelca.amqp.admin import close_quietly, connect
from thelca.amqp.letters import KNOWN_SENDERS, DeadLetter, is_authorization, letter_of
from thelca.errors import BrokerUnavailable, ThelcaError
from thelca.roles.messages import bookkeeping
from thelca_client.contract import (
    AUTHORIZATION_HEADER,
    CONTENT_TYPE,
    DEAD_REPLY_TO_HEADER,
    DIRECT_REPLY_TO,
    RETRY_OF_HEADER,
    Names,
)
from thelca_client.tls import TlsFiles

RetryStatus = Literal[
    "sent-own-token", "sent-as-operator", "no-token", "sender-unknown", "not-dead-lettered",
    "not-a-command", "own-reply-to", "unroutable", "refused", "unencodable",
]
# The reason of a command or replay request that was not run because its reply_to named
# one of thelca's own queues (contract v1.1): sent back, it would only come back here.
OWN_REPLY_TO_REASON = "reply_to names thelca's own queue"


class DeadLettersUnavailable(ThelcaError):
    """Raised when the dead letters cannot be reached: no broker, no queue, or a lost channel."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.retried: list[Retried] = []  # what a retry had done before the broker went away


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
    urls: str, names: Names, limit: int, timeout: float = 10.0, *,
    tls: TlsFiles | None = None, worker_user: str | None = None,
) -> DeadQueue:
    """The first `limit` dead letters, oldest first; all of them stay in the queue.

    With `worker_user` (the worker's broker user), a letter counts as the
    worker's only when its broker-checked user_id is that user.
    """
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
                letters.append(letter_of(position, names, method, properties, body,
                                       worker_user=worker_user))
    return DeadQueue(names.dead, count, letters)


def retry_dead(
    urls: str,
    names: Names,
    *,
    message_ids: set[str] | None,
    operator_token: str | None,
    timeout: float = 10.0,
    tls: TlsFiles | None = None,
    worker_user: str | None = None,
) -> list[Retried]:
    """Send the chosen dead commands (None: all) back to `<prefix>.commands`, ack once confirmed.

    Only letters that were really dead-lettered, by the worker or the broker,
    are sent. A letter that carries its own token is sent with it. One without
    runs as the operator only with `operator_token` (--as-operator), and one
    whose sender is not known for certain only when it is named in message_ids.
    """
    outcomes: list[Retried] = []
    try:
        with _session(urls, timeout, tls) as channel:
            channel.confirm_delivery()
            # Only what is there now: a retried command that fails again comes back behind.
            for position in range(1, _ready(channel, names.dead) + 1):
                method, properties, body = channel.basic_get(names.dead, auto_ack=False)
                if method is None or properties is None or body is None:
                    break
                letter = letter_of(position, names, method, properties, body,
                                 worker_user=worker_user)
                if message_ids is None or letter.message_id in message_ids:
                    status = _retry_one(channel, names, letter, properties, operator_token,
                                        named=message_ids is not None)
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
    operator_token: str | None,
    *,
    named: bool,
) -> RetryStatus:
    status = _verdict(letter, operator_token, named=named)
    if status is not None:
        return status
    token = None if letter.has_token else operator_token
    try:
        command = _command_properties(letter, properties, token)
        channel.basic_publish("", names.commands, letter.body, command, mandatory=True)
    except pika.exceptions.UnroutableError:
        return "unroutable"
    except pika.exceptions.NackError:
        return "refused"
    except (pika.exceptions.UnsupportedAMQPFieldException,
            pika.exceptions.ShortStringTooLong, struct.error, TypeError, ValueError):
        return "unencodable"  # a header pika read but cannot write again; nothing was sent
    return "sent-as-operator" if token is not None else "sent-own-token"


def _verdict(letter: DeadLetter, operator_token: str | None, *, named: bool) -> RetryStatus | None:
    """Why a letter is not sent; None when it is."""
    if letter.by in ("nobody", "unknown"):
        return "not-dead-lettered"
    if letter.reason is not None and letter.reason.startswith(OWN_REPLY_TO_REASON):
        return "own-reply-to"
    if not letter.is_command:
        return "not-a-command"
    if letter.has_token:
        return None  # it runs as whoever its own token says, checked by the worker
    if operator_token is None:
        return "no-token"
    if letter.sender.known not in KNOWN_SENDERS and not named:
        return "sender-unknown"
    return None


def _command_properties(
    letter: DeadLetter, properties: pika.spec.BasicProperties, operator_token: str | None
) -> pika.BasicProperties:
    """The command as it was sent, less the dead-letter bookkeeping: the same raw ids."""
    original = dict(properties.headers or {})
    headers = {k: v for k, v in original.items() if not bookkeeping(k)}
    if operator_token is None:  # its own token, as it came
        headers.update({k: v for k, v in original.items() if is_authorization(k)})
    else:
        headers[AUTHORIZATION_HEADER] = f"Bearer {operator_token}"
        headers[RETRY_OF_HEADER] = letter.sender.known_user or ""
    reply_to: Any = properties.reply_to
    if letter.by == "worker":  # the worker wrote it: the command's own reply_to
        reply_to = original.get(DEAD_REPLY_TO_HEADER) or reply_to
    # The bare direct reply-to name is only valid on the channel that consumes it.
    if reply_to == DIRECT_REPLY_TO:
        reply_to = None
    return pika.BasicProperties(
        content_type=properties.content_type or CONTENT_TYPE, delivery_mode=2,
        message_id=properties.message_id, correlation_id=properties.correlation_id,
        reply_to=reply_to, headers=headers,
    )



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
