"""The replay role without a broker: checks in order, filters, a few messages at a time."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from thelca.authority.base import Principal
from thelca.authority.test_only import TestOnlyAuthority
from thelca.errors import Forbidden
from thelca.eventlog.format import to_line
from thelca.eventlog.writer import EventLogWriter
from thelca.roles.messages import Incoming
from thelca.roles.replay import LINES_PER_TAKE, ReplayRole
from thelca_client.contract import (
    DEAD_REASON_HEADER,
    ContractError,
    Names,
    ReplayRequest,
    decode_replay_request,
)

NAMES = Names("replay-test")


class NoEventsForMallory(TestOnlyAuthority):
    """The test-only Authority, except that mallory may not replay events (a 403)."""

    def check_read_events(self, principal: Principal) -> str:
        if principal.user_id.endswith("mallory"):
            raise Forbidden("mallory may not read events")
        return principal.user_id


def _log(path: Path, count: int, kind: str = "Item read") -> Path:
    lines = [orjson.dumps({"time": f"2026-01-01T00:00:{n % 60:02d}.{n:06d}+00:00",
                           "type": kind, "user": "u", "value": f"item-{n}", "id": f"e{n}"})
             for n in range(count)]
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def _request(body: bytes = b"{}", token: str | None = "abcd",
             reply_to: str | None = "subscriber") -> Incoming:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return Incoming(body=body, correlation_id="c1", reply_to=reply_to, headers=headers)


@pytest.fixture
def role(tmp_path: Path) -> ReplayRole:
    return ReplayRole(_log(tmp_path / "events.log", 250), NoEventsForMallory(), NAMES)


def test_take_gives_at_most_the_limit_and_the_end_marker_last(role: ReplayRole) -> None:
    stream = role.open(_request())
    taken = []
    while not stream.finished:
        batch = stream.take(100)
        assert len(batch) <= 101  # 100 events, and the end marker with the last ones
        taken += batch
    assert [m.message_id for m in taken[:-1]] == [f"e{n}" for n in range(250)]
    assert all(m.routing_key == "subscriber" and m.correlation_id == "c1" for m in taken)
    end = taken[-1]
    assert orjson.loads(end.body) == {"status": 200, "count": 250}
    assert end.headers == {"x-replay-end": True, "status": 200}
    assert stream.take(100) == []


def test_a_filter_that_matches_little_hands_the_loop_back_between_reads(
    tmp_path: Path,
) -> None:
    log = _log(tmp_path / "events.log", 3 * LINES_PER_TAKE)
    stream = ReplayRole(log, TestOnlyAuthority(), NAMES).open(
        _request(b'{"types": ["Item created"]}'))
    takes = []
    while not stream.finished:
        takes.append(stream.take(100))
    assert takes[:-1] == [[], [], []]  # each take read LINES_PER_TAKE lines at most
    assert orjson.loads(takes[-1][0].body) == {"status": 200, "count": 0}


@pytest.mark.parametrize(("body", "token", "status"), [
    (b"not json", "BAAD", 401),  # the token first
    (b"not json", None, 401),
    (b"not json", "mallory", 403),  # then the Authority
    (b"not json", "abcd", 400),  # then the body
])
def test_checks_run_token_then_authority_then_body(
    role: ReplayRole, body: bytes, token: str | None, status: int
) -> None:
    stream = role.open(_request(body, token))
    (end,) = stream.take(100)
    assert orjson.loads(end.body)["status"] == status
    assert stream.finished


def test_a_request_without_reply_to_is_finished_at_once(role: ReplayRole) -> None:
    stream = role.open(_request(reply_to=None))
    assert stream.finished and stream.take(100) == []


@pytest.mark.parametrize("reply_to", [NAMES.events_log, NAMES.commands, NAMES.dead,
                                      NAMES.replay, f"{NAMES.prefix}.anything"])
def test_a_reply_to_of_thelca_is_dead_lettered_without_its_token_and_not_answered(
    role: ReplayRole, reply_to: str
) -> None:
    stream = role.open(_request(reply_to=reply_to))
    (letter,) = stream.take(100)
    assert stream.finished and stream.take(100) == []
    assert (letter.exchange, letter.routing_key) == (NAMES.dead, "")
    assert letter.headers is not None
    assert not {k for k in letter.headers if k.lower() == "authorization"}
    assert reply_to in letter.headers[DEAD_REASON_HEADER]
    assert letter.body == b"{}" and letter.correlation_id == "c1"


@pytest.mark.parametrize("reply_to", [NAMES.prefix, f"{NAMES.prefix}-commands",
                                      f"x.{NAMES.commands}", "amq.gen-abc"])
def test_a_reply_to_that_is_not_thelca_s_is_answered(role: ReplayRole, reply_to: str) -> None:
    stream = role.open(_request(b'{"types": []}', reply_to=reply_to))
    (end,) = stream.take(100)
    assert end.routing_key == reply_to and orjson.loads(end.body)["status"] == 200


def test_client_strings_cannot_start_a_line_in_the_replay_log(
    role: ReplayRole, caplog: pytest.LogCaptureFixture
) -> None:
    forged = "c1\n2026-01-01 00:00:00,000 INFO thelca: forged\u2028also"
    caplog.set_level(logging.DEBUG)
    for reply_to in ("subscriber", NAMES.commands, None):
        request = _request(reply_to=reply_to)
        stream = role.open(Incoming(request.body, correlation_id=forged, reply_to=reply_to,
                                    headers={"Authorization": "Bearer BAAD"}))
        while not stream.finished:
            stream.take(100)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) >= 3
    assert all(not m.splitlines()[1:] for m in messages), messages
    assert all("forged" not in m or "'c1\\n2026" in m for m in messages), messages


def test_closing_a_stream_early_releases_the_log(role: ReplayRole) -> None:
    stream = role.open(_request())
    assert len(stream.take(10)) == 10
    stream.close()
    assert stream.finished and stream.take(10) == []


@pytest.mark.parametrize(("body", "expected"), [
    (b"{}", ReplayRequest()),
    (b'{"since": "2026-01-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}',
     ReplayRequest("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z")),
    (b'{"types": ["Item created", "Item read"], "until": null}',
     ReplayRequest(types=("Item created", "Item read"))),
])
def test_decode_replay_request(body: bytes, expected: ReplayRequest) -> None:
    assert decode_replay_request(body) == expected


@pytest.mark.parametrize(("body", "error"), [
    (b"nope", "not a JSON string"),
    (b'{"since": "2026-01-02T00:00:00+01:00", "until": "2026-01-01T00:00:00Z"}',
     "since is after until"),
    (b'{"until": "2026-13-01T00:00:00Z"}', "not an ISO 8601 time"),
    (b'{"types": null, "limit": 3}', "unknown field 'limit'"),
])
def test_decode_replay_request_refuses_with_400(body: bytes, error: str) -> None:
    with pytest.raises(ContractError, match=error) as refused:
        decode_replay_request(body)
    assert refused.value.status == 400


def test_a_segment_removed_while_streaming_is_read_whole_all_the_same(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    _log(tmp_path / "events.log.000001", 20)
    _log(tmp_path / "events.log.000002", 20)
    _log(log, 5)
    stream = ReplayRole(log, TestOnlyAuthority(), NAMES).open(_request())
    assert len(stream.take(10)) == 10  # the stream's first turn opens every file
    (tmp_path / "events.log.000002").unlink()  # an operator archived it meanwhile
    rest = []
    while not stream.finished:
        rest += stream.take(100)
    assert orjson.loads(rest[-1].body) == {"status": 200, "count": 45}


def test_a_log_file_that_cannot_be_read_ends_the_replay_with_500(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    _log(tmp_path / "events.log.000001", 20)
    (tmp_path / "events.log.000002").mkdir()  # not a file: it cannot be read
    _log(log, 5)
    stream = ReplayRole(log, TestOnlyAuthority(), NAMES).open(_request())
    taken = []
    while not stream.finished:
        taken += stream.take(100)
    end = orjson.loads(taken[-1].body)
    assert end["status"] == 500 and end["count"] == 0
    assert "could not be read" in end["error"]


def test_replayed_events_are_sent_as_published_without_the_logs_chain(tmp_path: Path) -> None:
    """A prev links to the line before in the log, which a filtered stream does not have."""
    path = tmp_path / "events.log"
    writer = EventLogWriter(path)
    events = [{"time": "2026-01-01T00:00:00.000000+00:00", "type": kind, "user": "u",
               "value": {"note": "a\u2028b", "prev": "an item's own"}, "id": f"e{n}"}
              for n, kind in enumerate(["Item read", "Item created", "Item read"])]
    writer.append([to_line(orjson.dumps(event)) for event in events])
    writer.close()
    assert all(b'"prev":"' in line for line in path.read_bytes().splitlines())
    stream = ReplayRole(path, NoEventsForMallory(), NAMES).open(
        _request(b'{"types": ["Item read"]}'))
    bodies = [m.body for m in stream.take(10)[:-1]]
    assert bodies == [to_line(orjson.dumps(events[n]))[1][:-1] for n in (0, 2)]
