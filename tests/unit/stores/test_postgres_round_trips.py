"""The PostgreSQL store's round trips (thelca.stores.postgres.pipelined): BEGIN, reads
ahead and COMMIT ride with other statements, and nothing is committed that must not be."""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.postgres import OpenStore, connection_name, terminate
from thelca.domain.model import Item, StoredItem
from thelca.errors import ConcurrentUpdate, StoreError, StoreUnavailable
from thelca.stores import OutboxEvent, ProcessedCommand
from thelca.stores.postgres import PostgresStore
from thelca.stores.postgres.schema import FUNCTIONS

pytestmark = pytest.mark.postgres

READABLE = 1  # the bit of psycopg's wait answer that says the server's answer came


def _item(item_id: str, properties: dict[str, Any] | None = None) -> Item:
    return Item(item_id, "2020-02-18T16:37:09.654917+00:00", "user", properties or {})


def _processed(message_id: str) -> ProcessedCommand:
    return ProcessedCommand(message_id, "user", b"\xff\x00 reply", None, None, time.time())


class Trips:
    """Counts the connection's round trips: waits in which an answer had to be read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        wait = psycopg.Connection.wait

        def counted(gen: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
            read = False
            try:
                wanted = next(gen)
                while True:
                    ready = yield wanted
                    read = read or bool(int(ready or 0) & READABLE)
                    wanted = gen.send(ready)
            except StopIteration as done:
                return done.value
            finally:
                self.count += read

        def counting(conn: Any, gen: Any, *args: Any, **kwargs: Any) -> Any:
            return wait(conn, counted(gen), *args, **kwargs)

        monkeypatch.setattr(psycopg.Connection, "wait", counting)

    def since(self, before: int) -> int:
        return self.count - before


def test_a_create_at_window_one_is_two_round_trips(
    pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pg_store.transaction() as tx:
        tx.add_outbox(OutboxEvent("e-old", b"{}"))
    trips = Trips(monkeypatch)
    with pg_store.transaction(deferred=True) as tx:
        tx.remove_outbox(["e-old"])
        tx.prefetch_processed(["m1"])
        tx.prefetch_items([])
        assert trips.since(0) == 0  # BEGIN and the read wait for what needs an answer
        assert tx.get_processed("m1") is None
        assert trips.since(0) == 1  # BEGIN, the read
        tx.add_item(_item("a"))
        tx.add_processed(record := _processed("m1"))
        tx.add_outbox(OutboxEvent("e1", b"{}"))
    assert trips.since(0) == 2  # the held writes and COMMIT
    assert pg_store.pending_outbox() == [OutboxEvent("e1", b"{}")]
    with pg_store.transaction() as tx:
        assert tx.get_item("a") == StoredItem(_item("a"), 1)
        assert tx.get_processed("m1") == record


def test_an_update_reads_its_record_and_item_in_one_round_trip(
    pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pg_store.transaction() as tx:
        tx.add_item(_item("a"))
        tx.add_processed(_processed("m0"))
    trips = Trips(monkeypatch)
    with pg_store.transaction(deferred=True) as tx:
        tx.prefetch_processed(["m0", "m1"])
        tx.prefetch_items(["a"])
        assert trips.since(0) == 1
        assert tx.get_processed("m0") is not None
        assert tx.get_processed("m1") is None
        stored = tx.get_item("a")
        assert stored is not None and trips.since(0) == 1
        tx.replace_item(_item("a", {"n": 2}), stored.version + 1)
    assert trips.since(0) == 2
    assert list(pg_store.items()) == [StoredItem(_item("a", {"n": 2}), 2)]


def test_tidying_the_outbox_is_one_round_trip_and_nothing_to_do_is_none(
    pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pg_store.transaction() as tx:
        tx.add_outbox(OutboxEvent("e1", b"{}"))
    trips = Trips(monkeypatch)
    with pg_store.transaction(deferred=True) as tx:
        tx.remove_outbox(["e1"])
    assert trips.since(0) == 1
    with pg_store.transaction(deferred=True), pg_store.transaction():
        pass
    assert trips.since(0) == 1
    assert pg_store.pending_outbox() == []


@pytest.mark.parametrize("rows", [1, 3])  # one row goes as values, more as arrays
def test_a_held_write_that_does_not_take_fails_before_its_commit(
    pg_store: PostgresStore, rows: int
) -> None:
    with pg_store.transaction() as tx:
        tx.add_item(_item("taken", {"n": 1}))
    ids = ["taken", *(f"new-{n}" for n in range(rows - 1))]
    with pytest.raises(ConcurrentUpdate, match="held writes refused: an item id is taken"), \
            pg_store.transaction(deferred=True) as tx:
        for item_id in ids:  # not read first: the insert itself meets the taken id
            tx.add_item(_item(item_id, {"n": 2}))
        tx.add_processed(_processed("m1"))
        tx.add_outbox(OutboxEvent("e1", b"{}"))
    assert list(pg_store.items()) == [StoredItem(_item("taken", {"n": 1}), 1)]
    assert pg_store.pending_outbox() == []
    with pg_store.transaction() as tx:  # the connection is usable, outside any transaction
        assert tx.get_processed("m1") is None


@pytest.mark.parametrize("rows", [1, 2])
def test_a_held_update_from_a_stale_version_commits_nothing(
    pg_store: PostgresStore, rows: int
) -> None:
    with pg_store.transaction() as tx:
        for n in range(rows):
            tx.add_item(_item(f"a{n}"))
    with pytest.raises(ConcurrentUpdate, match="an item changed since it was read"), \
            pg_store.transaction(deferred=True) as tx:
        tx.add_processed(_processed("m1"))
        tx.replace_item(_item("a0", {"n": 9}), 5)  # stored: 1, not 4
        for n in range(1, rows):
            tx.replace_item(_item(f"a{n}", {"n": 9}), 2)
    assert [s.version for s in pg_store.items()] == [1] * rows
    with pg_store.transaction() as tx:
        assert tx.get_processed("m1") is None


def test_a_failed_statement_whose_error_was_swallowed_commits_nothing(
    pg_store: PostgresStore
) -> None:
    with pytest.raises(StoreError), pg_store.transaction() as tx:
        tx.add_outbox(OutboxEvent("e1", b"{}"))
        with pytest.raises(StoreError):
            tx._execute("SELECT 1 / 0", ())
    assert pg_store.pending_outbox() == []
    with pytest.raises(StoreError), pg_store.transaction(deferred=True) as tx:
        tx.add_outbox(OutboxEvent("e2", b"{}"))  # held, for the commit
        with pytest.raises(StoreError):
            tx._execute("SELECT 1 / 0", ())
    assert pg_store.pending_outbox() == []


def test_an_exception_in_the_transaction_rolls_it_back(pg_store: PostgresStore) -> None:
    with pytest.raises(RuntimeError), pg_store.transaction() as tx:
        tx.add_item(_item("a"))
        raise RuntimeError("the caller failed")
    assert pg_store.count_items() == 0
    with pg_store.transaction() as tx:
        tx.add_item(_item("b"))
    assert pg_store.count_items() == 1


def test_a_savepoint_before_any_statement_opens_the_transaction_first(
    pg_store: PostgresStore
) -> None:
    with pytest.raises(RuntimeError), pg_store.transaction() as tx:
        with tx.savepoint():
            tx.add_item(_item("a"))
        raise RuntimeError("the batch failed after its command")
    assert pg_store.count_items() == 0  # the savepoint did not commit on its own


def test_a_schema_without_the_check_function_gets_it(pg_stores: OpenStore) -> None:
    first = pg_stores()
    with psycopg.connect(first._conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP FUNCTION {}.").format(sql.Identifier(first.schema))
                     + sql.SQL(next(iter(FUNCTIONS))))
    first.close()
    store = pg_stores()  # as a writer of an earlier release left it
    with store.transaction(deferred=True) as tx:
        tx.add_item(_item("a"))
    assert store.count_items() == 1


def test_statements_prepared_around_failed_pipelines_still_work(pg_store: PostgresStore) -> None:
    """psycopg prepares a statement at its 5th use; one whose PREPARE an earlier failure in
    the same pipeline skipped must not be taken as made (the connection is replaced)."""
    with pg_store.transaction() as tx:
        tx.add_item(_item("taken"))
    for n in range(12):
        with pytest.raises(ConcurrentUpdate), pg_store.transaction(deferred=True) as tx:
            tx.add_item(_item("taken"))
            tx.add_processed(_processed(f"lost-{n}"))
            tx.add_outbox(OutboxEvent(f"lost-{n}", b"{}"))
        with pg_store.transaction(deferred=True) as tx:
            tx.add_item(_item(f"new-{n}"))
            tx.add_processed(_processed(f"kept-{n}"))
            tx.add_outbox(OutboxEvent(f"kept-{n}", b"{}"))
    assert pg_store.count_items() == 13
    assert [e.event_id for e in pg_store.pending_outbox()] == [f"kept-{n}" for n in range(12)]


def test_a_connection_lost_in_a_pipeline_is_reported_and_replaced(
    pg_stores: OpenStore, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = pg_stores(name := connection_name())
    assert terminate(pg_url, name) == 1
    with pytest.raises(StoreUnavailable), store.transaction(deferred=True) as tx:
        tx.prefetch_processed(["m1"])
        tx.prefetch_items(["a"])  # the first round trip: BEGIN and both reads
    assert "was lost" in caplog.text
    with store.transaction(deferred=True) as tx:
        tx.add_item(_item("a"))
    assert store.count_items() == 1
