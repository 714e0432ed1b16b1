"""Dead letters for operators: read `<prefix>.dead` without removing anything, send commands back.

Reading takes messages with basic_get and never acks them: closing the
connection returns every one to the queue, in its order. A retry acks a dead
message only after the broker has confirmed the command it republished, so a
crash in between leaves it dead, to be retried again (commands are idempotent
by message_id). Tokens stay in this module: a DeadLetter only says whether the
message carries one.

Anyone who may publish to the default exchange may also publish straight into
the dead queue, or make the broker dead-letter a command of their choosing
(an expiration behind a backlog), with any headers. So each letter says how
it came (the exchange it was published to, the broker-checked `user_id`,
`x-death`) and, from that, who sent it and how sure that is. Every value is
shown escaped: a letter may hold bytes that are not UTF-8 and headers of any
type.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import pika
import pika.exceptions
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel

from thelca.amqp.admin import close_quietly, connect
from thelca.errors import BrokerUnavailable, ThelcaError
from thelca.roles.messages import bookkeeping
from thelca_client.contract import (
    AUTHORIZATION_HEADER,
    CONTENT_TYPE,
    DEAD_REASON_HEADER,
    DEAD_REPLY_TO_HEADER,
    DEAD_USER_HEADER,
    DIRECT_REPLY_TO,
    RETRY_OF_HEADER,
    Names,
)
from thelca_client.tls import TlsFiles

DeadBy = Literal["worker", "logger", "broker", "unknown", "nobody"]
# How sure the sender of a letter is, most sure first.
Known = Literal["certain", "likely", "token", "claimed", "unknown"]
KNOWN_SENDERS: tuple[Known, ...] = ("certain", "likely")
RetryStatus = Literal[
    "sent-own-token", "sent-as-operator", "no-token", "sender-unknown", "not-dead-lettered",
    "not-a-command", "own-reply-to", "unroutable", "refused", "unencodable",
]
# The reason of a command or replay request that was not run because its reply_to named
# one of thelca's own queues (contract v1.1): sent back, it would only come back here.
OWN_REPLY_TO_REASON = "reply_to names thelca's own queue"
# Raised by every listing (the messages go back to the queue): not shown, so that two
# listings of the same queue are the same.
LISTING_COUNTS = ("x-delivery-count", "x-acquired-count")
LONGEST_INT = 2**63  # what JSON readers take as an exact integer, roughly


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
class Sender:
    """Who sent a dead letter, as far as can be told, and how sure that is (and why)."""

    user: str | None
    known: Known
    why: str

    @property
    def known_user(self) -> str | None:
        """The user, when known for certain (or as good as): never a mere claim."""
        return self.user if self.known in KNOWN_SENDERS else None


@dataclass(frozen=True)
class DeadLetter:
    """A message of the dead queue as an operator may see it: never its token.

    Every text is shown escaped (bytes that are not UTF-8 as \\xNN); `headers`
    holds every header but the token and the delivery counts, as JSON values.
    """

    position: int
    message_id: str | None
    correlation_id: str | None
    reply_to: str | None
    exchange: str
    user_id: str | None
    by: DeadBy
    reason: str | None
    user: str | None  # x-thelca-user as written, whoever wrote it
    sender: Sender
    deaths: tuple[Death, ...]
    has_token: bool
    is_command: bool
    headers: dict[str, Any]
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
                letters.append(_letter(position, names, method, properties, body,
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
                letter = _letter(position, names, method, properties, body,
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
        headers.update({k: v for k, v in original.items() if _is_authorization(k)})
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


def _is_authorization(header: object) -> bool:
    return isinstance(header, str) and header.lower() == "authorization"


# ---------------------------------------------------------------- what a letter is


def _letter(
    position: int,
    names: Names,
    method: pika.spec.Basic.GetOk,
    properties: pika.spec.BasicProperties,
    body: bytes,
    *,
    worker_user: str | None,
) -> DeadLetter:
    headers = dict(properties.headers or {})
    exchange = _text(method.exchange) or ""
    user_id = _text(properties.user_id)
    deaths = _deaths(headers)
    claimed_reason = _text(headers.get(DEAD_REASON_HEADER))
    by = _dead_by(names, exchange, claimed_reason, deaths, user_id=user_id,
                  worker_user=worker_user)
    has_token = any(_is_authorization(k) for k in headers)
    user = _text(headers.get(DEAD_USER_HEADER))
    reply_to = _text(headers.get(DEAD_REPLY_TO_HEADER)) if by == "worker" else None
    return DeadLetter(
        position=position,
        message_id=_text(properties.message_id),
        correlation_id=_text(properties.correlation_id),
        reply_to=reply_to or _text(properties.reply_to),
        exchange=exchange,
        user_id=user_id,
        by=by,
        reason=claimed_reason if by in ("worker", "logger") else None,
        user=user,
        sender=_sender(by, user, has_token=has_token, user_id=user_id, names=names,
                       worker_user=worker_user),
        deaths=deaths,
        has_token=has_token,
        is_command=by == "worker" or (by == "broker" and deaths[0].queue == names.commands),
        headers={_text(k) or "": _plain(v) for k, v in headers.items()
                 if not _is_authorization(k) and k not in LISTING_COUNTS},
        body=body,
    )


def _dead_by(
    names: Names, exchange: str, reason: str | None, deaths: tuple[Death, ...], *,
    user_id: str | None, worker_user: str | None,
) -> DeadBy:
    """Who put the letter in the dead queue, from what a client cannot forge.

    The exchange: the default exchange ('') means it was published straight into
    the queue. x-death: only the broker's dead-lettering adds an entry (the
    newest first). The user_id: the broker checked it against the publisher's login.
    """
    if exchange != names.dead:
        return "nobody"
    if deaths:
        return "broker"
    if reason is None:
        return "unknown"
    if reason.startswith("logger:"):
        return "logger"
    if worker_user is not None and user_id != worker_user:
        return "unknown"  # thelca's headers, written by someone who is not the worker
    return "worker"


def _sender(
    by: DeadBy, user: str | None, *, has_token: bool, user_id: str | None, names: Names,
    worker_user: str | None,
) -> Sender:
    if by == "worker":
        if user is None:
            return Sender(None, "unknown", "the worker could not tell who sent it (no valid "
                          "token)")
        if worker_user is not None:
            return Sender(user, "certain", f"dead-lettered by the worker: user_id {user_id} "
                          "checked by the broker")
        return Sender(user, "likely", f"came through {names.dead} without x-death: from a "
                      "broker user that may write there, the worker with the README's users "
                      "(give --worker-user to check its user_id)")
    if has_token:
        return Sender(None, "token", "its own token says, checked by the worker when it runs")
    how = {
        "nobody": "published straight into the dead queue, not dead-lettered",
        "broker": "dead-lettered by the broker (x-death): the worker never saw it",
        "logger": "not a command",
        "unknown": f"thelca headers, but not from the worker (user_id {user_id or 'none'})",
    }[by]
    if user is not None:
        return Sender(user, "claimed", f"x-thelca-user could be written by anyone: {how}")
    return Sender(None, "unknown", how)


def _deaths(headers: dict[Any, Any]) -> tuple[Death, ...]:
    """x-death, most recent first; failing that, x-first-death-reason and -queue."""
    entries = headers.get("x-death")
    if isinstance(entries, list) and entries:
        deaths = tuple(
            Death(_text(e.get("reason")) or "unknown", _text(e.get("queue")), _int(e.get("count")))
            for e in entries if isinstance(e, dict)
        )
        if deaths:
            return deaths
    reason = _text(headers.get("x-first-death-reason"))
    if reason is None:
        return ()
    return (Death(reason, _text(headers.get("x-first-death-queue")), None),)


def _text(value: Any) -> str | None:
    """A property or header as text; bytes that are not UTF-8 escaped (\\xff)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)


def _plain(value: Any) -> Any:
    """A header value as a JSON value: texts escaped, other types as text."""
    if value is None or isinstance(value, bool | float | str):
        return str(value) if isinstance(value, str) else value
    if isinstance(value, int):
        return value if -LONGEST_INT <= value < LONGEST_INT else str(value)
    if isinstance(value, bytes):
        return _text(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_text(k) or "": _plain(v) for k, v in value.items()}
    return str(value)  # Decimal, or whatever else pika may give


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


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
