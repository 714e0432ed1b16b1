"""One transaction of the PostgreSQL store: the queries a command makes."""

from __future__ import annotations

import logging
from typing import Any, LiteralString

import psycopg

from thelca.domain.model import Item, Link, StoredItem, StoredLink
from thelca.errors import ConcurrentUpdate
from thelca.logtext import shown
from thelca.stores.base import Found, OutboxEvent, ProcessedCommand
from thelca.stores.matching import jsonb_safe, jsonb_text
from thelca.stores.postgres.pipelined import _Pipelined
from thelca.stores.postgres.rows import (
    ITEM_COLUMNS,
    LINK_COLUMNS,
    _items,
    _json,
    _stored,
    _stored_link,
)
from thelca_client.contract import JSON, LinkEnd

log = logging.getLogger(__name__)

CREATION_ORDER: LiteralString = 'ORDER BY created_at COLLATE "C", id'
AFTER: LiteralString = '(created_at COLLATE "C", id) > (%s, %s)'
SELECT_ITEM_FOR_UPDATE = (
    "SELECT id, created_at, created_by, properties::text, version FROM items "
    "WHERE id = %s FOR UPDATE"
)


SELECT_PROCESSED_AHEAD: LiteralString = (
    "SELECT message_id, user_id, reply, event_id, fingerprint, created_at "
    "FROM processed WHERE message_id = ANY(%b::text[])")


