"""The store contract's part about deferred transactions and records read ahead.

A deferred transaction (`store.transaction(deferred=True)`, the command role's
first run of a batch) may hold its writes back and send them together later:
its reads still see them, everything is there after the commit, and a write
that would have been refused at once fails the transaction by its end, with
nothing of it kept. `prefetch_processed` changes no answer of get_processed.
Every backend passes these through StoreContract; PostgreSQL is the one that
holds writes back (thelca.stores.postgres), the others write at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from thelca.domain.model import Item, StoredItem
from thelca.errors import ConcurrentUpdate
from thelca.stores import ItemStore, OutboxEvent, ProcessedCommand
from thelca.stores.base import Found, StoreTransaction
from thelca_client.contract import JSON

CREATED_AT = "2020-02-18T16:37:09.654917+00:00"
USER = "a-test-only-id-abcd"
MADE = time.time()  # when every record here was made: inside any deduplication window


def _item(item_id: str, properties: JSON | None = None) -> Item:
    return Item(item_id, CREATED_AT, USER, properties or {})


def _processed(message_id: str) -> ProcessedCommand:
    return ProcessedCommand(message_id, USER, b'{"status": 200, "bytes": "\xff\x00"}',
                            f"ev-{message_id}", "f" * 64, MADE)


def _outbox(event_id: str) -> OutboxEvent:
    return OutboxEvent(event_id, f'{{"id": "{event_id}"}}'.encode())


class DeferredContract:
    """Mixed into StoreContract: the tests of deferred transactions, for every store."""

    def test_a_deferred_transaction_reads_its_own_writes_and_keeps_them_all(
        self, store: ItemStore
    ) -> None:
        with store.transaction() as tx:
            tx.add_item(_item("old", {"n": 1}))
            tx.add_outbox(_outbox("e-confirmed"))
        with store.transaction(deferred=True) as tx:
            tx.remove_outbox(["e-confirmed"])
            assert tx.get_outbox("e-confirmed") is None
            assert tx.add_item(_item("a", {"n": 1})) == StoredItem(_item("a", {"n": 1}), 1)
            assert tx.get_item("a") == StoredItem(_item("a", {"n": 1}), 1)
            assert tx.has_item("a")
            old = tx.get_item("old")
            assert old is not None
            tx.replace_item(_item("old", {"n": 2}), old.version + 1)
            tx.replace_item(_item("old", {"n": 3}), old.version + 2)  # twice in one batch
            assert tx.get_item("old") == StoredItem(_item("old", {"n": 3}), 3)
            tx.replace_item(_item("a", {"n": 2}), 2)  # made and changed in one batch
            tx.add_processed(_processed("m1"))
            assert tx.get_processed("m1") == _processed("m1")
            tx.add_outbox(_outbox("e2"))
            tx.add_outbox(_outbox("e1"))
            assert tx.get_outbox("e2") == _outbox("e2")
            assert tx.search_items({"n": 3}, after=None, limit=10) == Found(
                [_item("old", {"n": 3})], False)
            assert tx.search_items({"n": 2}, after=None, limit=10) == Found(
                [_item("a", {"n": 2})], False)
        assert list(store.items()) == [StoredItem(_item("a", {"n": 2}), 2),
                                       StoredItem(_item("old", {"n": 3}), 3)]
        assert store.pending_outbox() == [_outbox("e2"), _outbox("e1")]
        with store.transaction() as tx:
            assert tx.get_processed("m1") == _processed("m1")

    @pytest.mark.parametrize("refused", ["an id taken", "a stale version", "a recorded id"])
    def test_a_write_refused_in_a_deferred_transaction_fails_it_whole(
        self, store: ItemStore, refused: str
    ) -> None:
        with store.transaction() as tx:
            tx.add_item(_item("a"))
            tx.add_processed(_processed("m-old"))
        wrong: dict[str, Callable[[StoreTransaction], object]] = {
            "an id taken": lambda tx: tx.add_item(_item("a", {"n": "again"})),
            "a stale version": lambda tx: tx.replace_item(_item("a", {"n": "stale"}), 5),
            "a recorded id": lambda tx: tx.add_processed(_processed("m-old")),
        }
        with pytest.raises(ConcurrentUpdate), store.transaction(deferred=True) as tx:
            tx.add_item(_item("b"))
            tx.add_processed(_processed("m-new"))
            tx.add_outbox(_outbox("e-new"))
            wrong[refused](tx)
        assert list(store.items()) == [StoredItem(_item("a"), 1)]
        assert store.pending_outbox() == []
        with store.transaction() as tx:
            assert tx.get_processed("m-new") is None
            assert tx.get_processed("m-old") == _processed("m-old")

    def test_a_savepoint_in_a_deferred_transaction_undoes_only_its_block(
        self, store: ItemStore
    ) -> None:
        class Boom(Exception):
            pass

        with store.transaction(deferred=True) as tx:
            tx.add_item(_item("before"))
            with pytest.raises(Boom), tx.savepoint():
                tx.add_item(_item("inside"))
                tx.add_processed(_processed("m-inside"))
                raise Boom
            tx.add_item(_item("after"))
            assert tx.get_item("inside") is None
        assert [stored.item.id for stored in store.items()] == ["after", "before"]

    def test_records_read_ahead_are_the_answers_get_processed_gives(
        self, store: ItemStore
    ) -> None:
        with store.transaction() as tx:
            tx.add_processed(_processed("m1"))
        for deferred in (False, True):
            with store.transaction(deferred=deferred) as tx:
                tx.prefetch_processed(["m1", "m2", f"m3-{deferred}", "m1"])
                assert tx.get_processed("m1") == _processed("m1")
                assert tx.get_processed("m1") == _processed("m1")  # asked again
                assert tx.get_processed("m2") is None
                tx.add_processed(_processed(f"m3-{deferred}"))  # recorded after the read
                assert tx.get_processed(f"m3-{deferred}") == _processed(f"m3-{deferred}")
        with store.transaction() as tx:
            assert tx.get_processed("m3-True") == _processed("m3-True")

    def test_items_read_ahead_are_the_answers_get_item_gives(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            tx.add_item(_item("a", {"n": 1}))
            tx.add_item(_item("b", {"n": 1}))
        for deferred in (False, True):
            with store.transaction(deferred=deferred) as tx:
                nobody = f"nobody-{deferred}"
                tx.prefetch_items(["b", "a", nobody, "a"])
                a = tx.get_item("a")
                assert a is not None and a.item == _item("a", {"n": a.version})
                tx.replace_item(_item("a", {"n": a.version + 1}), a.version + 1)
                assert tx.get_item("a") == StoredItem(_item("a", {"n": a.version + 1}),
                                                      a.version + 1)
                assert tx.get_item(nobody) is None
                tx.add_item(_item(nobody))  # made after it was read ahead as missing
                assert tx.get_item(nobody) == StoredItem(_item(nobody), 1)
                tx.replace_item(_item(nobody, {"n": 2}), 2)
        assert [(s.item.id, s.version) for s in store.items()] == [
            ("a", 3), ("b", 1), ("nobody-False", 2), ("nobody-True", 2)]
