"""Restore and verify of links, on logs written by hand (the live format and the original
server's); a live log with links is restored in tests/integration/test_restore.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_restore import ORIGINAL, WithoutBulkLoad
from thelca.domain.model import Link, StoredLink
from thelca.restore.compare import verify
from thelca.restore.rebuild import restore
from thelca.stores import ItemStore
from thelca.stores.memory import MemoryStore
from thelca.stores.sqlite import SQLiteStore
from thelca_client.contract import parse_time

USER = "a-test-only-id-abcd"
CREATED_AT = "2026-01-01T00:00:00.000000+00:00"


@pytest.fixture(params=["sqlite", "sqlite-transactions", "memory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ItemStore]:
    made: ItemStore
    if request.param == "memory":
        made = MemoryStore()
    else:
        made = SQLiteStore(tmp_path / "restored.db")
        if request.param == "sqlite-transactions":
            made = WithoutBulkLoad(made)
    yield made
    made.close()


def when(n: int) -> str:
    return f"2026-01-01T00:00:{n:02d}.000000+00:00"


def item_created(item_id: str, n: int) -> dict[str, Any]:
    return {"time": when(n), "type": "Item created", "user": USER, "id": f"e-{n}",
            "version": 1, "value": {"id": item_id, "created_at": when(n), "created_by": USER,
                                    "properties": {}}}


def link_event(kind: str, link_id: str, moment: int, version: int | None = None,
               source: str = "a", target: str = "b", **properties: Any) -> dict[str, Any]:
    value: Any = {"id": link_id, "created_at": CREATED_AT, "created_by": USER,
                  "source": source, "target": target, "properties": properties}
    if kind in ("Link read", "Link deleted"):
        value = link_id
    event: dict[str, Any] = {"time": when(moment), "type": kind, "user": USER,
                             "value": value, "id": f"e-{moment}"}
    if version is not None:
        event["version"] = version
    return event


def write(path: Path, *events: dict[str, Any] | bytes) -> Path:
    with open(path, "wb") as file:
        for event in events:
            file.write(event if isinstance(event, bytes) else json.dumps(event).encode() + b"\n")
    return path


def links(restored: ItemStore) -> list[StoredLink]:
    return list(restored.links())


def the_link(link_id: str, version: int, source: str = "a", target: str = "b",
             **properties: Any) -> StoredLink:
    return StoredLink(Link(link_id, CREATED_AT, USER, source, target, properties), version)


def test_a_live_log_s_links_are_restored_at_their_versions(
    backend: ItemStore, tmp_path: Path
) -> None:
    log = write(
        tmp_path / "events.log",
        item_created("a", 1), item_created("b", 2), item_created("c", 3),
        link_event("Link created", "l1", 4, 1, type="BLOCKS"),
        link_event("Link created", "l2", 5, 1),
        link_event("Link read", "l1", 6, 1),
        link_event("Link updated", "l1", 7, 2, source="c", type="RELATES TO"),
        link_event("Link search", "l1", 8),
        link_event("Link deleted", "l2", 9, 1),
        link_event("Link created", "l3", 10, 1),
        link_event("Link updated", "l3", 11, 2, n=2),
        link_event("Link updated", "l3", 12, 3, n=3),
    )
    report = restore(log, backend)
    assert report.problems == []
    assert (report.applied, report.items, report.links) == (10, 3, 2)
    assert report.skipped == {"Link read": 1, "Link search": 1}
    assert links(backend) == [the_link("l1", 2, "c", "b", type="RELATES TO"),
                            the_link("l3", 3, n=3)]
    assert verify(log, backend).differences == []


def test_until_restores_the_links_as_they_were_then(
    backend: ItemStore, tmp_path: Path
) -> None:
    log = write(tmp_path / "events.log",
                link_event("Link created", "l1", 1, 1),
                link_event("Link updated", "l1", 2, 2, n=2),
                link_event("Link deleted", "l1", 3, 2),
                link_event("Link created", "l2", 4, 1))
    restore(log, backend, until=parse_time(when(2)))
    assert links(backend) == [the_link("l1", 2, n=2)]


def test_updates_and_deletes_logged_ahead_of_their_version_wait_for_it(
    backend: ItemStore, tmp_path: Path
) -> None:
    """Several workers publish after their own commits: the log is not in version order."""
    log = write(tmp_path / "events.log",
                link_event("Link updated", "l1", 1, 3, n=3),   # before its create, even
                link_event("Link created", "l1", 2, 1),
                link_event("Link created", "l2", 3, 1),
                link_event("Link deleted", "l2", 4, 2),        # deleted at version 2...
                link_event("Link updated", "l1", 5, 2, n=2),
                link_event("Link updated", "l2", 6, 2, n=2))   # ...which comes later
    report = restore(log, backend)
    assert report.problems == []
    assert links(backend) == [the_link("l1", 3, n=3)]


def test_link_lines_that_contradict_the_log_are_reported_and_skipped(
    backend: ItemStore, tmp_path: Path
) -> None:
    log = write(
        tmp_path / "events.log",
        link_event("Link created", "l1", 1, 1),
        link_event("Link created", "l1", 2, 1),                      # created twice
        link_event("Link updated", "ghost", 3),                      # never created
        link_event("Link deleted", "ghost", 4),                      # never created
        link_event("Link updated", "l1", 5, 5),                      # version 2..4 never come
        {"time": when(6), "type": "Link created", "value": {"id": "l9"}},  # no ends
        {"time": when(7), "type": "Link deleted", "value": 5},
        link_event("Link deleted", "l1", 8),
        link_event("Link updated", "l1", 9),                         # after its delete
        link_event("Link created", "l1", 10),                        # again, after it
    )
    report = restore(log, backend)
    assert links(backend) == []
    why = {problem.line: problem.why for problem in report.problems}
    assert sorted(why) == [2, 3, 4, 5, 6, 7, 9, 10]
    assert "link l1 is created twice" in why[2]
    assert "link ghost is updated before it is created" in why[3]
    assert "link ghost is deleted before it is created" in why[4]
    assert "never reached version 4" in why[5]
    assert "Link created event is malformed" in why[6]
    assert "Link deleted event is malformed: value is not a link id" in why[7]
    assert "link l1 is updated after it is deleted" in why[9]
    assert "link l1 is created twice" in why[10]


def test_the_original_server_s_link_lines_restore_in_both_of_its_shapes(
    backend: ItemStore, tmp_path: Path
) -> None:
    """Its first links kept source and target in properties and logged the whole link when
    deleted; later ones have source and target fields and log the deleted link's id."""
    early = {"created_at": CREATED_AT, "created_by": USER, "id": "early",
             "properties": {"source": "a", "target": "b", "type": "BLOCKS"}}
    later = {"created_at": CREATED_AT, "created_by": USER, "id": "later",
             "source": "b", "target": "a", "properties": None}
    log = write(tmp_path / "events.log",
                {"time": when(1), "type": "Link created", "user": USER, "value": early},
                {"time": when(2), "type": "Link created", "user": USER, "value": later},
                {"time": when(3), "type": "Link created", "user": USER,
                 "value": {**early, "id": "early-gone"}},
                {"time": when(4), "type": "Link deleted", "user": USER,
                 "value": {**early, "id": "early-gone"}},
                {"time": when(5), "type": "Link created", "user": USER,
                 "value": {**later, "id": "later-gone"}},
                {"time": when(6), "type": "Link deleted", "user": USER, "value": "later-gone"},
                {"time": when(7), "type": "Link search", "user": USER,
                 "value": ["later"]})
    report = restore(log, backend)
    assert report.problems == []
    assert links(backend) == [
        StoredLink(Link("early", CREATED_AT, USER, "a", "b",
                        {"source": "a", "target": "b", "type": "BLOCKS"}), 1),
        StoredLink(Link("later", CREATED_AT, USER, "b", "a", {}), 1)]


