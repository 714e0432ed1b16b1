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
from thelca.domain.links import LinkService
from thelca.domain.model import SERVER_FIELDS, Item, Origin, StoredItem
from thelca.domain.search import SearchService
from thelca.errors import Conflict, InvalidCommand, ItemNotFound
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
        for name in SERVER_FIELDS:
            if proposed.get(name) is not None:
                raise InvalidCommand(f"{name} cannot be set externally")
        user = self.authority.check_create_item(principal, proposed)
        now = self.clock()
        item = Item(self.new_id(), now, user, dict(proposed.get("properties") or {}))
        stored = tx.add_item(item)
        return Result(stored, model.item_created(stored, user, now, origin))

    def read(
        self, tx: StoreTransaction, principal: Principal, item_id: str, origin: Origin
    ) -> Result:
        stored = self._find(tx, item_id)
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
        current = self._find(tx, item_id)
        new_item = _checked_update(current.item, item_id, proposed)
        user = self.authority.check_update_item(principal, current.item, new_item)
        if expected_version is not None and expected_version != current.version:
            raise Conflict(
                f"expected_version is {expected_version} but item {item_id} "
                f"is at version {current.version}"
            )
        stored = tx.replace_item(new_item, current.version + 1)
        return Result(stored, model.item_updated(stored, user, self.clock(), origin))

    @staticmethod
    def _find(tx: StoreTransaction, item_id: str) -> StoredItem:
        stored = tx.get_item(item_id)
        if stored is None:
            raise ItemNotFound(f"no item with id {item_id}")
        return stored


def _checked_update(current: Item, item_id: str, proposed: JSON) -> Item:
    """The item an update asks for; the server's fields must be sent back unchanged."""
    if proposed.get("id") != item_id:
        raise InvalidCommand("id cannot be modified")
    for name in ("created_at", "created_by"):
        if proposed.get(name) != getattr(current, name):
            raise InvalidCommand(f"{name} cannot be modified")
    return Item(current.id, current.created_at, current.created_by,
                dict(proposed.get("properties") or {}))
