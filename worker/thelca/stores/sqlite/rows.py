"""Rows of the SQLite store to thelca's values, and sqlite3's errors to thelca's."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from thelca.domain.model import Item, Link, StoredItem, StoredLink
from thelca.errors import ConcurrentUpdate, StoreUnavailable
from thelca.stores.base import ItemRow
from thelca.stores.matching import indexed
from thelca_client.contract import JSON

ITEM_COLUMNS = "id, created_at, created_by, properties, version"
LINK_COLUMNS = "id, created_at, created_by, source, target, properties, version"


def _translated(
    error: sqlite3.Error, doing: str, conflict: str | None = None
) -> ConcurrentUpdate | StoreUnavailable:
    """The one place sqlite3's errors become thelca's. A row that exists already, where
    `conflict` says what that means, is a lost race (ConcurrentUpdate); any other failure
    (disk full, I/O error, locked, a constraint checked at COMMIT) means the store cannot
    be used now, and the batch is retried (StoreUnavailable)."""
    if conflict is not None and isinstance(error, sqlite3.IntegrityError):
        return ConcurrentUpdate(conflict)
    return StoreUnavailable(f"the SQLite store could not {doing}: {error}")


@contextmanager
def _translating(doing: str) -> Iterator[None]:
    """A block whose sqlite3 errors are translated (_translated)."""
    try:
        yield
    except sqlite3.Error as error:
        raise _translated(error, doing) from error


INSERT_PROPERTY = ("INSERT OR IGNORE INTO item_properties (key, value, created_at, item_id) "
                   "VALUES (?, ?, ?, ?)")
DELETE_PROPERTY = ("DELETE FROM item_properties "
                   "WHERE key = ? AND value = ? AND created_at = ? AND item_id = ?")


def _property_rows(
    item_id: str, created_at: str, properties: JSON
) -> list[tuple[str, str, str, str]]:
    return [(key, indexed(value), created_at, item_id) for key, value in properties.items()]


def _collecting_properties(
    rows: Iterable[ItemRow], indexed_rows: list[tuple[str, str, str, str]]
) -> Iterator[ItemRow]:
    """The rows as they are, noting their properties' index rows on the way."""
    loads = orjson.loads
    for row in rows:
        item_id, created_at, _, properties, _ = row
        if properties != b"{}":
            indexed_rows.extend(_property_rows(item_id, created_at, loads(properties)))
        yield row


def _stored_link(row: tuple[str, str, str, str, str, bytes, int]) -> StoredLink:
    link_id, created_at, created_by, source, target, properties, version = row
    return StoredLink(Link(link_id, created_at, created_by, source, target,
                           orjson.loads(properties)), version)


def _items(rows: list[tuple[Any, ...]]) -> list[Item]:
    """The items of search rows, built straight from them (a page holds up to 1000)."""
    loads = orjson.loads
    return [Item(row[0], row[1], row[2], loads(row[3])) for row in rows]


def _stored(row: tuple[str, str, str, bytes, int]) -> StoredItem:
    item_id, created_at, created_by, properties, version = row
    return StoredItem(Item(item_id, created_at, created_by, orjson.loads(properties)), version)
