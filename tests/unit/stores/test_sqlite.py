"""The SQLite store: the contract, and what only one SQLite file does."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from tests.unit.stores.contract import (
    CREATED_BY,
    FINGERPRINT,
    RICH_PROPERTIES,
    Boom,
    StoreContract,
    at,
    item,
    link_at,
    made_at,
    outbox,
    processed,
)
from thelca.domain.model import StoredItem
from thelca.errors import ConfigurationError, StoreLocked, StoreUnavailable
from thelca.stores import ItemStore, OutboxEvent, open_store
from thelca.stores.base import Found
from thelca.stores.sqlite import SQLiteStore
from thelca_client.contract import LinkEnd


class TestSQLiteStore(StoreContract):
    """The contract against a real SQLite file, a new one in each test's tmp_path."""

    path: Path

    @pytest.fixture(autouse=True)
    def _database_path(self, tmp_path: Path) -> None:
        self.path = tmp_path / "store" / "thelca.db"

    def make_store(self) -> ItemStore:
        return SQLiteStore(self.path)

    def test_the_data_survives_closing_and_reopening(self) -> None:
        store = SQLiteStore(self.path)
        with store.transaction() as tx:
            tx.add_item(item("a", RICH_PROPERTIES))
            tx.add_item(item("b"))
            tx.replace_item(item("b", {"n": 2}), 2)
            tx.add_processed(processed("m1"))
            tx.add_outbox(outbox("e2"))
            tx.add_outbox(outbox("e1"))
        store.close()

        reopened = SQLiteStore(self.path)
        try:
            assert list(reopened.items()) == [
                StoredItem(item("a", RICH_PROPERTIES), 1),
                StoredItem(item("b", {"n": 2}), 2),
            ]
            assert reopened.count_items() == 2
            assert reopened.pending_outbox() == [outbox("e2"), outbox("e1")]
            with reopened.transaction() as tx:
                assert tx.get_processed("m1") == processed("m1")
                tx.replace_item(item("b", {"n": 3}), 3)
        finally:
            reopened.close()

    def test_a_second_writer_is_refused_while_the_first_is_open(self) -> None:
        first = SQLiteStore(self.path)
        try:
            with pytest.raises(StoreLocked) as refused:
                SQLiteStore(self.path)
            message = str(refused.value)
            assert str(self.path) in message
            assert "already open for writing" in message
            with first.transaction() as tx:  # the first writer is unharmed
                tx.add_item(item("a"))
        finally:
            first.close()

        second = SQLiteStore(self.path)
        try:
            with second.transaction() as tx:
                assert tx.get_item("a") == StoredItem(item("a"), 1)
                tx.add_item(item("b"))
            assert second.count_items() == 2
        finally:
            second.close()

    def test_a_reader_opens_beside_the_writer(self) -> None:
        writer = SQLiteStore(self.path)
        try:
            with writer.transaction() as tx:
                tx.add_item(item("a"))
            reader = SQLiteStore(self.path, writer=False)
            try:
                assert reader.count_items() == 1
                assert list(reader.items()) == [StoredItem(item("a"), 1)]
                reader.ping()
            finally:
                reader.close()
        finally:
            writer.close()

    def test_a_failed_commit_ends_the_transaction_so_the_next_one_works(self) -> None:
        store = SQLiteStore(self.path)
        try:
            db = store._db  # a test-only table whose deferred foreign key fails at COMMIT
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("CREATE TABLE test_child (parent TEXT REFERENCES items (id) "
                       "DEFERRABLE INITIALLY DEFERRED)")
            with pytest.raises(StoreUnavailable, match="could not commit"), \
                    store.transaction() as tx:
                tx.add_item(item("a"))
                db.execute("INSERT INTO test_child VALUES ('nobody')")
            with store.transaction() as tx:
                assert tx.get_item("a") is None  # rolled back
                tx.add_item(item("b"))
            assert store.count_items() == 1
        finally:
            store.close()

    def test_a_savepoint_whose_transaction_sqlite_rolled_back_is_unavailable(self) -> None:
        store = SQLiteStore(self.path)
        try:
            with pytest.raises(StoreUnavailable, match="lost the transaction"), \
                    store.transaction() as tx, tx.savepoint():
                tx.add_item(item("a"))
                store._db.execute("ROLLBACK")  # what SQLite does itself on SQLITE_FULL
                raise Boom
            with store.transaction() as tx:
                tx.add_item(item("b"))
            assert [stored.item.id for stored in store.items()] == ["b"]
        finally:
            store.close()

    def test_a_store_that_fails_to_open_lets_go_of_its_lock(
        self, monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        def refuse(*args: object, **kwargs: object) -> sqlite3.Connection:
            raise sqlite3.OperationalError("unable to open database file")

        monkeypatch.setattr("thelca.stores.sqlite.schema.sqlite3.connect", refuse)
        # Kept, as a caller that logs or retries may: its traceback holds the half-made store.
        with pytest.raises(StoreUnavailable, match=r"could not open .*unable to open") as failed:
            SQLiteStore(self.path)
        monkeypatch.undo()
        store = SQLiteStore(self.path)  # not StoreLocked by the failed attempt
        assert isinstance(failed.value.__cause__, sqlite3.OperationalError)
        try:
            with store.transaction() as tx:
                tx.add_item(item("a"))
        finally:
            store.close()

    def test_sqlite_s_own_errors_come_out_as_store_unavailable(self) -> None:
        """Nothing outside the store sees sqlite3: a write to a read-only file is retried."""
        SQLiteStore(self.path).close()
        reader = SQLiteStore(self.path, writer=False)
        try:
            with pytest.raises(StoreUnavailable, match="could not add an item") as failed, \
                    reader.transaction() as tx:
                tx.add_item(item("a"))
            assert isinstance(failed.value.__cause__, sqlite3.OperationalError)
            assert reader.count_items() == 0
        finally:
            reader.close()

    def test_a_database_of_the_previous_release_gets_links_and_search_when_opened(self) -> None:
        """The previous release's schema, as it made it: items without an index of their
        properties, no links table. A writer adds both and indexes the items it finds."""
        self.path.parent.mkdir(parents=True)
        old = sqlite3.connect(self.path)
        old.executescript(PREVIOUS_RELEASE_SCHEMA)
        old.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?)", [
            ("a", at(1), CREATED_BY, b'{"type":"STORY","status":"OPEN"}', 3),
            ("b", at(2), CREATED_BY, b'{"type":"BUG"}', 1),
            ("c", at(3), CREATED_BY, b'{"type":"STORY","nul":"\\u0000"}', 1),
        ])
        old.commit()
        old.close()
        reader = SQLiteStore(self.path, writer=False)  # verify, before any writer opened it
        assert list(reader.links()) == [] and reader.count_links() == 0
        reader.close()
        store = SQLiteStore(self.path)
        try:
            with store.transaction() as tx:
                found = tx.search_items({"type": "STORY"}, after=None, limit=10)
                assert found is not None and [one.id for one in found.results] == ["a", "c"]
                assert tx.search_items({"nul": "\x00"}, after=None, limit=10) == Found(
                    [made_at("c", 3, {"type": "STORY", "nul": "\x00"})], False)
                tx.add_link(link_at("l", 4, "a", "b"))
            assert store.count_links() == 1
            assert store._db.execute("PRAGMA user_version").fetchone() == (1,)
        finally:
            store.close()
        reopened = SQLiteStore(self.path)  # indexed once: opening again changes nothing
        try:
            assert reopened._db.execute("SELECT count(*) FROM item_properties").fetchone() == (
                5,)
        finally:
            reopened.close()

    @pytest.mark.parametrize("search", [
        "where {}", "where one key", "where two keys", "after", "links by source",
        "links by target", "links by either",
    ])
    def test_every_search_is_answered_from_an_index(self, search: str) -> None:
        """No scan of a table and no sort: what makes a search cost about a read."""
        store = SQLiteStore(self.path)
        try:
            with store.transaction() as tx:
                for n in range(30):
                    tx.add_item(made_at(f"i{n}", n, {"type": f"T{n % 3}", "status": "OPEN"}))
                    tx.add_link(link_at(f"l{n}", n, f"i{n}", f"i{(n + 1) % 30}"))
            statements: list[str] = []
            store._db.set_trace_callback(statements.append)
            with store.transaction() as tx:
                if search == "where {}":
                    tx.search_items({}, after=None, limit=10)
                elif search == "where one key":
                    tx.search_items({"type": "T1"}, after=None, limit=10)
                elif search == "where two keys":
                    tx.search_items({"type": "T1", "status": "OPEN"}, after=None, limit=10)
                elif search == "after":
                    tx.search_items({"type": "T1"}, after="i4", limit=10)
                else:
                    tx.search_links(LINK_END[search], "i3", after="l1", limit=10)
            store._db.set_trace_callback(None)
            searches = [s for s in statements if s.startswith("SELECT") and "LIMIT" in s]
            assert searches, statements
            for statement in searches:
                plan = " | ".join(row[3] for row in store._db.execute(
                    "EXPLAIN QUERY PLAN " + statement))
                # every table is read through an index (SCAN ... USING INDEX: in its order,
                # stopping at the limit), never scanned whole
                for step in plan.split(" | "):
                    if step.startswith(("SCAN items", "SCAN links", "SCAN item_properties",
                                        "SEARCH")):
                        assert " USING " in step, plan
                # a sort happens only where two indexes' pages are merged (either)
                assert "TEMP B-TREE" not in plan or search == "links by either", plan
        finally:
            store.close()

    def test_open_store_opens_sqlite_urls(self) -> None:
        store = open_store("sqlite:///" + str(self.path))
        try:
            assert isinstance(store, SQLiteStore)
            assert store.path == self.path
            with store.transaction() as tx:
                tx.add_item(item("a"))
            url = store.url
        finally:
            store.close()
        again = open_store(url)
        try:
            assert isinstance(again, SQLiteStore)
            assert again.count_items() == 1
        finally:
            again.close()


