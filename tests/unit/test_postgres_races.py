"""Several writers on one PostgreSQL schema: races resolve by version, and only once.

Each test opens a store per thread (a connection each, as separate worker
processes would) on a schema of its own, and makes the transactions overlap
on purpose: one holds its change uncommitted while the other runs into it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson
import psycopg
import pytest

from tests.postgres import OpenStore
from thelca.authority.test_only import TestOnlyAuthority
from thelca.domain.model import Item, Link, StoredItem, StoredLink
from thelca.errors import ConcurrentUpdate, StoreUnavailable
from thelca.roles.commands import CommandRole
from thelca.roles.messages import Incoming
from thelca.stores.base import OutboxEvent, ProcessedCommand
from thelca.stores.postgres import PostgresStore
from thelca.stores.postgres.rows import _translated
from thelca_client.contract import (
    CreateLink,
    DeleteLink,
    Names,
    ReadLink,
    UpdateLink,
    encode,
    encode_command,
)

pytestmark = pytest.mark.postgres

CREATED_AT = "2020-02-18T16:37:09.654917+00:00"
USER = "a-test-only-id-abcd"


def item(item_id: str, properties: dict[str, Any] | None = None) -> Item:
    return Item(item_id, CREATED_AT, USER, properties or {})


def in_thread(target: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def blocked(thread: threading.Thread, seconds: float = 0.3) -> bool:
    """Whether the thread is still waiting (for a lock) after a while."""
    thread.join(timeout=seconds)
    return thread.is_alive()


def test_concurrent_read_modify_write_loses_no_update(
    pg_stores: OpenStore,
) -> None:
    """Four writers increment one counter 25 times each, every time from what they read."""
    setup = pg_stores()
    with setup.transaction() as tx:
        tx.add_item(item("counter", {"n": 0}))
    writers, rounds = 4, 25
    start = threading.Barrier(writers)

    def increment(store: PostgresStore) -> None:
        start.wait()
        for _ in range(rounds):
            with store.transaction() as tx:
                current = tx.get_item("counter")
                assert current is not None
                n = current.item.properties["n"]
                tx.replace_item(item("counter", {"n": n + 1}), current.version + 1)

    runs = [in_thread(partial(increment, pg_stores())) for _ in range(writers)]
    for thread, errors in runs:
        thread.join(timeout=120)
        assert not errors, errors
    with setup.transaction() as tx:
        final = tx.get_item("counter")
    assert final == StoredItem(item("counter", {"n": writers * rounds}), 1 + writers * rounds)


def test_a_reader_waits_for_the_writer_and_then_sees_its_version(
    pg_stores: OpenStore,
) -> None:
    first, second = pg_stores(), pg_stores()
    with first.transaction() as tx:
        tx.add_item(item("a", {"n": 1}))
    seen: list[StoredItem | None] = []

    def read_then_update() -> None:
        with second.transaction() as tx:
            current = tx.get_item("a")
            seen.append(current)
            assert current is not None
            tx.replace_item(item("a", {"n": "second"}), current.version + 1)

    with first.transaction() as tx:
        current = tx.get_item("a")
        assert current is not None
        tx.replace_item(item("a", {"n": "first"}), 2)
        thread, errors = in_thread(read_then_update)
        assert blocked(thread), "the second writer did not wait for the first"
    thread.join(timeout=30)
    assert not errors
    assert seen == [StoredItem(item("a", {"n": "first"}), 2)]
    with first.transaction() as tx:
        assert tx.get_item("a") == StoredItem(item("a", {"n": "second"}), 3)


def test_a_stale_version_written_from_another_connection_is_refused(
    pg_stores: OpenStore,
) -> None:
    """replace_item checks the version itself, also for a writer that did not lock first."""
    first, second = pg_stores(), pg_stores()
    with first.transaction() as tx:
        tx.add_item(item("a", {"n": 1}))
    outcome: list[str] = []

    def stale_update() -> None:
        with second.transaction() as tx:
            try:
                tx.replace_item(item("a", {"n": "stale"}), 2)  # it read version 1 earlier
            except ConcurrentUpdate:
                outcome.append("ConcurrentUpdate")
            tx.add_item(item("b"))  # the transaction goes on after the refusal

    with first.transaction() as tx:
        tx.replace_item(item("a", {"n": "winner"}), 2)
        thread, errors = in_thread(stale_update)
        assert blocked(thread)
    thread.join(timeout=30)
    assert not errors
    assert outcome == ["ConcurrentUpdate"]
    assert [s.item.id for s in first.items()] == ["a", "b"]
    with first.transaction() as tx:
        assert tx.get_item("a") == StoredItem(item("a", {"n": "winner"}), 2)


def test_one_message_id_recorded_by_two_writers_at_once_is_recorded_once(
    pg_stores: OpenStore,
) -> None:
    first, second = pg_stores(), pg_stores()
    mine = ProcessedCommand("m1", USER, b'{"status": 200, "version": 2}', "e-first")
    theirs = ProcessedCommand("m1", USER, b'{"status": 200, "version": 3}', "e-second")
    outcome: list[object] = []

    def record() -> None:
        with second.transaction() as tx:
            try:
                with tx.savepoint():
                    tx.add_item(item("second-effect"))
                    tx.add_processed(theirs)
            except ConcurrentUpdate:
                outcome.append("ConcurrentUpdate")
                outcome.append(tx.get_processed("m1"))  # what the handler's retry sees

    with first.transaction() as tx:
        tx.add_processed(mine)
        thread, errors = in_thread(record)
        assert blocked(thread), "the second writer did not wait for the first's record"
    thread.join(timeout=30)
    assert not errors
    assert outcome == ["ConcurrentUpdate", mine]
    assert first.count_items() == 0  # the loser's effect went with its savepoint


def test_two_handlers_given_the_same_command_at_once_apply_it_once(
    pg_stores: OpenStore,
) -> None:
    """Two workers, one redelivered update each, at the same moment: one effect, one reply."""
    setup = pg_stores()
    with setup.transaction() as tx:
        tx.add_item(item("a", {"n": 0}))
    handlers = [CommandRole(pg_stores(), TestOnlyAuthority(), Names("race"), max_body=1 << 20)
                for _ in range(2)]
    for round_ in range(20):
        body = encode_command("update", id="a", item={**item("a").to_json(),
                                                        "properties": {"n": round_}})
        message = Incoming(body=body, message_id=f"m-{round_}", correlation_id=None,
                           reply_to="client", headers={"Authorization": "Bearer abcd"})
        start = threading.Barrier(2)
        replies: list[bytes] = []

        runs = [in_thread(partial(_handle, handler, message, start, replies))
                for handler in handlers]
        for thread, errors in runs:
            thread.join(timeout=60)
            assert not errors, errors
        assert len(replies) == 2 and replies[0] == replies[1], replies
        assert b'"status":200' in replies[0]
    with setup.transaction() as tx:
        assert tx.get_item("a") == StoredItem(item("a", {"n": 19}), 21)


def _handle(handler: CommandRole, message: Incoming, start: threading.Barrier,
            replies: list[bytes]) -> None:
    start.wait()
    out = handler.handle([message])
    replies.extend(m.body for m in out if m.routing_key == "client")


def test_a_deadlock_between_two_batches_rolls_one_back_as_store_unavailable(
    pg_stores: OpenStore,
) -> None:
    """Retrying one command could not help (it would wait for the same lock): the batch retries."""
    first, second = pg_stores(), pg_stores()
    with first.transaction() as tx:
        tx.add_item(item("x"))
        tx.add_item(item("y"))
    locked = threading.Barrier(2)
    results: dict[str, str] = {}

    def batch(store: PostgresStore, name: str, one: str, other: str) -> None:
        try:
            with store.transaction() as tx:
                tx.get_item(one)
                locked.wait()
                time.sleep(0.1)
                current = tx.get_item(other)
                assert current is not None
                tx.replace_item(item(other, {"by": name}), current.version + 1)
            results[name] = "committed"
        except StoreUnavailable as error:
            results[name] = str(error)

    runs = [in_thread(lambda: batch(first, "first", "x", "y")),
            in_thread(lambda: batch(second, "second", "y", "x"))]
    for thread, errors in runs:
        thread.join(timeout=60)
        assert not errors, errors
    outcomes = sorted(results.values(), key=lambda outcome: outcome != "committed")
    assert outcomes[0] == "committed", results
    assert "deadlock" in outcomes[1] and "retried" in outcomes[1]
    with first.transaction() as tx:  # both stores work on
        tx.add_item(item("z"))
    with second.transaction() as tx:
        assert tx.get_item("z") is not None


def test_two_workers_removing_the_same_confirmed_events_neither_waits_nor_fails(
    pg_stores: OpenStore,
) -> None:
    """Every worker republishes the outbox at start, so two may remove the same event."""
    first, second = pg_stores(), pg_stores()
    with first.transaction() as tx:
        for event_id in ("e1", "e2", "e3", "other-workers"):
            tx.add_outbox(OutboxEvent(event_id, b"{}"))
    with first.transaction() as tx:
        tx.remove_outbox(["e1", "e2", "e3"])
        thread, errors = in_thread(lambda: _remove(second, ["e3", "e2", "e1"]))
        assert not blocked(thread, 5), "the second remover waited for the first"
    assert not errors
    assert [e.event_id for e in first.pending_outbox()] == ["other-workers"]


def _remove(store: PostgresStore, event_ids: list[str]) -> None:
    with store.transaction() as tx:
        tx.remove_outbox(event_ids)


def test_two_workers_pruning_at_once_neither_waits_and_each_record_goes_once(
    pg_stores: OpenStore,
) -> None:
    first, second = pg_stores(), pg_stores()
    with first.transaction() as tx:
        for n in range(10):
            tx.add_processed(ProcessedCommand(f"m{n}", USER, b"{}", None, None, float(n)))
    pruned: list[int] = []
    with first.transaction() as tx:
        pruned.append(tx.prune_processed(before=100.0, limit=6))
        thread, errors = in_thread(lambda: pruned.append(_prune(second, 6)))
        assert not blocked(thread, 5), "the second pruner waited for the first"
    assert not errors
    assert pruned == [6, 4]  # the second skipped the rows the first held
    assert first.oldest_processed() is None


def _prune(store: PostgresStore, limit: int) -> int:
    with store.transaction() as tx:
        return tx.prune_processed(before=100.0, limit=limit)


def test_an_expired_record_made_anew_by_one_worker_is_not_forgotten_by_another(
    pg_stores: OpenStore,
) -> None:
    """Two workers both read the expired record; the first forgets it and records the
    command anew; the second's forget must leave that new record, and its own record is
    then a lost race (the handler's retry answers from the first's)."""
    first, second = pg_stores(), pg_stores()
    with first.transaction() as tx:
        tx.add_processed(ProcessedCommand("m1", USER, b'{"old": 1}', None, None, 10.0))
    cutoff = 100.0
    with second.transaction() as theirs:
        seen = theirs.get_processed("m1")
        assert seen is not None and seen.created_at < cutoff  # expired, as they saw it
        with first.transaction() as mine:
            mine.forget_processed("m1", before=cutoff)
            mine.add_processed(ProcessedCommand("m1", USER, b'{"new": 1}', None, None, 150.0))
        theirs.forget_processed("m1", before=cutoff)
        with pytest.raises(ConcurrentUpdate):
            theirs.add_processed(ProcessedCommand("m1", USER, b'{"new": 2}', None, None, 151.0))
    with first.transaction() as tx:
        kept = tx.get_processed("m1")
    assert kept is not None and kept.reply == b'{"new": 1}'


def test_a_serialization_failure_is_a_lost_race_and_a_dropped_connection_is_unavailable(
) -> None:
    assert isinstance(_translated(psycopg.errors.SerializationFailure("x")), ConcurrentUpdate)
    assert isinstance(_translated(psycopg.OperationalError("server closed the connection")),
                      StoreUnavailable)



# ---------------------------------------------------------------- links


def link(link_id: str, properties: dict[str, Any] | None = None) -> Link:
    return Link(link_id, CREATED_AT, USER, "a", "b", properties or {})


def test_concurrent_link_updates_lose_none(pg_stores: OpenStore) -> None:
    """Four writers increment one link's counter 25 times each, every time from what they
    read: get_link locks the row as get_item does, so they queue up."""
    setup = pg_stores()
    with setup.transaction() as tx:
        tx.add_link(link("l", {"n": 0}))
    writers, rounds = 4, 25
    start = threading.Barrier(writers)

    def increment(store: PostgresStore) -> None:
        start.wait()
        for _ in range(rounds):
            with store.transaction() as tx:
                current = tx.get_link("l")
                assert current is not None
                n = current.link.properties["n"]
                tx.replace_link(link("l", {"n": n + 1}), current.version + 1)

    runs = [in_thread(partial(increment, pg_stores())) for _ in range(writers)]
    for thread, errors in runs:
        thread.join(timeout=120)
        assert not errors, errors
    with setup.transaction() as tx:
        final = tx.get_link("l")
    assert final == StoredLink(link("l", {"n": writers * rounds}), 1 + writers * rounds)


def _link_commands(pg_stores: OpenStore) -> tuple[dict[str, Any], list[CommandRole]]:
    """Two items, a link between them made through a worker, and two workers on the schema."""
    setup = pg_stores()
    with setup.transaction() as tx:
        tx.add_item(item("a"))
        tx.add_item(item("b"))
    first, second = (CommandRole(pg_stores(), TestOnlyAuthority(), Names("race"), max_body=1 << 20)
                     for _ in range(2))
    created = _reply(first, encode(CreateLink({"source": "a", "target": "b"})), "m-create")
    assert created["status"] == 200, created
    return created["link"], [first, second]


def _reply(role: CommandRole, body: bytes, message_id: str) -> dict[str, Any]:
    message = Incoming(body=body, message_id=message_id, correlation_id=None,
                       reply_to="client", headers={"Authorization": "Bearer abcd"})
    (reply,) = [m for m in role.handle([message]) if m.routing_key == "client"]
    return dict(orjson.loads(reply.body))


def _at_once(roles: list[CommandRole], bodies: list[bytes]) -> list[dict[str, Any]]:
    """Each role handles its own command at the same moment; their replies, in that order."""
    start = threading.Barrier(len(roles))
    replies: dict[int, dict[str, Any]] = {}

    def run(index: int) -> None:
        start.wait()
        replies[index] = _reply(roles[index], bodies[index], f"m-{index}-{uuid.uuid4()}")

    runs = [in_thread(partial(run, index)) for index in range(len(roles))]
    for thread, errors in runs:
        thread.join(timeout=60)
        assert not errors, errors
    return [replies[index] for index in range(len(roles))]


def test_two_workers_updating_one_link_at_one_expected_version_one_wins(
    pg_stores: OpenStore,
) -> None:
    created, roles = _link_commands(pg_stores)
    for round_ in range(10):
        current = _reply(roles[0], encode(ReadLink(created["id"])), f"read-{round_}")
        version = current["version"]
        bodies = [encode(UpdateLink(created["id"], {**current["link"], "properties": {"by": n}},
                                    expected_version=version)) for n in range(2)]
        replies = _at_once(roles, bodies)
        statuses = sorted(reply["status"] for reply in replies)
        assert statuses == [200, 409], replies
        winner = next(reply for reply in replies if reply["status"] == 200)
        assert winner["version"] == version + 1
        loser = next(reply for reply in replies if reply["status"] == 409)
        assert f"is at version {version + 1}" in loser["error"]
        after = _reply(roles[1], encode(ReadLink(created["id"])), f"check-{round_}")
        assert after["link"] == winner["link"] and after["version"] == version + 1


def test_a_delete_racing_an_update_of_one_link_leaves_one_story(
    pg_stores: OpenStore,
) -> None:
    """Either the update comes first and the delete removes its version, or the delete
    comes first and the update finds no link; never an update of a deleted link."""
    created, roles = _link_commands(pg_stores)
    update = encode(UpdateLink(created["id"], {**created, "properties": {"n": 1}}))
    replies = _at_once(roles, [update, encode(DeleteLink(created["id"]))])
    updated, deleted = replies
    assert deleted["status"] == 200, replies
    if updated["status"] == 200:
        assert deleted["version"] == 2 and deleted["link"] == updated["link"]
    else:
        assert updated["status"] == 404 and deleted["version"] == 1, replies
    gone = _reply(roles[0], encode(ReadLink(created["id"])), "read-after")
    assert gone["status"] == 404


def test_items_read_ahead_are_locked_as_a_read_locks_them(
    pg_stores: OpenStore,
) -> None:
    """A deferred transaction reads a batch's items at once, and holds their locks: another
    writer's read waits for its commit and then sees its update."""
    first, second = pg_stores(), pg_stores()
    with first.transaction() as tx:
        tx.add_item(item("a", {"n": 1}))
    seen: list[StoredItem | None] = []

    def read() -> None:
        with second.transaction() as tx:
            seen.append(tx.get_item("a"))

    with first.transaction(deferred=True) as tx:
        tx.prefetch_items(["a"])
        thread, errors = in_thread(read)
        assert blocked(thread), "the other writer did not wait for the lock"
        tx.replace_item(item("a", {"n": 2}), 2)
    thread.join(timeout=30)
    assert not errors
    assert seen == [StoredItem(item("a", {"n": 2}), 2)]
