"""The event log format: whole lines, torn tails set aside, ids remembered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from thelca.eventlog import EventLogWriter, heal_torn_tail, read_log, to_line
from thelca.restore import restore
from thelca.stores.memory import MemoryStore

CREATED = {"time": "2020-02-18T16:37:09.654949+00:00", "type": "Item created", "user": "u",
           "value": {"id": "i1", "created_at": "2020-02-18T16:37:09.654917+00:00",
                     "created_by": "u", "properties": {"type": "STORY"}}, "id": "e1"}


def test_a_body_with_raw_newlines_is_written_on_one_compact_line() -> None:
    event_id, line = to_line(json.dumps(CREATED, indent=2).encode())
    assert event_id == "e1"
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert json.loads(line) == CREATED
    assert b": " not in line


@pytest.mark.parametrize("body", [b"not json", b"[1]", b'"x"', b"", b"\xff"])
def test_a_body_that_is_not_a_json_object_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError, match="not"):
        to_line(body)


def test_appended_lines_are_read_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    writer = EventLogWriter(path)
    lines = [to_line(json.dumps({**CREATED, "id": f"e{n}"}).encode()) for n in range(3)]
    assert writer.append(lines) == 3
    writer.close()
    assert [line.event and line.event["id"] for line in read_log(path)] == ["e0", "e1", "e2"]


def test_the_writer_remembers_ids_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    first = EventLogWriter(path)
    first.append([to_line(json.dumps(CREATED).encode())])
    first.close()
    again = EventLogWriter(path)
    assert "e1" in again
    assert "e2" not in again
    assert again.lines_at_start == 1


def test_a_torn_tail_is_set_aside_and_the_log_continues_on_a_fresh_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.log"
    whole = json.dumps(CREATED).encode() + b"\n"
    path.write_bytes(whole + b'{"time": "2020-02-18T16:3')
    writer = EventLogWriter(path)
    assert writer.set_aside is not None
    assert writer.set_aside.read_bytes() == b'{"time": "2020-02-18T16:3'
    writer.append([to_line(json.dumps({**CREATED, "id": "e2"}).encode())])
    writer.close()
    assert [line.problem for line in read_log(path)] == [None, None]
    assert path.read_bytes().startswith(whole)


def test_a_log_without_a_tear_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(json.dumps(CREATED).encode() + b"\n")
    assert heal_torn_tail(path) is None
    assert list(tmp_path.iterdir()) == [path]


def test_a_log_that_is_one_torn_line_is_emptied_and_kept_aside(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(b'{"torn')
    aside = heal_torn_tail(path)
    assert aside is not None and aside.read_bytes() == b'{"torn'
    assert path.read_bytes() == b""


def test_reading_reports_torn_and_unreadable_lines_with_their_numbers(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(json.dumps(CREATED).encode() + b"\nnot json\n[1]\n{\"torn")
    lines = list(read_log(path))
    assert [(line.number, line.problem) for line in lines] == [
        (1, None), (2, "not JSON"), (3, "not a JSON object"),
        (4, "torn line (no newline at the end of the log)"),
    ]


def test_restore_reports_and_skips_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(json.dumps(CREATED).encode() + b"\n{\"torn")
    store = MemoryStore()
    report = restore(path, store)
    assert report.applied == 1 and report.items == 1
    assert report.problems == [(2, "torn line (no newline at the end of the log)")]


def _created(item_id: str, line_id: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(json.dumps(CREATED))
    event["value"]["id"], event["id"] = item_id, line_id
    return event


def _updated(version: int, line_id: str, item_id: str = "i1") -> dict[str, Any]:
    event = _created(item_id, line_id)
    event["value"]["properties"] = {"v": version}
    return {**event, "type": "Item updated", "version": version}


def _write(path: Path, events: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(event) + "\n" for event in events))


def test_restore_applies_updates_that_arrived_out_of_version_order(tmp_path: Path) -> None:
    """Several workers: each publishes after its own commit, so the log may swap versions."""
    path = tmp_path / "events.log"
    _write(path, [_created("i1", "c1"), _updated(3, "u3"), _updated(4, "u4"),
                  _updated(2, "u2"), _updated(2, "w2", "i2"), _created("i2", "c2")])
    store = MemoryStore()
    report = restore(path, store)
    assert report.problems == []
    assert report.applied == 6
    assert [(s.item.id, s.version, s.item.properties) for s in store.items()] == [
        ("i1", 4, {"v": 4}), ("i2", 2, {"v": 2})]


def test_restore_reports_an_update_whose_earlier_version_never_came(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    _write(path, [_created("i1", "c1"), _updated(3, "u3"), _updated(2, "u2"),
                  _updated(5, "u5")])
    store = MemoryStore()
    report = restore(path, store)
    assert report.problems == [
        (4, "item i1 is updated to version 5 but the log never reached version 4")]
    assert [(s.item.id, s.version) for s in store.items()] == [("i1", 3)]
