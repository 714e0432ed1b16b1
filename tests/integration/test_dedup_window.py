"""The deduplication window against the real broker, on a real SQLite file and PostgreSQL.

A worker with a window of WINDOW seconds: a message_id re-sent within it gets
the reply it got the first time and no new event; after it the command is
new (its own item, its own event id), and the records older than the window
leave the store. And with 20,000 records long expired, a worker that prunes
them a bounded number per batch never holds a reply back by more than one
batch's pruning.
"""

from __future__ import annotations

import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.integration.conftest import delete_prefix, run_system, wait_for_consumers
from tests.integration.plain import PlainClient, next_message, watch
from tests.postgres import fresh_schema, with_schema
from thelca.authority.test_only import TestOnlyAuthority
from thelca.bootstrap import build_worker
from thelca.roles.dedup import PRUNE_ROWS
from thelca.settings import Settings
from thelca.stores.base import ProcessedCommand
from thelca.stores.sqlite import SQLiteStore
from thelca.stores.sqlite.transaction import _SQLiteTransaction

WINDOW = 2  # seconds: short, yet long enough for a re-send on a loaded machine
CREATE = {"command": "create", "item": {"properties": {"n": 1}}}
SEEDED = 20_000


class Records:
    """The processed-command records of the store a test's worker runs on, read from outside
    it: a SQLite file, or a PostgreSQL schema of the test's own."""

    def __init__(self, env: dict[str, str], read: Callable[[], list[tuple[str, Any]]]) -> None:
        self.env = env  # THELCA_STORE for the worker
        self._read = read

    def __call__(self) -> dict[str, bytes]:
        return {message_id: bytes(reply) for message_id, reply in self._read()}


@pytest.fixture(params=["sqlite", "postgres"])
def records(request: pytest.FixtureRequest, tmp_path: Path) -> Records:
    """Every store a worker keeps its records in across restarts (the memory store's are
    in the worker's process, and the store contract tests prune them)."""
    if request.param == "sqlite":
        path = tmp_path / "thelca.db"

        def from_sqlite() -> list[tuple[str, Any]]:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                return db.execute("SELECT message_id, reply FROM processed").fetchall()
            finally:
                db.close()

        return Records({"THELCA_STORE": f"sqlite:///{path}"}, from_sqlite)
    pg_url = request.getfixturevalue("pg_url")
    schema = request.getfixturevalue("pg_schema")

    def from_postgres() -> list[tuple[str, Any]]:
        table = sql.Identifier(schema, "processed")
        with psycopg.connect(pg_url) as conn:
            return conn.execute(sql.SQL("SELECT message_id, reply FROM {}").format(
                table)).fetchall()

    return Records({"THELCA_STORE": with_schema(pg_url, schema)}, from_postgres)


@pytest.fixture
def pg_schema(pg_url: str) -> Iterator[str]:
    with fresh_schema(pg_url) as schema:
        yield schema


def _events_until(channel: Any, queue: str, seen: str | None) -> list[dict[str, Any]]:
    """The events on the watching queue, up to and including the first whose id is not
    `seen` (None: just the first)."""
    events = []
    while True:
        _, event = next_message(channel, queue)
        events.append(event)
        if seen is None or event["id"] != seen:
            return events


def test_a_resend_within_the_window_gets_the_record_and_after_it_is_a_new_command(
    amqp_url: str, prefix: str, tmp_path: Path, records: Records
) -> None:
    with run_system(amqp_url, prefix, tmp_path, THELCA_DEDUP_WINDOW=str(WINDOW),
                    **records.env) as system:
        client = PlainClient(amqp_url, prefix)
        channel, queue = watch(client, system.names.events)
        try:
            first = client.send(CREATE, message_id="m-dedup")
            answered = time.monotonic()
            (event,) = _events_until(channel, queue, None)
            again = client.send(CREATE, message_id="m-dedup")
            assert time.monotonic() - answered < WINDOW, "too slow to re-send within the window"
            assert again.body == first.body and again.status == 200
            time.sleep(max(0.0, answered + WINDOW + 0.5 - time.monotonic()))
            third = client.send(CREATE, message_id="m-dedup")
            *repeats, new_event = _events_until(channel, queue, event["id"])
        finally:
            client.close()
        assert third.status == 200
        assert third.body["item"]["id"] != first.body["item"]["id"]
        # The re-send within the window made no event of its own: at most the first one
        # again (published anew when its confirm had not yet come), the same bytes.
        assert all(repeat == event for repeat in repeats)
        assert new_event["id"] != event["id"]
        assert new_event["command_id"] == "m-dedup"
        assert new_event["value"]["id"] == third.body["item"]["id"]
        lines = system.wait_for_log(
            lambda ls: sum(line.get("command_id") == "m-dedup" for line in ls) >= 2)
        assert [line["id"] for line in lines if line.get("command_id") == "m-dedup"] == [
            event["id"], new_event["id"]]
        kept = records()
        assert list(kept) == ["m-dedup"]  # the first one's record was replaced
        assert b'"' + third.body["item"]["id"].encode() + b'"' in kept["m-dedup"]


def test_records_older_than_the_window_leave_the_store(
    amqp_url: str, prefix: str, tmp_path: Path, records: Records
) -> None:
    with run_system(amqp_url, prefix, tmp_path, THELCA_DEDUP_WINDOW=str(WINDOW),
                    **records.env):
        client = PlainClient(amqp_url, prefix)
        try:
            for n in range(30):
                assert client.send(CREATE, message_id=f"m-{n}").status == 200
            assert len(records()) == 30
            time.sleep(WINDOW + 1.5)  # past the window, and past the next prune's turn
            assert client.send(CREATE, message_id="m-last").status == 200
        finally:
            client.close()
        assert list(records()) == ["m-last"]


