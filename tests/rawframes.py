"""AMQP header tables written byte by byte, for messages pika itself would refuse to encode.

pika's encoder cannot write a timestamp past year 9999 (it goes through a
datetime) nor choose a value's type byte, so these builders write the field
table of the AMQP 0-9-1 spec directly (a 4-byte size, then short-string keys
each followed by a type byte and its value), and RawProperties puts such a
table in place of the headers when pika encodes the rest of the properties.
"""

from __future__ import annotations

import struct
from typing import Any

import pika
import pika.data

Field = tuple[bytes, bytes]  # a key, and a value already encoded with its type byte

_PLACEHOLDER = {"x-placeholder": "x"}


def table(*fields: Field) -> bytes:
    """A field table: its size, then each key (short string) and value."""
    body = b"".join(struct.pack("B", len(key)) + key + value for key, value in fields)
    return struct.pack(">I", len(body)) + body


def timestamp(seconds: int) -> bytes:
    """A timestamp value (type T): 64 bits, unsigned, whatever pika can make of it."""
    return b"T" + struct.pack(">Q", seconds)


def text(value: bytes) -> bytes:
    """A long-string value (type S), its bytes as given (UTF-8 or not)."""
    return b"S" + struct.pack(">I", len(value)) + value


def nested(*fields: Field) -> bytes:
    """A table value (type F)."""
    return b"F" + table(*fields)


def array(*values: bytes) -> bytes:
    """An array value (type A) of encoded values."""
    body = b"".join(values)
    return b"A" + struct.pack(">I", len(body)) + body


def deep(levels: int, bottom: bytes) -> bytes:
    """A value nested `levels` tables deep, with `bottom` at the bottom."""
    value = bottom
    for _ in range(levels):
        value = nested((b"n", value))
    return value


def _encoded(headers: dict[str, Any]) -> bytes:
    pieces: list[bytes] = []
    pika.data.encode_table(pieces, headers)
    return b"".join(pieces)


class RawProperties(pika.BasicProperties):
    """Properties whose headers are a table given as bytes; the rest pika encodes as usual
    (short strings given as bytes go out as they are, UTF-8 or not)."""

    def __init__(self, raw_headers: bytes | None = None, **properties: Any) -> None:
        if raw_headers is not None:
            properties["headers"] = dict(_PLACEHOLDER)
        super().__init__(**properties)
        self.raw_headers = raw_headers

    def encode(self) -> list[bytes]:
        encoded = b"".join(super().encode())
        if self.raw_headers is None:
            return [encoded]
        placeholder = _encoded(_PLACEHOLDER)
        assert encoded.count(placeholder) == 1
        return [encoded.replace(placeholder, self.raw_headers)]
