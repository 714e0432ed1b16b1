"""Short-lived broker operations for operators: connecting once, health checks.

Every pika error is turned here into a thelca error (BrokerUnavailable,
QueueMissing), so that no caller needs to know pika's exceptions.
"""

from __future__ import annotations

from contextlib import suppress

import pika
import pika.exceptions

from thelca.amqp.connection import connection_parameters
from thelca.errors import BrokerUnavailable, QueueMissing
from thelca_client.tls import TlsFiles


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


def queue_consumers(
    urls: str, queue: str, timeout: float = 5.0, *, tls: TlsFiles | None = None
) -> int:
    """How many consumers a queue has.

    Raises BrokerUnavailable when no broker answers (or one drops the connection),
    QueueMissing when the queue does not exist.
    """
    connection = connect(urls, timeout, tls=tls)
    try:
        frame = connection.channel().queue_declare(queue, passive=True)
        return int(frame.method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code == 404:
            raise QueueMissing(f"no queue {queue}: {error.reply_text}") from None
        raise BrokerUnavailable(f"the broker refused: {error.reply_text}") from None
    except pika.exceptions.AMQPError as error:
        raise BrokerUnavailable(f"the broker dropped the connection: {error!r}") from None
    finally:
        close_quietly(connection)


def close_quietly(connection: pika.BlockingConnection) -> None:
    """Close a connection that may already be gone; what is unacked goes back to its queue."""
    if connection.is_open:
        # Gone while closing is closed all the same.
        with suppress(pika.exceptions.AMQPError):
            connection.close()
