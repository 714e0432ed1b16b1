"""One transaction of the SQLite store: the queries a command makes."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from thelca.domain.model import Item, Link, StoredItem, StoredLink
from thelca.errors import ConcurrentUpdate
from thelca.stores.base import Found, OutboxEvent, ProcessedCommand
from thelca.stores.matching import indexed
from thelca.stores.sqlite.rows import (
    DELETE_PROPERTY,
    INSERT_PROPERTY,
    ITEM_COLUMNS,
    LINK_COLUMNS,
    _items,
    _property_rows,
    _stored,
    _stored_link,
    _translated,
    _translating,
)
from thelca_client.contract import JSON, LinkEnd

# When the first key of a `where` matches more items than this, the other keys are
# counted too (up to this many) and the rarest drives the search.
PROBE_ROWS = 200


class _SQLiteTransaction:
    """One transaction on the store's connection; every statement's error is translated."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._savepoints = 0

    def _execute(self, query: str, params: tuple[Any, ...], doing: str,
                 conflict: str | None = None) -> sqlite3.Cursor:
        try:
            return self._db.execute(query, params)
        except sqlite3.Error as error:
            raise _translated(error, doing, conflict) from error

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self._savepoints += 1
        name = f"sp{self._savepoints}"
        self._execute(f"SAVEPOINT {name}", (), "open a savepoint")
        try:
            yield
        except BaseException as error:
            try:
                self._db.execute(f"ROLLBACK TO {name}")
                self._db.execute(f"RELEASE {name}")
            except sqlite3.Error as failed:
                # SQLite rolled back the whole transaction itself (disk full, I/O
                # error): the batch is to be retried, not the command refused.
                raise _translated(failed, "roll back to a savepoint (it lost the "
                                  f"transaction) after {error!r}") from error
            raise
        self._execute(f"RELEASE {name}", (), "release a savepoint")

    def get_item(self, item_id: str) -> StoredItem | None:
        row = self._execute(
            "SELECT id, created_at, created_by, properties, version FROM items WHERE id = ?",
            (item_id,), "read an item",
        ).fetchone()
        return None if row is None else _stored(row)

    def add_item(self, item: Item) -> StoredItem:
        self._execute(
            "INSERT INTO items (id, created_at, created_by, properties, version) "
            "VALUES (?, ?, ?, ?, 1)",
            (item.id, item.created_at, item.created_by, orjson.dumps(item.properties)),
            "add an item", conflict=f"item {item.id} exists already",
        )
        self._index_properties(item)
        return StoredItem(item, 1)

    def replace_item(self, item: Item, version: int) -> StoredItem:
        old = self._execute("SELECT properties FROM items WHERE id = ?", (item.id,),
                            "read an item's properties").fetchone()
        if old is None:
            raise ConcurrentUpdate(f"item {item.id} changed since it was read")
        cursor = self._execute(
            "UPDATE items SET properties = ?, version = ? WHERE id = ? AND version = ?",
            (orjson.dumps(item.properties), version, item.id, version - 1), "replace an item",
        )
        if cursor.rowcount != 1:
            raise ConcurrentUpdate(f"item {item.id} changed since it was read")
        with _translating("unindex an item's properties"):
            self._db.executemany(DELETE_PROPERTY, _property_rows(
                item.id, item.created_at, orjson.loads(old[0])))
        self._index_properties(item)
        return StoredItem(item, version)

    def _index_properties(self, item: Item) -> None:
        with _translating("index an item's properties"):
            self._db.executemany(INSERT_PROPERTY, _property_rows(item.id, item.created_at,
                                                                 item.properties))

    def has_item(self, item_id: str) -> bool:
        return self._execute("SELECT 1 FROM items WHERE id = ?", (item_id,),
                             "look for an item").fetchone() is not None

    def search_items(self, where: JSON, *, after: str | None, limit: int) -> Found[Item] | None:
        start: tuple[Any, ...] = ()
        if after is not None:
            row = self._execute("SELECT created_at, id FROM items WHERE id = ?", (after,),
                                "find the item to search after").fetchone()
            if row is None:
                return None
            start = tuple(row)
        if not where:
            query = f"SELECT {ITEM_COLUMNS} FROM items"  # noqa: S608 - fixed names
            if start:
                query += " WHERE (created_at, id) > (?, ?)"
            rows = self._execute(query + " ORDER BY created_at, id LIMIT ?",
                                 (*start, limit + 1), "search items").fetchall()
        else:
            wanted = self._rarest_first([(key, indexed(value)) for key, value in where.items()])
            rows = self._execute(*_property_search(wanted, start, limit + 1),
                                 "search items").fetchall()
        items = _items(rows)
        return Found(items[:limit], len(items) > limit)

    def _rarest_first(self, wanted: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The `where` pairs with the one that matches fewest items first: it drives the
        search, and each of its rows costs a look-up per other pair. A pair is counted up
        to PROBE_ROWS only, and only when the first is that common."""
        if len(wanted) == 1:
            return wanted
        counts = [self._count_up_to(pair) for pair in wanted[:1]]
        if counts[0] < PROBE_ROWS:
            return wanted
        counts += [self._count_up_to(pair) for pair in wanted[1:]]
        order = sorted(range(len(wanted)), key=counts.__getitem__)
        return [wanted[index] for index in order]

    def _count_up_to(self, pair: tuple[str, str]) -> int:
        (count,) = self._execute(
            "SELECT count(*) FROM (SELECT 1 FROM item_properties WHERE key = ? AND value = ? "
            "LIMIT ?)", (*pair, PROBE_ROWS), "count matching items").fetchone()
        return int(count)

    def get_link(self, link_id: str) -> StoredLink | None:
        row = self._execute(f"SELECT {LINK_COLUMNS} FROM links WHERE id = ?",  # noqa: S608
                            (link_id,), "read a link").fetchone()
        return None if row is None else _stored_link(row)

    def add_link(self, link: Link) -> StoredLink:
        self._execute(
            f"INSERT INTO links ({LINK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 1)",  # noqa: S608
            (link.id, link.created_at, link.created_by, link.source, link.target,
             orjson.dumps(link.properties)),
            "add a link", conflict=f"link {link.id} exists already",
        )
        return StoredLink(link, 1)

    def replace_link(self, link: Link, version: int) -> StoredLink:
        cursor = self._execute(
            "UPDATE links SET source = ?, target = ?, properties = ?, version = ? "
            "WHERE id = ? AND version = ?",
            (link.source, link.target, orjson.dumps(link.properties), version, link.id,
             version - 1), "replace a link",
        )
        if cursor.rowcount != 1:
            raise ConcurrentUpdate(f"link {link.id} changed since it was read")
        return StoredLink(link, version)

    def delete_link(self, link_id: str, version: int) -> None:
        cursor = self._execute("DELETE FROM links WHERE id = ? AND version = ?",
                               (link_id, version), "delete a link")
        if cursor.rowcount != 1:
            raise ConcurrentUpdate(f"link {link_id} changed since it was read")

    def search_links(
        self, end: LinkEnd, item_id: str, *, after: str | None, limit: int
    ) -> Found[Link] | None:
        start: tuple[Any, ...] = ()
        if after is not None:
            row = self._execute("SELECT created_at, id FROM links WHERE id = ?", (after,),
                                "find the link to search after").fetchone()
            if row is None:
                return None
            start = tuple(row)
        ends = ("source", "target") if end == "either" else (end,)
        parts, params = [], []
        for column in ends:  # each from its own index, already in order
            query = f"SELECT {LINK_COLUMNS} FROM links WHERE {column} = ?"  # noqa: S608
            if start:
                query += " AND (created_at, id) > (?, ?)"
            parts.append(query + " ORDER BY created_at, id LIMIT ?")
            params += [item_id, *start, limit + 1]
        if len(parts) == 2:  # either: the two pages merged, in order, at most limit + 1
            parts = [" UNION ".join(f"SELECT * FROM ({part})" for part in parts)  # noqa: S608
                     + " ORDER BY 2, 1 LIMIT ?"]
            params.append(limit + 1)
        rows = self._execute(parts[0], tuple(params), "search links").fetchall()
        links = [_stored_link(row).link for row in rows]
        return Found(links[:limit], len(links) > limit)

    def prefetch_processed(self, message_ids: list[str]) -> None:
        return None  # a read here costs no round trip

    def prefetch_items(self, item_ids: list[str]) -> None:
        return None

    def get_processed(self, message_id: str) -> ProcessedCommand | None:
        row = self._execute(
            "SELECT message_id, user_id, reply, event_id, fingerprint, created_at "
            "FROM processed WHERE message_id = ?",
            (message_id,), "read a processed command",
        ).fetchone()
        return None if row is None else ProcessedCommand(row[0], row[1], bytes(row[2]), row[3],
                                                         row[4], row[5])

    def add_processed(self, processed: ProcessedCommand) -> None:
        self._execute(
            "INSERT INTO processed (message_id, user_id, reply, event_id, fingerprint, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (processed.message_id, processed.user_id, processed.reply, processed.event_id,
             processed.fingerprint, processed.created_at),
            "record a command",
            conflict=f"message_id {processed.message_id} is recorded already",
        )

    def forget_processed(self, message_id: str, *, before: float) -> None:
        self._execute("DELETE FROM processed WHERE message_id = ? AND created_at < ?",
                      (message_id, before), "forget an expired command")

    def prune_processed(self, *, before: float, limit: int) -> int:
        # The oldest first, from processed_by_age: the cost is the rows removed, not the
        # rows kept.
        cursor = self._execute(
            "DELETE FROM processed WHERE rowid IN (SELECT rowid FROM processed "
            "WHERE created_at < ? ORDER BY created_at LIMIT ?)",
            (before, limit), "prune expired commands")
        return cursor.rowcount

    def add_outbox(self, event: OutboxEvent) -> None:
        self._execute(
            "INSERT OR IGNORE INTO outbox (event_id, body) VALUES (?, ?)",
            (event.event_id, event.body), "add to the outbox",
        )

    def get_outbox(self, event_id: str) -> OutboxEvent | None:
        row = self._execute(
            "SELECT event_id, body FROM outbox WHERE event_id = ?", (event_id,),
            "read the outbox",
        ).fetchone()
        return None if row is None else OutboxEvent(row[0], bytes(row[1]))

    def remove_outbox(self, event_ids: list[str]) -> None:
        with _translating("remove from the outbox"):
            self._db.executemany("DELETE FROM outbox WHERE event_id = ?",
                                 [(e,) for e in event_ids])


def _property_search(
    wanted: list[tuple[str, str]], start: tuple[Any, ...], limit: int
) -> tuple[str, tuple[Any, ...]]:
    """The query for items with every (key, indexed value) pair: the first pair's rows
    of item_properties, in creation order from its index, each checked against the
    others' by the same index; CROSS JOIN keeps SQLite to that plan."""
    query = ("SELECT i.id, i.created_at, i.created_by, i.properties, i.version "
             "FROM item_properties p CROSS JOIN items i ON i.id = p.item_id "
             "WHERE p.key = ? AND p.value = ?")
    params: list[Any] = [*wanted[0]]
    if start:
        query += " AND (p.created_at, p.item_id) > (?, ?)"
        params += start
    for pair in wanted[1:]:
        query += (" AND EXISTS (SELECT 1 FROM item_properties q WHERE q.key = ? AND "
                  "q.value = ? AND q.created_at = p.created_at AND q.item_id = p.item_id)")
        params += pair
    query += " ORDER BY p.created_at, p.item_id LIMIT ?"
    return query, (*params, limit)
