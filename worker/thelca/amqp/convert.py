"""pika's deliveries and properties to and from the roles' messages: no pika object leaves here."""

from __future__ import annotations

import pika
import pika.spec

from thelca.roles.messages import Incoming, Outgoing


def incoming_of(
    method: pika.spec.Basic.Deliver, properties: pika.spec.BasicProperties, body: bytes
) -> Incoming:
    """A delivery as the application sees it: no pika object leaves this package."""
    return Incoming(
        body=body,
        message_id=properties.message_id,
        correlation_id=properties.correlation_id,
        reply_to=properties.reply_to,
        headers=dict(properties.headers or {}),
        type=properties.type,
        redelivered=bool(method.redelivered),
    )


def basic_properties(message: Outgoing) -> pika.BasicProperties:
    """The properties to publish an Outgoing message with."""
    return pika.BasicProperties(
        content_type=message.content_type,
        delivery_mode=2 if message.persistent else 1,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        type=message.type,
        headers=message.headers,
    )
