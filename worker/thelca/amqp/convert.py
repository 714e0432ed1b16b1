"""pika's deliveries and properties to and from the roles' messages: no pika object leaves here.

pika hands over a short-string property (message_id, reply_to...) that is not
UTF-8 as `bytes`. Here every one becomes text that shows its bytes (`\\xff`),
short enough to be sent again, and `Incoming.unreadable` says which were so:
a role never meets `bytes` where the contract promises a string.
"""

from __future__ import annotations

import pika
import pika.spec

from thelca.roles.messages import Incoming, Outgoing
from thelca_client.contract import DIRECT_REPLY_TO

SHORT_STRING = 255  # bytes: what AMQP allows in a message_id, correlation_id, reply_to, type


def incoming_of(
    method: pika.spec.Basic.Deliver, properties: pika.spec.BasicProperties, body: bytes
) -> Incoming:
    """A delivery as the application sees it: no pika object leaves this package."""
    unreadable: dict[str, str] = {}
    text = {name: _text(name, getattr(properties, name), unreadable)
            for name in ("message_id", "correlation_id", "reply_to", "type")}
    if text["reply_to"] == DIRECT_REPLY_TO:
        # The broker rewrites this name for a publisher that consumes it; as it is, it
        # names no queue, and a reply to it would be refused.
        unreadable["reply_to"] = "the bare direct reply-to name, which no reply can reach"
    return Incoming(
        body=body,
        message_id=text["message_id"],
        correlation_id=text["correlation_id"],
        reply_to=text["reply_to"],
        headers=dict(properties.headers or {}),
        type=text["type"],
        redelivered=bool(method.redelivered),
        exchange=method.exchange or "",
        user_id=_text("user_id", properties.user_id, unreadable),
        unreadable=unreadable,
    )


def _text(name: str, value: str | bytes | None, unreadable: dict[str, str]) -> str | None:
    if not isinstance(value, bytes):
        return value
    unreadable[name] = "not UTF-8"
    return printable(value)


def printable(raw: bytes) -> str:
    """Bytes that are not UTF-8 as text showing them (\\xff), at most a short string long."""
    text = raw.decode("utf-8", errors="backslashreplace")
    return text.encode()[:SHORT_STRING].decode("utf-8", errors="ignore")


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