# ---------------------------------------------------------------- pruning under load


class Prunes:
    """Each prune the worker's store makes: how many records it removed, and the CPU time
    it took its thread (not the wall-clock time, which a loaded machine stretches)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []

    @property
    def removed(self) -> int:
        return sum(count for count, _ in self.calls)


@pytest.fixture
def prunes(monkeypatch: pytest.MonkeyPatch) -> Prunes:
    seen = Prunes()
    prune = _SQLiteTransaction.prune_processed

    def timed(self: _SQLiteTransaction, *, before: float, limit: int) -> int:
        started = time.thread_time()
        removed = prune(self, before=before, limit=limit)
        seen.calls.append((removed, time.thread_time() - started))
        return removed

    monkeypatch.setattr(_SQLiteTransaction, "prune_processed", timed)
    return seen


def _seed(path: Path, count: int, created_at: float) -> None:
    reply = b'{"status": 200, "item": {"id": "x", "properties": {"n": "' + b"v" * 300 + b'"}}}'
    store = SQLiteStore(path)
    try:
        with store.transaction() as tx:
            for n in range(count):
                tx.add_processed(ProcessedCommand(f"old-{n}", "u", reply, None, None, created_at))
    finally:
        store.close()


def _one_prune_alone(path: Path) -> tuple[float, float]:
    """What removing PRUNE_ROWS records costs by itself: the CPU time of the prune, and the
    wall-clock time of its transaction with the commit (its fsync); each the median of
    three."""
    cpu, wall = [], []
    for attempt in range(3):
        _seed(path.with_name(f"alone-{attempt}.db"), PRUNE_ROWS, 1.0)
        store = SQLiteStore(path.with_name(f"alone-{attempt}.db"))
        try:
            began = time.perf_counter()
            with store.transaction() as tx:
                started = time.thread_time()
                assert tx.prune_processed(before=2.0, limit=PRUNE_ROWS) == PRUNE_ROWS
                cpu.append(time.thread_time() - started)
            wall.append(time.perf_counter() - began)
        finally:
            store.close()
    return statistics.median(cpu), statistics.median(wall)


@pytest.fixture
def seeded_worker(amqp_url: str, prefix: str, tmp_path: Path, prunes: Prunes) -> Iterator[Path]:
    """A worker in this process on a SQLite file holding SEEDED records made long ago (its
    prunes counted from its start: it prunes once as it starts, tidying up)."""
    path = tmp_path / "seeded.db"
    _seed(path, SEEDED, 1.0)
    settings = Settings(amqp_url=amqp_url, prefix=prefix, authority="test-only",
                        store=f"sqlite:///{path}", dedup_window=3600)
    role = build_worker(settings, authority=TestOnlyAuthority())
    thread = threading.Thread(target=role.run, daemon=True)
    thread.start()
    try:
        wait_for_consumers(amqp_url, settings.names.commands, [])
        yield path
    finally:
        role.stop()
        thread.join(timeout=30)
        delete_prefix(amqp_url, prefix)


def _latencies(client: PlainClient, count: int, name: str) -> list[float]:
    latencies = []
    for n in range(count):
        started = time.perf_counter()
        assert client.send(CREATE, message_id=f"{name}-{n}").status == 200
        latencies.append(time.perf_counter() - started)
    return latencies


def test_pruning_never_holds_a_reply_back_by_more_than_one_batch_of_it(
    amqp_url: str, prefix: str, seeded_worker: Path, prunes: Prunes, tmp_path: Path
) -> None:
    batches = SEEDED // PRUNE_ROWS
    client = PlainClient(amqp_url, prefix)
    try:
        # One command at a time: each is a batch of its own, and each batch prunes. The
        # first pays for the worker's warm-up (its deployment key, its publish channel).
        assert client.send(CREATE, message_id="warm-up").status == 200
        pruning = _latencies(client, batches + 5, "pruning")
        assert prunes.removed == SEEDED
        after = _latencies(client, 30, "after")
    finally:
        client.close()
    removing = [(count, seconds) for count, seconds in prunes.calls if count]
    alone, committed = _one_prune_alone(tmp_path / "alone.db")
    # Bounded work: never more than one prune's rows in a batch, so 40 batches for 20,000.
    assert [count for count, _ in removing] == [PRUNE_ROWS] * batches
    # Bounded time: each prune step costs about what one prune of PRUNE_ROWS does alone
    # (not more with 20,000 waiting: it reads the oldest from an index), in CPU time.
    longest = max(seconds for _, seconds in removing)
    assert longest <= 4 * alone + 0.002, (longest, alone)
    # And the replies, in wall-clock time: held back by no more than one prune with its
    # commit, give or take the noise of a shared machine (a prune of all 20,000 at once
    # would take about 40 times that).
    slower = statistics.median(pruning) - statistics.median(after)
    assert slower <= 2 * committed + 0.005, (slower, committed)
    assert max(pruning) <= max(after) + 3 * committed + 0.100, (max(pruning), max(after))
    print(f"one prune of {PRUNE_ROWS} alone: {alone * 1000:.2f} ms CPU, {committed * 1000:.1f} "
          f"ms with its commit; the longest in a batch {longest * 1000:.2f} ms CPU; replies "
          f"p50 {statistics.median(pruning) * 1000:.1f} ms while pruning, "
          f"{statistics.median(after) * 1000:.1f} ms after; max {max(pruning) * 1000:.1f} / "
          f"{max(after) * 1000:.1f} ms")
