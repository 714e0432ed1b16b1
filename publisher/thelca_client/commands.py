"""The client's commands apart from any transport: their bodies, the message around them, replies.

Nothing here knows pika. A transport (the blocking Connection, the asyncio
AsyncConnection) is given an Outgoing and hands back the bytes of its reply; a
client turns those into a Reply here. A new command is one more body builder
here and one method in thelca_client.methods, which both clients share.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from thelca_client.contract import (
    SEARCH_LIMIT,
    ContractError,
    CreateLink,
    DeleteLink,
    LinkEnd,
    ReadLink,
    Reply,
    SearchItems,
    SearchLinks,
    UpdateLink,
    authorization_headers,
    decode_reply,
    encode,
    encode_command,
)
from thelca_client.errors import ThelcaClientError, error_for


@dataclass(frozen=True)
class Outgoing:
    """A command ready for any transport: its body, its message_id and its headers."""

    body: bytes
    message_id: str
    headers: dict[str, str] | None = None  # the Authorization header, when there is a token


def outgoing(body: bytes, *, token: str | None, message_id: str | None) -> Outgoing:
    """The command as it will be published: a new message_id unless one is given."""
    return Outgoing(
        body,
        new_id() if message_id is None else message_id,
        None if token is None else authorization_headers(token),
    )


def new_id() -> str:
    return str(uuid.uuid4())


# ---------------------------------------------------------------- bodies


def create_body(properties: Mapping[str, Any] | None) -> bytes:
    return encode_command("create", item={"properties": dict(properties or {})})


def read_body(id: str) -> bytes:
    return encode_command("read", id=id)


def update_body(id: str, item: Mapping[str, Any], expected_version: int | None) -> bytes:
    return encode_command("update", id=id, item=item, expected_version=expected_version)


def create_link_body(
    source: str, target: str, properties: Mapping[str, Any] | None = None
) -> bytes:
    return encode(CreateLink({"source": source, "target": target,
                              "properties": dict(properties or {})}))


def read_link_body(id: str) -> bytes:
    return encode(ReadLink(id))


def update_link_body(id: str, link: Mapping[str, Any], expected_version: int | None) -> bytes:
    return encode(UpdateLink(id, dict(link), expected_version))


def delete_link_body(id: str, expected_version: int | None) -> bytes:
    return encode(DeleteLink(id, expected_version))


def search_items_body(
    where: Mapping[str, Any] | None = None, *, limit: int = SEARCH_LIMIT, after: str | None = None
) -> bytes:
    return encode(SearchItems(dict(where or {}), limit, after))


def link_end(
    source: str | None, target: str | None, either: str | None
) -> tuple[LinkEnd, str]:
    """The one end a search_links call names, and its item id; ValueError unless exactly one."""
    ends: dict[LinkEnd, str | None] = {"source": source, "target": target, "either": either}
    given = [(end, item_id) for end, item_id in ends.items() if item_id is not None]
    if len(given) != 1:
        raise ValueError("search_links takes exactly one of source, target, either")
    return given[0]


def search_links_body(
    end: LinkEnd, item_id: str, *, limit: int = SEARCH_LIMIT, after: str | None = None
) -> bytes:
    return encode(SearchLinks(end, item_id, limit, after))


# ---------------------------------------------------------------- replies


def reply_from(body: bytes, message_id: str, *, raise_for_status: bool) -> Reply:
    """The decoded reply; the CommandFailed subclass of its status if it failed and should raise."""
    reply = _decode(body, message_id)
    if raise_for_status and not reply.ok:
        raise error_for(reply, message_id=message_id)
    return reply


def _decode(body: bytes, message_id: str) -> Reply:
    try:
        return decode_reply(body)
    except ContractError as error:
        raise ThelcaClientError(
            f"the reply to message {message_id} does not follow the contract: {error}"
        ) from error
