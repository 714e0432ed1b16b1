"""Searching items and links, a page at a time, and the events that audit each search.

A search is audited like a read: its event (`Item search`, `Link search`) holds
the ids it returned, in the original server's shape, with the query beside them.
The checks: an `after` that names nothing is a 400, then the Authority (403).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from thelca.authority.base import Authority, Principal
from thelca.domain import model
from thelca.domain.model import Origin
from thelca.errors import InvalidCommand
from thelca.stores.base import Found, StoreTransaction
from thelca_client.contract import ITEM_SEARCH, JSON, LINK_SEARCH, Event, SearchItems, SearchLinks


@dataclass(frozen=True)
class Page:
    """One page of a search: the results as the contract shows them, and the id to pass as
    `after` for the next page (None when nothing follows)."""

    results: list[JSON]
    next: str | None
    event: Event


class SearchService:
    """Search items by their properties and links by their items: authorise, search, event."""

    def __init__(self, authority: Authority, clock: Callable[[], str] = model.utc_now) -> None:
        self.authority = authority
        self.clock = clock

    def search_items(
        self, tx: StoreTransaction, principal: Principal, query: SearchItems, origin: Origin
    ) -> Page:
        found = tx.search_items(query.where, after=query.after, limit=query.limit)
        if found is None:
            raise InvalidCommand(f"after: no item has the id {query.after}")
        user = self.authority.check_search_items(principal, query.where)
        results = [item.to_json() for item in found.results]
        return self._page(ITEM_SEARCH, results, found, user, origin=origin,
                          query={"where": query.where, "limit": query.limit,
                                 "after": query.after})

    def search_links(
        self, tx: StoreTransaction, principal: Principal, query: SearchLinks, origin: Origin
    ) -> Page:
        found = tx.search_links(query.end, query.item_id, after=query.after, limit=query.limit)
        if found is None:
            raise InvalidCommand(f"after: no link has the id {query.after}")
        user = self.authority.check_search_links(principal, query.query)
        results = [link.to_json() for link in found.results]
        return self._page(LINK_SEARCH, results, found, user, origin=origin,
                          query={**query.query, "limit": query.limit, "after": query.after})

    def _page(
        self, kind: str, results: list[JSON], found: Found[Any], user: str, *,
        origin: Origin, query: JSON,
    ) -> Page:
        ids = [result["id"] for result in results]
        following = ids[-1] if found.more and ids else None
        event = Event(
            time=self.clock(),
            type=kind,
            user=user,
            value=ids,
            id=model.event_id_for(origin, kind, user),
            extra={"query": query, "next": following, "command_id": origin.command_id},
        )
        return Page(results, following, event)
