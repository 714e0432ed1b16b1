"""Header values pika cannot decode, contained: the value becomes a marker, the connection lives.

pika decodes a message's header table while it reads the frame, before any
callback runs, and when a value does not fit Python it raises there and drops
the whole connection: a timestamp of 2^63 (OverflowError) or past the year
9999 (ValueError), or tables nested deeper than the interpreter's recursion
limit (RecursionError). The broker accepts such headers from any publisher and
delivers the message again to the next connection, so one message would stop
a consumer for good. `pika.data.decode_table` and `decode_value` (for arrays)
look `decode_value` up as a module global on every call, so replacing that one
global contains it at every depth, for every connection of the process.

The marker is a `str`, so that pika can encode the message again (a dead
letter keeps it, as a string). RabbitMQ refuses NaN and infinite floats and
unknown field types at publish, so those never reach a consumer.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import Any

import pika.data

MAX_DEPTH = 32  # tables and arrays nested deeper than this are not decoded

_Decoder = Callable[[bytes, int], tuple[Any, int]]


class Undecodable(str):
    """A header value pika could not decode, standing in its place (a str: pika can encode it)."""

    __slots__ = ()


class _Depth(threading.local):
    """How deep the decoder is in nested tables and arrays, per thread (each connection's)."""

    level = 0


_depth = _Depth()
_ORIGINAL: _Decoder = pika.data.decode_value


def install() -> None:
    """Replace pika's value decoder with the containing one; once per process, idempotent."""
    if pika.data.decode_value is not decode_value:
        setattr(pika.data, "decode_value", decode_value)  # noqa: B010 - a module global


def decode_value(encoded: bytes, offset: int) -> tuple[Any, int]:
    """pika's decode_value, except that what it cannot decode becomes an Undecodable."""
    kind = encoded[offset:offset + 1]
    if kind == b"T":
        try:
            return _ORIGINAL(encoded, offset)
        except (OverflowError, ValueError, OSError):
            seconds = struct.unpack_from(">Q", encoded, offset + 1)[0]
            return Undecodable(f"undecodable AMQP timestamp {seconds}"), offset + 9
    if kind in (b"F", b"A"):
        return _nested(encoded, offset)
    return _ORIGINAL(encoded, offset)


def _nested(encoded: bytes, offset: int) -> tuple[Any, int]:
    """A table or array, unless nested too deep: then a marker, skipped by its length."""
    if _depth.level >= MAX_DEPTH:
        size = struct.unpack_from(">I", encoded, offset + 1)[0]
        return Undecodable(f"undecodable: nested deeper than {MAX_DEPTH}"), offset + 5 + size
    _depth.level += 1
    try:
        return _ORIGINAL(encoded, offset)
    finally:
        _depth.level -= 1
