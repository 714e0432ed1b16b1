"""The PostgreSQL item store: many worker processes on one database.

`postgresql://user@host:5432/dbname?schema=thelca` (any other libpq parameter
may follow; a password is better kept in PGPASSWORD or ~/.pgpass). The schema,
`thelca` unless `?schema=` names another, and its tables are created if
missing.

How many writers stay correct:

- READ COMMITTED, set explicitly (whatever the server's default): every
  statement sees what other workers committed before it, so a command that
  lost a race and is retried inside its savepoint reads the winner's state.
  REPEATABLE READ would show the retry the same old snapshot and fail it again.
- `get_item` locks the row (SELECT ... FOR UPDATE): a second worker reading
  the same item waits until the first commits and then reads the newer
  version, so updates of one item queue up instead of failing; `replace_item`
  still writes only `WHERE version = expected` and raises ConcurrentUpdate
  when it finds another, so no update is ever lost.
- `processed.message_id` is the primary key and is inserted with ON CONFLICT
  DO NOTHING: of two workers recording one message_id at once, the second
  waits for the first and then gets ConcurrentUpdate; the handler rolls its
  savepoint back (its item change with it) and retries, and the retry finds the
  first worker's record and answers with its reply.
- A deadlock between two batches (each holds an item the other wants) cannot
  be cured by retrying one command: the batch would wait for the same lock
  again. It raises StoreUnavailable, which rolls the whole batch back and has
  it retried; the other batch goes on.
- Outbox rows are removed with SKIP LOCKED: two workers that both published a
  pending event (every worker republishes the outbox when it starts) both
  remove it without waiting for each other. The body of an event id is the
  same whoever publishes it, so removing it after any confirm is right.

Properties are stored as `json`, not `jsonb`: jsonb cannot hold `\\u0000` in a
string, which is valid JSON and which thelca keeps; `json` keeps the text as
written and is still readable with PostgreSQL's JSON operators.

Search: beside `properties`, each item has `search`, the same properties as
jsonb with every string mapped one to one onto one without NUL
(thelca.stores.matching.jsonb_safe), under a GIN index (jsonb_path_ops): a
`where` is looked up by containment (`search @> where`), and each key then
checked for equality (`search -> key = value`), since containment also takes
{"tags": ["a", "b"]} for {"tags": ["a"]}. Creation order is (created_at, id)
in byte order (COLLATE "C"), from an index when `where` is empty. Links have
indexes on (source, created_at, id), (target, created_at, id) and (created_at,
id). A schema of the previous release gets the column, its values and the
indexes when the first writer opens it, under the schema lock: stop the
previous release's workers first, since an item they write afterwards has no
`search` and no search finds it.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, LiteralString
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import orjson
import psycopg
from psycopg import sql

from thelca.domain.model import Item, Link, StoredItem, StoredLink
from thelca.errors import (
    ConcurrentUpdate,
    ConfigurationError,
    StoreError,
    StoreUnavailable,
    UnstorableValue,
)
from thelca.logtext import shown
from thelca.stores.base import (
    DEPLOYMENT_KEY_BYTES,
    Found,
    ItemRow,
    OutboxEvent,
    ProcessedCommand,
)
from thelca.stores.matching import jsonb_safe, jsonb_text
from thelca_client.contract import JSON, LinkEnd

log = logging.getLogger(__name__)

DEFAULT_SCHEMA = "thelca"
CONNECT_TIMEOUT = 10  # seconds; libpq waits forever by default
PAGE = 1000  # items fetched per query by items()

TABLES: tuple[LiteralString, ...] = (
    """CREATE TABLE IF NOT EXISTS items (
        id text COLLATE "C" PRIMARY KEY,
        created_at text NOT NULL,
        created_by text NOT NULL,
        properties json NOT NULL,
        version bigint NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS processed (
        message_id text PRIMARY KEY,
        user_id text NOT NULL,
        reply bytea NOT NULL,
        event_id text,
        fingerprint text
    )""",
    """CREATE TABLE IF NOT EXISTS outbox (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        event_id text NOT NULL UNIQUE,
        body bytea NOT NULL
    )""",
    # v1.1: links, and what searches need.
    """CREATE TABLE IF NOT EXISTS links (
        id text COLLATE "C" PRIMARY KEY,
        created_at text COLLATE "C" NOT NULL,
        created_by text NOT NULL,
        source text COLLATE "C" NOT NULL,
        target text COLLATE "C" NOT NULL,
        properties json NOT NULL,
        version bigint NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS deployment_keys (
        name text PRIMARY KEY,
        value bytea NOT NULL
    )""",
)
# Columns added since the first release, added to a schema made before them by the first
# writer that opens it: (table, column, the ALTER TABLE that adds it).
ADDED_COLUMNS: tuple[tuple[str, str, LiteralString], ...] = (
    ("processed", "fingerprint", "ALTER TABLE processed ADD COLUMN fingerprint text"),
    # v1.1's search: when a writer adds it, it also fills it in (_index_old_items).
    ("items", "search", "ALTER TABLE items ADD COLUMN search jsonb"),
)
DEPLOYMENT_KEY = "event-ids"  # the name of the key in deployment_keys
# The indexes of v1.1, made by the first writer that opens a schema without them (after
# the items of a previous release have their `search`, see _index_old_items). Asked
# first: CREATE INDEX IF NOT EXISTS would lock the table against writes at every start.
INDEXES: dict[str, LiteralString] = {
    "links_by_source": "CREATE INDEX links_by_source ON links (source, created_at, id)",
    "links_by_target": "CREATE INDEX links_by_target ON links (target, created_at, id)",
    "links_by_creation": "CREATE INDEX links_by_creation ON links (created_at, id)",
    "items_by_properties": "CREATE INDEX items_by_properties ON items "
                           "USING gin (search jsonb_path_ops) WITH (fastupdate = off)",
    "items_by_creation": 'CREATE INDEX items_by_creation ON items ((created_at COLLATE "C"), id)',
}
ITEM_COLUMNS: LiteralString = "id, created_at, created_by, properties::text, version"
LINK_COLUMNS: LiteralString = (
    "id, created_at, created_by, source, target, properties::text, version")
CREATION_ORDER: LiteralString = 'ORDER BY created_at COLLATE "C", id'
AFTER: LiteralString = '(created_at COLLATE "C", id) > (%s, %s)'

SELECT_FIRST_ITEMS = (
    "SELECT id, created_at, created_by, properties::text, version FROM items "
    "ORDER BY id LIMIT %s"
)
SELECT_ITEMS_AFTER = (
    "SELECT id, created_at, created_by, properties::text, version FROM items "
    "WHERE id > %s ORDER BY id LIMIT %s"
)
SELECT_ITEM_FOR_UPDATE = (
    "SELECT id, created_at, created_by, properties::text, version FROM items "
    "WHERE id = %s FOR UPDATE"
)


class PostgresStore:
    """One connection, used by one thread at a time; reconnects after a failure."""

    keeps_nul = False  # PostgreSQL text cannot hold NUL (properties are json: they can)

    def __init__(self, url: str, *, writer: bool = True) -> None:
        self._conninfo, self.schema = split_schema(url)
        self.url = redacted(url)
        self._writer = writer
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        with self._lock:
            self._connection()

    # ------------------------------------------------------------ connection

    def _connection(self) -> psycopg.Connection[Any]:
        """The open connection, or a new one when there is none or it broke."""
        if self._conn is not None and not (self._conn.closed or self._conn.broken):
            return self._conn
        self._forget()
        try:
            # fallback_application_name: shown in pg_stat_activity unless the URL names one
            conn = psycopg.connect(self._conninfo, autocommit=True,
                                   connect_timeout=CONNECT_TIMEOUT,
                                   fallback_application_name="thelca")
        except psycopg.ProgrammingError:
            # libpq's parse error quotes the offending piece, which may be the password
            # (`invalid percent-encoded token: "s3cr%zzet"`): a fixed message instead.
            raise ConfigurationError(
                f"the PostgreSQL store URL {self.url} cannot be parsed: fix its parameter "
                "names and %-escapes (libpq's own message is not shown: it may quote the "
                "password)") from None
        except psycopg.Error as error:
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {self.url}: "
                                   f"{_first_line(error)}") from None
        try:
            conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
            if self._writer:
                _create_schema(conn, self.schema)
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        except psycopg.Error as error:
            conn.close()
            raise _translated(error, f"preparing schema {self.schema!r} in {self.url}",
                              opening=True) from None
        self._conn = conn
        return conn

    def _forget(self) -> None:
        """Drop a broken connection so that the next call opens a new one."""
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                log.debug("closing a broken connection failed", exc_info=True)
            self._conn = None

    @contextmanager
    def _using(self) -> Iterator[psycopg.Connection[Any]]:
        """The connection, under the lock; psycopg's errors become thelca's (_translated)."""
        with self._lock:
            conn = self._connection()
            try:
                yield conn
            except psycopg.Error as error:
                self._forget_if_broken()
                raise _translated(error) from error
            except StoreUnavailable:
                self._forget_if_broken()
                raise

    def _forget_if_broken(self) -> None:
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            log.warning("the connection to PostgreSQL at %s was lost; the next transaction "
                        "reconnects", self.url)
            self._forget()

    # ------------------------------------------------------------ ItemStore

    @contextmanager
    def transaction(self) -> Iterator[_PostgresTransaction]:
        with self._using() as conn, conn.transaction():
            yield _PostgresTransaction(conn)

    def pending_outbox(self, limit: int = 1000) -> list[OutboxEvent]:
        with self._using() as conn:
            rows = conn.execute(
                "SELECT event_id, body FROM outbox ORDER BY seq LIMIT %s", (limit,)
            ).fetchall()
        return [OutboxEvent(event_id, bytes(body)) for event_id, body in rows]

    def items(self) -> Iterator[StoredItem]:
        # Page by id rather than hold a cursor (and the lock) open while the caller works.
        with self._using() as conn:
            rows = conn.execute(SELECT_FIRST_ITEMS, (PAGE,)).fetchall()
        while True:
            yield from (_stored(row) for row in rows)
            if len(rows) < PAGE:
                return
            with self._using() as conn:
                rows = conn.execute(SELECT_ITEMS_AFTER, (rows[-1][0], PAGE)).fetchall()

    def count_items(self) -> int:
        with self._using() as conn:
            row = conn.execute("SELECT count(*) FROM items").fetchone()
        assert row is not None
        return int(row[0])

    def links(self) -> Iterator[StoredLink]:
        if not self._has_links_table():
            return
        query: LiteralString = f"SELECT {LINK_COLUMNS} FROM links"  # noqa: S608 - fixed
        with self._using() as conn:
            rows = conn.execute(query + " ORDER BY id LIMIT %s", (PAGE,)).fetchall()
        while True:
            yield from (_stored_link(row) for row in rows)
            if len(rows) < PAGE:
                return
            with self._using() as conn:
                rows = conn.execute(query + " WHERE id > %s ORDER BY id LIMIT %s",
                                    (rows[-1][0], PAGE)).fetchall()

    def count_links(self) -> int:
        if not self._has_links_table():
            return 0
        with self._using() as conn:
            row = conn.execute("SELECT count(*) FROM links").fetchone()
        assert row is not None
        return int(row[0])

    def _has_links_table(self) -> bool:
        """False for a schema of the previous release that no writer has opened since."""
        with self._using() as conn:
            row = conn.execute("SELECT to_regclass('links') IS NOT NULL").fetchone()
        return bool(row and row[0])

    def ping(self) -> None:
        with self._using() as conn:
            conn.execute("SELECT 1").fetchone()

    def deployment_key(self) -> bytes:
        # Of two workers inserting at once, the second waits for the first's row and then
        # does nothing (READ COMMITTED): its SELECT, a new statement, reads the first's key.
        with self._using() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO deployment_keys (name, value) VALUES (%s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                (DEPLOYMENT_KEY, secrets.token_bytes(DEPLOYMENT_KEY_BYTES)))
            row = conn.execute("SELECT value FROM deployment_keys WHERE name = %s",
                               (DEPLOYMENT_KEY,)).fetchone()
        assert row is not None
        return bytes(row[0])

    def clear(self) -> None:
        """Delete every item, processed command and outbox event (restore --force)."""
        with self._using() as conn, conn.transaction():
            conn.execute("TRUNCATE items, links, processed, outbox")

    def load_items(self, rows: Iterable[ItemRow]) -> None:
        """Store rows as given, replacing items of the same id, in one transaction."""
        with self._using() as conn, conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO items (id, created_at, created_by, properties, version, search) "
                "VALUES (%s, %s, %s, %s::json, %s, %s::jsonb) ON CONFLICT (id) DO UPDATE SET "
                "properties = EXCLUDED.properties, version = EXCLUDED.version, "
                "search = EXCLUDED.search",
                ((item_id, created_at, created_by, properties.decode(), version,
                  _searchable_text(properties))
                 for item_id, created_at, created_by, properties, version in rows))

    def close(self) -> None:
        with self._lock:
            self._forget()


class _PostgresTransaction:
    """One transaction on the store's connection; every statement's error is translated."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def _execute(self, query: LiteralString, params: tuple[Any, ...]) -> psycopg.Cursor[Any]:
        try:
            return self._conn.execute(query, params)
        except psycopg.Error as error:
            raise _translated(error) from error

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        try:
            with self._conn.transaction():
                yield
        except psycopg.Error as error:
            # Opening, releasing or rolling back to the savepoint failed (the statements
            # inside translate their own): most likely the connection is gone.
            raise _translated(error) from error

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
        row = self._execute(
            "SELECT message_id, user_id, reply, event_id, fingerprint FROM processed "
            "WHERE message_id = %s",
            (message_id,),
        ).fetchone()
        return None if row is None else ProcessedCommand(row[0], row[1], bytes(row[2]), row[3],
                                                         row[4])

    def add_processed(self, processed: ProcessedCommand) -> None:
        # A message_id with NUL cannot be kept: psycopg refuses it (UnstorableValue), and
        # the command is answered 500 and dead-lettered, never applied unrecorded.
        cursor = self._execute(
            "INSERT INTO processed (message_id, user_id, reply, event_id, fingerprint) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (message_id) DO NOTHING",
            (processed.message_id, processed.user_id, processed.reply, processed.event_id,
             processed.fingerprint),
        )
        if cursor.rowcount != 1:
            log.debug("lost a race: message_id %s was recorded by another writer",
                      shown(processed.message_id))
            raise ConcurrentUpdate(f"message_id {processed.message_id} is recorded already")

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
            "WHERE event_id = ANY(%s) FOR UPDATE SKIP LOCKED)",
            (event_ids,),
        )


# ------------------------------------------------------------ helpers


def split_schema(url: str) -> tuple[str, str]:
    """The libpq URL without thelca's own `schema` parameter, and that schema."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    schema = schemas[-1] if schemas else DEFAULT_SCHEMA
    if not schema:
        raise ValueError("the schema parameter of a PostgreSQL store URL is empty")
    # The other pieces are kept byte for byte: re-encoding them would turn %20 into +,
    # which libpq does not decode (options=-c%20statement_timeout%3D5000, a password).
    rest = "&".join(piece for piece in parts.query.split("&") if _key(piece) != "schema")
    return urlunsplit(parts._replace(query=rest)), schema


def redacted(url: str) -> str:
    """The URL fit for a log line: a password, in the user part or in any parameter whose
    name ends in `password` (password, sslpassword), is ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    credentials, at, host = netloc.rpartition("@")
    if at and ":" in credentials:
        netloc = f"{credentials.split(':', 1)[0]}:***@{host}"
    query = "&".join(f"{piece.partition('=')[0]}=***" if _key(piece).endswith("password")
                     else piece for piece in parts.query.split("&"))
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _key(piece: str) -> str:
    """The parameter name of one `key=value` piece of a query string, decoded, lower case."""
    return unquote(piece.partition("=")[0]).lower()


def _create_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    # Several workers starting at once would race on the catalog (CREATE ... IF NOT
    # EXISTS is not safe against a concurrent creator); one at a time, by lock.
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"thelca schema {schema}",))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        for statement in TABLES:
            conn.execute(statement)
        if ("items", "search") in _add_missing_columns(conn, schema):
            _index_old_items(conn)
        for name, statement in INDEXES.items():
            if conn.execute("SELECT to_regclass(%s)", (name,)).fetchone() == (None,):
                conn.execute(statement)


