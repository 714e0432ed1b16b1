"""The replay's seek through the log's index gives exactly what a full scan gives, for less.

Real files: a log in segments and a live file, whose times are out of order in
places (several workers), with lines that have no time, a time that cannot be
read, a naive time, other offsets, no type, lines that are not JSON, a line
longer than a chunk and a torn tail. Every request is answered twice, on a
cold index and on a warm one, and compared with a full scan written here from
the contract's words. The index is extended as the live file grows, kept when
the live file becomes a segment, and dropped when the live file is cut back.
"""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from thelca.authority.test_only import TestOnlyAuthority
from thelca.eventlog import read_all
from thelca.eventlog.index import CHUNK_BYTES
from thelca.roles.messages import Incoming
from thelca.roles.replay import ReplayRole, ReplayStream
from thelca_client.contract import Names, parse_time

START = datetime(2026, 1, 1, tzinfo=UTC)
LINES = 24_000
NAMES = Names("index-test")
TYPES = ["Item created", "Item updated", "Item read", "Access refused", "Link created"]


def _line(n: int, rng: random.Random) -> bytes:
    """One line of a log written by several workers, and by other writers, over time."""
    moment = START + timedelta(milliseconds=10 * n)
    roll = rng.random()
    if roll < 0.03:
        moment -= timedelta(seconds=rng.uniform(0, 3600))  # a late publisher
    event: dict[str, Any] = {"time": moment.isoformat(timespec="microseconds"),
                             "type": rng.choice(TYPES), "user": "u", "value": n, "id": f"e{n}"}
    if roll > 0.99:
        event["time"] = moment.astimezone(
            datetime.now().astimezone().tzinfo).isoformat()  # another offset, same moment
    elif roll > 0.985:
        event["time"] = "not a time"
    elif roll > 0.98:
        del event["time"]
    elif roll > 0.975:
        event["time"] = moment.replace(tzinfo=None).isoformat()  # naive: cannot be read
    elif roll > 0.97:
        event["type"] = 7
    elif roll > 0.968:
        return b"garbage"
    elif roll > 0.966:
        return b"[1, 2]"
    elif roll > 0.965:
        return b""
    return orjson.dumps(event)


def write_log(directory: Path, lines: int, *, seed: int = 16) -> Path:
    """Three segments and a live file ending in a torn line; one line longer than a chunk."""
    rng = random.Random(seed)
    every = [_line(n, rng) for n in range(lines)]
    every[lines // 2] = orjson.dumps({"time": (START + timedelta(minutes=1)).isoformat(),
                                      "type": "Item created", "id": "long",
                                      "value": "x" * (CHUNK_BYTES + 1000)})
    log = directory / "events.log"
    quarter = lines // 4
    for number in range(3):
        part = every[number * quarter:(number + 1) * quarter]
        (directory / f"events.log.{number + 1:06d}").write_bytes(b"\n".join(part) + b"\n")
    log.write_bytes(b"\n".join(every[3 * quarter:]) + b'\n{"time": "2026-01-0')
    return log


def full_scan(log: Path, body: dict[str, Any]) -> list[bytes]:
    """What the contract says a replay sends: every line that is a JSON object and passes the
    filters, in log order; a time that cannot be read never matches a time filter."""
    since = parse_time(body["since"]) if body.get("since") else None
    until = parse_time(body["until"]) if body.get("until") else None
    types = body.get("types")
    sent = []
    for line in read_all(log):
        event = line.event
        if event is None:
            continue
        if types is not None and event.get("type") not in types:
            continue
        if since or until:
            try:
                moment = parse_time(event["time"])
            except (KeyError, TypeError, ValueError):
                continue
            if (since and moment < since) or (until and moment > until):
                continue
        sent.append(line.raw)
    return sent


def replayed(service: ReplayRole, body: dict[str, Any]) -> tuple[list[bytes], ReplayStream]:
    stream = service.open(Incoming(body=orjson.dumps(body), correlation_id="c",
                                   reply_to="subscriber",
                                   headers={"Authorization": "Bearer abcd"}))
    assert isinstance(stream, ReplayStream)
    sent = []
    while not stream.finished:
        sent += [m.body for m in stream.take(500) if not (m.headers or {}).get("x-replay-end")]
    return sent, stream


