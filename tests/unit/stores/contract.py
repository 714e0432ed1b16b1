"""The item store contract: the tests every backend passes.

In the style of the eventsourcing project's persistence tests: `StoreContract`
holds the tests and an abstract `make_store()`; each backend's test file
subclasses it once (tests/unit/stores/test_memory.py, test_sqlite.py,
test_postgres.py) and adds the tests only that backend needs. The base class
uses nothing but the `ItemStore` / `StoreTransaction` interface, so that a new
backend only has to say how to make a fresh, empty store.

No store-level method (`pending_outbox`, `items`, ...) is called while a
transaction is open: the interface does not promise it works there.
"""

from __future__ import annotations

import abc
import hashlib
import uuid
from collections.abc import Iterator

import orjson
import pytest

from tests.unit.stores.deferred import DeferredContract
from thelca.domain.model import Item, Link, StoredItem, StoredLink
from thelca.errors import ConcurrentUpdate
from thelca.stores import ItemStore, OutboxEvent, ProcessedCommand
from thelca.stores.base import BulkItemLoader, Found
from thelca_client.contract import JSON, LinkEnd

CREATED_AT = "2020-02-18T16:37:09.654917+00:00"
CREATED_BY = "a-test-only-id-abcd"

RICH_PROPERTIES: JSON = {
    "type": "STORY",
    "title": "Ünïcødé ✓ 漢字 🎉 \u202ertl",
    "ключ": "значение",
    # NUL is valid JSON (\\u0000): a backend that cannot store it must escape it
    "escapes": "quote \" backslash \\ newline \n tab \t nul \x00 end",
    "nested": {
        "list": [1, -2, 2.5, True, False, None, "x", {"deep": [[], {}]}],
        "empty_object": {},
        "empty_list": [],
        "level": {"level": {"level": {"level": "bottom"}}},
    },
    "big": 2**62,
    "negative": -(2**62),
    "float": 0.1,
    "null": None,
}


class Boom(Exception):
    """Raised by a test to make a transaction or savepoint roll back."""


def item(item_id: str, properties: JSON | None = None) -> Item:
    return Item(item_id, CREATED_AT, CREATED_BY, {} if properties is None else properties)


FINGERPRINT = hashlib.sha256(b"a command").hexdigest()


RECORDED_AT = 1_700_000_000.25  # when the records of these tests were made


def processed(message_id: str, event_id: str | None = "ev-1",
              fingerprint: str | None = FINGERPRINT,
              created_at: float = RECORDED_AT) -> ProcessedCommand:
    return ProcessedCommand(
        message_id=message_id,
        user_id=CREATED_BY,
        reply=b'{"status": 200, "note": "bytes \xff\x00 kept"}',
        event_id=event_id,
        fingerprint=fingerprint,
        created_at=created_at,
    )


def outbox(event_id: str) -> OutboxEvent:
    return OutboxEvent(event_id, f'{{"id": "{event_id}", "type": "Item created"}}'.encode())


