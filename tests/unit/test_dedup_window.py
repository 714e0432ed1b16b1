"""The deduplication window, in the command role: what a re-sent message_id gets within it
and after it, and how the records older than it are pruned (a bounded number per batch).

The role runs on a memory store and a clock of the test's own; the stores' part
(pruning, forgetting an expired record, the migration) is the store contract's
(tests/unit/stores), and the same against the real broker and a SQLite file is
tests/integration/test_dedup_window.py.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from thelca.authority.test_only import TestOnlyAuthority
from thelca.cli.health import dedup_line
from thelca.roles.commands import CommandRole
from thelca.roles.dedup import PRUNE_EVERY, PRUNE_ROWS
from thelca.roles.fingerprints import Received
from thelca.roles.messages import Incoming, Outgoing
from thelca.stores.base import ProcessedCommand
from thelca.stores.memory import MemoryStore, _MemoryTransaction
from thelca.stores.sqlite import SQLiteStore
from thelca_client.contract import Names, authorization_headers, decode_reply, encode_command

NAMES = Names("dedup-test")
WINDOW = 60.0
START = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def role(store: MemoryStore, clock: Clock) -> CommandRole:
    return CommandRole(store, TestOnlyAuthority(), NAMES, max_body=1 << 20,
                       dedup_window=WINDOW, clock=clock)


@pytest.fixture
def prunes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Each prune the store is asked for: (its limit, how many records it removed)."""
    calls: list[tuple[int, int]] = []
    prune = _MemoryTransaction.prune_processed

    def counted(self: _MemoryTransaction, *, before: float, limit: int) -> int:
        removed = prune(self, before=before, limit=limit)
        calls.append((limit, removed))
        return removed

    monkeypatch.setattr(_MemoryTransaction, "prune_processed", counted)
    return calls


def _message(body: bytes, message_id: str) -> Incoming:
    return Incoming(body, message_id=message_id, reply_to="replies",
                    headers=authorization_headers("alice"))


def _send(role: CommandRole, body: bytes, message_id: str) -> tuple[dict[str, Any], list[str]]:
    """The reply, and the ids of the events published for it."""
    (reply, *events) = role.handle([_message(body, message_id)])
    role.confirmed(events)
    return decode_reply(reply.body).to_json(), [e.message_id or "" for e in events]


def _seed(store: MemoryStore, count: int, created_at: float) -> None:
    with store.transaction() as tx:
        for n in range(count):
            tx.add_processed(ProcessedCommand(f"old-{n}", "u", b"{}", None, None, created_at))


def _records(store: MemoryStore) -> int:
    with store.transaction() as tx:
        return sum(tx.get_processed(f"old-{n}") is not None for n in range(5000))


def _pruned() -> float:
    return REGISTRY.get_sample_value("thelca_processed_pruned_total") or 0.0


CREATE = encode_command("create", item={"properties": {"n": 1}})


def test_a_resend_within_the_window_is_answered_from_the_record(
    role: CommandRole, store: MemoryStore, clock: Clock
) -> None:
    first, events = _send(role, CREATE, "m1")
    assert len(events) == 1
    clock.now += WINDOW - 0.001
    again, republished = _send(role, CREATE, "m1")
    assert again == first and republished == []
    assert store.count_items() == 1


@pytest.mark.parametrize("pruned", [True, False], ids=["pruned", "not yet pruned"])
def test_a_resend_after_the_window_is_a_new_command_with_new_event_ids(
    role: CommandRole, store: MemoryStore, clock: Clock, monkeypatch: pytest.MonkeyPatch,
    pruned: bool,
) -> None:
    first, first_events = _send(role, CREATE, "m1")
    if not pruned:  # the record outlived its window: found, and not answered from
        monkeypatch.setattr(_MemoryTransaction, "prune_processed", lambda *a, **k: 0)
    clock.now += WINDOW + 0.001
    second, second_events = _send(role, CREATE, "m1")
    assert second["status"] == 200
    assert second["item"]["id"] != first["item"]["id"]
    assert len(second_events) == 1 and second_events != first_events
    assert store.count_items() == 2
    with store.transaction() as tx:
        record = tx.get_processed("m1")
    assert record is not None and record.created_at == clock.now
    assert orjson.loads(record.reply)["item"]["id"] == second["item"]["id"]
    # and the new record is answered from within its own window
    clock.now += 1
    assert _send(role, CREATE, "m1") == (second, [])


def test_a_new_command_after_the_window_keeps_its_event_ids_when_redelivered(
    store: MemoryStore, clock: Clock
) -> None:
    """The batch that ran the command anew may be rolled back (a crash before the
    commit): its redelivery finds the same expired record and makes the same event ids."""
    role = CommandRole(store, TestOnlyAuthority(), NAMES, max_body=1 << 20,
                       dedup_window=WINDOW, clock=clock)
    _send(role, CREATE, "m1")
    clock.now += WINDOW + 1
    with pytest.raises(RuntimeError), store.transaction() as tx:
        lost = role._guarded(tx, Received(_message(CREATE, "m1"), role.max_body))
        raise RuntimeError("the worker dies before the commit")
    _, redelivered = _send(role, CREATE, "m1")
    assert redelivered == [m.message_id for m in lost if m.exchange]


