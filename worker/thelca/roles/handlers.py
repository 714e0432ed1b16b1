"""One handler per command type, and the table the worker serves commands from.

A handler gets the decoded command and what it runs in (the service, the
store transaction, the authenticated principal, the delivery's origin) and
returns the reply and the event; refusals are raised (thelca.errors), and
the command role (thelca.roles.commands) turns them into replies. A new
command is a shape in thelca_client.contract, a handler here and its entry
in HANDLERS: the command role itself does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from thelca.authority.base import Principal
from thelca.domain.links import LinkResult
from thelca.domain.model import Origin
from thelca.domain.search import Page
from thelca.domain.service import ItemService, Result
from thelca.stores.base import StoreTransaction
from thelca_client.contract import (
    Command,
    CreateItem,
    CreateLink,
    DeleteLink,
    Event,
    ReadItem,
    ReadLink,
    Reply,
    SearchItems,
    SearchLinks,
    UpdateItem,
    UpdateLink,
)

C = TypeVar("C", bound=Command)


@dataclass(frozen=True)
class Context:
    """What a handler runs in: the service, the batch's transaction, who asks, and the
    delivery the command's event comes from (its command_id and the seed of its id)."""

    service: ItemService
    tx: StoreTransaction
    principal: Principal
    origin: Origin


@dataclass(frozen=True)
class Served:
    """A command's 200 reply and the event that records it."""

    reply: Reply
    event: Event


@dataclass(frozen=True)
class Handler(Generic[C]):
    """How the worker serves one command type."""

    handle: Callable[[Context, C], Served]
    # Remembered under its message_id, so that a redelivery gets the same reply and
    # changes nothing. A read is not: answering it afresh changes nothing either.
    remembered: bool = True


def create_item(context: Context, command: CreateItem) -> Served:
    return _item_reply(context.service.create(
        context.tx, context.principal, command.item, context.origin))


def read_item(context: Context, command: ReadItem) -> Served:
    return _item_reply(context.service.read(
        context.tx, context.principal, command.id, context.origin))


def update_item(context: Context, command: UpdateItem) -> Served:
    return _item_reply(context.service.update(
        context.tx, context.principal, command.id, command.item,
        expected_version=command.expected_version, origin=context.origin))


def _item_reply(result: Result) -> Served:
    stored = result.stored
    return Served(Reply(200, item=stored.item.to_json(), version=stored.version), result.event)


def create_link(context: Context, command: CreateLink) -> Served:
    return _link_reply(context.service.links.create(
        context.tx, context.principal, command.link, context.origin))


def read_link(context: Context, command: ReadLink) -> Served:
    return _link_reply(context.service.links.read(
        context.tx, context.principal, command.id, context.origin))


def update_link(context: Context, command: UpdateLink) -> Served:
    return _link_reply(context.service.links.update(
        context.tx, context.principal, command.id, command.link,
        expected_version=command.expected_version, origin=context.origin))


def delete_link(context: Context, command: DeleteLink) -> Served:
    return _link_reply(context.service.links.delete(
        context.tx, context.principal, command.id,
        expected_version=command.expected_version, origin=context.origin))


def _link_reply(result: LinkResult) -> Served:
    stored = result.stored
    return Served(Reply(200, version=stored.version, extra={"link": stored.link.to_json()}),
                  result.event)


def search_items(context: Context, command: SearchItems) -> Served:
    return _page_reply("items", context.service.search.search_items(
        context.tx, context.principal, command, context.origin))


def search_links(context: Context, command: SearchLinks) -> Served:
    return _page_reply("links", context.service.search.search_links(
        context.tx, context.principal, command, context.origin))


def _page_reply(key: str, page: Page) -> Served:
    return Served(Reply(200, extra={key: page.results, "next": page.next}), page.event)


HANDLERS: Final[dict[type[Command], Handler[Any]]] = {
    CreateItem: Handler(create_item),
    ReadItem: Handler(read_item, remembered=False),
    UpdateItem: Handler(update_item),
    CreateLink: Handler(create_link),
    ReadLink: Handler(read_link, remembered=False),
    UpdateLink: Handler(update_link),
    DeleteLink: Handler(delete_link),
    # A search changes nothing either: answered afresh, audited each time like a read.
    SearchItems: Handler(search_items, remembered=False),
    SearchLinks: Handler(search_links, remembered=False),
}
