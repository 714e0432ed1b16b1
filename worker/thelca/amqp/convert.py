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
        exchange=method.exchange or "",
        user_id=_user_id(properties.user_id),
    )


def _user_id(value: str | bytes | None) -> str | None:
    """The user_id property: the broker refuses one that is not the publisher's login."""
    if isinstance(value, bytes):  # not UTF-8, so no broker user's name: shown, never trusted
        return value.decode("utf-8", errors="backslashreplace")
    return value


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