class _PostgresTransaction(_Pipelined):
    """One transaction on the store's connection: the queries a command makes."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        super().__init__(conn)
        # Records read ahead by prefetch_processed (None: none kept), each answered once.
        self._read_ahead: dict[str, ProcessedCommand | None] = {}

    def prefetch_items(self, item_ids: list[str]) -> None:
        return None  # each is read as it is asked for (a deferred transaction reads ahead)

    def get_item(self, item_id: str) -> StoredItem | None:
        if "\x00" in item_id:  # PostgreSQL text cannot hold NUL, so no item has this id
            return None
        row = self._execute(SELECT_ITEM_FOR_UPDATE, (item_id,)).fetchone()
        return None if row is None else _stored(row)

    def add_item(self, item: Item) -> StoredItem:
        cursor = self._execute(
            "INSERT INTO items (id, created_at, created_by, properties, version, search) "
            "VALUES (%s, %s, %s, %s::json, 1, %s::jsonb) ON CONFLICT (id) DO NOTHING",
            (item.id, item.created_at, item.created_by, _json(item.properties),
             jsonb_text(item.properties)),
        )
        if cursor.rowcount != 1:
            raise ConcurrentUpdate(f"item {item.id} exists already")
        return StoredItem(item, 1)

    def replace_item(self, item: Item, version: int) -> StoredItem:
        cursor = self._execute(
            "UPDATE items SET properties = %s::json, version = %s, search = %s::jsonb "
            "WHERE id = %s AND version = %s",
            (_json(item.properties), version, jsonb_text(item.properties), item.id,
             version - 1),
        )
        if cursor.rowcount != 1:
            raise ConcurrentUpdate(f"item {item.id} changed since it was read")
        return StoredItem(item, version)

    def has_item(self, item_id: str) -> bool:
        if "\x00" in item_id:
            return False
        return self._execute("SELECT 1 FROM items WHERE id = %s",
                             (item_id,)).fetchone() is not None

    def search_items(self, where: JSON, *, after: str | None, limit: int) -> Found[Item] | None:
        start: tuple[Any, ...] = ()
        if after is not None:
            row = None if "\x00" in after else self._execute(
                "SELECT created_at, id FROM items WHERE id = %s", (after,)).fetchone()
            if row is None:
                return None
            start = tuple(row)
        query: LiteralString = f"SELECT {ITEM_COLUMNS} FROM items WHERE true"  # noqa: S608
        params: list[Any] = []
        if where:
            safe = jsonb_safe(where)
            query += " AND search @> %s::jsonb"
            params.append(_json(safe))
            for key, value in safe.items():
                query += " AND search -> %s::text = %s::jsonb"
                params += [key, _json(value)]
        if start:
            query += " AND " + AFTER
            params += start
        rows = self._execute(query + " " + CREATION_ORDER + " LIMIT %s",
                             (*params, limit + 1)).fetchall()
        items = _items(rows)
        return Found(items[:limit], len(items) > limit)

    def get_link(self, link_id: str) -> StoredLink | None:
        if "\x00" in link_id:  # PostgreSQL text cannot hold NUL, so no link has this id
            return None
        query: LiteralString = f"SELECT {LINK_COLUMNS} FROM links"  # noqa: S608 - fixed
        row = self._execute(query + " WHERE id = %s FOR UPDATE", (link_id,)).fetchone()
        return None if row is None else _stored_link(row)

    def add_link(self, link: Link) -> StoredLink:
        cursor = self._execute(
            "INSERT INTO links (id, created_at, created_by, source, target, properties, "
            "version) VALUES (%s, %s, %s, %s, %s, %s::json, 1) ON CONFLICT (id) DO NOTHING",
            (link.id, link.created_at, link.created_by, link.source, link.target,
             _json(link.properties)),
        )
        if cursor.rowcount != 1:
            raise ConcurrentUpdate(f"link {link.id} exists already")
        return StoredLink(link, 1)

    def replace_link(self, link: Link, version: int) -> StoredLink:
        cursor = self._execute(
            "UPDATE links SET source = %s, target = %s, properties = %s::json, version = %s "
            "WHERE id = %s AND version = %s",
            (link.source, link.target, _json(link.properties), version, link.id, version - 1),
        )
        if cursor.rowcount != 1:
            raise ConcurrentUpdate(f"link {link.id} changed since it was read")
        return StoredLink(link, version)

    def delete_link(self, link_id: str, version: int) -> None:
        cursor = self._execute("DELETE FROM links WHERE id = %s AND version = %s",
                               (link_id, version))
        if cursor.rowcount != 1:
            raise ConcurrentUpdate(f"link {link_id} changed since it was read")

    def search_links(
        self, end: LinkEnd, item_id: str, *, after: str | None, limit: int
    ) -> Found[Link] | None:
        start: tuple[Any, ...] = ()
        if after is not None:
            row = None if "\x00" in after else self._execute(
                "SELECT created_at, id FROM links WHERE id = %s", (after,)).fetchone()
            if row is None:
                return None
            start = tuple(row)
        if "\x00" in item_id:  # no item has such an id, so no link names it
            return Found([], False)
        parts: list[LiteralString] = []
        params: list[Any] = []
        for column in _LINK_ENDS[end]:  # each from its own index, already in order
            part: LiteralString = f"(SELECT {LINK_COLUMNS} FROM links WHERE {column} = %s"  # noqa: S608
            params.append(item_id)
            if start:
                part += " AND " + AFTER
                params += start
            parts.append(part + " " + CREATION_ORDER + " LIMIT %s)")
            params.append(limit + 1)
        query: LiteralString = " UNION ".join(parts)
        rows = self._execute(f"SELECT * FROM ({query}) AS found "  # noqa: S608
                             'ORDER BY created_at COLLATE "C", id LIMIT %s',
                             (*params, limit + 1)).fetchall()
        links = [_stored_link(row).link for row in rows]
        return Found(links[:limit], len(links) > limit)

    def get_processed(self, message_id: str) -> ProcessedCommand | None:
        if "\x00" in message_id:  # no command was recorded under it: see add_processed
            return None
        self._settle()  # the batch's records, when they are still to be read
        if message_id in self._read_ahead:
            return self._read_ahead.pop(message_id)
        row = self._execute(
            "SELECT message_id, user_id, reply, event_id, fingerprint, created_at "
            "FROM processed WHERE message_id = %s",
            (message_id,),
        ).fetchone()
        return None if row is None else ProcessedCommand(row[0], row[1], bytes(row[2]), row[3],
                                                         row[4], row[5])

    def add_processed(self, processed: ProcessedCommand) -> None:
        # A message_id with NUL cannot be kept: the command role refuses such a command
        # before it is served (keeps_nul; roles.refusals). Should one come here all the
        # same, psycopg refuses it (UnstorableValue), and the command is answered 500 and
        # dead-lettered, never applied unrecorded.
        self._read_ahead.pop(processed.message_id, None)
        cursor = self._execute(
            "INSERT INTO processed (message_id, user_id, reply, event_id, fingerprint, "
            "created_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (message_id) DO NOTHING",
            (processed.message_id, processed.user_id, processed.reply, processed.event_id,
             processed.fingerprint, processed.created_at),
        )
        if cursor.rowcount != 1:
            log.debug("lost a race: message_id %s was recorded by another writer",
                      shown(processed.message_id))
            raise ConcurrentUpdate(f"message_id {processed.message_id} is recorded already")

    def prefetch_processed(self, message_ids: list[str]) -> None:
        # One statement for the batch; each answer is given once (asked again, the record
        # is read again). One that another worker keeps meanwhile is not missed: adding
        # ours then finds it (ConcurrentUpdate), and the command runs again.
        wanted = [m for m in message_ids if "\x00" not in m]
        if not wanted:
            return
        # Not sent on its own: with the batch's read of its items, or its first statement.
        self._queue_read(SELECT_PROCESSED_AHEAD, (wanted,), self._took_processed)
        self._read_ahead.update(dict.fromkeys(wanted))

    def _took_processed(self, rows: list[Any]) -> None:
        self._read_ahead.update((row[0], ProcessedCommand(
            row[0], row[1], bytes(row[2]), row[3], row[4], row[5])) for row in rows)

    def forget_processed(self, message_id: str, *, before: float) -> None:
        # `created_at < before` again here: another worker may have recorded the
        # message_id anew since it was read, and that record stays.
        if "\x00" not in message_id:
            self._execute("DELETE FROM processed WHERE message_id = %s AND created_at < %s",
                          (message_id, before))

    def prune_processed(self, *, before: float, limit: int) -> int:
        # Oldest first from processed_by_age; SKIP LOCKED: a row another worker is
        # pruning (or forgetting) is its to remove, and neither waits for the other.
        # = ANY(ARRAY(...)): the ids first, then each by its key (IN (...) may be planned
        # as a join that scans the whole table).
        cursor = self._execute(
            "DELETE FROM processed WHERE message_id = ANY(ARRAY(SELECT message_id FROM "
            "processed WHERE created_at < %s ORDER BY created_at LIMIT %s "
            "FOR UPDATE SKIP LOCKED))",
            (before, limit),
        )
        return cursor.rowcount

    def add_outbox(self, event: OutboxEvent) -> None:
        self._execute(
            "INSERT INTO outbox (event_id, body) VALUES (%s, %s) ON CONFLICT (event_id) DO NOTHING",
            (event.event_id, event.body),
        )

    def get_outbox(self, event_id: str) -> OutboxEvent | None:
        row = self._execute(
            "SELECT event_id, body FROM outbox WHERE event_id = %s", (event_id,)
        ).fetchone()
        return None if row is None else OutboxEvent(row[0], bytes(row[1]))

    def remove_outbox(self, event_ids: list[str]) -> None:
        if not event_ids:
            return
        # A row locked by another worker is being removed by it (it got a confirm
        # for the same event): skip it rather than wait, and never deadlock on it.
        self._execute(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox "
            "WHERE event_id = ANY(%b::text[]) FOR UPDATE SKIP LOCKED)",
            (event_ids,),
        )



_LINK_ENDS: dict[str, tuple[LiteralString, ...]] = {
    "source": ("source",), "target": ("target",), "either": ("source", "target")}
