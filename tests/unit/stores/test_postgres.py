"""The PostgreSQL store: the contract, and what only PostgreSQL does (many writers, the
connection, URLs and their passwords, NUL). Races between writers: test_postgres_races.py."""

from __future__ import annotations

import threading
import time
from typing import Any, LiteralString

import orjson
import psycopg
import pytest
from psycopg import sql

from tests.postgres import OpenStore, connection_name, fresh_schema, terminate, with_schema
from tests.unit.stores.contract import (
    CREATED_AT,
    CREATED_BY,
    RICH_PROPERTIES,
    StoreContract,
    at,
    item,
    link_at,
    made_at,
    outbox,
    processed,
)
from thelca.domain.model import Item, StoredItem
from thelca.errors import ConfigurationError, StoreUnavailable, UnstorableValue
from thelca.stores import ItemStore, many_writers, open_store
from thelca.stores.base import Found
from thelca.stores.postgres import PostgresStore, redacted, split_schema
from thelca.stores.postgres.transaction import _PostgresTransaction
from thelca_client.contract import JSON, LinkEnd


@pytest.mark.postgres
class TestPostgresStore(StoreContract):
    """The contract against the local PostgreSQL, each test in a schema of its own."""

    url: str

    @pytest.fixture(autouse=True)
    def _schema(self, pg_store_url: str) -> None:
        self.url = pg_store_url

    def make_store(self) -> ItemStore:
        return PostgresStore(self.url)

    def test_the_data_survives_closing_and_reopening(self, pg_stores: OpenStore) -> None:
        store = pg_stores()
        with store.transaction() as tx:
            tx.add_item(item("a", RICH_PROPERTIES))
            tx.add_processed(processed("m1"))
            tx.add_outbox(outbox("e2"))
            tx.add_outbox(outbox("e1"))
        store.close()
        reopened = pg_stores()
        assert list(reopened.items()) == [StoredItem(item("a", RICH_PROPERTIES), 1)]
        assert reopened.pending_outbox() == [outbox("e2"), outbox("e1")]
        with reopened.transaction() as tx:
            assert tx.get_processed("m1") == processed("m1")

    def test_many_writers_share_one_schema(self, pg_stores: OpenStore) -> None:
        first, second = pg_stores(), pg_stores()
        with first.transaction() as tx:
            tx.add_item(item("a"))
        with second.transaction() as tx:
            assert tx.get_item("a") == StoredItem(item("a"), 1)
            tx.replace_item(item("a", {"n": 2}), 2)
        assert list(first.items()) == [StoredItem(item("a", {"n": 2}), 2)]
        assert many_writers(self.url)

    def test_workers_starting_at_once_create_the_schema_once(self, pg_stores: OpenStore) -> None:
        opened: list[PostgresStore] = []
        errors: list[BaseException] = []

        def open_one() -> None:
            try:
                opened.append(pg_stores())
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=open_one) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors
        assert len(opened) == 6

    def test_items_are_paged_in_id_order(self, pg_stores: OpenStore) -> None:
        store = pg_stores()
        ids = [f"item-{n:05d}" for n in range(2500)]
        with store.transaction() as tx:
            for item_id in reversed(ids):
                tx.add_item(item(item_id))
        assert [s.item.id for s in store.items()] == ids

    def test_a_killed_connection_fails_one_transaction_then_reconnects(
        self, pg_url: str, pg_stores: OpenStore
    ) -> None:
        name = connection_name()
        store = pg_stores(name)
        with store.transaction() as tx:
            tx.add_item(item("before"))
        assert terminate(pg_url, name) == 1
        with pytest.raises(StoreUnavailable, match="PostgreSQL"), \
                store.transaction() as tx:
            tx.add_item(item("lost"))
        with store.transaction() as tx:
            tx.add_item(item("after"))
        assert [s.item.id for s in store.items()] == ["after", "before"]
        assert terminate(pg_url, name) == 1
        with pytest.raises(StoreUnavailable):
            store.ping()
        store.ping()
        assert store.count_items() == 2

    def test_a_connection_killed_inside_a_savepoint_is_store_unavailable(
        self, pg_url: str, pg_stores: OpenStore
    ) -> None:
        """Not a 500 for the command: the batch is rolled back and retried."""
        name = connection_name()
        store = pg_stores(name)
        with pytest.raises(StoreUnavailable), store.transaction() as tx:
            with tx.savepoint():
                tx.add_item(item("a"))
            terminate(pg_url, name)
            with tx.savepoint():
                tx.add_item(item("b"))
        assert store.count_items() == 0

    def test_no_server_is_store_unavailable_and_never_shows_the_password(self) -> None:
        url = "postgresql://postgres:hunter2@127.0.0.1:1/test?schema=x"
        with pytest.raises(StoreUnavailable) as refused:
            open_store(url)
        assert "hunter2" not in str(refused.value)
        assert "postgres:***@127.0.0.1:1/test" in str(refused.value)

    def test_nul_cannot_be_an_id_but_is_kept_in_properties(self, store: ItemStore) -> None:
        """Not a refused command (a store never answers 400): the worker checks keeps_nul
        first, and a value that reaches the store anyway fails that one command."""
        assert not store.keeps_nul
        properties: JSON = {"nul": "\x00", "key\x00": ["\x00"]}
        with store.transaction() as tx:
            tx.add_item(item("a", properties))
            assert tx.get_item("a\x00b") is None
            assert tx.get_processed("m\x00") is None
            with pytest.raises(UnstorableValue, match="NUL"):
                tx.add_item(Item("b", CREATED_AT, "user\x00", {}))
            with pytest.raises(UnstorableValue, match="NUL"):
                tx.add_processed(processed("m\x00"))
        with store.transaction() as tx:
            assert tx.get_item("a") == StoredItem(item("a", properties), 1)
            assert tx.get_item("b") is None

    def test_a_schema_of_the_previous_release_gets_links_and_search_when_opened(
        self, pg_url: str, pg_stores: OpenStore
    ) -> None:
        """The previous release's tables, as it made them (properties json, no search column,
        no links): a writer adds the column, fills it, NUL included, and the indexes."""
        schema = self.url.rsplit("schema=", 1)[1]
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
            conn.execute(f'SET search_path TO "{schema}"')
            for statement in PREVIOUS_RELEASE_TABLES:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO items VALUES (%s, %s, %s, %s::json, 3), (%s, %s, %s, %s::json, 1), "
                "(%s, %s, %s, %s::json, 1)",
                ("a", at(1), CREATED_BY, '{"type": "STORY", "status": "OPEN"}',
                 "b", at(2), CREATED_BY, '{"type": "BUG"}',
                 "c", at(3), CREATED_BY, '{"type": "STORY", "nul": "\\u0000\\u0001"}'))
        reader = PostgresStore(self.url, writer=False)  # verify, before any writer opened it
        assert list(reader.links()) == [] and reader.count_links() == 0
        reader.close()
        store = pg_stores()
        with store.transaction() as tx:
            found = tx.search_items({"type": "STORY"}, after=None, limit=10)
            assert found is not None and [one.id for one in found.results] == ["a", "c"]
            assert tx.search_items({"nul": "\x00\x01"}, after=None, limit=10) == Found(
                [made_at("c", 3, {"type": "STORY", "nul": "\x00\x01"})], False)
            assert tx.search_items({"nul": "\x01\x02"}, after=None, limit=10) == Found(
                [], False)
            tx.add_link(link_at("l", 4, "a", "b"))
        assert store.count_links() == 1
        with store._using() as conn:
            types = dict(conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = 'items'").fetchall())
            indexes = {row[0] for row in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")}
        assert types["properties"] == "json"  # as before: it keeps NUL
        assert types["search"] == "jsonb"
        assert {"items_by_properties", "items_by_creation", "links_by_source",
                "links_by_target", "links_by_creation"} <= indexes

    @pytest.mark.parametrize("search", [
        "where one key", "where two keys", "where {}", "links by source", "links by target",
        "links by either",
    ])
    def test_every_search_is_answered_from_an_index(
        self, pg_stores: OpenStore, search: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On a store large enough for the planner to care: no sequential scan."""
        store = pg_stores()
        store.load_items((f"i{n:05d}", at(n % 60), CREATED_BY,
                          orjson.dumps({"type": f"T{n % 20}", "status": f"S{n % 5}"}), 1)
                         for n in range(20_000))
        with store.transaction() as tx:
            for n in range(2_000):
                tx.add_link(link_at(f"l{n:05d}", n % 60, f"i{n:05d}", f"i{n + 1:05d}"))
        with store._using() as conn:
            conn.execute("ANALYZE items")
            conn.execute("ANALYZE links")
        statements = _recorded_statements(monkeypatch)
        with store.transaction() as tx:
            if search.startswith("where"):
                where = {"{}": {}, "one key": {"type": "T3"},
                         "two keys": {"type": "T3", "status": "S3"}}[search[6:]]
                tx.search_items(where, after="i00042", limit=100)
            else:
                tx.search_links(LINK_END[search], "i00042", after="l00007", limit=100)
        searches = [(q, p) for q, p in statements if "LIMIT" in q]
        assert searches, statements
        with store._using() as conn:
            for query, params in searches:
                plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + query, params))
                assert "Seq Scan" not in plan, plan
                if search.startswith("where") and search != "where {}":
                    assert "items_by_properties" in plan, plan

    def test_a_reader_does_not_create_the_schema(self, pg_url: str) -> None:
        with fresh_schema(pg_url) as schema:
            reader = open_store(with_schema(pg_url, schema), writer=False)
            reader.ping()
            reader.close()
            with psycopg.connect(pg_url) as conn:
                found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                                     (schema,)).fetchone()
            assert found is None

    def test_open_store_opens_postgresql_urls(self) -> None:
        for url in (self.url, self.url.replace("postgresql://", "postgres://", 1)):
            store = open_store(url)
            try:
                assert isinstance(store, PostgresStore)
                store.ping()
            finally:
                store.close()

    def test_workers_share_one_deployment_key_however_they_race_for_it(
        self, pg_stores: OpenStore
    ) -> None:
        stores = [pg_stores() for _ in range(6)]
        keys: list[bytes] = []
        errors: list[BaseException] = []
        start = threading.Barrier(len(stores))

        def ask(store: PostgresStore) -> None:
            try:
                start.wait(timeout=30)
                keys.append(store.deployment_key())
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=ask, args=(store,)) for store in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors
        assert len(keys) == 6 and len(set(keys)) == 1
        again = pg_stores()
        assert again.deployment_key() == keys[0]  # kept, not made again

    def test_a_worker_that_finds_a_key_being_made_waits_and_takes_it(
        self, pg_stores: OpenStore
    ) -> None:
        """The race made certain: another worker's key is inserted but not yet committed."""
        name = connection_name()
        store = pg_stores(name)
        conninfo, schema = split_schema(self.url)
        theirs = bytes(range(32))
        got: list[bytes] = []
        with psycopg.connect(conninfo) as other:
            other.execute(sql.SQL("INSERT INTO {}.deployment_keys VALUES (%s, %s)").format(
                sql.Identifier(schema)), ("event-ids", theirs))
            asking = threading.Thread(target=lambda: got.append(store.deployment_key()))
            asking.start()
            _wait_until_blocked(conninfo, name)  # on the other worker's row
            assert got == []
            other.commit()
            asking.join(timeout=30)
        assert got == [theirs]

    def test_a_schema_of_the_previous_release_is_migrated_when_opened(
        self, pg_stores: OpenStore
    ) -> None:
        _, schema = split_schema(self.url)
        with psycopg.connect(split_schema(self.url)[0], autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            for statement in PREVIOUS_RELEASE_TABLES:
                conn.execute(statement)
            conn.execute("INSERT INTO processed VALUES ('m-old', 'u', '\\x7b7d', 'e-old')")
        opened = time.time()
        stores = [pg_stores(), pg_stores()]  # the second finds it done
        with stores[1].transaction() as tx:
            old = tx.get_processed("m-old")
            assert old is not None and (old.reply, old.event_id, old.fingerprint) == (
                b"{}", "e-old", None)
            # made, as far as the window goes, when this release first opened it
            assert opened <= old.created_at <= time.time()
            assert tx.prune_processed(before=opened, limit=10) == 0
            tx.add_processed(processed("m-new", created_at=opened + 3600))
        with stores[0].transaction() as tx:
            assert tx.get_processed("m-new") == processed("m-new", created_at=opened + 3600)
            assert tx.prune_processed(before=old.created_at + 0.001, limit=10) == 1
            assert tx.get_processed("m-old") is None
        assert stores[0].deployment_key() == stores[1].deployment_key()
        with stores[0]._using() as conn:
            assert conn.execute("SELECT to_regclass('processed_by_age') IS NOT NULL"
                                ).fetchone() == (True,)

    def test_pruning_reads_the_oldest_records_from_an_index(
        self, pg_stores: OpenStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On a table large enough for the planner to care: no sequential scan."""
        store = pg_stores()
        with store.transaction() as tx:
            for n in range(5_000):
                tx.add_processed(processed(f"m{n}", created_at=float(n)))
        with store._using() as conn:
            conn.execute("ANALYZE processed")
        statements = _recorded_statements(monkeypatch)
        with store.transaction() as tx:
            assert tx.prune_processed(before=100.0, limit=50) == 50
            tx.forget_processed("m4000", before=10_000.0)
        deletes = [(q, p) for q, p in statements if q.startswith("DELETE")]
        assert len(deletes) == 2, statements
        with store._using() as conn:
            for query, params in deletes:
                plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + query, params))
                assert "Seq Scan" not in plan, plan

    def test_libpq_options_in_the_url_reach_the_server(self) -> None:
        store = PostgresStore(f"{self.url}&options=-c%20statement_timeout%3D4321")
        try:
            with store._using() as conn:
                assert conn.execute("SHOW statement_timeout").fetchone() == ("4321ms",)
        finally:
            store.close()


LINK_END: dict[str, LinkEnd] = {
    "links by source": "source", "links by target": "target", "links by either": "either"}


def _recorded_statements(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...]]]:
    """Every statement the store's transactions execute from now on, with its parameters."""
    recorded: list[tuple[str, tuple[Any, ...]]] = []
    execute = _PostgresTransaction._execute

    def recording(self: _PostgresTransaction, query: Any, params: tuple[Any, ...]) -> Any:
        recorded.append((query, params))
        return execute(self, query, params)

    monkeypatch.setattr(_PostgresTransaction, "_execute", recording)
    return recorded


def _wait_until_blocked(conninfo: str, application_name: str) -> None:
    """Return once a connection of that application_name waits for a lock."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for _ in range(3000):
            if conn.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
                            "AND wait_event_type = 'Lock'", (application_name,)).fetchone():
                return
            threading.Event().wait(0.01)
    raise AssertionError(f"{application_name} never waited for a lock")


# The tables as the release before fingerprints, deployment keys, links and search made them.
PREVIOUS_RELEASE_TABLES: tuple[LiteralString, ...] = (
    """CREATE TABLE items (
        id text COLLATE "C" PRIMARY KEY,
        created_at text NOT NULL,
        created_by text NOT NULL,
        properties json NOT NULL,
        version bigint NOT NULL
    )""",
    """CREATE TABLE processed (
        message_id text PRIMARY KEY,
        user_id text NOT NULL,
        reply bytea NOT NULL,
        event_id text
    )""",
    """CREATE TABLE outbox (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        event_id text NOT NULL UNIQUE,
        body bytea NOT NULL
    )""",
)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:secret@h:5432/db?schema=s", "postgresql://u:***@h:5432/db?schema=s"),
        ("postgresql://h/db?password=secret&sslmode=require",
         "postgresql://h/db?password=***&sslmode=require"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://u@h/db?sslpassword=s3cret&sslmode=require&PGPASSWORD=s3cret",
         "postgresql://u@h/db?sslpassword=***&sslmode=require&PGPASSWORD=***"),
        ("postgresql://u@h/db?ssl%70assword=s3cret", "postgresql://u@h/db?ssl%70assword=***"),
    ],
)
def test_a_postgresql_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redacted(url) == shown


@pytest.mark.parametrize("url", [
    "postgresql://u:s3cr%zzet@127.0.0.1/test",
    "postgresql://u@127.0.0.1/test?schema=x&sslpassword=s3cr%zzet",
])
def test_a_postgresql_url_libpq_cannot_parse_never_shows_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        open_store(url)
    assert "s3cr" not in str(refused.value)
    assert "cannot be parsed" in str(refused.value)


def test_the_schema_parameter_is_thelca_s_own_and_defaults_to_thelca() -> None:
    assert split_schema("postgresql://u@h/db?schema=s&sslmode=require") == (
        "postgresql://u@h/db?sslmode=require", "s")
    assert split_schema("postgresql://u@h/db") == ("postgresql://u@h/db", "thelca")
    # Everything but schema is kept as written: %20 must not become + (libpq leaves + as is).
    assert split_schema("postgresql://u@h/db?options=-c%20statement_timeout%3D5000&schema=s"
                        "&password=a%20b&application_name=x+y") == (
        "postgresql://u@h/db?options=-c%20statement_timeout%3D5000&password=a%20b"
        "&application_name=x+y", "s")
    with pytest.raises(ConfigurationError, match="schema"):
        open_store("postgresql://u@h/db?schema=")


def test_only_postgresql_takes_many_writers() -> None:
    assert many_writers("postgresql://u@h/db") and many_writers("postgres://u@h/db")
    assert not many_writers("sqlite:///thelca.db")
    assert not many_writers("memory:")