def _add_missing_columns(conn: psycopg.Connection[Any], schema: str) -> set[tuple[str, str]]:
    """Bring a schema made by an earlier release up to this one's tables (under the
    caller's lock); the (table, column) pairs it added. Asked first rather than ADD COLUMN
    IF NOT EXISTS, which would take an exclusive lock on the table at every start,
    queueing the other workers' batches."""
    added = set()
    for table, column, alter in ADDED_COLUMNS:
        present = conn.execute(
            "SELECT 1 FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s AND column_name = %s",
            (schema, table, column)).fetchone()
        if present is None:
            log.info("adding the column %s.%s to the PostgreSQL store (schema %s)", table,
                     column, schema)
            conn.execute(alter)
            added.add((table, column))
    return added


def _index_old_items(conn: psycopg.Connection[Any]) -> None:
    """Give the items of a previous release their `search` value: in one statement those
    whose JSON text has no NUL or U+0001 to map (nearly all), the others one by one."""
    conn.execute("UPDATE items SET search = properties::jsonb WHERE search IS NULL "
                 "AND strpos(properties::text, '\\u0000') = 0 "
                 "AND strpos(properties::text, '\\u0001') = 0")
    rows = conn.execute("SELECT id, properties::text FROM items WHERE search IS NULL").fetchall()
    for item_id, properties in rows:
        conn.execute("UPDATE items SET search = %s::jsonb WHERE id = %s",
                     (jsonb_text(orjson.loads(properties)), item_id))


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


_LINK_ENDS: dict[str, tuple[LiteralString, ...]] = {
    "source": ("source",), "target": ("target",), "either": ("source", "target")}


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
