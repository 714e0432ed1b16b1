"""The SQLite store's tables, their migrations, and opening the file for writing."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from pathlib import Path
from typing import IO

import orjson

from thelca.errors import StoreLocked
from thelca.stores.sqlite.rows import INSERT_PROPERTY, _property_rows

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
    fingerprint TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS links (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    properties BLOB NOT NULL,
    version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS links_by_source ON links (source, created_at, id);
CREATE INDEX IF NOT EXISTS links_by_target ON links (target, created_at, id);
CREATE INDEX IF NOT EXISTS links_by_creation ON links (created_at, id);
CREATE TABLE IF NOT EXISTS item_properties (
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    created_at TEXT NOT NULL,
    item_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deployment_keys (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"""
# Columns added since the first release, added to a database made before them when it
# is opened for writing: (table, column, its declaration). {now} is the time of that
# opening: the records kept before created_at count as made then, so that none expires
# before a whole window has passed (a constant default: SQLite rewrites no row for it).
ADDED_COLUMNS = (
    ("processed", "fingerprint", "TEXT"),
    ("processed", "created_at", "REAL NOT NULL DEFAULT {now}"),
)
# The records that have outlived the deduplication window are found, oldest first, here.
PROCESSED_BY_AGE = "CREATE INDEX IF NOT EXISTS processed_by_age ON processed (created_at)"
# The indexes a bulk load into an empty store drops and makes again afterwards: one
# sort in C instead of a B-tree split all over by each of a million inserts.
SEARCH_INDEXES = {
    "items_by_creation": "CREATE INDEX IF NOT EXISTS items_by_creation ON items (created_at, id)",
    "item_properties_by_value": "CREATE UNIQUE INDEX IF NOT EXISTS item_properties_by_value "
                                "ON item_properties (key, value, created_at, item_id)",
}
SCHEMA_VERSION = 1  # 0: the previous release's, without links and search indexes


def _open_writer(path: Path) -> sqlite3.Connection:
    """The writer's connection, WAL and fully synchronous, with the schema made."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        _add_missing_columns(db)
        for statement in (PROCESSED_BY_AGE, *SEARCH_INDEXES.values()):
            db.execute(statement)
        _upgrade(db)
    except BaseException:
        db.close()
        raise
    return db


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring a database made by an earlier release up to this one's tables: each column
    it lacks is added (empty, or with its default), once, in one transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for table, column, declaration in ADDED_COLUMNS:
            present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} "
                           f"{declaration.format(now=repr(time.time()))}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _upgrade(db: sqlite3.Connection) -> None:
    """Index the properties of the items a database of the previous release holds."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version >= SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("DELETE FROM item_properties")
        rows = db.execute("SELECT id, created_at, properties FROM items")
        db.executemany(INSERT_PROPERTY, (
            index_row for item_id, created_at, properties in rows
            for index_row in _property_rows(item_id, created_at, orjson.loads(properties))))
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


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
