"""The PostgreSQL store's tables, indexes and their migrations, made by the first writer."""

from __future__ import annotations

import logging
import time
from typing import Any, LiteralString

import orjson
import psycopg
from psycopg import sql

from thelca.stores.matching import jsonb_text

log = logging.getLogger(__name__)

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
        fingerprint text,
        created_at double precision NOT NULL
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
# writer that opens it: (table, column, the ALTER TABLE that adds it; {now} is the time).
ADDED_COLUMNS: tuple[tuple[str, str, LiteralString], ...] = (
    ("processed", "fingerprint", "ALTER TABLE processed ADD COLUMN fingerprint text"),
    # v1.1's search: when a writer adds it, it also fills it in (_index_old_items).
    ("items", "search", "ALTER TABLE items ADD COLUMN search jsonb"),
    # The records kept before it count as made now, so that none expires before a whole
    # window has passed; a constant default rewrites no row (PostgreSQL 11 and later).
    ("processed", "created_at",
     "ALTER TABLE processed ADD COLUMN created_at double precision NOT NULL DEFAULT {now}"),
)
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
    # The records that have outlived the deduplication window, oldest first.
    "processed_by_age": "CREATE INDEX processed_by_age ON processed (created_at)",
}

# Functions, made by the first writer that opens a schema without them (asked first, as the
# indexes): the held writes' check (thelca.stores.postgres.held), which fails the
# transaction, as a lost race, when a write did not write every row it held.
FUNCTIONS: dict[str, LiteralString] = {
    "thelca_check_written(bigint,bigint,text)": """
        CREATE FUNCTION thelca_check_written(written bigint, wanted bigint, refused text)
        RETURNS bigint LANGUAGE plpgsql AS $$
        BEGIN
            IF written IS DISTINCT FROM wanted THEN
                RAISE EXCEPTION 'held writes refused: % (% of % rows written)',
                    refused, written, wanted USING ERRCODE = 'serialization_failure';
            END IF;
            RETURN written;
        END $$""",
}


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
        for signature, statement in FUNCTIONS.items():
            if conn.execute("SELECT to_regprocedure(%s)", (signature,)).fetchone() == (None,):
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
            conn.execute(sql.SQL(alter).format(now=sql.Literal(time.time())))
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
