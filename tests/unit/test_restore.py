"""Restore and verify on logs written by hand: the original server's format, and broken logs.

Logs written by the live system are restored in tests/integration/test_restore.py.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing
from pathlib import Path
from typing import Any

import pytest

from thelca.cli.main import main
from thelca.domain.model import Item, Link, StoredItem, StoredLink
from thelca.errors import ChainBroken
from thelca.eventlog.writer import EventLogWriter
from thelca.restore.compare import verify
from thelca.restore.fold import AFTER_UNTIL
from thelca.restore.rebuild import restore
from thelca.restore.report import Problem
from thelca.stores import ItemStore, StoreTransaction
from thelca.stores.base import OutboxEvent
from thelca.stores.memory import MemoryStore
from thelca.stores.sqlite import SQLiteStore
from thelca_client.contract import parse_time

ORIGINAL = Path(__file__).resolve().parents[1] / "data" / "original-server-event-log"
A = "0a6f1c7e-5b1d-4c3e-9f61-1f7d2a9b8c01"
B = "1b7e2d8f-6c2e-4d4f-8a72-2e8e3b0c9d12"
C = "2c8f3e90-7d3f-4e50-9b83-3f9f4c1dae23"
D = "3d904fa1-8e40-4f61-8c94-40a05d2ebf34"
USER = "a-test-only-id-abcd"
LINK = "4ea150b2-9f51-4072-9da5-51b16e3fc045"
HISTORY = {"Server started": 2, "Server stopped": 2, "Item read": 1, "Service read": 1,
           "Item search": 1, "Link read": 1, "Link search": 1}


class WithoutBulkLoad:
    """A real store seen only through the ItemStore interface (as a new backend would be)."""

    def __init__(self, store: ItemStore) -> None:
        self.inner = store
        self.url = store.url
        self.keeps_nul = store.keeps_nul

    def transaction(self, *, deferred: bool = False) -> AbstractContextManager[StoreTransaction]:
        return self.inner.transaction(deferred=deferred)

    def pending_outbox(self, limit: int = 1000) -> list[OutboxEvent]:
        return self.inner.pending_outbox(limit)

    def items(self) -> Iterator[StoredItem]:
        return self.inner.items()

    def count_items(self) -> int:
        return self.inner.count_items()

    def links(self) -> Iterator[StoredLink]:
        return self.inner.links()

    def count_links(self) -> int:
        return self.inner.count_links()

    def oldest_processed(self) -> float | None:
        return self.inner.oldest_processed()

    def ping(self) -> None:
        self.inner.ping()

    def deployment_key(self) -> bytes:
        return self.inner.deployment_key()

    def clear(self) -> None:
        self.inner.clear()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(params=["sqlite-bulk", "sqlite-transactions", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ItemStore]:
    backend: ItemStore
    if request.param == "memory":
        backend = MemoryStore()
    else:
        backend = SQLiteStore(tmp_path / "restored.db")
        if request.param == "sqlite-transactions":
            backend = WithoutBulkLoad(backend)
    yield backend
    backend.close()


def versions(store: ItemStore) -> dict[str, int]:
    return {s.item.id: s.version for s in store.items()}


@pytest.mark.parametrize("flush_items", [1, 2, 1000])
def test_the_original_servers_log_restores_to_its_end(store: ItemStore, flush_items: int) -> None:
    report = restore(ORIGINAL, store, flush_items=flush_items)
    # 8 item events and 3 link events: its one link was created, updated, then deleted
    assert (report.lines, report.applied, report.items, report.links) == (20, 11, 4, 0)
    assert dict(report.skipped) == HISTORY
    assert report.problems == []
    assert versions(store) == {A: 2, B: 4, C: 1, D: 1}
    assert list(store.links()) == []
    items = {s.item.id: s.item for s in store.items()}
    assert items[A] == Item(A, "2020-02-24T09:01:00.099990+00:00", USER,
                            {"type": "STORY", "title": "first", "status": "DONE"})
    assert items[B].properties == {}  # the last update said properties: null
    assert items[C].properties == {}  # created with properties: null


def test_the_original_servers_log_restores_to_the_end_of_its_first_day(
    store: ItemStore,
) -> None:
    report = restore(ORIGINAL, store, until=parse_time("2020-02-24T23:59:59Z"))
    assert versions(store) == {A: 1, B: 2, C: 1}
    assert report.skipped[AFTER_UNTIL] == 6  # 4 item events, a link update and its delete
    assert report.applied == 5 and report.items == 3 and report.links == 1
    items = {s.item.id: s.item for s in store.items()}
    assert items[A].properties == {"type": "STORY", "title": "first"}
    assert items[B].properties == {"type": "BUG"}
    # that server's first links kept source and target in properties: both are read there
    assert list(store.links()) == [StoredLink(Link(
        LINK, "2020-02-24T09:07:00.799990+00:00", USER, A, B,
        {"source": A, "target": B, "type": "BLOCKS"}), 1)]


def test_until_is_inclusive_to_the_microsecond(store: ItemStore) -> None:
    restore(ORIGINAL, store, until=parse_time("2020-02-24T09:03:00.400000+00:00"))
    assert versions(store) == {A: 1, B: 2}


def test_until_before_the_first_event_restores_nothing(store: ItemStore) -> None:
    report = restore(ORIGINAL, store, until=parse_time("2019-01-01T00:00:00+00:00"))
    assert report.items == 0 and report.applied == 0 and report.skipped[AFTER_UNTIL] == 11


def test_a_time_without_offset_is_refused() -> None:
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_time("2020-02-24T23:59:59")
    with pytest.raises(ValueError):
        parse_time("yesterday")


def _event(kind: str, item_id: str, n: int, version: int | None = None,
           **value: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "time": f"2026-01-01T00:00:{n:02d}.000000+00:00", "type": kind, "user": USER,
        "value": {"id": item_id, "created_at": "2026-01-01T00:00:00.000000+00:00",
                  "created_by": USER, "properties": {"n": n}, **value},
        "id": f"event-{n}"}
    if version is not None:
        event["version"] = version
    return event


def _write(path: Path, *lines: dict[str, Any] | bytes) -> Path:
    with open(path, "wb") as file:
        for line in lines:
            file.write(line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n")
    return path


def test_lines_that_contradict_the_log_are_reported_with_their_numbers_and_skipped(
    store: ItemStore, tmp_path: Path,
) -> None:
    log = _write(
        tmp_path / "events.log",
        _event("Item created", "x", 1, 1),
        _event("Item updated", "ghost", 2, 2),               # never created
        _event("Item created", "x", 3, 1),                   # created twice
        _event("Item updated", "x", 4, 2),
        _event("Item updated", "x", 5, 2),                   # version 2 again
        b"not json\n",
        {"time": "2026-01-01T00:00:07+00:00", "type": "Item created", "value": "x"},
        b"[1, 2]\n",
        _event("Item updated", "x", 9, 3),
        b'{"time": "2026-01-01T00:00:10+00:00", "type": "Item upd',  # torn: no newline
    )
    report = restore(log, store)
    assert versions(store) == {"x": 3}
    assert [s.item.properties for s in store.items()] == [{"n": 9}]
    assert report.applied == 3
    assert [(p.file, p.line) for p in report.problems] == [
        ("events.log", n) for n in (2, 3, 5, 6, 7, 8, 10)]
    why = [p.why for p in report.problems]
    assert "updated before it is created" in why[0]
    assert "created twice" in why[1]
    assert "logged at version 2 but the log so far makes it version 3" in why[2]
    assert why[3:] == ["not JSON", "Item created event is malformed: value is not an item",
                       "not a JSON object", "torn line (no newline at the end of the log)"]


def test_restore_reads_every_segment_then_the_live_file(store: ItemStore, tmp_path: Path) -> None:
    log = tmp_path / "thelca-events.log"
    _write(tmp_path / "thelca-events.log.000001", _event("Item created", "x", 1, 1))
    _write(tmp_path / "thelca-events.log.000002", _event("Item updated", "x", 2, 2),
           b"oops\n")
    _write(log, _event("Item updated", "x", 3, 3))
    report = restore(log, store)
    assert versions(store) == {"x": 3}
    assert report.problems == [Problem("thelca-events.log.000002", 2, "not JSON")]


def test_progress_reaches_the_size_of_the_log(tmp_path: Path) -> None:
    log = shutil.copy(ORIGINAL, tmp_path / "events.log")
    seen: list[tuple[int, int]] = []
    restore(log, MemoryStore(), progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (ORIGINAL.stat().st_size, ORIGINAL.stat().st_size)


def test_a_missing_log_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        restore(tmp_path / "nothing.log", MemoryStore())


# ---------------------------------------------------------------- verify


def test_verify_finds_nothing_when_the_store_was_restored_from_the_log(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "restored.db")
    restore(ORIGINAL, store)
    report = verify(ORIGINAL, store)
    assert report.differences == []
    assert (report.log_items, report.store_items) == (4, 4)
    store.close()


def test_verify_finds_every_difference_planted_in_the_store(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "restored.db")
    restore(ORIGINAL, store)
    with store.transaction() as tx:
        tx.replace_item(Item(A, "2020-02-24T09:01:00.099990+00:00", USER, {"planted": True}), 3)
        tx.add_item(Item("zz-extra", "2026-01-01T00:00:00+00:00", USER, {}))
    # behind the interface's back, as a bad hand would
    store._db.execute("UPDATE items SET created_by = 'someone-else', version = 2 WHERE id = ?",
                      (C,))
    store._db.execute("DELETE FROM items WHERE id = ?", (D,))
    report = verify(ORIGINAL, store)
    assert [str(d) for d in report.differences] == [
        f"different {A}: version 2 in the log, 3 in the store; other properties",
        f"different {C}: version 1 in the log, 2 in the store; other created_by",
        f"missing {D}: version 1 in the log, not in the store",
        "extra zz-extra: version 1 in the store, not in the log",
    ]
    store.close()


def test_verify_until_compares_with_the_state_at_that_moment(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "restored.db")
    until = parse_time("2020-02-24T23:59:59Z")
    restore(ORIGINAL, store, until=until)
    assert verify(ORIGINAL, store, until=until).differences == []
    later = verify(ORIGINAL, store).differences
    assert {(d.record, d.kind) for d in later} == {
        ("item", "different"), ("item", "missing"), ("link", "extra")}  # deleted the next day
    store.close()


@pytest.mark.parametrize(("logged", "stored"), [
    (True, 1), (1, 1.0), (False, 0), ({"x": 1}, {"x": True}), ([1], [1.0]),
])
def test_verify_tells_json_values_apart_that_python_takes_as_equal(
    tmp_path: Path, logged: Any, stored: Any,
) -> None:
    log = _write(tmp_path / "events.log",
                 _event("Item created", A, 1, version=1, properties={"a": logged, "b": "k"}))
    store = SQLiteStore(tmp_path / "store.db")
    restore(log, store)
    assert verify(log, store).differences == []
    store._db.execute("UPDATE items SET properties = ? WHERE id = ?",  # behind its back
                      (json.dumps({"b": "k", "a": stored}).encode(), A))
    assert [str(d) for d in verify(log, store).differences] == [
        f"different {A}: other properties"]
    store.close()


@pytest.mark.parametrize("command", ["restore", "verify"])
def test_a_segment_that_cannot_be_read_exits_3_saying_which(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str,
) -> None:
    log = _write(tmp_path / "events.log", _event("Item created", A, 1))
    (tmp_path / "events.log.000001").mkdir()  # unreadable as a file, even for root
    store = tmp_path / "store.db"
    SQLiteStore(store).close()
    assert main([command, "--log", str(log), "--store", f"sqlite:///{store}"]) == 3
    error = capsys.readouterr().err
    assert f"thelca {command}:" in error and "events.log.000001" in error
    assert "Traceback" not in error and "the store" not in error  # the log's fault


# ---------------------------------------------------------------- the hash chain


def _chained(log: Path, events: list[dict[str, Any]], max_bytes: int | None = None) -> Path:
    """The events written by the real log writer, so every line carries its prev."""
    writer = EventLogWriter(log, max_bytes=max_bytes)
    for event in events:
        writer.append([(event["id"], json.dumps(event).encode() + b"\n")])
    writer.close()
    return log


def _history(updates: int) -> list[dict[str, Any]]:
    return [_event("Item created", "x", 0, 1)] + [
        _event("Item updated", "x", n, n + 1) for n in range(1, updates + 1)]


def _edit(path: Path, number: int, old: bytes, new: bytes) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    assert old in lines[number - 1]
    lines[number - 1] = lines[number - 1].replace(old, new)
    path.write_bytes(b"".join(lines))


def test_restore_follows_an_unbroken_chain_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    log = _chained(tmp_path / "events.log", _history(5), max_bytes=600)
    assert log.with_name("events.log.000001").exists()  # across segments
    store = tmp_path / "store.db"
    assert main(["restore", "--log", str(log), "--store", f"sqlite:///{store}"]) == 0
    assert "hash chain:       unbroken\n" in capsys.readouterr().out
    with closing(SQLiteStore(store)) as restored:
        assert versions(restored) == {"x": 6}
        assert "prev" not in next(restored.items()).item.properties


def test_restore_refuses_a_broken_chain_and_leaves_the_store_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    log = _chained(tmp_path / "events.log", _history(5))
    _edit(log, 3, b'"n": 2', b'"n": 99')  # an edited value: the chain breaks at line 4
    store = tmp_path / "store.db"
    assert main(["restore", "--log", str(log), "--store", f"sqlite:///{store}"]) == 1
    error = capsys.readouterr().err
    assert "hash chain is broken at events.log:4: the chain breaks" in error
    assert "--accept-broken-chain" in error and "Nothing was restored" in error
    with closing(SQLiteStore(store)) as restored:
        assert restored.count_items() == 0


def test_restore_stops_before_the_block_where_the_chain_breaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the command line empties again: the blocks before the break may be written."""
    monkeypatch.setattr("thelca.eventlog.reader.BLOCK", 400)  # a block or two per line
    log = _chained(tmp_path / "events.log", _history(6))
    lines = log.read_bytes().splitlines(keepends=True)
    del lines[5]  # line 6 removed: the chain breaks at what is now line 6
    log.write_bytes(b"".join(lines))
    store = MemoryStore()
    with pytest.raises(ChainBroken) as broken:
        restore(log, store, flush_items=1)
    assert broken.value.where.startswith("events.log:6: the chain breaks")
    assert 0 < max(versions(store).values()) < 6  # flushed before the break, not after


