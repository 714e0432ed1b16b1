"""The broker alone: a bare echo through a durable quorum queue, no thelca.

thelca's commands queue is a quorum queue (the contract's default, and what
dead-letters poison after 20 deliveries); the floor's is a transient classic
queue. This consumer answers every persistent command on `<prefix>.commands`
(a quorum queue) with a fixed reply and acks it, so that its round trip is the
broker's own durable one: the reference for latency at window 1.

Run as `python echo.py PREFIX`; it stops on SIGINT.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import pika

URL = os.environ.get("THELCA_AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
REPLY = b'{"status": 200}'


def echo(prefix: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    queue = f"{prefix}.commands"
    channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    channel.basic_qos(prefetch_count=200)

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        ch.basic_publish("", properties.reply_to, REPLY,
                         pika.BasicProperties(correlation_id=properties.correlation_id))
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue, on_message)
    with contextlib.suppress(KeyboardInterrupt):
        channel.start_consuming()


if __name__ == "__main__":
    echo(sys.argv[1])
