"""Typed successful replies: what a command's 200 reply is sure to carry, typed as such.

A Reply (thelca_client.contract) is the wire's shape, where every field but the
status may be missing. A command method of a client raises for any status but
200, so what it returns is a 200 reply, and a 200 reply to create, read or
update always carries the item and its version: ItemReply says so in its type,
and checks it when the reply is read. A client made of these functions works
the same over any transport.
"""

from __future__ import annotations

from dataclasses import dataclass

from thelca_client.contract import JSON, Reply
from thelca_client.errors import ThelcaClientError


@dataclass(frozen=True)
class ItemReply(Reply):
    """A 200 reply to create, read or update: the item as stored, and its version."""

    item: JSON
    version: int


def item_reply(reply: Reply, message_id: str) -> ItemReply:
    """The 200 reply as an ItemReply; ThelcaClientError when it lacks the item or version."""
    item, version = reply.item, reply.version
    if not isinstance(item, dict) or not isinstance(version, int) or isinstance(version, bool):
        raise ThelcaClientError(
            f"the reply to message {message_id} does not follow the contract: a 200 reply "
            "must carry the item and its version"
        )
    return ItemReply(reply.status, item=item, version=version, error=reply.error,
                     extra=reply.extra)