def test_records_older_than_the_window_are_pruned_a_bounded_number_per_batch(
    role: CommandRole, store: MemoryStore, clock: Clock, prunes: list[tuple[int, int]]
) -> None:
    _seed(store, 2 * PRUNE_ROWS + 100, START - WINDOW - 1)
    _seed_fresh = ProcessedCommand("fresh", "u", b"{}", None, None, START - WINDOW + 1)
    with store.transaction() as tx:
        tx.add_processed(_seed_fresh)
    for n in range(3):
        _send(role, CREATE, f"m{n}")
    assert prunes == [(PRUNE_ROWS, PRUNE_ROWS), (PRUNE_ROWS, PRUNE_ROWS), (PRUNE_ROWS, 100)]
    assert _records(store) == 0
    with store.transaction() as tx:
        assert tx.get_processed("fresh") == _seed_fresh


def test_once_caught_up_the_role_prunes_at_most_every_few_seconds(
    role: CommandRole, store: MemoryStore, clock: Clock, prunes: list[tuple[int, int]]
) -> None:
    _send(role, CREATE, "m0")
    assert prunes == [(PRUNE_ROWS, 0)]
    clock.now += PRUNE_EVERY / 2
    _send(role, CREATE, "m1")
    assert len(prunes) == 1
    clock.now += PRUNE_EVERY / 2
    _send(role, CREATE, "m2")
    assert len(prunes) == 2


def test_a_batch_larger_than_a_prune_prunes_as_many_as_it_holds(
    role: CommandRole, store: MemoryStore, prunes: list[tuple[int, int]]
) -> None:
    _seed(store, 3 * PRUNE_ROWS, START - WINDOW - 1)
    batch = [_message(CREATE, f"m{n}") for n in range(PRUNE_ROWS + 50)]
    role.handle(batch)
    assert prunes == [(PRUNE_ROWS + 50, PRUNE_ROWS + 50)]


def test_an_idle_worker_prunes_when_it_tidies_up(
    role: CommandRole, store: MemoryStore, clock: Clock, prunes: list[tuple[int, int]]
) -> None:
    _send(role, CREATE, "m0")
    _seed(store, 10, START - WINDOW - 1)
    role.tidy()  # its confirmed event leaves the outbox; the prune is not due yet
    assert len(prunes) == 1 and _records(store) == 10
    clock.now += PRUNE_EVERY
    role.tidy()
    assert prunes[-1] == (PRUNE_ROWS, 10) and _records(store) == 0


def test_the_window_and_the_pruned_records_are_in_the_metrics(
    role: CommandRole, store: MemoryStore
) -> None:
    assert REGISTRY.get_sample_value("thelca_dedup_window_seconds") == WINDOW
    before = _pruned()
    _seed(store, 7, START - WINDOW - 1)
    _send(role, CREATE, "m0")
    assert _pruned() == before + 7


def test_a_rolled_back_batch_counts_no_pruned_record(
    role: CommandRole, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(store, 7, START - WINDOW - 1)
    before = _pruned()

    def fail(self: CommandRole, *args: object) -> list[Outgoing]:
        raise RuntimeError("the store fails at the end of the batch")

    monkeypatch.setattr(CommandRole, "_guarded", fail)
    with pytest.raises(RuntimeError):
        role.handle([_message(CREATE, "m0")])
    assert _pruned() == before
    assert _records(store) == 7


def test_health_says_the_window_and_how_old_the_oldest_record_is(tmp_path: Path) -> None:
    path = tmp_path / "thelca.db"
    SQLiteStore(path).close()
    reader = SQLiteStore(path, writer=False)
    try:
        assert dedup_line(reader, 604800) == (
            "dedup window: 604800 s (7.0 days); no processed-command record is kept")
    finally:
        reader.close()
    writer = SQLiteStore(path)
    try:
        with writer.transaction() as tx:
            tx.add_processed(ProcessedCommand("m", "u", b"{}", None, None, time.time() - 7300))
    finally:
        writer.close()
    reader = SQLiteStore(path, writer=False)
    try:
        assert dedup_line(reader, 60) == (
            "dedup window: 60 s (1.0 min); the oldest processed-command record is 2.0 h old")
    finally:
        reader.close()


def test_health_on_a_database_no_worker_of_this_release_opened_says_the_age_is_unknown(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE processed (message_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, "
               "reply BLOB NOT NULL, event_id TEXT)")
    db.close()
    reader = SQLiteStore(path, writer=False)
    try:
        assert dedup_line(reader, 10).startswith(
            "dedup window: 10 s (10.0 s); the oldest record's age is unknown (")
    finally:
        reader.close()
