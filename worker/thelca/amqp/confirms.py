"""Publisher confirms: which publishes in flight a broker's ack or nack settles."""

from __future__ import annotations

from itertools import takewhile
from typing import Any, TypeVar

import pika.frame
import pika.spec

V = TypeVar("V")


def take_confirmed(in_flight: dict[int, V], frame: pika.frame.Method[Any]) -> tuple[list[V], bool]:
    """Pop what this confirm settles from `in_flight` (by sequence number), and whether the
    broker refused it (a nack). Sequence numbers enter the dict in increasing order, so a
    multiple confirm only needs its head, not a scan of everything in flight."""
    method = frame.method
    tag = int(method.delivery_tag)
    refused = isinstance(method, pika.spec.Basic.Nack)
    seqs = (list(takewhile(lambda seq: seq <= tag, in_flight))
            if method.multiple else [tag])
    settled = [value for value in (in_flight.pop(seq, None) for seq in seqs)
               if value is not None]
    return settled, refused
