"""The PostgreSQL store itself: one connection, reconnected after a failure."""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, LiteralString

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from thelca.domain.model import StoredItem, StoredLink
from thelca.errors import ConfigurationError, StoreUnavailable
from thelca.stores.base import DEPLOYMENT_KEY_BYTES, ItemRow, OutboxEvent
from thelca.stores.postgres.deferred import _DeferredTransaction
from thelca.stores.postgres.rows import (
    LINK_COLUMNS,
    _first_line,
    _searchable_text,
    _stored,
    _stored_link,
    _translated,
)
from thelca.stores.postgres.schema import _create_schema
from thelca.stores.postgres.transaction import _PostgresTransaction
from thelca.stores.postgres.urls import redacted, split_schema

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10  # seconds; libpq waits forever by default
PAGE = 1000  # items fetched per query by items()
DEPLOYMENT_KEY = "event-ids"  # the name of the key in deployment_keys

SELECT_FIRST_ITEMS = (
    "SELECT id, created_at, created_by, properties::text, version FROM items "
    "ORDER BY id LIMIT %s"
)
SELECT_ITEMS_AFTER = (
    "SELECT id, created_at, created_by, properties::text, version FROM items "
    "WHERE id > %s ORDER BY id LIMIT %s"
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
    def transaction(self, *, deferred: bool = False) -> Iterator[_PostgresTransaction]:
        # BEGIN and COMMIT are the transaction's own to send, each with other statements
        # (see .pipelined); the connection is in autocommit mode for that.
        with self._using() as conn:
            if conn.pgconn.transaction_status != TransactionStatus.IDLE:
                self._forget()  # a bug: the batch is retried on a new connection
                raise StoreUnavailable("the PostgreSQL connection was left in a transaction")
            tx = _DeferredTransaction(conn) if deferred else _PostgresTransaction(conn)
            try:
                yield tx
                tx.commit()
            except BaseException:
                if tx.spoiled or not tx.rollback():
                    self._forget_if_broken()  # the warning, when the connection was lost
                    self._forget()  # never to carry a transaction over into the next
                raise
            if tx.spoiled:  # an error inside was caught by the caller: see .pipelined
                self._forget()

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

    def oldest_processed(self) -> float | None:
        with self._using() as conn:
            row = conn.execute("SELECT min(created_at) FROM processed").fetchone()
        return None if row is None or row[0] is None else float(row[0])

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
