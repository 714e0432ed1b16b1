"""Short-lived broker operations for operators: connecting once, health checks.

Every pika error is turned here into a thelca error (BrokerUnavailable,
QueueMissing), so that no caller needs to know pika's exceptions.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import TypeVar

import pika
import pika.exceptions

from thelca.amqp.connection import connection_parameters
from thelca.amqp.topology import stuck_marker
from thelca.errors import BrokerUnavailable, QueueMissing
from thelca_client.tls import TlsFiles

NOT_FOUND = 404
RESOURCE_LOCKED = 405  # an exclusive queue of another connection

T = TypeVar("T")


def connect(
    urls: str, timeout: float = 5.0, name: str = "thelca admin", *, tls: TlsFiles | None = None
) -> pika.BlockingConnection:
    """A blocking connection to the first broker of the list that answers within timeout."""
    last_error: Exception | None = None
    for params in connection_parameters(urls, name, tls=tls):
        params.socket_timeout = timeout
        params.blocked_connection_timeout = timeout
        params.connection_attempts = 1
        try:
            return pika.BlockingConnection(params)
        except (pika.exceptions.AMQPError, OSError) as error:  # OSError: a name not resolved
            last_error = error
    raise BrokerUnavailable(f"no broker answered: {last_error!r}")


@dataclass(frozen=True)
class QueueState:
    """What `thelca health` asks of a queue: its consumers, and whether one is stuck."""

    consumers: int
    stuck: bool


def queue_states(
    urls: str, queues: list[str], timeout: float = 5.0, *, tls: TlsFiles | None = None
) -> dict[str, QueueState]:
    """Each queue's consumers and stuck marker, asked on one connection.

    Raises BrokerUnavailable when no broker answers (or one drops the connection),
    QueueMissing when a queue does not exist.
    """
    return _asked(urls, timeout, tls, lambda connection: {
        queue: QueueState(_consumers(connection, queue), _stuck(connection, queue))
        for queue in queues})


def queue_consumers(
    urls: str, queue: str, timeout: float = 5.0, *, tls: TlsFiles | None = None
) -> int:
    """How many consumers a queue has.

    Raises BrokerUnavailable when no broker answers (or one drops the connection),
    QueueMissing when the queue does not exist.
    """
    return _asked(urls, timeout, tls, lambda connection: _consumers(connection, queue))


def _asked(urls: str, timeout: float, tls: TlsFiles | None,
           ask: Callable[[pika.BlockingConnection], T]) -> T:
    """What `ask` learns on a connection of its own, pika's failures as BrokerUnavailable."""
    connection = connect(urls, timeout, tls=tls)
    try:
        return ask(connection)
    except pika.exceptions.AMQPError as error:
        raise BrokerUnavailable(f"the broker dropped the connection: {error!r}") from None
    finally:
        close_quietly(connection)


def _consumers(connection: pika.BlockingConnection, queue: str) -> int:
    # A refused passive declare closes its channel: each question gets a channel of its own.
    try:
        frame = connection.channel().queue_declare(queue, passive=True)
        return int(frame.method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code == NOT_FOUND:
            raise QueueMissing(f"no queue {queue}: {error.reply_text}") from None
        raise BrokerUnavailable(f"the broker refused: {error.reply_text}") from None


def _stuck(connection: pika.BlockingConnection, queue: str) -> bool:
    """Whether a consumer of `queue` is stuck on a batch that keeps failing: it then holds
    `<queue>.stuck` exclusively, and the broker says so (RESOURCE_LOCKED) to anyone else."""
    try:
        connection.channel().queue_declare(stuck_marker(queue), passive=True)
        return False  # there, but nobody's own: not a stuck consumer's
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code in (NOT_FOUND, RESOURCE_LOCKED):
            return bool(error.reply_code == RESOURCE_LOCKED)
        raise BrokerUnavailable(f"the broker refused: {error.reply_text}") from None


def close_quietly(connection: pika.BlockingConnection) -> None:
    """Close a connection that may already be gone; what is unacked goes back to its queue."""
    if connection.is_open:
        # Gone while closing is closed all the same.
        with suppress(pika.exceptions.AMQPError):
            connection.close()
