"""Rows of the PostgreSQL store to thelca's values, and psycopg's errors to thelca's."""

from __future__ import annotations

from typing import Any, LiteralString

import orjson
import psycopg

from thelca.domain.model import Item, Link, StoredItem, StoredLink
from thelca.errors import ConcurrentUpdate, StoreError, StoreUnavailable, UnstorableValue
from thelca.stores.matching import jsonb_text

ITEM_COLUMNS: LiteralString = "id, created_at, created_by, properties::text, version"
LINK_COLUMNS: LiteralString = (
    "id, created_at, created_by, source, target, properties::text, version")


def _translated(error: psycopg.Error, doing: str = "", *, opening: bool = False) -> StoreError:
    """The one place psycopg's errors become thelca's (connecting keeps its own message, in
    _connection, so as never to quote the password).

    A serialization failure is a lost race: the command runs again. A deadlock, a lost
    connection, a server that stops answering, or any failure while a connection is being
    prepared: the batch is retried later. A value PostgreSQL cannot keep (text with NUL)
    fails that one command, as does anything else (a bug, not a passing state).
    """
    where = f" ({doing})" if doing else ""
    if isinstance(error, psycopg.errors.SerializationFailure):
        return ConcurrentUpdate(f"PostgreSQL could not serialize the change: {_first_line(error)}")
    if isinstance(error, psycopg.errors.DeadlockDetected):
        return StoreUnavailable("a deadlock with another worker's batch; this batch is rolled "
                                "back and retried")
    if opening or isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
        return StoreUnavailable(f"the PostgreSQL store failed{where}: {_first_line(error)}")
    if isinstance(error, psycopg.DataError):
        return UnstorableValue(f"the PostgreSQL store cannot keep a value{where}: "
                               f"{_first_line(error)}")
    return StoreError(f"the PostgreSQL store refused a statement{where}: {_first_line(error)}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _json(properties: Any) -> str:
    return orjson.dumps(properties).decode()


def _searchable_text(properties: bytes) -> str:
    """The `search` value of properties given as JSON text (a bulk load)."""
    if b"\\u0000" in properties or b"\\u0001" in properties:
        return jsonb_text(orjson.loads(properties))
    return properties.decode()


def _stored_link(row: tuple[str, str, str, str, str, str, int]) -> StoredLink:
    link_id, created_at, created_by, source, target, properties, version = row
    return StoredLink(Link(link_id, created_at, created_by, source, target,
                           orjson.loads(properties)), int(version))


def _items(rows: list[tuple[Any, ...]]) -> list[Item]:
    """The items of search rows, built straight from them (a page holds up to 1000)."""
    loads = orjson.loads
    return [Item(row[0], row[1], row[2], loads(row[3])) for row in rows]


def _stored(row: tuple[str, str, str, str, int]) -> StoredItem:
    item_id, created_at, created_by, properties, version = row
    return StoredItem(Item(item_id, created_at, created_by, orjson.loads(properties)),
                      int(version))
