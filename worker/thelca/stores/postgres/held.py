"""The writes a PostgreSQL batch holds back, sent together: one statement for them all.

In a deferred transaction (thelca.stores.postgres.deferred: the command
role's first run of a batch, without savepoints) the writes of items,
processed commands and the outbox are not sent one by one. They are kept here, and sent when
something must see them — a savepoint, a search, the commit — as one
statement, a WITH part per kind of write (one row given as values, more as
arrays through unnest), in one round trip (with the COMMIT, at the end).
Reads by key see them first: an item held is the item as the batch has it
(its row is locked already, or is new), a record or outbox event held is
there.

What a held write would have refused at once is refused when it is sent,
with the same checks: a new item whose id is taken, an update whose stored
version is no longer the one it was made from, a message_id another worker
has recorded meanwhile. Each is counted in PostgreSQL (every row must be
written: thelca_check_written, see .schema), so that a shortfall fails the
transaction before the COMMIT that may follow in the same round trip; it is a
ConcurrentUpdate for the whole batch, which the command role then runs again
from the start with a savepoint per command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, LiteralString

import orjson

from thelca.domain.model import Item, StoredItem
from thelca.stores.base import OutboxEvent, ProcessedCommand
from thelca.stores.matching import jsonb_text

# The held rows come as columns: one array parameter each, sent in binary (text arrays in
# text form cost psycopg a quoting regex per element) -- or, for a single row (every batch
# at window 1), as plain values, far cheaper still to send. `{rows}` is where they go.
INSERT_ITEMS: LiteralString = (
    "INSERT INTO items (id, created_at, created_by, properties, version, search) "
    "SELECT id, created_at, created_by, properties::json, version, search::jsonb "
    "FROM {rows} AS held (id, created_at, created_by, properties, version, search) "
    "ON CONFLICT (id) DO NOTHING")
ITEM_TYPES = ("text", "text", "text", "text", "bigint", "text")
UPDATE_ITEMS: LiteralString = (
    "UPDATE items SET properties = held.properties::json, version = held.version, "
    "search = held.search::jsonb "
    "FROM {rows} AS held (id, properties, version, stored, search) "
    "WHERE items.id = held.id AND items.version = held.stored")
CHANGE_TYPES = ("text", "text", "bigint", "bigint", "text")
INSERT_PROCESSED: LiteralString = (
    "INSERT INTO processed (message_id, user_id, reply, event_id, fingerprint, created_at) "
    "SELECT * FROM {rows} AS held ON CONFLICT (message_id) DO NOTHING")
PROCESSED_TYPES = ("text", "text", "bytea", "text", "text", "double precision")
# In the order given: the outbox is published again oldest first.
INSERT_OUTBOX: LiteralString = (
    "INSERT INTO outbox (event_id, body) "
    "SELECT event_id, body FROM {rows} AS held (event_id, body, n) ORDER BY n "
    "ON CONFLICT (event_id) DO NOTHING")
OUTBOX_TYPES = ("text", "bytea")
# As remove_outbox does it: a row another worker is removing is skipped, not waited for.
REMOVE_OUTBOX: LiteralString = (
    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox "
    "WHERE event_id = ANY(%b::text[]) FOR UPDATE SKIP LOCKED)")
# A write that must write every row it holds checks its count in PostgreSQL, so that a
# shortfall fails the transaction before the COMMIT sent behind it (see .pipelined).
CHECK: LiteralString = (
    "thelca_check_written((SELECT count(*) FROM {name}), %s::bigint, '{refused}')")


@dataclass(frozen=True)
class HeldItem:
    item: Item
    version: int
    stored: int  # the version stored when the batch first changed it; 0 for a new item


@dataclass(frozen=True)
class Statement:
    """A statement to send, and its parameters."""

    query: LiteralString
    params: tuple[Any, ...]


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
        """What sends every held write: one statement, each kind of write a part of it
        (data-modifying WITH queries all run, to completion, on the same snapshot: the
        kinds touch disjoint rows). Removals first, as they were asked for first."""
        parts: list[tuple[LiteralString, LiteralString, tuple[Any, ...]]] = []
        checks: list[tuple[LiteralString, LiteralString, int]] = []
        if self.removed:
            parts.append(("removed", REMOVE_OUTBOX, (sorted(self.removed),)))
        new = [held for held in self.items.values() if held.stored == 0]
        if new:
            parts.append(("new", *_shaped(INSERT_ITEMS, ITEM_TYPES, [
                (h.item.id, h.item.created_at, h.item.created_by, _json(h.item.properties),
                 h.version, jsonb_text(h.item.properties)) for h in new])))
            checks.append(("new", "an item id is taken already", len(new)))
        changed = [held for held in self.items.values() if held.stored]
        if changed:
            parts.append(("changed", *_shaped(UPDATE_ITEMS, CHANGE_TYPES, [
                (h.item.id, _json(h.item.properties), h.version, h.stored,
                 jsonb_text(h.item.properties)) for h in changed])))
            checks.append(("changed", "an item changed since it was read", len(changed)))
        if self.processed:
            parts.append(("recorded", *_shaped(INSERT_PROCESSED, PROCESSED_TYPES, [
                (p.message_id, p.user_id, p.reply, p.event_id, p.fingerprint, p.created_at)
                for p in self.processed.values()])))
            checks.append(("recorded", "a message_id was recorded by another writer",
                           len(self.processed)))
        if self.outbox:
            parts.append(("events", *_shaped(INSERT_OUTBOX, OUTBOX_TYPES, [
                (e.event_id, e.body) for e in self.outbox.values()], numbered=True)))
        if not parts:
            return []
        counted = {name for name, _, _ in checks}
        query = "WITH " + ", ".join(
            f"{name} AS ({write}{' RETURNING 1' if name in counted else ''})"
            for name, write, _ in parts)
        query += " SELECT " + (", ".join(CHECK.format(name=name, refused=refused)
                                         for name, refused, _ in checks) or "1")
        params = tuple(param for _, _, values in parts for param in values)
        return [Statement(query, (*params, *(rows for _, _, rows in checks)))]


def _shaped(write: LiteralString, types: tuple[LiteralString, ...],
            rows: list[tuple[Any, ...]], *, numbered: bool = False
            ) -> tuple[LiteralString, tuple[Any, ...]]:
    """The write with its rows' place filled in: one row as values, more as arrays (in
    binary, one per column, unnested together); `numbered` adds their order as a column."""
    if len(rows) == 1:
        values = ", ".join(f"%s::{kind}" for kind in types)
        return write.format(rows=f"(VALUES ({values}{', 1' if numbered else ''}))"), rows[0]
    arrays = ", ".join(f"%b::{kind}[]" for kind in types)
    ordinality = " WITH ORDINALITY" if numbered else ""
    return (write.format(rows=f"unnest({arrays}){ordinality}"),
            tuple([row[column] for row in rows] for column in range(len(types))))


def _json(properties: Any) -> str:
    return orjson.dumps(properties).decode()
