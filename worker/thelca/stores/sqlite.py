"""The default item store: one SQLite file, WAL, one writer process.

Durability matches the event log's: synchronous=FULL fsyncs the WAL once per
commit, and the worker commits once per batch of commands (group commit).
A lock file next to the database makes a second writer refuse to start
instead of interleaving with the first.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import orjson

from thelca.domain.model import Item, StoredItem
from thelca.errors import ConcurrentUpdate, StoreLocked, StoreUnavailable
from thelca.stores.base import DEPLOYMENT_KEY_BYTES, ItemRow, OutboxEvent, ProcessedCommand

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    properties BLOB NOT NULL,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS processed (
    message_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    reply BLOB NOT NULL,
    event_id TEXT,
    fingerprint TEXT
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS deployment_keys (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"""
# Columns added since the first release, added to a database made before them when it
# is opened for writing: (table, column, its declaration).
ADDED_COLUMNS = (("processed", "fingerprint", "TEXT"),)
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
    def transaction(self) -> Iterator[_SQLiteTransaction]:
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
            for table in ("items", "processed", "outbox"):
                self._db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names

    def load_items(self, rows: Iterable[ItemRow]) -> None:
        # Rows in id order append to the primary key's B-tree instead of splitting it
        # all over; that, and a larger page cache for the load, halve the time.
        with _translating("load items"):
            (cache,) = self._db.execute("PRAGMA cache_size").fetchone()
            self._db.execute(f"PRAGMA cache_size = {-LOAD_CACHE_KIB}")
            try:
                with self.transaction():
                    self._db.executemany(
                        "INSERT OR REPLACE INTO items "
                        "(id, created_at, created_by, properties, version) VALUES (?, ?, ?, ?, ?)",
                        rows)
            finally:
                self._db.execute(f"PRAGMA cache_size = {int(cache)}")

    def close(self) -> None:
        self._db.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


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
        return StoredItem(item, 1)

    def replace_item(self, item: Item, version: int) -> StoredItem:
        cursor = self._execute(
            "UPDATE items SET properties = ?, version = ? WHERE id = ? AND version = ?",
            (orjson.dumps(item.properties), version, item.id, version - 1), "replace an item",
        )
        if cursor.rowcount != 1:
            raise ConcurrentUpdate(f"item {item.id} changed since it was read")
        return StoredItem(item, version)

    def get_processed(self, message_id: str) -> ProcessedCommand | None:
        row = self._execute(
            "SELECT message_id, user_id, reply, event_id, fingerprint FROM processed "
            "WHERE message_id = ?",
            (message_id,), "read a processed command",
        ).fetchone()
        return None if row is None else ProcessedCommand(row[0], row[1], bytes(row[2]), row[3],
                                                         row[4])

    def add_processed(self, processed: ProcessedCommand) -> None:
        self._execute(
            "INSERT INTO processed (message_id, user_id, reply, event_id, fingerprint) "
            "VALUES (?, ?, ?, ?, ?)",
            (processed.message_id, processed.user_id, processed.reply, processed.event_id,
             processed.fingerprint),
            "record a command",
            conflict=f"message_id {processed.message_id} is recorded already",
        )

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


def _stored(row: tuple[str, str, str, bytes, int]) -> StoredItem:
    item_id, created_at, created_by, properties, version = row
    return StoredItem(Item(item_id, created_at, created_by, orjson.loads(properties)), version)


def _open_writer(path: Path) -> sqlite3.Connection:
    """The writer's connection, WAL and fully synchronous, with the schema made."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        _add_missing_columns(db)
    except BaseException:
        db.close()
        raise
    return db


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring a database made by an earlier release up to this one's tables: each column
    it lacks is added (empty), once, in one transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for table, column, declaration in ADDED_COLUMNS:
            present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _lock_exclusively(path: Path) -> IO[str]:
    """Hold an exclusive lock on PATH.lock for as long as the store is open."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_file = open(f"{path}.lock", "a")  # noqa: SIM115 - held open until close()
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise StoreLocked(
            f"{path} is already open for writing by another process "
            "(SQLite is one writer: stop the other worker, or use PostgreSQL for many)"
        ) from None
    os.set_inheritable(lock_file.fileno(), False)
    return lock_file
