"""The SQLite store itself: one file, written by one process and read by any."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import orjson

from thelca.domain.model import StoredItem, StoredLink
from thelca.errors import StoreUnavailable
from thelca.stores.base import DEPLOYMENT_KEY_BYTES, ItemRow, OutboxEvent
from thelca.stores.sqlite.rows import (
    DELETE_PROPERTY,
    INSERT_PROPERTY,
    LINK_COLUMNS,
    _collecting_properties,
    _property_rows,
    _stored,
    _stored_link,
    _translating,
)
from thelca.stores.sqlite.schema import SEARCH_INDEXES, _lock_exclusively, _open_writer
from thelca.stores.sqlite.transaction import _SQLiteTransaction

DEPLOYMENT_KEY = "event-ids"  # the name of the key in deployment_keys
LOAD_CACHE_KIB = 256 * 1024  # page cache while restore loads items


class SQLiteStore:
    """One SQLite file, written by one process (a lock file says which) and read by any."""

    keeps_nul = True

    def __init__(self, path: str | Path, *, writer: bool = True) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self._lock_file: IO[str] | None = None
        if writer:
            self._lock_file = _lock_exclusively(self.path)
            try:
                with _translating(f"open {self.path}"):
                    self._db = _open_writer(self.path)
            except BaseException:  # else the lock stays held and refuses the next try
                self._lock_file.close()
                self._lock_file = None
                raise
        else:  # a reader (health, verify) must not create an empty database
            with _translating(f"open {self.path}"):
                self._db = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                    check_same_thread=False, timeout=30,
                )

    @contextmanager
    def transaction(self, *, deferred: bool = False) -> Iterator[_SQLiteTransaction]:
        # Every write is made at once (deferred allows holding them back, never requires it).
        with _translating("begin a transaction"):
            self._db.execute("BEGIN IMMEDIATE")
        try:
            yield _SQLiteTransaction(self._db)
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        try:
            with _translating("commit"):
                self._db.execute("COMMIT")
        except StoreUnavailable:
            # A failed COMMIT can leave the transaction open, and then every later
            # BEGIN fails: end it, so that the retried batch starts afresh.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def pending_outbox(self, limit: int = 1000) -> list[OutboxEvent]:
        with _translating("read the outbox"):
            rows = self._db.execute(
                "SELECT event_id, body FROM outbox ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [OutboxEvent(event_id, bytes(body)) for event_id, body in rows]

    def items(self) -> Iterator[StoredItem]:
        with _translating("read the items"):
            cursor = self._db.execute(
                "SELECT id, created_at, created_by, properties, version FROM items ORDER BY id"
            )
            for row in cursor:
                yield _stored(row)

    def count_items(self) -> int:
        with _translating("count the items"):
            (count,) = self._db.execute("SELECT count(*) FROM items").fetchone()
        return int(count)

    def links(self) -> Iterator[StoredLink]:
        with _translating("read the links"):
            if not self._has_links_table():
                return
            cursor = self._db.execute(f"SELECT {LINK_COLUMNS} FROM links ORDER BY id")  # noqa: S608
            for row in cursor:
                yield _stored_link(row)

    def count_links(self) -> int:
        with _translating("count the links"):
            if not self._has_links_table():
                return 0
            (count,) = self._db.execute("SELECT count(*) FROM links").fetchone()
        return int(count)

    def oldest_processed(self) -> float | None:
        with _translating("read the oldest processed command"):
            (oldest,) = self._db.execute("SELECT min(created_at) FROM processed").fetchone()
        return None if oldest is None else float(oldest)

    def _has_links_table(self) -> bool:
        """False for a database of the previous release that no writer has opened since."""
        return self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'links'"
        ).fetchone() is not None

    def ping(self) -> None:
        with _translating("answer"):
            self._db.execute("SELECT 1").fetchone()

    def deployment_key(self) -> bytes:
        # INSERT OR IGNORE inside one write transaction: whoever comes first keeps its key.
        with self.transaction(), _translating("keep the deployment key"):
            self._db.execute(
                "INSERT OR IGNORE INTO deployment_keys (name, value) VALUES (?, ?)",
                (DEPLOYMENT_KEY, secrets.token_bytes(DEPLOYMENT_KEY_BYTES)))
            (value,) = self._db.execute(
                "SELECT value FROM deployment_keys WHERE name = ?", (DEPLOYMENT_KEY,)).fetchone()
        return bytes(value)

    def clear(self) -> None:
        with self.transaction(), _translating("clear"):
            for table in ("items", "item_properties", "links", "processed", "outbox"):
                self._db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names

    def load_items(self, rows: Iterable[ItemRow]) -> None:
        # Rows in id order append to the primary key's B-tree instead of splitting it
        # all over; that, and a larger page cache for the load, halve the time.
        with _translating("load items"):
            (cache,) = self._db.execute("PRAGMA cache_size").fetchone()
            self._db.execute(f"PRAGMA cache_size = {-LOAD_CACHE_KIB}")
            try:
                with self.transaction():
                    fresh = self._db.execute("SELECT 1 FROM items LIMIT 1").fetchone() is None
                    if fresh:  # restore's first load: index once at the end
                        for name in SEARCH_INDEXES:
                            self._db.execute(f"DROP INDEX IF EXISTS {name}")
                    else:
                        rows = list(rows)  # an item loaded again drops its former properties
                        self._db.executemany(DELETE_PROPERTY, self._stored_properties(rows))
                    indexed_rows: list[tuple[str, str, str, str]] = []
                    self._db.executemany(
                        "INSERT OR REPLACE INTO items "
                        "(id, created_at, created_by, properties, version) VALUES (?, ?, ?, ?, ?)",
                        _collecting_properties(rows, indexed_rows))
                    self._db.executemany(INSERT_PROPERTY, indexed_rows)
                    if fresh:
                        for statement in SEARCH_INDEXES.values():
                            self._db.execute(statement)
            finally:
                self._db.execute(f"PRAGMA cache_size = {int(cache)}")

    def _stored_properties(self, rows: list[ItemRow]) -> list[tuple[str, str, str, str]]:
        """The index rows of the items already stored under the ids of rows."""
        found: list[tuple[str, str, str, str]] = []
        for item_id, *_ in rows:
            old = self._db.execute("SELECT created_at, properties FROM items WHERE id = ?",
                                   (item_id,)).fetchone()
            if old is not None:
                found += _property_rows(item_id, old[0], orjson.loads(old[1]))
        return found

    def close(self) -> None:
        self._db.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
