"""Typed successful replies: what a command's 200 reply is sure to carry, typed as such.

A Reply (thelca_client.contract) is the wire's shape, where every field but the
status may be missing. A command method of a client raises for any status but
200, so what it returns is a 200 reply, and a 200 reply to create, read or
update always carries the item and its version: ItemReply says so in its type,
and checks it when the reply is read. Likewise LinkReply (a link command: the
link and its version), ItemPage and LinkPage (a search: the items or links,
and next). A client made of these functions works the same over any transport.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class LinkReply(Reply):
    """A 200 reply to a link command: the link as stored (as it was, for a delete), its
    version."""

    link: JSON = field(kw_only=True)
    version: int = field(kw_only=True)


@dataclass(frozen=True)
class ItemPage(Reply):
    """A 200 reply to search_items: the items, and the id to pass as `after` for the next
    page (None when nothing follows)."""

    items: list[JSON] = field(kw_only=True)
    next: str | None = field(kw_only=True)


@dataclass(frozen=True)
class LinkPage(Reply):
    """A 200 reply to search_links: the links, and the id to pass as `after` for the next
    page (None when nothing follows)."""

    links: list[JSON] = field(kw_only=True)
    next: str | None = field(kw_only=True)


def link_reply(reply: Reply, message_id: str) -> LinkReply:
    """The 200 reply as a LinkReply; ThelcaClientError when it lacks the link or version."""
    link, version = reply.extra.get("link"), reply.version
    if not isinstance(link, dict) or not isinstance(version, int) or isinstance(version, bool):
        raise _not_the_contract(message_id, "carry the link and its version")
    return LinkReply(reply.status, error=reply.error, extra=reply.extra, link=link,
                     version=version)


def item_page(reply: Reply, message_id: str) -> ItemPage:
    """The 200 reply as an ItemPage; ThelcaClientError when it lacks the items or next."""
    items, following = _page(reply, "items", message_id)
    return ItemPage(reply.status, error=reply.error, extra=reply.extra, items=items,
                    next=following)


def link_page(reply: Reply, message_id: str) -> LinkPage:
    """The 200 reply as a LinkPage; ThelcaClientError when it lacks the links or next."""
    links, following = _page(reply, "links", message_id)
    return LinkPage(reply.status, error=reply.error, extra=reply.extra, links=links,
                    next=following)


def _page(reply: Reply, key: str, message_id: str) -> tuple[list[JSON], str | None]:
    results, following = reply.extra.get(key), reply.extra.get("next")
    if (not isinstance(results, list) or not all(isinstance(r, dict) for r in results)
            or "next" not in reply.extra
            or not (following is None or isinstance(following, str))):
        raise _not_the_contract(message_id, f"carry a list of {key} and next (an id or null)")
    return results, following


def _not_the_contract(message_id: str, what: str) -> ThelcaClientError:
    return ThelcaClientError(
        f"the reply to message {message_id} does not follow the contract: a 200 reply must "
        f"{what}")
