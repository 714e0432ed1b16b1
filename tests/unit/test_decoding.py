"""pika's own decoder on header bytes it cannot decode, once thelca.amqp has contained it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pika.data
import pika.spec
import pytest

import thelca.amqp  # noqa: F401 - importing it contains the decoder
from tests import rawframes as raw
from thelca.amqp.convert import SHORT_STRING, incoming_of
from thelca.amqp.decoding import MAX_DEPTH, Undecodable

BEYOND_INT64 = 2**63
PAST_YEAR_9999 = 253_402_300_800 + 1


def decoded(*fields: raw.Field) -> dict[str | bytes, Any]:
    encoded = raw.table(*fields)
    table, offset = pika.data.decode_table(encoded, 0)
    assert offset == len(encoded)  # every byte read, nothing skipped short
    return table


@pytest.mark.parametrize("seconds", [BEYOND_INT64, PAST_YEAR_9999, 2**64 - 1])
def test_an_out_of_range_timestamp_becomes_a_marker_at_every_depth(seconds: int) -> None:
    table = decoded(
        (b"top", raw.timestamp(seconds)),
        (b"list", raw.array(raw.text(b"a"), raw.timestamp(seconds), raw.text(b"z"))),
        (b"table", raw.nested((b"inner", raw.nested((b"when", raw.timestamp(seconds)))))),
        (b"after", raw.text(b"still read")),
    )
    marker = table["top"]
    assert isinstance(marker, Undecodable) and str(seconds) in marker
    assert table["list"] == ["a", marker, "z"]
    assert table["table"] == {"inner": {"when": marker}}
    assert table["after"] == "still read"


def test_a_timestamp_in_range_is_still_a_datetime() -> None:
    assert decoded((b"t", raw.timestamp(1_000_000_000)))["t"] == datetime(
        2001, 9, 9, 1, 46, 40, tzinfo=UTC)


def test_tables_nested_too_deep_are_cut_at_the_limit_and_the_rest_is_read() -> None:
    table = decoded((b"deep", raw.deep(5000, raw.text(b"bottom"))), (b"next", raw.text(b"ok")))
    value = table["deep"]
    for _ in range(MAX_DEPTH):
        assert isinstance(value, dict)
        value = value["n"]
    assert isinstance(value, Undecodable)
    assert table["next"] == "ok"


def test_a_marker_is_encoded_again_as_a_string() -> None:
    pieces: list[bytes] = []
    marker = decoded((b"t", raw.timestamp(BEYOND_INT64)))["t"]
    pika.data.encode_table(pieces, {"t": marker})
    again, _ = pika.data.decode_table(b"".join(pieces), 0)
    assert again == {"t": f"undecodable AMQP timestamp {BEYOND_INT64}"}


def test_properties_that_are_not_utf8_become_text_short_enough_to_send_again() -> None:
    # As pika hands them over when they are not UTF-8: bytes.
    as_received: dict[str, Any] = {"message_id": b"\xff" * 255, "correlation_id": "fine",
                                   "reply_to": b"q\xfe", "type": b"\x80"}
    properties = pika.spec.BasicProperties(**as_received)
    incoming = incoming_of(pika.spec.Basic.Deliver(), properties, b"{}")
    assert incoming.unreadable == {"message_id": "not UTF-8", "reply_to": "not UTF-8",
                                   "type": "not UTF-8"}
    assert incoming.message_id is not None and incoming.message_id.startswith("\\xff\\xff")
    assert len(incoming.message_id.encode()) <= SHORT_STRING
    assert incoming.reply_to == "q\\xfe"
    assert incoming.correlation_id == "fine"


def test_the_bare_direct_reply_to_name_is_a_reply_to_no_reply_can_reach() -> None:
    properties = pika.spec.BasicProperties(reply_to="amq.rabbitmq.reply-to")
    incoming = incoming_of(pika.spec.Basic.Deliver(), properties, b"{}")
    assert set(incoming.unreadable) == {"reply_to"}