def test_the_original_server_s_log_leaves_no_link_and_verifies(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    report = restore(ORIGINAL, store)
    assert report.links == 0 and links(store) == []
    assert verify(ORIGINAL, store).differences == []
    store.close()


def test_verify_reports_a_missing_an_extra_and_a_different_link(tmp_path: Path) -> None:
    log = write(tmp_path / "events.log",
                link_event("Link created", "l1", 1, 1),
                link_event("Link created", "l2", 2, 1),
                link_event("Link created", "l3", 3, 1, type="BLOCKS"),
                link_event("Link updated", "l3", 4, 2, type="RELATES TO"))
    store = SQLiteStore(tmp_path / "store.db")
    restore(log, store)
    with store.transaction() as tx:
        tx.delete_link("l1", 1)                                           # missing
        tx.add_link(Link("l0", CREATED_AT, USER, "a", "b", {}))           # extra
        tx.replace_link(Link("l2", CREATED_AT, USER, "a", "c", {}), 2)    # different
    store._db.execute("UPDATE links SET properties = ? WHERE id = 'l3'",  # behind its back
                      (b'{"type":"BLOCKS"}',))
    report = verify(log, store)
    assert [str(d) for d in report.differences] == [
        "extra link l0: version 1 in the store, not in the log",
        "missing link l1: version 1 in the log, not in the store",
        "different link l2: version 1 in the log, 2 in the store; other target",
        "different link l3: other properties",
    ]
    assert (report.log_links, report.store_links) == (3, 3)
    store.close()


@pytest.mark.parametrize("value", ["not a link", {"id": "l1"}, [1]])
def test_verify_of_a_log_with_broken_link_lines_still_compares_the_rest(
    tmp_path: Path, value: Any
) -> None:
    log = write(tmp_path / "events.log",
                link_event("Link created", "l2", 1, 1),
                {"time": when(2), "type": "Link updated", "user": USER, "value": value})
    store = SQLiteStore(tmp_path / "store.db")
    restore(log, store)
    report = verify(log, store)
    assert report.differences == [] and len(report.log.problems) == 1
    store.close()
