"""The default item store: one SQLite file, WAL, one writer process.

Durability matches the event log's: synchronous=FULL fsyncs the WAL once per
commit, and the worker commits once per batch of commands (group commit).
A lock file next to the database makes a second writer refuse to start
instead of interleaving with the first.

Searches are answered from indexes. Links: by (source, created_at, id) and
(target, created_at, id). Items: a side table, item_properties, holds one row
per top-level property, (key, canonical JSON of the value, created_at, item id),
under one index in that order, so that the items with one property equal to a
value come in creation order straight from the index; the other keys of a
`where` are each one look-up in the same index, which walks forward through
their range as the first goes (no second index by item: it halved the speed of
a two-key search; an item's rows are found from its properties). A database of
the previous release gets the new tables and indexes, and its items'
properties indexed, when a writer opens it (PRAGMA user_version says which it
is).
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

from thelca.domain.model import Item, Link, StoredItem, StoredLink
from thelca.errors import ConcurrentUpdate, StoreLocked, StoreUnavailable
from thelca.stores.base import (
    DEPLOYMENT_KEY_BYTES,
    Found,
    ItemRow,
    OutboxEvent,
    ProcessedCommand,
)
from thelca.stores.matching import indexed
from thelca_client.contract import JSON, LinkEnd

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
# is opened for writing: (table, column, its declaration).
ADDED_COLUMNS = (("processed", "fingerprint", "TEXT"),)
DEPLOYMENT_KEY = "event-ids"  # the name of the key in deployment_keys
# The indexes a bulk load into an empty store drops and makes again afterwards: one
# sort in C instead of a B-tree split all over by each of a million inserts.
SEARCH_INDEXES = {
    "items_by_creation": "CREATE INDEX IF NOT EXISTS items_by_creation ON items (created_at, id)",
    "item_properties_by_value": "CREATE UNIQUE INDEX IF NOT EXISTS item_properties_by_value "
                                "ON item_properties (key, value, created_at, item_id)",
}
SCHEMA_VERSION = 1  # 0: the previous release's, without links and search indexes

ITEM_COLUMNS = "id, created_at, created_by, properties, version"
LINK_COLUMNS = "id, created_at, created_by, source, target, properties, version"
# When the first key of a `where` matches more items than this, the other keys are
# counted too (up to this many) and the rarest drives the search.
PROBE_ROWS = 200

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


def _open_writer(path: Path) -> sqlite3.Connection:
    """The writer's connection, WAL and fully synchronous, with the schema made."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        _add_missing_columns(db)
        for statement in SEARCH_INDEXES.values():
            db.execute(statement)
        _upgrade(db)
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