def requests(rng: random.Random, count: int) -> list[dict[str, Any]]:
    span = 10 * LINES  # ms the log covers
    made: list[dict[str, Any]] = [{}, {"types": []}, {"types": ["Nothing at all"]},
                                  {"since": "2027-01-01T00:00:00Z"}]
    for _ in range(count):
        body: dict[str, Any] = {}
        first = START + timedelta(milliseconds=rng.uniform(-600_000, span))
        if rng.random() < 0.7:
            body["since"] = first.isoformat()
        if rng.random() < 0.7:
            body["until"] = (first + timedelta(milliseconds=rng.uniform(0, span / 4))).isoformat()
        if rng.random() < 0.5:
            body["types"] = rng.sample([*TYPES, "Nothing"], rng.randint(1, 3))
        made.append(body)
    return made


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return write_log(tmp_path, LINES)


def test_a_seek_sends_exactly_what_a_full_scan_finds_cold_and_warm(log: Path) -> None:
    warm = ReplayRole(log, TestOnlyAuthority(), NAMES)
    for body in requests(random.Random(7), 24):
        expected = full_scan(log, body)
        cold_sent, _ = replayed(ReplayRole(log, TestOnlyAuthority(), NAMES), body)
        warm_sent, stream = replayed(warm, body)
        assert cold_sent == expected, body
        assert warm_sent == expected, body
        assert stream.count == len(expected)


def test_once_indexed_a_request_reads_what_its_time_range_and_types_cover(log: Path) -> None:
    service = ReplayRole(log, TestOnlyAuthority(), NAMES)
    _, first = replayed(service, {})
    total = first.lines_read
    assert total == sum(1 for _ in read_all(log))  # the first reads all, and indexes it
    nothing: list[dict[str, Any]] = [{"types": ["Nothing at all"]}, {"types": []},
                                     {"since": "2027-01-01T00:00:00Z"},
                                     {"until": "2025-01-01T00:00:00Z"}]
    for body in nothing:
        sent, stream = replayed(service, body)
        # Every chunk skipped: only the torn tail, which is never indexed, is read.
        assert sent == [] and stream.lines_read == 1, body
        assert stream.chunks_skipped == service.index.chunks
    narrow = {"since": (START + timedelta(seconds=230)).isoformat(),
              "until": (START + timedelta(seconds=235)).isoformat()}
    sent, stream = replayed(service, narrow)
    assert sent == full_scan(log, narrow)
    print(f"a 5 s range: {len(sent)} events, {stream.lines_read} of {total} lines read, "
          f"{stream.chunks_skipped} chunks skipped")
    # The late publishers' lines (up to an hour back) make some chunks reach back in time;
    # still, a narrow range at the end reads a small part of the log.
    assert stream.lines_read < total / 4


def test_the_index_follows_the_live_file_as_it_grows_rotates_and_is_cut_back(
    log: Path,
) -> None:
    service = ReplayRole(log, TestOnlyAuthority(), NAMES)
    rng = random.Random(3)
    late: dict[str, Any] = {"since": (START + timedelta(seconds=235)).isoformat()}
    # Grows: the torn tail completed, then more lines; the new ones are found and indexed.
    with open(log, "ab") as live:
        live.write(b'1T00:00:00+00:00", "type": "Item read", "id": "healed"}\n')
        live.write(b"\n".join(_line(LINES + n, rng) for n in range(5000)) + b"\n")
    for body in (late, {}):
        assert replayed(service, body)[0] == full_scan(log, body)
    # Rotates: the live file becomes the next segment (same inode), a fresh one begins.
    os.rename(log, log.with_name("events.log.000004"))
    log.write_bytes(b"\n".join(_line(LINES + 5000 + n, rng) for n in range(100)) + b"\n")
    # Every segment, the one that was live included, is indexed: only the new live file's
    # 100 lines are read.
    assert replayed(service, {"types": ["Nothing at all"]})[1].lines_read == 100
    assert replayed(service, late)[0] == full_scan(log, late)
    # Cut back (a failed write undone) and written again otherwise: that index is dropped.
    size = log.stat().st_size
    with open(log, "r+b") as live:
        live.truncate(size // 2)
        live.seek(size // 2)
        live.write(b"\n" + b"\n".join(_line(LINES + 6000 + n, rng) for n in range(300)) + b"\n")
    after_cut: list[dict[str, Any]] = [late, {}, {"types": ["Item read"]}]
    for body in after_cut:
        assert replayed(service, body)[0] == full_scan(log, body)
