"""The item service: every operation reads authorise, validate, store, event.

It knows nothing of the broker or of SQL: it is handed a store transaction
and an authenticated principal, and returns the stored item with the event
that records what happened. Refusals are raised as errors from thelca.errors.
The order of the checks is the contract's: 400, 404, 400, 403, 409.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from thelca.authority.base import Authority, Principal
from thelca.domain import model
from thelca.domain.checks import check_unchanged, check_version, found, refuse_server_fields
from thelca.domain.links import LinkService
from thelca.domain.model import Item, Origin, StoredItem
from thelca.domain.search import SearchService
from thelca.stores.base import StoreTransaction
from thelca_client.contract import JSON, Event


@dataclass(frozen=True)
class Result:
    stored: StoredItem
    event: Event


class ItemService:
    """The domain's operations on items; with its `links` and `search`, on links and searches,
    all three under the same Authority and clock."""

    def __init__(
        self,
        authority: Authority,
        clock: Callable[[], str] = model.utc_now,
        new_id: Callable[[], str] = model.new_item_id,
    ) -> None:
        self.authority = authority
        self.clock = clock
        self.new_id = new_id
        self.links = LinkService(authority, clock, new_id)
        self.search = SearchService(authority, clock)

    def create(
        self, tx: StoreTransaction, principal: Principal, proposed: JSON, origin: Origin
    ) -> Result:
        refuse_server_fields(proposed)
        user = self.authority.check_create_item(principal, proposed)
        now = self.clock()
        item = Item(self.new_id(), now, user, dict(proposed.get("properties") or {}))
        stored = tx.add_item(item)
        return Result(stored, model.item_created(stored, user, now, origin))

    def read(
        self, tx: StoreTransaction, principal: Principal, item_id: str, origin: Origin
    ) -> Result:
        stored = found(tx.get_item(item_id), "item", item_id)
        user = self.authority.check_read_item(principal, stored.item)
        return Result(stored, model.item_read(stored, user, self.clock(), origin))

    def update(
        self,
        tx: StoreTransaction,
        principal: Principal,
        item_id: str,
        proposed: JSON,
        *,
        expected_version: int | None,
        origin: Origin,
    ) -> Result:
        current = found(tx.get_item(item_id), "item", item_id)
        check_unchanged(current.item, item_id, proposed)
        new_item = Item(current.item.id, current.item.created_at, current.item.created_by,
                        dict(proposed.get("properties") or {}))
        user = self.authority.check_update_item(principal, current.item, new_item)
        check_version(expected_version, current.version, "item", item_id)
        stored = tx.replace_item(new_item, current.version + 1)
        return Result(stored, model.item_updated(stored, user, self.clock(), origin))
