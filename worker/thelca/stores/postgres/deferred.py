"""A deferred transaction of the PostgreSQL store: its writes held back and sent together.

The command role runs each batch first in one of these (thelca.roles.commands):
outside a savepoint, the writes of items, processed commands and the outbox are
held (thelca.stores.postgres.held) and sent in one round trip, one statement per
kind, before a savepoint, a search or the commit; the items a batch names are
read and locked in one statement (prefetch_items), in id order. Reads by key
answer from what is held first, so that the batch sees its own writes; everything else (links,
pruning, searches after the held writes are sent) goes at once. Row locks are
taken as before (SELECT ... FOR UPDATE), only all at once: an item read ahead
stays as read until the commit, and the held update of its row is sent with
the version it was read at.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, LiteralString

import psycopg

from thelca.domain.model import Item, StoredItem
from thelca.errors import ConcurrentUpdate, StoreError
from thelca.stores.base import Found, OutboxEvent, ProcessedCommand
from thelca.stores.postgres.held import Held, HeldItem
from thelca.stores.postgres.pipelined import Sent
from thelca.stores.postgres.rows import ITEM_COLUMNS, _stored
from thelca.stores.postgres.transaction import _PostgresTransaction
from thelca_client.contract import JSON

SELECT_ITEMS_FOR_UPDATE: LiteralString = (
    f"SELECT {ITEM_COLUMNS} FROM items WHERE id = ANY(%b::text[]) ORDER BY id FOR UPDATE")  # noqa: S608


class _DeferredTransaction(_PostgresTransaction):
    """A transaction whose writes outside a savepoint wait in `held` until flush()."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        super().__init__(conn)
        self._held = Held()
        self._savepoints = 0  # open savepoints: inside one, every write goes at once
        self._refused: StoreError | None = None  # held writes that did not all take
        # Items read (and locked) ahead by prefetch_items (None: no such item), each
        # answered once: asked again, the item is read again.
        self._items_ahead: dict[str, StoredItem | None] = {}

    def _holding(self) -> Held | None:
        """Where a write is held back, or None when it is to be sent at once."""
        return None if self._savepoints else self._held

    def flush(self) -> None:
        """Send every held write, in one round trip; one that does not take fails the
        transaction in PostgreSQL (see .held), and nothing of it may be committed."""
        if self._refused is not None:
            raise self._refused
        statements = self._final_statements()
        if not statements:
            return
        try:
            self._send(statements)
        except StoreError as error:
            self._refused = error
            raise

    def _final_statements(self) -> list[Sent]:
        """The held writes, now sent: with COMMIT by commit(), else by flush()."""
        if self._refused is not None:
            raise self._refused
        statements, self._held = self._held.statements(), Held()
        return [(s.query, s.params) for s in statements]

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self.flush()  # what failed before belongs to no savepoint of this command
        self._savepoints += 1
        try:
            with super().savepoint():
                yield
        finally:
            self._savepoints -= 1

    # ------------------------------------------------------------ items

    def prefetch_items(self, item_ids: list[str]) -> None:
        """Read and lock these items in one statement, in id order (as get_item locks each:
        the rows stay as read until the commit, but for the batch's own writes)."""
        wanted = sorted({i for i in item_ids if "\x00" not in i} - self._held.items.keys())
        if not wanted:
            return
        # With the batch's read of its records (queued by prefetch_processed).
        rows = self._execute(SELECT_ITEMS_FOR_UPDATE, (wanted,)).fetchall()
        self._items_ahead.update(dict.fromkeys(wanted))
        self._items_ahead.update((row[0], _stored(row)) for row in rows)

    def get_item(self, item_id: str) -> StoredItem | None:
        held = self._held.item(item_id)  # new, or locked by the read that changed it
        if held is not None:
            return held
        if item_id in self._items_ahead:
            return self._items_ahead.pop(item_id)
        return super().get_item(item_id)

    def add_item(self, item: Item) -> StoredItem:
        self._items_ahead.pop(item.id, None)
        held = self._holding()
        if held is None:
            return super().add_item(item)
        if item.id in held.items:
            raise ConcurrentUpdate(f"item {item.id} exists already")
        held.items[item.id] = HeldItem(item, 1, 0)
        return StoredItem(item, 1)

    def replace_item(self, item: Item, version: int) -> StoredItem:
        self._items_ahead.pop(item.id, None)
        held = self._holding()
        if held is None:
            return super().replace_item(item, version)
        prior = held.items.get(item.id)
        if prior is not None and prior.version != version - 1:
            raise ConcurrentUpdate(f"item {item.id} changed since it was read")
        held.items[item.id] = HeldItem(item, version, prior.stored if prior else version - 1)
        return StoredItem(item, version)

    def has_item(self, item_id: str) -> bool:
        return item_id in self._held.items or super().has_item(item_id)

    def search_items(self, where: JSON, *, after: str | None, limit: int) -> Found[Item] | None:
        self.flush()  # a search finds what the batch made and changed
        return super().search_items(where, after=after, limit=limit)

    # ------------------------------------------------------------ processed commands

    def get_processed(self, message_id: str) -> ProcessedCommand | None:
        held = self._held.processed.get(message_id)
        return held if held is not None else super().get_processed(message_id)

    def add_processed(self, processed: ProcessedCommand) -> None:
        held = self._holding()
        if held is None:
            return super().add_processed(processed)
        if processed.message_id in held.processed:
            raise ConcurrentUpdate(f"message_id {processed.message_id} is recorded already")
        self._read_ahead.pop(processed.message_id, None)
        held.processed[processed.message_id] = processed
        return None

    # ------------------------------------------------------------ the outbox

    def add_outbox(self, event: OutboxEvent) -> None:
        held = self._holding()
        if held is None:
            return super().add_outbox(event)
        held.removed.discard(event.event_id)
        held.outbox.setdefault(event.event_id, event)
        return None

    def get_outbox(self, event_id: str) -> OutboxEvent | None:
        if event_id in self._held.outbox:
            return self._held.outbox[event_id]
        return None if event_id in self._held.removed else super().get_outbox(event_id)

    def remove_outbox(self, event_ids: list[str]) -> None:
        held = self._holding()
        if held is None:
            return super().remove_outbox(event_ids)
        for event_id in event_ids:
            held.outbox.pop(event_id, None)
        held.removed.update(event_ids)
        return None
