"""A client written with nothing but pika and the contract's prose, as an outsider would."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel


@dataclass
class PlainReply:
    properties: pika.BasicProperties
    body: dict[str, Any]

    @property
    def status(self) -> int:
        return int(self.body["status"])


class PlainClient:
    def __init__(self, amqp_url: str, prefix: str) -> None:
        self.queue = f"{prefix}.commands"
        self.connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self.channel: BlockingChannel = self.connection.channel()
        self.channel.confirm_delivery()
        self._replies: dict[str, PlainReply] = {}
        self.channel.basic_consume("amq.rabbitmq.reply-to", self._on_reply, auto_ack=True)

    def _on_reply(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._replies[properties.correlation_id] = PlainReply(properties, json.loads(body))

    def send(
        self,
        body: bytes | dict[str, Any],
        *,
        token: str | None = "abcd",
        headers: dict[str, Any] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        timeout: float = 10,
    ) -> PlainReply:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        if headers is None:
            headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        message_id = message_id or str(uuid.uuid4())
        expect = correlation_id or message_id
        self.channel.basic_publish(
            "", self.queue, raw,
            pika.BasicProperties(
                reply_to="amq.rabbitmq.reply-to",
                correlation_id=correlation_id, message_id=message_id, headers=headers,
                content_type="application/json", delivery_mode=2,
            ),
            mandatory=True,
        )
        deadline = time.monotonic() + timeout
        while expect not in self._replies:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply to {message_id}")
            self.connection.process_data_events(time_limit=0.1)
        return self._replies.pop(expect)

    def publish(self, body: dict[str, Any], *, token: str = "abcd",
                message_id: str | None = None) -> str:
        """Fire and forget: no reply_to."""
        message_id = message_id or str(uuid.uuid4())
        self.channel.basic_publish(
            "", self.queue, json.dumps(body).encode(),
            pika.BasicProperties(message_id=message_id, delivery_mode=2,
                                 headers={"Authorization": f"Bearer {token}"}),
            mandatory=True,
        )
        return message_id

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


def watch(client: PlainClient, exchange: str) -> tuple[BlockingChannel, str]:
    """A queue of our own bound to a fanout exchange, to see what is published there."""
    channel = client.connection.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, exchange)
    return channel, queue


def next_message(
    channel: BlockingChannel, queue: str, timeout: float = 10
) -> tuple[pika.BasicProperties, dict[str, Any]]:
    for method, properties, body in channel.consume(queue, inactivity_timeout=timeout):
        assert method is not None and properties is not None and body is not None, \
            f"nothing arrived on {queue} within {timeout}s"
        channel.basic_ack(int(method.delivery_tag or 0))
        return properties, json.loads(body)
    raise AssertionError("unreachable")