# The tables as the release before fingerprints, deployment keys, links and search made them.
PREVIOUS_RELEASE_SCHEMA = """
CREATE TABLE items (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    properties BLOB NOT NULL,
    version INTEGER NOT NULL
);
CREATE TABLE processed (
    message_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    reply BLOB NOT NULL,
    event_id TEXT
);
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    body BLOB NOT NULL
);
"""


class TestSQLiteStoreKeeps:
    """What a SQLite file keeps across opening it again, and a file of the previous release."""

    def test_the_deployment_key_survives_reopening(self, tmp_path: Path) -> None:
        store = SQLiteStore(tmp_path / "thelca.db")
        key = store.deployment_key()
        store.close()
        reopened = SQLiteStore(tmp_path / "thelca.db")
        try:
            assert reopened.deployment_key() == key
        finally:
            reopened.close()

    def test_a_database_of_the_previous_release_is_migrated_when_opened(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "old.db"
        db = sqlite3.connect(path)
        db.executescript(PREVIOUS_RELEASE_SCHEMA)
        db.execute("INSERT INTO items VALUES ('a', 't', 'u', '{\"n\": 1}', 3)")
        db.execute("INSERT INTO processed VALUES ('m-old', 'u', X'7b7d', 'e-old')")
        db.execute("INSERT INTO outbox (event_id, body) VALUES ('e-old', X'7b7d')")
        db.commit()
        db.close()

        opened = time.time()
        store = SQLiteStore(path)
        try:
            with store.transaction() as tx:
                old = tx.get_processed("m-old")
                assert old is not None
                assert (old.message_id, old.reply, old.event_id, old.fingerprint) == (
                    "m-old", b"{}", "e-old", None)
                # made, as far as the window goes, when this release first opened it
                assert opened <= old.created_at <= time.time()
                assert tx.prune_processed(before=opened, limit=10) == 0
                tx.add_processed(processed("m-new", created_at=opened + 3600))
                stored = tx.get_item("a")
                assert stored is not None and stored.version == 3
            assert store.pending_outbox() == [OutboxEvent("e-old", b"{}")]
            assert len(store.deployment_key()) == 32
        finally:
            store.close()
        again = SQLiteStore(path)  # opening a migrated database changes nothing more
        try:
            with again.transaction() as tx:
                new = tx.get_processed("m-new")
                assert new is not None and new.fingerprint == FINGERPRINT
        finally:
            again.close()
        columns = [row[1] for row in sqlite3.connect(path).execute(
            "PRAGMA table_info(processed)")]
        assert columns == ["message_id", "user_id", "reply", "event_id", "fingerprint",
                           "created_at"]
        migrated = SQLiteStore(path)
        try:
            with migrated.transaction() as tx:
                old = tx.get_processed("m-old")  # the same time as before: not re-stamped
                assert old is not None and old.created_at < time.time()
                assert tx.prune_processed(before=old.created_at + 0.001, limit=10) == 1
                assert tx.get_processed("m-old") is None
                assert tx.get_processed("m-new") is not None
        finally:
            migrated.close()

    def test_pruning_reads_the_oldest_records_from_an_index(self, tmp_path: Path) -> None:
        """The cost of a prune is the rows it removes, not the table it looks in."""
        store = SQLiteStore(tmp_path / "thelca.db")
        try:
            with store.transaction() as tx:
                for n in range(50):
                    tx.add_processed(processed(f"m{n}", created_at=float(n)))
            statements: list[str] = []
            store._db.set_trace_callback(statements.append)
            with store.transaction() as tx:
                assert tx.prune_processed(before=10.0, limit=5) == 5
                tx.forget_processed("m40", before=100.0)
            store._db.set_trace_callback(None)
            deletes = [s for s in statements if s.startswith("DELETE")]
            assert len(deletes) == 2, statements
            for statement in deletes:
                plan = " | ".join(row[3] for row in store._db.execute(
                    "EXPLAIN QUERY PLAN " + statement))
                assert "SCAN processed" not in plan or "USING INDEX processed_by_age" in plan, plan
                assert "TEMP B-TREE" not in plan, plan
        finally:
            store.close()


def test_open_store_refuses_sqlite_without_a_path() -> None:
    with pytest.raises(ConfigurationError, match="needs a path"):
        open_store("sqlite:///")


LINK_END: dict[str, LinkEnd] = {
    "links by source": "source", "links by target": "target", "links by either": "either"}