class StoreContract(DeferredContract, abc.ABC):
    """The tests every item store passes. Subclasses only implement make_store().
    Those of deferred transactions are DeferredContract's (tests/unit/stores/deferred.py)."""

    @abc.abstractmethod
    def make_store(self) -> ItemStore:
        """A new, empty store, open for writing."""

    @pytest.fixture
    def store(self) -> Iterator[ItemStore]:
        store = self.make_store()
        try:
            yield store
        finally:
            store.close()

    # ------------------------------------------------------------ items

    def test_a_new_store_is_empty(self, store: ItemStore) -> None:
        assert store.count_items() == 0
        assert list(store.items()) == []
        assert store.pending_outbox() == []
        store.ping()

    def test_add_item_then_get_item_round_trips_at_version_1(self, store: ItemStore) -> None:
        original = item("5f73f540-c125-435d-8a5e-6fea05672b7a", RICH_PROPERTIES)
        with store.transaction() as tx:
            added = tx.add_item(original)
            assert added == StoredItem(original, 1)
            assert tx.get_item(original.id) == StoredItem(original, 1)
        with store.transaction() as tx:
            got = tx.get_item(original.id)
        assert got == StoredItem(original, 1)
        assert got is not None
        assert got.item.properties == RICH_PROPERTIES
        assert got.item.to_json() == original.to_json()

    def test_empty_properties_round_trip(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            tx.add_item(item("a"))
        with store.transaction() as tx:
            assert tx.get_item("a") == StoredItem(item("a", {}), 1)

    def test_get_item_of_an_unknown_id_is_none(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            assert tx.get_item("no-such-id") is None
            tx.add_item(item("a"))
            assert tx.get_item("no-such-id") is None
            assert tx.get_item("A") is None

    def test_add_item_of_an_existing_id_raises_concurrent_update(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            tx.add_item(item("a", {"n": 1}))
            with pytest.raises(ConcurrentUpdate):
                tx.add_item(item("a", {"n": "same transaction"}))
        with store.transaction() as tx:
            with pytest.raises(ConcurrentUpdate):
                tx.add_item(item("a", {"n": "later transaction"}))
            assert tx.get_item("a") == StoredItem(item("a", {"n": 1}), 1)
        assert store.count_items() == 1

    def test_replace_item_bumps_the_version(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            tx.add_item(item("a", {"n": 1}))
        with store.transaction() as tx:
            assert tx.replace_item(item("a", {"n": 2}), 2) == StoredItem(item("a", {"n": 2}), 2)
            assert tx.get_item("a") == StoredItem(item("a", {"n": 2}), 2)
            assert tx.replace_item(item("a", RICH_PROPERTIES), 3) == StoredItem(
                item("a", RICH_PROPERTIES), 3
            )
        with store.transaction() as tx:
            assert tx.get_item("a") == StoredItem(item("a", RICH_PROPERTIES), 3)
        assert store.count_items() == 1

    @pytest.mark.parametrize("version", [-1, 0, 1, 2, 4, 100])
    def test_replace_item_with_a_version_other_than_stored_plus_1_raises(
        self, store: ItemStore, version: int
    ) -> None:
        with store.transaction() as tx:
            tx.add_item(item("a", {"n": 1}))
            tx.replace_item(item("a", {"n": 2}), 2)
        with store.transaction() as tx:
            with pytest.raises(ConcurrentUpdate):
                tx.replace_item(item("a", {"n": "stale"}), version)
            assert tx.get_item("a") == StoredItem(item("a", {"n": 2}), 2)
        with store.transaction() as tx:
            assert tx.get_item("a") == StoredItem(item("a", {"n": 2}), 2)

    def test_replace_item_of_an_unknown_id_raises_concurrent_update(
        self, store: ItemStore
    ) -> None:
        with store.transaction() as tx:
            with pytest.raises(ConcurrentUpdate):
                tx.replace_item(item("ghost"), 2)
            assert tx.get_item("ghost") is None
        assert store.count_items() == 0

    def test_a_stored_item_does_not_change_when_callers_mutate_their_dicts(
        self, store: ItemStore
    ) -> None:
        """Items are values: changing a dict handed in or out must not change the store."""
        given: JSON = {"tags": ["a"], "nested": {"n": 1}}
        with store.transaction() as tx:
            tx.add_item(item("a", given))
        given["tags"].append("changed after add")
        given["nested"]["n"] = 2
        given["new"] = True
        with store.transaction() as tx:
            got = tx.get_item("a")
            assert got is not None
            got.item.properties["changed after get"] = True
        with store.transaction() as tx:
            assert tx.get_item("a") == StoredItem(
                item("a", {"tags": ["a"], "nested": {"n": 1}}), 1
            )

    def test_items_are_ordered_by_id(self, store: ItemStore) -> None:
        # UUIDs, as the service makes them: their order is the same under every collation
        ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"item-{n}")) for n in range(12)]
        assert ids != sorted(ids)
        for item_id in ids:
            with store.transaction() as tx:
                tx.add_item(item(item_id, {"id": item_id}))
        with store.transaction() as tx:
            tx.replace_item(item(ids[0], {"updated": True}), 2)
        listed = list(store.items())
        assert [s.item.id for s in listed] == sorted(ids)
        assert listed[sorted(ids).index(ids[0])] == StoredItem(item(ids[0], {"updated": True}), 2)
        assert listed[0] == StoredItem(item(min(ids), {"id": min(ids)}), 1)

    def test_count_items(self, store: ItemStore) -> None:
        assert store.count_items() == 0
        with store.transaction() as tx:
            tx.add_item(item("a"))
            tx.add_item(item("b"))
        assert store.count_items() == 2
        with store.transaction() as tx:
            tx.replace_item(item("a", {"n": 1}), 2)
            tx.add_item(item("c"))
        assert store.count_items() == 3

    # ------------------------------------------------------------ transactions

    def test_a_transaction_commits_on_normal_exit(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            tx.add_item(item("a"))
            tx.add_processed(processed("m1"))
            tx.add_outbox(outbox("e1"))
        with store.transaction() as tx:
            assert tx.get_item("a") == StoredItem(item("a"), 1)
            assert tx.get_processed("m1") == processed("m1")
            assert tx.get_outbox("e1") == outbox("e1")
        assert store.count_items() == 1
        assert store.pending_outbox() == [outbox("e1")]

    def test_a_transaction_rolls_back_everything_when_the_block_raises(
        self, store: ItemStore
    ) -> None:
        with store.transaction() as tx:
            tx.add_item(item("kept", {"n": 1}))
            tx.add_processed(processed("m-kept"))
            tx.add_outbox(outbox("e-kept"))

        with pytest.raises(Boom), store.transaction() as tx:
            tx.add_item(item("new"))
            tx.replace_item(item("kept", {"n": 2}), 2)
            tx.replace_item(item("kept", {"n": 3}), 3)
            tx.add_processed(processed("m-new"))
            tx.add_outbox(outbox("e-new"))
            tx.remove_outbox(["e-kept"])
            raise Boom

        with store.transaction() as tx:
            assert tx.get_item("new") is None
            assert tx.get_item("kept") == StoredItem(item("kept", {"n": 1}), 1)
            assert tx.get_processed("m-new") is None
            assert tx.get_processed("m-kept") == processed("m-kept")
            assert tx.get_outbox("e-new") is None
            assert tx.get_outbox("e-kept") == outbox("e-kept")
        assert store.count_items() == 1
        assert [s.item.id for s in store.items()] == ["kept"]
        assert store.pending_outbox() == [outbox("e-kept")]

    def test_the_store_works_after_a_rolled_back_transaction(self, store: ItemStore) -> None:
        with pytest.raises(Boom), store.transaction() as tx:
            tx.add_item(item("a"))
            raise Boom
        with store.transaction() as tx:
            assert tx.add_item(item("a")) == StoredItem(item("a"), 1)
        assert store.count_items() == 1

    def test_a_refused_write_does_not_spoil_the_transaction(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            tx.add_item(item("a"))
        with store.transaction() as tx:
            with pytest.raises(ConcurrentUpdate):
                tx.add_item(item("a", {"n": "dup"}))
            with pytest.raises(ConcurrentUpdate):
                tx.replace_item(item("a", {"n": "stale"}), 5)
            tx.add_item(item("b"))
            tx.replace_item(item("a", {"n": 2}), 2)
        with store.transaction() as tx:
            assert tx.get_item("a") == StoredItem(item("a", {"n": 2}), 2)
            assert tx.get_item("b") == StoredItem(item("b"), 1)

    def test_a_savepoint_undoes_only_its_own_block(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            tx.add_item(item("before-tx", {"n": 1}))
            tx.add_outbox(outbox("e-before-tx"))

        with store.transaction() as tx:
            tx.add_item(item("before-sp"))
            tx.add_processed(processed("m-before-sp"))
            tx.add_outbox(outbox("e-before-sp"))
            with pytest.raises(Boom), tx.savepoint():
                tx.add_item(item("in-sp"))
                tx.replace_item(item("before-tx", {"n": 2}), 2)
                tx.add_processed(processed("m-in-sp"))
                tx.add_outbox(outbox("e-in-sp"))
                tx.remove_outbox(["e-before-tx", "e-before-sp"])
                raise Boom
            # inside the same transaction the block is already undone
            assert tx.get_item("in-sp") is None
            assert tx.get_item("before-tx") == StoredItem(item("before-tx", {"n": 1}), 1)
            tx.add_item(item("after-sp"))
            tx.add_outbox(outbox("e-after-sp"))

        with store.transaction() as tx:
            assert tx.get_item("before-sp") == StoredItem(item("before-sp"), 1)
            assert tx.get_item("after-sp") == StoredItem(item("after-sp"), 1)
            assert tx.get_item("in-sp") is None
            assert tx.get_item("before-tx") == StoredItem(item("before-tx", {"n": 1}), 1)
            assert tx.get_processed("m-before-sp") == processed("m-before-sp")
            assert tx.get_processed("m-in-sp") is None
            assert tx.get_outbox("e-in-sp") is None
        assert [s.item.id for s in store.items()] == ["after-sp", "before-sp", "before-tx"]
        # (the order after a rolled-back removal has a test of its own, below)
        assert sorted(e.event_id for e in store.pending_outbox()) == [
            "e-after-sp", "e-before-sp", "e-before-tx",
        ]

    def test_a_savepoint_keeps_its_block_on_normal_exit(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            with tx.savepoint():
                tx.add_item(item("a"))
                tx.add_outbox(outbox("e1"))
            with tx.savepoint():
                tx.replace_item(item("a", {"n": 2}), 2)
        with store.transaction() as tx:
            assert tx.get_item("a") == StoredItem(item("a", {"n": 2}), 2)
        assert store.pending_outbox() == [outbox("e1")]

    def test_nested_savepoints_undo_only_the_inner_block(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            with tx.savepoint():
                tx.add_item(item("outer"))
                with pytest.raises(Boom), tx.savepoint():
                    tx.add_item(item("inner"))
                    raise Boom
                tx.add_item(item("outer-after"))
            with pytest.raises(Boom), tx.savepoint():
                tx.add_item(item("second"))
                with tx.savepoint():
                    tx.add_item(item("second-inner"))
                raise Boom
        assert [s.item.id for s in store.items()] == ["outer", "outer-after"]

    def test_a_savepoint_rolled_back_then_the_transaction_rolled_back(
        self, store: ItemStore
    ) -> None:
        with pytest.raises(Boom), store.transaction() as tx:
            tx.add_item(item("a"))
            with pytest.raises(Boom), tx.savepoint():
                tx.add_item(item("b"))
                raise Boom
            tx.add_item(item("c"))
            raise Boom
        assert store.count_items() == 0
        with store.transaction() as tx:
            assert tx.get_item("a") is None

    # ------------------------------------------------------------ processed commands

    @pytest.mark.parametrize("event_id", ["ev-1", None])
    def test_processed_commands_round_trip(
        self, store: ItemStore, event_id: str | None
    ) -> None:
        command = processed("message-1", event_id)
        with store.transaction() as tx:
            assert tx.get_processed("message-1") is None
            tx.add_processed(command)
            assert tx.get_processed("message-1") == command
        with store.transaction() as tx:
            got = tx.get_processed("message-1")
            assert got == command
            assert got is not None
            assert isinstance(got.reply, bytes)
            assert tx.get_processed("message-2") is None

    def test_a_processed_command_without_a_fingerprint_reads_back_without_one(
        self, store: ItemStore
    ) -> None:
        """A record the previous release kept (it had no fingerprints) stays as it was."""
        old = processed("m-old", fingerprint=None)
        with store.transaction() as tx:
            tx.add_processed(old)
            tx.add_processed(processed("m-new"))
        with store.transaction() as tx:
            assert tx.get_processed("m-old") == old
            got = tx.get_processed("m-new")
            assert got is not None and got.fingerprint == FINGERPRINT

    def test_processed_commands_are_kept_per_message_id(self, store: ItemStore) -> None:
        first = ProcessedCommand("m1", "alice", b'{"status": 200}', "e1")
        second = ProcessedCommand("m2", "bob", b'{"status": 403}', None)
        with store.transaction() as tx:
            tx.add_processed(first)
            tx.add_processed(second)
        with store.transaction() as tx:
            assert tx.get_processed("m1") == first
            assert tx.get_processed("m2") == second

    # ------------------------------------------------------------ the deduplication window

    def test_records_made_before_the_cutoff_are_pruned_and_later_ones_kept(
        self, store: ItemStore
    ) -> None:
        # Neither in time order nor in its reverse: the store orders by time itself.
        times = {"m-300": 300.0, "m-100": 100.0, "m-250": 250.0, "m-200": 200.0}
        with store.transaction() as tx:
            for message_id, created_at in times.items():
                tx.add_processed(processed(message_id, created_at=created_at))
        with store.transaction() as tx:
            assert tx.prune_processed(before=250.0, limit=10) == 2
        with store.transaction() as tx:
            assert tx.get_processed("m-100") is None
            assert tx.get_processed("m-200") is None
            assert tx.get_processed("m-250") == processed("m-250", created_at=250.0)
            assert tx.get_processed("m-300") == processed("m-300", created_at=300.0)
            assert tx.prune_processed(before=250.0, limit=10) == 0

    def test_pruning_takes_the_oldest_first_and_at_most_the_limit(
        self, store: ItemStore
    ) -> None:
        with store.transaction() as tx:
            for n in (5, 3, 1, 4, 2):
                tx.add_processed(processed(f"m{n}", created_at=float(n)))
        left = ["m1", "m2", "m3", "m4", "m5"]
        for expected in (2, 2, 1, 0):
            with store.transaction() as tx:
                assert tx.prune_processed(before=10.0, limit=2) == expected
                left = left[expected:]
                assert [m for m in ("m1", "m2", "m3", "m4", "m5")
                        if tx.get_processed(m) is not None] == left

    def test_a_pruning_rolled_back_keeps_every_record(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            tx.add_processed(processed("m-old", created_at=1.0))
            tx.add_processed(processed("m-older", created_at=0.5))
        with pytest.raises(Boom), store.transaction() as tx:
            assert tx.prune_processed(before=2.0, limit=10) == 2
            raise Boom
        with store.transaction() as tx:
            with pytest.raises(Boom), tx.savepoint():
                assert tx.prune_processed(before=2.0, limit=1) == 1
                raise Boom
            assert tx.get_processed("m-older") == processed("m-older", created_at=0.5)
            assert tx.get_processed("m-old") == processed("m-old", created_at=1.0)
            assert tx.prune_processed(before=2.0, limit=1) == 1  # the older, as before
            assert tx.get_processed("m-older") is None
            assert tx.get_processed("m-old") is not None

    def test_a_record_made_again_after_pruning_is_pruned_by_its_own_time(
        self, store: ItemStore
    ) -> None:
        with store.transaction() as tx:
            tx.add_processed(processed("m1", created_at=1.0))
        with store.transaction() as tx:
            tx.forget_processed("m1", before=2.0)
            tx.add_processed(processed("m1", created_at=5.0))
        with store.transaction() as tx:
            assert tx.prune_processed(before=2.0, limit=10) == 0
            assert tx.get_processed("m1") == processed("m1", created_at=5.0)
            assert tx.prune_processed(before=6.0, limit=10) == 1
            assert tx.get_processed("m1") is None

    def test_forget_processed_removes_an_expired_record_only(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            tx.add_processed(processed("m1", created_at=100.0))
            tx.forget_processed("m1", before=100.0)  # made at the cutoff: not expired
            tx.forget_processed("not-there", before=200.0)
            assert tx.get_processed("m1") == processed("m1", created_at=100.0)
            tx.forget_processed("m1", before=100.5)
            assert tx.get_processed("m1") is None
            tx.add_processed(processed("m1", created_at=300.0))  # the id is free again
        with store.transaction() as tx:
            assert tx.get_processed("m1") == processed("m1", created_at=300.0)

    def test_oldest_processed_says_when_the_oldest_record_was_made(
        self, store: ItemStore
    ) -> None:
        assert store.oldest_processed() is None
        with store.transaction() as tx:
            tx.add_processed(processed("m2", created_at=20.5))
            tx.add_processed(processed("m1", created_at=10.25))
        assert store.oldest_processed() == 10.25
        with store.transaction() as tx:
            tx.prune_processed(before=15.0, limit=10)
        assert store.oldest_processed() == 20.5

    # ------------------------------------------------------------ outbox

    def test_outbox_add_get_remove(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            assert tx.get_outbox("e1") is None
            tx.add_outbox(outbox("e1"))
            tx.add_outbox(outbox("e2"))
            assert tx.get_outbox("e1") == outbox("e1")
        assert store.pending_outbox() == [outbox("e1"), outbox("e2")]
        with store.transaction() as tx:
            tx.remove_outbox(["e1", "not-there"])
            assert tx.get_outbox("e1") is None
            assert tx.get_outbox("e2") == outbox("e2")
        assert store.pending_outbox() == [outbox("e2")]
        with store.transaction() as tx:
            tx.remove_outbox([])
            tx.remove_outbox(["e2"])
        assert store.pending_outbox() == []

    def test_pending_outbox_is_in_insertion_order(self, store: ItemStore) -> None:
        ids = ["e-c", "e-a", "e-b", "e-z", "e-0"]  # neither sorted nor reverse-sorted
        with store.transaction() as tx:
            for event_id in ids[:3]:
                tx.add_outbox(outbox(event_id))
        with store.transaction() as tx:
            for event_id in ids[3:]:
                tx.add_outbox(outbox(event_id))
        assert [e.event_id for e in store.pending_outbox()] == ids
        assert store.pending_outbox() == [outbox(e) for e in ids]
        assert [e.event_id for e in store.pending_outbox(limit=2)] == ids[:2]
        with store.transaction() as tx:
            tx.remove_outbox(["e-a", "e-z"])
        assert [e.event_id for e in store.pending_outbox()] == ["e-c", "e-b", "e-0"]

    def test_outbox_events_survive_only_if_committed(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            tx.add_outbox(outbox("committed"))
        with pytest.raises(Boom), store.transaction() as tx:
            tx.add_outbox(outbox("rolled-back"))
            raise Boom
        assert store.pending_outbox() == [outbox("committed")]

    def test_a_rolled_back_removal_keeps_the_outbox_order(self, store: ItemStore) -> None:
        """The publisher sends pending events oldest first, also after a failed batch."""
        with store.transaction() as tx:
            for event_id in ("e1", "e2", "e3"):
                tx.add_outbox(outbox(event_id))
        with pytest.raises(Boom), store.transaction() as tx:
            tx.remove_outbox(["e1", "e2"])
            raise Boom
        assert [e.event_id for e in store.pending_outbox()] == ["e1", "e2", "e3"]

    def test_the_same_event_id_is_pending_once(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            tx.add_outbox(outbox("e1"))
            tx.add_outbox(outbox("e2"))
        with store.transaction() as tx:
            tx.add_outbox(outbox("e1"))
        assert [e.event_id for e in store.pending_outbox()] == ["e1", "e2"]

    # ------------------------------------------------------------ the deployment key

    def test_the_deployment_key_is_32_bytes_made_once(self, store: ItemStore) -> None:
        key = store.deployment_key()
        assert isinstance(key, bytes) and len(key) == 32
        assert len(set(key)) > 8  # random, not a constant
        assert store.deployment_key() == key
        with store.transaction() as tx:  # unrelated to what transactions do
            tx.add_item(item("a"))
        assert store.deployment_key() == key

    def test_the_deployment_key_survives_clear(self, store: ItemStore) -> None:
        key = store.deployment_key()
        store.clear()
        assert store.deployment_key() == key

    def test_a_rolled_back_transaction_does_not_take_the_key_with_it(
        self, store: ItemStore
    ) -> None:
        with pytest.raises(Boom), store.transaction() as tx:
            tx.add_item(item("a"))
            raise Boom
        key = store.deployment_key()
        with pytest.raises(Boom), store.transaction() as tx:
            tx.add_item(item("b"))
            raise Boom
        assert store.deployment_key() == key

    # ------------------------------------------------------------ clear (restore --force)

    def test_clear_empties_items_processed_commands_and_outbox(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            tx.add_item(item("a", {"n": 1}))
            tx.replace_item(item("a", {"n": 2}), 2)
            tx.add_item(item("b"))
            tx.add_processed(processed("m1"))
            tx.add_outbox(outbox("e1"))
        store.clear()
        assert store.count_items() == 0
        assert list(store.items()) == []
        assert store.pending_outbox() == []
        with store.transaction() as tx:
            assert tx.get_item("a") is None
            assert tx.get_processed("m1") is None
            assert tx.get_outbox("e1") is None
            # an id used before the clear starts again at version 1
            assert tx.add_item(item("a", {"n": "again"})) == StoredItem(
                item("a", {"n": "again"}), 1)
        assert store.count_items() == 1

    def test_clear_of_an_empty_store_is_harmless(self, store: ItemStore) -> None:
        store.clear()
        store.clear()
        assert store.count_items() == 0
        with store.transaction() as tx:
            tx.add_item(item("a"))
        assert store.count_items() == 1

    def test_ids_with_nul_round_trip_in_a_store_that_keeps_nul(self, store: ItemStore) -> None:
        """Only for backends whose keeps_nul is true; the others refuse them (their files)."""
        if not store.keeps_nul:
            return
        odd = Item("a\x00b", CREATED_AT, "user\x00", {"nul": "\x00"})
        command = ProcessedCommand("m\x00", "user\x00", b"{}", "e\x00")
        with store.transaction() as tx:
            tx.add_item(odd)
            tx.add_processed(command)
        with store.transaction() as tx:
            assert tx.get_item("a\x00b") == StoredItem(odd, 1)
            assert tx.get_item("a") is None
            assert tx.get_processed("m\x00") == command
            assert tx.get_processed("m") is None

    # ------------------------------------------------------------ optional bulk load

    def test_load_items_stores_each_item_at_its_given_version(self, store: ItemStore) -> None:
        """Only for backends that offer the optional BulkItemLoader; others pass as they are."""
        if not isinstance(store, BulkItemLoader):
            return
        with store.transaction() as tx:
            tx.add_item(item("b", {"old": True}))
        store.load_items([
            ("a", CREATED_AT, CREATED_BY, b"{}", 1),
            ("b", CREATED_AT, CREATED_BY, b'{"new":true}', 3),
            ("c", CREATED_AT, CREATED_BY, orjson.dumps(RICH_PROPERTIES), 7),
        ])
        assert list(store.items()) == [StoredItem(item("a"), 1),
                                       StoredItem(item("b", {"new": True}), 3),
                                       StoredItem(item("c", RICH_PROPERTIES), 7)]
        with store.transaction() as tx:  # the worker's checks go on from the loaded version
            tx.replace_item(item("c", {"n": 8}), 8)
            with pytest.raises(ConcurrentUpdate):
                tx.replace_item(item("b", {"n": 2}), 2)
        store.load_items([])
        assert store.count_items() == 3

    # ------------------------------------------------------------ links

    def test_add_link_then_get_link_round_trips_at_version_1(self, store: ItemStore) -> None:
        original = link("4ea150b2-9f51-4072-9da5-51b16e3fc045", "a", "b", RICH_PROPERTIES)
        with store.transaction() as tx:
            assert tx.add_link(original) == StoredLink(original, 1)
            assert tx.get_link(original.id) == StoredLink(original, 1)
        with store.transaction() as tx:
            got = tx.get_link(original.id)
        assert got == StoredLink(original, 1)
        assert got is not None and got.link.to_json() == original.to_json()
        assert store.count_links() == 1 and store.count_items() == 0

    def test_get_link_of_an_unknown_id_is_none(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            assert tx.get_link("no-such-link") is None
            tx.add_item(item("a"))
            assert tx.get_link("a") is None  # an item's id is no link's

    def test_add_link_of_an_existing_id_raises_concurrent_update(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            tx.add_link(link("l", "a", "b"))
            with pytest.raises(ConcurrentUpdate):
                tx.add_link(link("l", "c", "d"))
        with store.transaction() as tx:
            assert tx.get_link("l") == StoredLink(link("l", "a", "b"), 1)

    def test_replace_link_bumps_the_version_and_may_move_its_ends(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            tx.add_link(link("l", "a", "b", {"type": "BLOCKS"}))
        with store.transaction() as tx:
            moved = link("l", "c", "d", {"type": "IMPLEMENTS"})
            assert tx.replace_link(moved, 2) == StoredLink(moved, 2)
            with pytest.raises(ConcurrentUpdate):
                tx.replace_link(link("l", "x", "y"), 2)  # stale
            with pytest.raises(ConcurrentUpdate):
                tx.replace_link(link("ghost", "x", "y"), 2)
        with store.transaction() as tx:
            assert tx.get_link("l") == StoredLink(link("l", "c", "d", {"type": "IMPLEMENTS"}), 2)
            assert tx.get_link("ghost") is None

    def test_delete_link_at_its_version_removes_it(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            tx.add_link(link("l", "a", "b"))
            tx.replace_link(link("l", "a", "b", {"n": 2}), 2)
            tx.add_link(link("kept", "a", "b"))
        with store.transaction() as tx:
            with pytest.raises(ConcurrentUpdate):
                tx.delete_link("l", 1)  # not its version
            with pytest.raises(ConcurrentUpdate):
                tx.delete_link("ghost", 1)
            tx.delete_link("l", 2)
            assert tx.get_link("l") is None
            with pytest.raises(ConcurrentUpdate):
                tx.delete_link("l", 2)  # gone already
            with pytest.raises(ConcurrentUpdate):
                tx.replace_link(link("l", "a", "b"), 3)
        with store.transaction() as tx:
            assert tx.get_link("l") is None
        assert [s.link.id for s in store.links()] == ["kept"]
        assert store.count_links() == 1

    def test_link_changes_roll_back_with_the_transaction_and_the_savepoint(
        self, store: ItemStore
    ) -> None:
        with store.transaction() as tx:
            tx.add_link(link("kept", "a", "b"))
            tx.add_link(link("doomed", "a", "b"))
        with pytest.raises(Boom), store.transaction() as tx:
            tx.add_link(link("new", "a", "b"))
            tx.replace_link(link("kept", "c", "d"), 2)
            tx.delete_link("doomed", 1)
            raise Boom
        with store.transaction() as tx:
            with pytest.raises(Boom), tx.savepoint():
                tx.delete_link("kept", 1)
                tx.add_link(link("in-savepoint", "a", "b"))
                raise Boom
            assert tx.get_link("kept") == StoredLink(link("kept", "a", "b"), 1)
        assert list(store.links()) == [StoredLink(link("doomed", "a", "b"), 1),
                                       StoredLink(link("kept", "a", "b"), 1)]

    def test_links_are_ordered_by_id(self, store: ItemStore) -> None:
        ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"link-{n}")) for n in range(12)]
        with store.transaction() as tx:
            for link_id in ids:
                tx.add_link(link(link_id, "a", "b"))
        assert [s.link.id for s in store.links()] == sorted(ids)
        assert store.count_links() == 12

    def test_clear_empties_the_links_too(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            tx.add_item(item("a", {"type": "STORY"}))
            tx.add_link(link("l", "a", "b"))
        store.clear()
        assert list(store.links()) == [] and store.count_links() == 0
        with store.transaction() as tx:
            assert tx.get_link("l") is None
            assert tx.search_items({"type": "STORY"}, after=None, limit=10) == Found([], False)
            assert tx.search_links("source", "a", after=None, limit=10) == Found([], False)
            assert tx.add_link(link("l", "a", "b")) == StoredLink(link("l", "a", "b"), 1)

    def test_a_stored_link_does_not_change_when_callers_mutate_their_dicts(
        self, store: ItemStore
    ) -> None:
        given: JSON = {"tags": ["a"]}
        with store.transaction() as tx:
            tx.add_link(link("l", "a", "b", given))
        given["tags"].append("changed")
        with store.transaction() as tx:
            got = tx.get_link("l")
            assert got is not None
            got.link.properties["changed after get"] = True
        with store.transaction() as tx:
            assert tx.get_link("l") == StoredLink(link("l", "a", "b", {"tags": ["a"]}), 1)

    def test_has_item_says_whether_an_item_has_the_id(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            assert not tx.has_item("a")
            tx.add_item(item("a"))
            tx.add_link(link("l", "a", "b"))
            assert tx.has_item("a")
            assert not tx.has_item("A") and not tx.has_item("l") and not tx.has_item("a\x00")
        with store.transaction() as tx:
            assert tx.has_item("a")

    # ------------------------------------------------------------ search_items

    def test_search_with_an_empty_where_finds_every_item_in_creation_order(
        self, store: ItemStore
    ) -> None:
        # added out of order; two share a created_at, and then the id decides
        made = [made_at("c", 3), made_at("a", 1), made_at("b2", 2), made_at("b1", 2)]
        with store.transaction() as tx:
            for one in made:
                tx.add_item(one)
        with store.transaction() as tx:
            found = tx.search_items({}, after=None, limit=100)
        assert found == Found([made_at("a", 1), made_at("b1", 2), made_at("b2", 2),
                               made_at("c", 3)], False)

    def test_search_finds_the_items_holding_every_key_with_an_equal_value(
        self, store: ItemStore
    ) -> None:
        with store.transaction() as tx:
            for n, properties in enumerate(SEARCHED):
                tx.add_item(made_at(f"i{n:02d}", n, properties))
        for where, expected in SEARCHES:
            with store.transaction() as tx:
                found = tx.search_items(where, after=None, limit=100)
            assert found is not None
            assert [one.id for one in found.results] == [f"i{n:02d}" for n in expected], where
            assert not found.more

    def test_search_results_are_whole_items_without_their_version(
        self, store: ItemStore
    ) -> None:
        with store.transaction() as tx:
            tx.add_item(made_at("a", 1, RICH_PROPERTIES))
            tx.replace_item(made_at("a", 1, {**RICH_PROPERTIES, "v": 2}), 2)
        with store.transaction() as tx:
            found = tx.search_items({"type": "STORY"}, after=None, limit=10)
        assert found == Found([made_at("a", 1, {**RICH_PROPERTIES, "v": 2})], False)

    def test_search_pages_with_limit_and_after(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            for n in range(7):
                tx.add_item(made_at(f"s{n}", n, {"type": "STORY"}))
                tx.add_item(made_at(f"b{n}", n, {"type": "BUG"}))
        pages: list[list[str]] = []
        after = None
        while True:
            with store.transaction() as tx:
                found = tx.search_items({"type": "STORY"}, after=after, limit=3)
            assert found is not None
            pages.append([one.id for one in found.results])
            if not found.more:
                break
            after = found.results[-1].id
        assert pages == [["s0", "s1", "s2"], ["s3", "s4", "s5"], ["s6"]]
        with store.transaction() as tx:
            # exactly limit left: nothing more follows
            assert tx.search_items({"type": "STORY"}, after="s3", limit=3) == Found(
                [made_at(f"s{n}", n, {"type": "STORY"}) for n in (4, 5, 6)], False)
            # after an item the where does not match: its place in creation order counts
            # (b1 and s1 were made at the same moment: then the id decides, b before s)
            found = tx.search_items({"type": "STORY"}, after="b1", limit=2)
            assert found is not None and [one.id for one in found.results] == ["s1", "s2"]
            assert found.more
            assert tx.search_items({}, after="s6", limit=5) == Found([], False)

    def test_search_after_an_id_no_item_has_is_none(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            tx.add_item(item("a", {"type": "STORY"}))
            tx.add_link(link("l", "a", "b"))
            assert tx.search_items({}, after="ghost", limit=10) is None
            assert tx.search_items({"type": "STORY"}, after="l", limit=10) is None
            assert tx.search_items({}, after="a\x00", limit=10) is None

    def test_search_follows_updates(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            tx.add_item(made_at("a", 1, {"status": "OPEN", "type": "BUG"}))
        with store.transaction() as tx:
            tx.replace_item(made_at("a", 1, {"status": "DONE"}), 2)
            # the transaction sees its own change
            assert tx.search_items({"status": "OPEN"}, after=None, limit=10) == Found([], False)
        with store.transaction() as tx:
            assert tx.search_items({"status": "OPEN"}, after=None, limit=10) == Found([], False)
            assert tx.search_items({"type": "BUG"}, after=None, limit=10) == Found([], False)
            assert tx.search_items({"status": "DONE"}, after=None, limit=10) == Found(
                [made_at("a", 1, {"status": "DONE"})], False)
            tx.replace_item(made_at("a", 1, {}), 3)
        with store.transaction() as tx:
            assert tx.search_items({"status": "DONE"}, after=None, limit=10) == Found([], False)
            assert tx.search_items({}, after=None, limit=10) == Found([made_at("a", 1, {})],
                                                                     False)

    def test_a_rolled_back_change_leaves_the_search_as_it_was(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            tx.add_item(made_at("a", 1, {"status": "OPEN"}))
        with store.transaction() as tx, pytest.raises(Boom), tx.savepoint():
            tx.replace_item(made_at("a", 1, {"status": "DONE"}), 2)
            tx.add_item(made_at("b", 2, {"status": "OPEN"}))
            raise Boom
        with pytest.raises(Boom), store.transaction() as tx:
            tx.replace_item(made_at("a", 1, {"status": "DONE"}), 2)
            raise Boom
        with store.transaction() as tx:
            assert tx.search_items({"status": "OPEN"}, after=None, limit=10) == Found(
                [made_at("a", 1, {"status": "OPEN"})], False)
            assert tx.search_items({"status": "DONE"}, after=None, limit=10) == Found([], False)

    def test_loaded_items_are_searched_like_any_other(self, store: ItemStore) -> None:
        """Only for backends that offer the optional BulkItemLoader (restore's path)."""
        if not isinstance(store, BulkItemLoader):
            return
        with store.transaction() as tx:
            tx.add_item(made_at("b", 2, {"type": "STORY", "old": True}))
        store.load_items([
            ("a", at(1), CREATED_BY, b'{"type":"STORY"}', 1),
            ("b", at(2), CREATED_BY, b'{"type":"BUG"}', 3),  # loaded again: new properties
            ("c", at(3), CREATED_BY, orjson.dumps({**RICH_PROPERTIES, "type": "STORY"}), 2),
            ("d", at(4), CREATED_BY, b"{}", 1),
        ])
        with store.transaction() as tx:
            found = tx.search_items({"type": "STORY"}, after=None, limit=10)
            assert found is not None and [one.id for one in found.results] == ["a", "c"]
            assert tx.search_items({"old": True}, after=None, limit=10) == Found([], False)
            found = tx.search_items({"escapes": RICH_PROPERTIES["escapes"]}, after=None,
                                    limit=10)
            assert found is not None and [one.id for one in found.results] == ["c"]
            found = tx.search_items({}, after="b", limit=10)
            assert found is not None and [one.id for one in found.results] == ["c", "d"]

    # ------------------------------------------------------------ search_links

    def test_search_links_by_source_target_or_either_in_creation_order(
        self, store: ItemStore
    ) -> None:
        made = [link_at("l3", 3, "a", "b"), link_at("l1", 1, "b", "a"),
                link_at("l2", 2, "a", "c"), link_at("l4", 4, "c", "d"),
                link_at("l0", 2, "c", "a")]
        with store.transaction() as tx:
            for one in made:
                tx.add_link(one)

        def ids(end: LinkEnd, item_id: str) -> list[str]:
            with store.transaction() as tx:
                found = tx.search_links(end, item_id, after=None, limit=100)
            assert found is not None and not found.more
            return [one.id for one in found.results]

        assert ids("source", "a") == ["l2", "l3"]
        assert ids("target", "a") == ["l1", "l0"]
        assert ids("either", "a") == ["l1", "l0", "l2", "l3"]
        assert ids("either", "d") == ["l4"]
        assert ids("source", "d") == []
        assert ids("either", "nobody") == []
        with store.transaction() as tx:
            found = tx.search_links("either", "a", after=None, limit=1)
        assert found == Found([link_at("l1", 1, "b", "a")], True)

    def test_search_links_pages_with_limit_and_after(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            for n in range(5):
                tx.add_link(link_at(f"out{n}", n, "a", f"t{n}"))
                tx.add_link(link_at(f"in{n}", n, f"s{n}", "a"))
                tx.add_link(link_at(f"other{n}", n, "x", "y"))
        pages: list[list[str]] = []
        after = None
        while True:
            with store.transaction() as tx:
                found = tx.search_links("either", "a", after=after, limit=4)
            assert found is not None
            pages.append([one.id for one in found.results])
            if not found.more:
                break
            after = found.results[-1].id
        assert pages == [["in0", "out0", "in1", "out1"], ["in2", "out2", "in3", "out3"],
                         ["in4", "out4"]]
        with store.transaction() as tx:
            found = tx.search_links("source", "a", after="in2", limit=10)  # not a's out-link
            assert found is not None and [one.id for one in found.results] == [
                "out2", "out3", "out4"]
            assert tx.search_links("source", "a", after="ghost", limit=10) is None
            assert tx.search_links("source", "a", after="a", limit=10) is None  # an item

    def test_search_links_follows_updates_and_deletes(self, store: ItemStore) -> None:
        with store.transaction() as tx:
            tx.add_link(link_at("l", 1, "a", "b"))
            tx.add_link(link_at("m", 2, "a", "c"))
        with store.transaction() as tx:
            tx.replace_link(link_at("l", 1, "c", "b"), 2)
            tx.delete_link("m", 1)
        with store.transaction() as tx:
            assert tx.search_links("source", "a", after=None, limit=10) == Found([], False)
            assert tx.search_links("either", "c", after=None, limit=10) == Found(
                [link_at("l", 1, "c", "b")], False)



def at(n: int) -> str:
    """A created_at n seconds into a day: the n-th item made."""
    return f"2026-01-01T00:00:{n:02d}.000000+00:00"


def made_at(item_id: str, n: int, properties: JSON | None = None) -> Item:
    return Item(item_id, at(n), CREATED_BY, {} if properties is None else properties)


def link(link_id: str, source: str, target: str, properties: JSON | None = None) -> Link:
    return Link(link_id, CREATED_AT, CREATED_BY, source, target,
                {} if properties is None else properties)


def link_at(link_id: str, n: int, source: str, target: str) -> Link:
    return Link(link_id, at(n), CREATED_BY, source, target, {"n": n})


LONG = "a long value " * 20  # longer than an index keeps whole
# The items searched, each made at its own moment (its index), and the searches with the
# indexes of the items they find.
SEARCHED: list[JSON] = [
    {"type": "STORY", "status": "OPEN"},                              # 0
    {"type": "STORY", "status": "DONE"},                              # 1
    {"type": "BUG", "status": "OPEN"},                                # 2
    {"type": "STORY"},                                                # 3
    {"n": 1},                                                         # 4
    {"n": 1.0},                                                       # 5
    {"n": True},                                                      # 6
    {"n": "1"},                                                       # 7
    {"n": None},                                                      # 8
    {"tags": ["a", "b"]},                                             # 9
    {"tags": ["a"]},                                                  # 10
    {"tags": ["b", "a"]},                                             # 11
    {"spec": {"x": 1, "y": {"z": [1, 2]}}},                           # 12
    {"spec": {"x": 1}},                                               # 13
    {"nul\x00key": "a\x00b", "ctl": "\x01"},                          # 14
    {"title": LONG},                                                  # 15
    {"title": LONG + "!"},                                            # 16
    {"ключ": "значение 🎉", "n": 0},                                  # 17
    {"n": False},                                                     # 18
    {"n": 2.5},                                                       # 19
    {"n": 2**62},                                                     # 20
    {"STORY": "type"},                                                # 21
]
SEARCHES: list[tuple[JSON, list[int]]] = [
    ({"type": "STORY"}, [0, 1, 3]),
    ({"type": "STORY", "status": "OPEN"}, [0]),
    ({"status": "OPEN", "type": "STORY"}, [0]),
    ({"status": "OPEN"}, [0, 2]),
    ({"type": "STORY", "status": "OPEN", "other": None}, []),
    ({"type": "TASK"}, []),
    ({"type": "story"}, []),
    ({"n": 1}, [4, 5]),                # numbers by value
    ({"n": 1.0}, [4, 5]),
    ({"n": True}, [6]),                # never a boolean for a number
    ({"n": "1"}, [7]),
    ({"n": None}, [8]),                # the key must be there, null
    ({"n": 0}, [17]),
    ({"n": False}, [18]),
    ({"n": 2.5}, [19]),
    ({"n": 2**62}, [20]),
    ({"tags": ["a"]}, [10]),           # equal, not contained
    ({"tags": ["a", "b"]}, [9]),       # in order
    ({"tags": "a"}, []),
    ({"spec": {"x": 1}}, [13]),
    ({"spec": {"y": {"z": [1, 2]}, "x": 1.0}}, [12]),  # keys in any order
    ({"nul\x00key": "a\x00b"}, [14]),  # NUL, which jsonb cannot hold
    ({"nul\x00key": "a"}, []),
    ({"ctl": "\x01"}, [14]),
    ({"title": LONG}, [15]),
    ({"title": LONG + "!"}, [16]),
    ({"ключ": "значение 🎉"}, [17]),
    ({"STORY": "type"}, [21]),
    ({"type": "STORY", "n": 1}, []),
]