def test_restore_accepts_a_broken_chain_when_told_and_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    log = _chained(tmp_path / "events.log", _history(5))
    lines = log.read_bytes().splitlines(keepends=True)
    lines[2], lines[3] = lines[3], lines[2]  # two lines swapped
    log.write_bytes(b"".join(lines))
    store = tmp_path / "store.db"
    assert main(["restore", "--log", str(log), "--store", f"sqlite:///{store}",
                 "--accept-broken-chain"]) == 0  # versions out of order are held and applied
    out, error = capsys.readouterr()
    assert "hash chain:       BROKEN at 3 places, the first at events.log:3" in out
    assert "chain break: events.log:4" in out
    assert "warning: the event log's hash chain is broken at 3 places" in error
    with closing(SQLiteStore(store)) as restored:
        assert versions(restored) == {"x": 6}


def test_a_log_without_a_chain_restores_as_before_and_one_continued_by_the_logger_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    log = Path(shutil.copy(ORIGINAL, tmp_path / "events.log"))
    store = tmp_path / "store.db"
    assert main(["restore", "--log", str(log), "--store", f"sqlite:///{store}"]) == 0
    assert "hash chain:       none (an original server's log)" in capsys.readouterr().out
    _chained(log, [_event("Item updated", A, 50, 3)])  # the logger goes on after it
    assert main(["restore", "--log", str(log), "--store", f"sqlite:///{store}",
                 "--force"]) == 0
    assert "hash chain:       unbroken after 20 lines without one" in capsys.readouterr().out
    with closing(SQLiteStore(store)) as restored:
        assert versions(restored)[A] == 3


def test_a_big_log_has_its_chain_followed_beside_the_fold_and_refused_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("thelca.restore.chainwatch.BESIDE_BYTES", 0)  # every log is big
    log = _chained(tmp_path / "events.log", _history(5))
    report = restore(log, MemoryStore())
    assert (report.chain_lines, report.chain_break_count) == (6, 0)
    _edit(log, 2, b'"n": 1', b'"n": 7')
    store = MemoryStore()
    with pytest.raises(ChainBroken) as broken:
        restore(log, store)
    assert broken.value.where.startswith("events.log:3: the chain breaks")
    assert versions(store) == {"x": 6}  # known only once the fold is done: the caller empties
    database = tmp_path / "store.db"
    assert main(["restore", "--log", str(log), "--store", f"sqlite:///{database}"]) == 1
    assert "hash chain is broken at events.log:3" in capsys.readouterr().err
    with closing(SQLiteStore(database)) as restored:
        assert restored.count_items() == 0
    assert restore(log, MemoryStore(), accept_broken_chain=True).chain_break_count == 1
