"""The event log format: whole lines, torn tails set aside, ids remembered."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from thelca.audit.chain import Chain, line_hash
from thelca.eventlog.format import LogLine, to_line
from thelca.eventlog.reader import LogSnapshot, read_all, read_log
from thelca.eventlog.segments import log_segments
from thelca.eventlog.torn import heal_torn_tail
from thelca.eventlog.writer import EventLogWriter
from thelca.restore.rebuild import restore
from thelca.restore.report import Problem
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


LINE_BREAKS = "\u2028\u2029\x85\n\r\x0b\x0c\x1c\x1d\x1e"  # every break splitlines() knows


def test_every_unicode_line_break_is_escaped_so_each_event_is_one_line_for_any_reader(
    tmp_path: Path,
) -> None:
    event = {**CREATED, "value": {**CREATED["value"],  # type: ignore[dict-item]
                                  "properties": {f"k{LINE_BREAKS}": f"a{LINE_BREAKS}b"}}}
    _, line = to_line(json.dumps(event, ensure_ascii=False).encode())
    assert b"\\u2028" in line and b"\\u2029" in line and b"\\u0085" in line
    assert len(line.decode().splitlines()) == 1
    assert json.loads(line) == event  # the same value
    # ...also when the chain has to re-encode the line (a "prev" anywhere in it)
    path = tmp_path / "events.log"
    writer = EventLogWriter(path)
    writer.append([to_line(json.dumps({**event, "prev": "x"}, ensure_ascii=False).encode()),
                   (None, line)])
    writer.close()
    text = path.read_bytes().decode()
    assert len(text.splitlines()) == 2 == len(list(read_all(path)))
    assert [line.event["value"] for line in read_all(path) if line.event] == [event["value"]] * 2


def test_a_line_without_line_breaks_is_left_as_orjson_wrote_it() -> None:
    _, line = to_line(json.dumps({**CREATED, "note": "caf\u00e9 \u2027 \u00c2"}).encode())
    assert line == orjson.dumps({**CREATED, "note": "caf\u00e9 \u2027 \u00c2"}) + b"\n"


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
    assert report.problems == [
        Problem("events.log", 2, "torn line (no newline at the end of the log)")]
    assert str(report.problems[0]) == (
        "events.log:2: torn line (no newline at the end of the log)")


# ---------------------------------------------------------------- segments


def _event_line(n: int) -> tuple[str | None, bytes]:
    return to_line(json.dumps({**CREATED, "id": f"e{n}"}).encode())


def _ids(lines: list[LogLine]) -> list[str]:
    return [str(line.event["id"]) for line in lines if line.event]


def test_the_writer_rotates_into_numbered_segments_and_read_all_reads_them_in_order(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.log"
    line_size = len(_event_line(0)[1])
    writer = EventLogWriter(path, max_bytes=2 * line_size)
    for n in range(7):
        writer.append([_event_line(n)])
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "events.log", "events.log.000001", "events.log.000002", "events.log.000003"]
    assert log_segments(path) == [tmp_path / f"events.log.00000{n}" for n in (1, 2, 3)]
    assert _ids(list(read_all(path))) == [f"e{n}" for n in range(7)]
    # each segment holds what was written before it reached the size; the live file the rest
    assert _ids(list(read_log(tmp_path / "events.log.000001"))) == ["e0", "e1"]
    assert _ids(list(read_log(path))) == ["e6"]


def test_segments_are_ordered_by_number_and_other_files_are_not_segments(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.log"
    for name in ("events.log.1000000", "events.log.000010", "events.log.000009",
                 "events.log.torn-20200218T163709Z", "events.log.12", "other.log.000001"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in log_segments(path)] == [
        "events.log.000009", "events.log.000010", "events.log.1000000"]


def test_a_crash_after_the_rename_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    writer = EventLogWriter(path, max_bytes=10)
    writer.append([_event_line(0), _event_line(1)])
    writer.close()
    path.rename(tmp_path / "events.log.000001")  # the logger died before a new live file
    again = EventLogWriter(path, max_bytes=10)
    assert "e0" in again and "e1" in again  # the redelivered events will be dropped
    assert again.set_aside is None
    again.append([_event_line(2)])
    again.close()
    assert _ids(list(read_all(path))) == ["e0", "e1", "e2"]


def test_a_crash_before_the_rename_rotates_at_the_next_batch(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(b"".join(_event_line(n)[1] for n in range(3)))
    writer = EventLogWriter(path, max_bytes=10)
    assert "e2" in writer
    writer.append([_event_line(3)])
    writer.close()
    assert [p.name for p in log_segments(path)] == ["events.log.000001"]
    assert _ids(list(read_all(path))) == ["e0", "e1", "e2", "e3"]


def test_the_ids_remembered_at_start_come_from_the_newest_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("thelca.eventlog.writer.RECENT_IDS", 3)
    path = tmp_path / "events.log"
    writer = EventLogWriter(path, max_bytes=1)  # one line per segment
    for n in range(5):
        writer.append([_event_line(n)])
    writer.close()
    again = EventLogWriter(path, max_bytes=1)
    assert [f"e{n}" in again for n in range(5)] == [False, False, True, True, True]


def test_a_failed_rotation_writes_nothing_so_the_batch_can_be_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "events.log"
    writer = EventLogWriter(path, max_bytes=1)
    writer.append([_event_line(0)])
    before = path.read_bytes()

    def refuse(source: object, target: object) -> None:
        raise OSError("disk trouble")

    monkeypatch.setattr("thelca.eventlog.writer.os.rename", refuse)
    with pytest.raises(OSError, match="disk trouble"):
        writer.append([_event_line(1)])
    assert path.read_bytes() == before and "e1" not in writer
    monkeypatch.undo()
    assert writer.append([_event_line(1)]) == 1  # the retry
    writer.close()
    assert _ids(list(read_all(path))) == ["e0", "e1"]


def test_a_snapshot_reads_the_log_as_it_was_despite_appends_and_rotations(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.log"
    writer = EventLogWriter(path, max_bytes=1)
    writer.append([_event_line(0)])
    writer.append([_event_line(1)])  # e0 went to segment 1; e1 is live
    snapshot = LogSnapshot(path)
    assert snapshot.files == ["events.log.000001", "events.log"]
    writer.append([_event_line(2)])  # rotates e1 into segment 2, e2 live
    writer.append([_event_line(3)])
    writer.close()
    assert _ids(list(snapshot.lines())) == ["e0", "e1"]
    assert snapshot.bytes_read == snapshot.total_bytes
    assert _ids(list(read_all(path))) == ["e0", "e1", "e2", "e3"]


def test_a_snapshot_made_while_the_log_rotated_twice_reads_no_line_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "events.log"
    writer = EventLogWriter(path, max_bytes=1)
    writer.append([_event_line(0)])
    writer.append([_event_line(1)])  # e0 in segment 1; e1 live, and opened by the snapshot
    real_log_segments = log_segments

    def rotate_twice_then_list(where: str | Path) -> list[Path]:
        monkeypatch.undo()  # the writer lists segments too
        writer.append([_event_line(2)])  # e1's file becomes segment 2
        writer.append([_event_line(3)])  # e2's file becomes segment 3
        return real_log_segments(where)

    monkeypatch.setattr("thelca.eventlog.reader.log_segments", rotate_twice_then_list)
    snapshot = LogSnapshot(path)
    writer.close()
    assert snapshot.files == ["events.log.000001", "events.log.000002", "events.log.000003"]
    assert _ids(list(snapshot.lines())) == ["e0", "e1", "e2"]


def test_a_snapshot_cuts_a_line_still_being_written_and_reports_it(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(_event_line(0)[1] + b'{"half')
    lines = list(read_all(path))
    assert _ids(lines) == ["e0"]
    assert [(line.where, line.problem) for line in lines if line.problem] == [
        ("events.log:2", "torn line (no newline at the end of the log)")]


def test_reading_a_log_that_does_not_exist_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no event log"):
        list(read_all(tmp_path / "nothing.log"))


def test_a_log_of_segments_only_is_read(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    (tmp_path / "events.log.000001").write_bytes(_event_line(0)[1])
    assert _ids(list(read_all(path))) == ["e0"]



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
        Problem("events.log", 4, "item i1 is updated to version 5 but the log never reached "
                "version 4")]
    assert [(s.item.id, s.version) for s in store.items()] == [("i1", 3)]


class _DiskFillsUp:
    """The writer's live file, until the disk is full halfway through a line (ENOSPC)."""

    def __init__(self, file: Any, whole_lines: int) -> None:
        self.file = file
        self.whole_lines = whole_lines

    def write(self, data: bytes) -> int:
        if not self.whole_lines:
            self.file.write(data[: len(data) // 2])
            self.file.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        self.whole_lines -= 1
        return int(self.file.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


@pytest.mark.parametrize("failure", ["fsync", "write"])
def test_a_failed_write_or_fsync_leaves_no_trace_so_the_retry_writes_the_batch_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str,
) -> None:
    path = tmp_path / "events.log"
    writer = EventLogWriter(path)
    writer.append([_event_line(0)])
    before = path.read_bytes()
    batch = [_event_line(1), _event_line(2)]
    if failure == "fsync":
        real_fsync, failures = os.fsync, [OSError(errno.EIO, "Input/output error")]

        def fsync_once(fd: int) -> None:
            if failures:
                raise failures.pop()
            real_fsync(fd)

        monkeypatch.setattr("thelca.eventlog.writer.os.fsync", fsync_once)
        with pytest.raises(OSError, match="Input/output"):
            writer.append(batch)
    else:
        writer._file = _DiskFillsUp(writer._file, whole_lines=1)  # type: ignore[assignment]
        with pytest.raises(OSError, match="No space"):
            writer.append(batch)
    assert path.read_bytes() == before  # nothing of the failed batch, no partial line
    assert "e1" not in writer and "e2" not in writer  # so the redelivery is not dropped
    assert writer.append(batch) == 2  # the redelivered batch
    writer.close()
    chain = Chain(line_hash(before[:-1]), 1)  # the chain went back with the file
    assert path.read_bytes() == before + chain.link(batch[0][1]) + chain.link(batch[1][1])


def test_a_cut_back_that_fails_too_is_done_before_the_next_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "events.log"
    writer = EventLogWriter(path)
    writer.append([_event_line(0)])
    before = path.read_bytes()
    real_fsync, real_open = os.fsync, open
    failures = [OSError(errno.EIO, "Input/output error")]

    def fsync_once(fd: int) -> None:
        if failures:
            raise failures.pop()
        real_fsync(fd)

    def open_failing_to_cut(file: Path, mode: str = "r") -> Any:
        if mode == "rb+" and not failures:
            monkeypatch.undo()  # fails once
            raise OSError(errno.EIO, "Input/output error")
        return real_open(file, mode)

    monkeypatch.setattr("thelca.eventlog.writer.os.fsync", fsync_once)
    monkeypatch.setattr("thelca.eventlog.writer.open", open_failing_to_cut, raising=False)
    with pytest.raises(OSError, match="Input/output"):
        writer.append([_event_line(1)])
    linked = Chain(line_hash(before[:-1]), 1).link(_event_line(1)[1])
    assert path.read_bytes() == before + linked  # flushed, not fsynced, not cut
    assert writer.append([_event_line(1)]) == 1
    writer.close()
    assert path.read_bytes() == before + linked


def test_the_logger_reads_only_the_newest_lines_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Start-up must not grow with the log: ids are read from the end, as far as needed."""
    monkeypatch.setattr("thelca.eventlog.writer.RECENT_IDS", 3)
    path = tmp_path / "events.log"
    path.write_bytes(b"".join(_event_line(n)[1] for n in range(1000)))
    writer = EventLogWriter(path)
    assert writer.lines_at_start == 3
    assert all(f"e{n}" in writer for n in (997, 998, 999))
    assert "e996" not in writer
    writer.close()


def test_lines_are_read_backwards_across_block_boundaries(tmp_path: Path) -> None:
    from thelca.eventlog.reader import lines_backwards

    path = tmp_path / "lines"
    lines = [f"line {n} {'x' * (n % 7)}".encode() for n in range(200)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert list(lines_backwards(path, block=16)) == list(reversed(lines))
