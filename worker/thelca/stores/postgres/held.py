"""The writes a PostgreSQL batch holds back, sent together: one statement per kind.

In a deferred transaction (thelca.stores.postgres.deferred: the command
role's first run of a batch, without savepoints) the writes of items,
processed commands and the outbox are not sent one by one. They are kept here, and sent when
something must see them — a savepoint, a search, the commit — as at most one
statement per kind of write (rows given as arrays, through unnest), all in one
round trip. Reads by key see them first: an item held is the item as the
batch has it (its row is locked already, or is new), a record or outbox event
held is there.

What a held write would have refused at once is refused when it is sent,
with the same checks: a new item whose id is taken, an update whose stored
version is no longer the one it was made from, a message_id another worker
has recorded meanwhile. Each is counted (every row must be written) and a
shortfall is a ConcurrentUpdate for the whole batch, which the command role
then runs again from the start with a savepoint per command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, LiteralString

import orjson

from thelca.domain.model import Item, StoredItem
from thelca.stores.base import OutboxEvent, ProcessedCommand
from thelca.stores.matching import jsonb_text

INSERT_ITEMS: LiteralString = (
    "INSERT INTO items (id, created_at, created_by, properties, version, search) "
    "SELECT id, created_at, created_by, properties::json, version, search::jsonb "
    "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[], %s::text[]) "
    "AS held (id, created_at, created_by, properties, version, search) "
    "ON CONFLICT (id) DO NOTHING")
UPDATE_ITEMS: LiteralString = (
    "UPDATE items SET properties = held.properties::json, version = held.version, "
    "search = held.search::jsonb "
    "FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::text[]) "
    "AS held (id, properties, version, stored, search) "
    "WHERE items.id = held.id AND items.version = held.stored")
INSERT_PROCESSED: LiteralString = (
    "INSERT INTO processed (message_id, user_id, reply, event_id, fingerprint, created_at) "
    "SELECT * FROM unnest(%s::text[], %s::text[], %s::bytea[], %s::text[], %s::text[], "
    "%s::double precision[]) ON CONFLICT (message_id) DO NOTHING")
# In the order given: the outbox is published again oldest first.
INSERT_OUTBOX: LiteralString = (
    "INSERT INTO outbox (event_id, body) "
    "SELECT event_id, body FROM unnest(%s::text[], %s::bytea[]) WITH ORDINALITY "
    "AS held (event_id, body, n) ORDER BY n "
    "ON CONFLICT (event_id) DO NOTHING")
# As remove_outbox does it: a row another worker is removing is skipped, not waited for.
REMOVE_OUTBOX: LiteralString = (
    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox "
    "WHERE event_id = ANY(%s) FOR UPDATE SKIP LOCKED)")


@dataclass(frozen=True)
class HeldItem:
    item: Item
    version: int
    stored: int  # the version stored when the batch first changed it; 0 for a new item


@dataclass(frozen=True)
class Statement:
    """A statement to send, and how many rows it must write (None: whatever it finds)."""

    query: LiteralString
    params: tuple[Any, ...]
    rows: int | None
    refused: str  # what a shortfall means


@dataclass
class Held:
    """The writes held back, in the order they must be sent."""

    items: dict[str, HeldItem] = field(default_factory=dict)
    processed: dict[str, ProcessedCommand] = field(default_factory=dict)
    outbox: dict[str, OutboxEvent] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)  # outbox events confirmed

    def __bool__(self) -> bool:
        return bool(self.items or self.processed or self.outbox or self.removed)

    def item(self, item_id: str) -> StoredItem | None:
        held = self.items.get(item_id)
        return None if held is None else StoredItem(held.item, held.version)

    def statements(self) -> list[Statement]:
        """What sends every held write: removals first, as they were asked for first."""
        sent = []
        if self.removed:
            sent.append(Statement(REMOVE_OUTBOX, (sorted(self.removed),), None, ""))
        new = [held for held in self.items.values() if held.stored == 0]
        if new:
            sent.append(Statement(INSERT_ITEMS, _columns(
                [(h.item.id, h.item.created_at, h.item.created_by, _json(h.item.properties),
                  h.version, jsonb_text(h.item.properties)) for h in new], 6),
                len(new), "an item id is taken already"))
        changed = [held for held in self.items.values() if held.stored]
        if changed:
            sent.append(Statement(UPDATE_ITEMS, _columns(
                [(h.item.id, _json(h.item.properties), h.version, h.stored,
                  jsonb_text(h.item.properties)) for h in changed], 5),
                len(changed), "an item changed since it was read"))
        if self.processed:
            sent.append(Statement(INSERT_PROCESSED, _columns(
                [(p.message_id, p.user_id, p.reply, p.event_id, p.fingerprint, p.created_at)
                 for p in self.processed.values()], 6),
                len(self.processed), "a message_id was recorded by another writer"))
        if self.outbox:
            sent.append(Statement(INSERT_OUTBOX, _columns(
                [(e.event_id, e.body) for e in self.outbox.values()], 2), None, ""))
        return sent


def _columns(rows: list[tuple[Any, ...]], width: int) -> tuple[list[Any], ...]:
    """Rows as columns, one array parameter each."""
    return tuple([row[column] for row in rows] for column in range(width))


def _json(properties: Any) -> str:
    return orjson.dumps(properties).decode()
