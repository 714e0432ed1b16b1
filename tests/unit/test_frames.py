"""thelca.amqp.frames writes a publish's frames itself: they must be pika's, byte for byte."""

from __future__ import annotations

import math

import pytest
from pika import frame, spec
from pika.exceptions import UnsupportedAMQPFieldException

from thelca.amqp import frames
from thelca.amqp.convert import basic_properties
from thelca.roles.messages import Outgoing

BODY_MAX = 131072 - 8  # pika's body frame size for the broker's default frame_max


def pikas(channel_number: int, message: Outgoing, user_id: str | None, mandatory: bool,
          body_max: int) -> list[bytes]:
    """What pika.connection.Connection._send_message outputs for the same publish."""
    properties = basic_properties(message)
    properties.user_id = user_id
    method = spec.Basic.Publish(exchange=message.exchange, routing_key=message.routing_key,
                                mandatory=mandatory)
    out = [frame.Method(channel_number, method).marshal(),
           frame.Header(channel_number, len(message.body), properties).marshal()]
    body = message.body
    for chunk in range(math.ceil(len(body) / body_max)):
        out.append(frame.Body(channel_number, body[chunk * body_max:(chunk + 1) * body_max])
                   .marshal())
    return out


MESSAGES = [
    Outgoing("", "amq.rabbitmq.reply-to.g1h2AA==.abc", b'{"status":201}',
             correlation_id="c-1", headers={"x-thelca-status": 201}, persistent=False),
    Outgoing("thelca.events", "", b'{"type":"item created"}', message_id="e-1",
             type="item created"),
    Outgoing("x", "k", b"", message_id="m", correlation_id="c", type="t",
             headers={"a": "text", "b": -5, "c": 2**40, "d": True, "e": None, "f": b"raw",
                      "g": {"nested": [1, "two"]}}),
    Outgoing("dead", "q", b"x" * 300_000, headers={}, content_type="text/plain"),
    Outgoing("é-xchange", "ключ", "ü".encode() * 10, message_id="ü" * 127),
]


@pytest.mark.parametrize("message", MESSAGES)
@pytest.mark.parametrize(("user_id", "mandatory"), [(None, False), ("thelca", True)])
def test_the_frames_are_pikas(message: Outgoing, user_id: str | None, mandatory: bool) -> None:
    for channel_number, body_max in ((1, BODY_MAX), (7, 1000)):
        assert frames.publish_frames(channel_number, message, user_id, mandatory, body_max) \
            == pikas(channel_number, message, user_id, mandatory, body_max)


def test_a_short_string_too_long_is_left_to_pika() -> None:
    with pytest.raises(frames._TooLong):
        frames.publish_frames(1, Outgoing("", "q", b"", message_id="m" * 256), None, False,
                              BODY_MAX)


def test_a_header_pika_cannot_encode_raises_as_pikas_does() -> None:
    message = Outgoing("", "q", b"", headers={"h": 1.5})
    with pytest.raises(UnsupportedAMQPFieldException):
        pikas(1, message, None, False, BODY_MAX)
    with pytest.raises(UnsupportedAMQPFieldException):
        frames.publish_frames(1, message, None, False, BODY_MAX)
