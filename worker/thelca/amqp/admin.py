"""Short-lived broker operations for operators: connecting once, health checks."""

from __future__ import annotations

import pika
import pika.exceptions

from thelca.amqp.connection import connection_parameters
from thelca_client.tls import TlsFiles


class NoBroker(ConnectionError):
    """Raised when no broker of the URL list answered."""


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
    raise NoBroker(f"no broker answered: {last_error!r}")


def queue_consumers(
    urls: str, queue: str, timeout: float = 5.0, *, tls: TlsFiles | None = None
) -> int:
    """How many consumers a queue has; raises when no broker answers or the queue is missing."""
    connection = connect(urls, timeout, tls=tls)
    try:
        frame = connection.channel().queue_declare(queue, passive=True)
        return int(frame.method.consumer_count)
    finally:
        if connection.is_open:
            connection.close()
