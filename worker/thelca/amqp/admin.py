"""Short-lived broker operations for operators: health checks."""

from __future__ import annotations

import pika
import pika.exceptions

from thelca.amqp.consumer import connection_parameters
from thelca_client.tls import TlsFiles


def queue_consumers(
    urls: str, queue: str, timeout: float = 5.0, *, tls: TlsFiles | None = None
) -> int:
    """How many consumers a queue has; raises when no broker answers or the queue is missing."""
    last_error: Exception | None = None
    for params in connection_parameters(urls, tls=tls):
        params.socket_timeout = timeout
        params.blocked_connection_timeout = timeout
        params.connection_attempts = 1
        try:
            connection = pika.BlockingConnection(params)
        except pika.exceptions.AMQPError as error:
            last_error = error
            continue
        try:
            frame = connection.channel().queue_declare(queue, passive=True)
            return int(frame.method.consumer_count)
        finally:
            if connection.is_open:
                connection.close()
    raise ConnectionError(f"no broker answered: {last_error!r}")
