"""The replay consumer as subscribers see it: plain pika, the contract's prose, the real broker.

The consumer runs either as the real `thelca replay` process beside the real
worker and logger (a live log), or in this process over a log written here
(big logs, and a stand-in Authority for 403).
"""

from __future__ import annotations

import json
import logging
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from tests.integration.conftest import (
    RunningSystem,
    StandInAuthority,
    _running_system,
    delete_prefix,
    queue_depth,
    system_env,
    wait_for_consumers,
)
from thelca.amqp import ReplayConsumer, replay_topology
from thelca.audit.chain import without_prev
from thelca.authority.base import Principal
from thelca.bootstrap import build_replay
from thelca.errors import AuthorityUnavailable
from thelca.eventlog import read_all
from thelca.restore import restore
from thelca.roles.replay import ReplayRole
from thelca.settings import Settings
from thelca.stores.memory import MemoryStore
from thelca.stores.sqlite import SQLiteStore
from thelca_client import Client
from thelca_client.contract import Names

pytestmark = pytest.mark.broker


# ---------------------------------------------------------------- a subscriber


@dataclass
class Replay:
    """What one request got back: its events, and the end marker."""

    events: list[tuple[pika.BasicProperties, bytes]] = field(default_factory=list)
    end: dict[str, Any] | None = None
    end_properties: pika.BasicProperties | None = None

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.events]


class Subscriber:
    """A late subscriber written from the contract: its own queue, requests, replies."""

    def __init__(self, amqp_url: str, prefix: str) -> None:
        self.names = Names(prefix)
        self.connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.channel.basic_qos(prefetch_count=1000)
        self.queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.arrivals: list[tuple[str, bool]] = []  # (correlation_id, is the end marker)
        self.arrived_at: list[float] = []  # when each arrival came (monotonic)

    def ask(self, body: bytes | dict[str, Any] = b"{}", *, token: str | None = "abcd",
            headers: dict[str, Any] | None = None, correlation_id: str | None = None,
            channel: BlockingChannel | None = None) -> str:
        """Publish a request (confirmed; on `channel` instead, as that channel does)."""
        correlation_id = correlation_id or str(uuid.uuid4())
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        if headers is None:
            headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        (channel or self.channel).basic_publish(
            "", self.names.replay, raw,
            pika.BasicProperties(reply_to=self.queue, correlation_id=correlation_id,
                                 headers=headers, content_type="application/json",
                                 delivery_mode=2),
            mandatory=channel is None)
        return correlation_id

    def ask_at_once(self, *requests: tuple[dict[str, Any], str, str]) -> list[str]:
        """Publish (body, token, correlation_id) requests in one transaction: the broker
        queues them all at the commit, so none is served before the last is queued."""
        channel = self.connection.channel()
        channel.tx_select()
        asked = [self.ask(body, token=token, correlation_id=correlation_id, channel=channel)
                 for body, token, correlation_id in requests]
        channel.tx_commit()
        channel.close()
        return asked

    def collect(self, *correlation_ids: str, timeout: float = 60) -> dict[str, Replay]:
        """Consume until every request named has sent its end marker."""
        replays = {c: Replay() for c in correlation_ids}
        waiting = set(correlation_ids)
        deadline = time.monotonic() + timeout
        for method, properties, body in self.channel.consume(self.queue, inactivity_timeout=1):
            if method is None or properties is None or body is None:
                if time.monotonic() > deadline:
                    break
                continue
            self.channel.basic_ack(int(method.delivery_tag or 0))
            correlation_id = str(properties.correlation_id)
            replay = replays.setdefault(correlation_id, Replay())
            is_end = bool((properties.headers or {}).get("x-replay-end"))
            self.arrivals.append((correlation_id, is_end))
            self.arrived_at.append(time.monotonic())
            if is_end:
                replay.end, replay.end_properties = json.loads(body), properties
                waiting.discard(correlation_id)
                if not waiting:
                    break
            else:
                replay.events.append((properties, body))
        self.channel.cancel()
        assert not waiting, f"no end marker for {waiting} within {timeout}s"
        return replays

    def replay(self, body: bytes | dict[str, Any] = b"{}", **kwargs: Any) -> Replay:
        correlation_id = self.ask(body, **kwargs)
        return self.collect(correlation_id)[correlation_id]

    def close(self) -> None:
        self.connection.close()


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def live(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    """Worker, logger and replay consumer as real processes, shared by the module's
    tests that only add to the log."""
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    yield from _running_system(amqp_url, prefix, tmp_path_factory.mktemp(prefix),
                               roles=("worker", "logger", "replay"))


@pytest.fixture
def subscriber(amqp_url: str, live: RunningSystem) -> Iterator[Subscriber]:
    subscriber = Subscriber(amqp_url, live.prefix)
    yield subscriber
    subscriber.close()


@dataclass
class InProcess:
    names: Names
    log: Path


@pytest.fixture
def in_process(amqp_url: str, prefix: str, tmp_path: Path) -> Iterator[InProcess]:
    """A replay consumer in this process over tmp_path/events.log, with the stand-in
    Authority (mallory may not read events)."""
    log = tmp_path / "events.log"
    settings = Settings(amqp_url=amqp_url, prefix=prefix, event_log=str(log),
                        authority="test-only", replay_streams=4)
    role = build_replay(settings, authority=StandInAuthority())
    thread = threading.Thread(target=role.run, daemon=True)
    thread.start()
    try:
        wait_for_consumers(amqp_url, settings.names.replay, [])
        yield InProcess(settings.names, log)
    finally:
        role.stop()
        thread.join(timeout=30)
        delete_prefix(amqp_url, prefix)


def logged_events(system: RunningSystem, count: int) -> list[dict[str, Any]]:
    """The log's events once it holds at least count of them, as published (without the
    log's hash chain, which replay does not send)."""
    deadline = time.monotonic() + 30
    while True:
        events = [{k: v for k, v in line.event.items() if k != "prev"}
                  for line in read_all(system.event_log) if line.event]
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def write_log(path: Path, count: int, *, every_refusal: int = 0) -> list[bytes]:
    """A log of count events as the live system writes them (creates, and an Access refused
    every `every_refusal` lines); returns its lines."""
    lines = []
    for n in range(count):
        moment = f"2026-01-01T00:{n // 60000 % 60:02d}:{n // 1000 % 60:02d}.{n % 1000:03d}000+00:00"
        if every_refusal and n % every_refusal == every_refusal - 1:
            event: dict[str, Any] = {"time": moment, "type": "Access refused", "user": None,
                                     "value": {"command": "read", "status": 401},
                                     "id": f"event-{n}", "command_id": f"command-{n}"}
        else:
            event = {"time": moment, "type": "Item created", "user": "u",
                     "value": {"id": f"item-{n}", "created_at": moment, "created_by": "u",
                               "properties": {"n": n}},
                     "id": f"event-{n}", "version": 1, "command_id": f"command-{n}"}
        lines.append(orjson.dumps(event))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return lines


# ---------------------------------------------------------------- the live system


def test_a_replay_sends_every_event_in_log_order_then_the_end_marker(
    live: RunningSystem, subscriber: Subscriber
) -> None:
    before = len(logged_events(live, 0))  # the module's earlier tests share this log
    with Client(live.amqp_url, prefix=live.prefix, token="abcd") as client:
        item = client.create({"n": 1}).item
        assert item is not None
        client.read(item["id"])
        client.update(item["id"], {**item, "properties": {"n": 2}})
    logged = logged_events(live, before + 3)
    lines = [without_prev(line.raw) for line in read_all(live.event_log) if line.event]

    replay = subscriber.replay({}, correlation_id="everything")
    # the log's lines in log order, without the chain: the same bytes as published
    assert [body for _, body in replay.events] == lines
    assert replay.end == {"status": 200, "count": len(lines)}
    for (properties, _), event in zip(replay.events, logged, strict=True):
        assert properties.correlation_id == "everything"
        assert properties.message_id == event["id"]
        assert properties.type == event["type"]
        assert "x-replay-end" not in (properties.headers or {})
    assert replay.end_properties is not None
    assert replay.end_properties.headers == {"x-replay-end": True, "status": 200}
    assert replay.end_properties.correlation_id == "everything"


def test_filters_since_until_inclusive_and_types(
    live: RunningSystem, subscriber: Subscriber
) -> None:
    before = len(logged_events(live, 0))  # the module's earlier tests share this log
    with Client(live.amqp_url, prefix=live.prefix, token="abcd") as client:
        items = [client.create({"filter": n}).item for n in range(4)]
        for item in items:
            assert item is not None
            client.read(item["id"])
    events = logged_events(live, before + 8)
    ours = [e for e in events if e["type"] == "Item created"
            and "filter" in e["value"]["properties"]]
    since, until = ours[1]["time"], ours[2]["time"]
    between = [e for e in events if since <= e["time"] <= until]

    timed = subscriber.replay({"since": since, "until": until})
    assert timed.bodies == between and timed.end == {"status": 200, "count": len(between)}
    assert timed.bodies[0] == ours[1] and timed.bodies[-1] == ours[2]  # both bounds included

    reads = subscriber.replay({"types": ["Item read"]})
    assert reads.bodies == [e for e in events if e["type"] == "Item read"]

    both = subscriber.replay({"since": since, "types": ["Item created", "Item updated"]})
    assert both.bodies == [e for e in events if e["time"] >= since
                           and e["type"] in ("Item created", "Item updated")]

    none = subscriber.replay({"types": []})
    assert none.events == [] and none.end == {"status": 200, "count": 0}
    later = subscriber.replay({"since": "2999-01-01T00:00:00Z"})
    assert later.events == [] and later.end == {"status": 200, "count": 0}


def test_link_and_search_events_are_streamed_like_any_other(
    live: RunningSystem, subscriber: Subscriber, tmp_path: Path
) -> None:
    """A subscriber that asks for the link events can rebuild the links from them."""
    before = len(logged_events(live, 0))
    with Client(live.amqp_url, prefix=live.prefix, token="abcd") as client:
        a, b = (client.create({"linked": n}).item["id"] for n in range(2))
        kept = client.create_link(a, b).link
        gone = client.create_link(b, a).link
        client.update_link(kept["id"], {**kept, "properties": {"type": "BLOCKS"}})
        client.delete_link(gone["id"])
        client.search_links(either=a)
        client.search_items({"linked": 1})
    events = logged_events(live, before + 8)
    kinds = ["Link created", "Link updated", "Link deleted", "Link search", "Item search"]
    replay = subscriber.replay({"since": events[before]["time"], "types": kinds})
    assert replay.bodies == [e for e in events[before:] if e["type"] in kinds]
    assert [e["type"] for e in replay.bodies] == [
        "Link created", "Link created", "Link updated", "Link deleted", "Link search",
        "Item search"]
    stream = tmp_path / "links.log"
    stream.write_bytes(b"".join(body + b"\n" for _, body in replay.events))
    restored = MemoryStore()
    assert restore(stream, restored).problems == []
    assert [s.link.id for s in restored.links()] == [kept["id"]]


@pytest.mark.parametrize(("body", "token", "status", "error"), [
    (b"{}", "BAAD", 401, "the token was refused"),
    (b"{}", None, 401, "no Authorization header"),
    (b"not json", "abcd", 400, "The data is not a JSON string"),
    (b"[]", "abcd", 400, "must be a JSON object"),
    (b'{"since": 3}', "abcd", 400, "since must be a string"),
    (b'{"until": "yesterday"}', "abcd", 400, "is not an ISO 8601 time"),
    (b'{"since": "2026-01-01T00:00:00"}', "abcd", 400, "no UTC offset"),
    (b'{"types": "Item created"}', "abcd", 400, "types must be a list of strings"),
    (b'{"types": [1]}', "abcd", 400, "types must be a list of strings"),
    (b'{"type": ["Item created"]}', "abcd", 400, "unknown field 'type'"),
    (b'{"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}', "abcd", 400,
     "since is after until"),
])
def test_a_refused_request_gets_only_the_end_marker_with_status_and_error(
    live: RunningSystem, subscriber: Subscriber, body: bytes, token: str | None, status: int,
    error: str,
) -> None:
    replay = subscriber.replay(body, token=token)
    assert replay.events == []
    assert replay.end is not None and replay.end["status"] == status
    assert error in replay.end["error"] and "count" not in replay.end
    assert replay.end_properties is not None
    assert replay.end_properties.headers == {"x-replay-end": True, "status": status}
    assert "Bearer" not in live.output()  # no token in any log line


def test_a_subscriber_restores_the_live_state_from_a_replay_and_its_own_queue(
    live: RunningSystem, subscriber: Subscriber, tmp_path: Path
) -> None:
    """The late subscriber's recipe: bind a queue to the events first, ask for a replay,
    apply it, then the queue, dropping the ids already seen."""
    channel = subscriber.channel
    own = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(own, live.names.events)
    already = len(logged_events(live, 0))
    with Client(live.amqp_url, prefix=live.prefix, token="abcd") as client:
        before = [client.create({"phase": "before", "n": n}).item for n in range(3)]
        for item in before:
            assert item is not None
            client.update(item["id"], {**item, "properties": {"phase": "updated"}})
        logged_events(live, already + 6)  # so that the replay holds them too
        replay = subscriber.replay({"types": ["Item created", "Item updated"]})
        after = client.create({"phase": "after"}).item
        assert after is not None and before[0] is not None
        client.update(after["id"], {**after, "properties": {"phase": "after", "n": 2}})
        client.update(before[0]["id"], {**before[0], "properties": {"phase": "last"}},
                      expected_version=2)
    seen = {event["id"] for event in replay.bodies}
    assert len(seen) >= 6
    lines = [body for _, body in replay.events]
    received, deadline = 0, time.monotonic() + 30
    while received < 9:  # every event since the bind: 3 + 3 + 1 + 1 + 1
        _, _, body = channel.basic_get(own, auto_ack=True)
        if body is None:
            assert time.monotonic() < deadline, f"only {received} live events came"
            time.sleep(0.05)
            continue
        received += 1
        event_id = json.loads(body)["id"]
        if event_id not in seen:  # the late subscriber drops what the replay gave
            seen.add(event_id)
            lines.append(body)
    stream = tmp_path / "streamed.log"
    stream.write_bytes(b"".join(line + b"\n" for line in lines))
    restored = MemoryStore()
    report = restore(stream, restored)
    assert report.problems == []
    live_store = SQLiteStore(live.store_path, writer=False)
    try:
        assert list(restored.items()) == list(live_store.items())
    finally:
        live_store.close()


# ---------------------------------------------------------------- in this process


def test_an_authority_that_refuses_events_read_answers_403(in_process: InProcess,
                                                          amqp_url: str) -> None:
    write_log(in_process.log, 3)
    subscriber = Subscriber(amqp_url, in_process.names.prefix)
    try:
        refused = subscriber.replay({}, token="mallory")
        assert refused.events == []
        assert refused.end == {"status": 403, "error": "mallory may not read events"}
        allowed = subscriber.replay({}, token="alice")
        assert allowed.end == {"status": 200, "count": 3}
    finally:
        subscriber.close()


def test_two_requests_at_once_take_turns_so_a_small_one_is_not_stuck_behind_a_big_one(
    in_process: InProcess, amqp_url: str
) -> None:
    lines = write_log(in_process.log, 20_000, every_refusal=100)
    subscriber = Subscriber(amqp_url, in_process.names.prefix)
    try:
        big = subscriber.ask({}, correlation_id="big")
        small = subscriber.ask({"types": ["Access refused"]}, correlation_id="small")
        replays = subscriber.collect(big, small, timeout=120)
    finally:
        subscriber.close()
    assert [body for _, body in replays["big"].events] == lines
    assert replays["big"].end == {"status": 200, "count": 20_000}
    assert replays["small"].end == {"status": 200, "count": 200}
    assert all(b["type"] == "Access refused" for b in replays["small"].bodies)
    arrivals = subscriber.arrivals
    small_done = arrivals.index(("small", True))
    big_before = sum(1 for c, _ in arrivals[:small_done] if c == "big")
    # The small request scans all 20,000 lines too, but in turns with the big one:
    # it ends long before the big one has sent a third of its events.
    assert big_before < 20_000 / 3, big_before
    assert any(c == "big" for c, _ in arrivals[:small_done])  # they really were concurrent


def test_one_user_s_many_requests_that_match_nothing_do_not_starve_another_s(
    in_process: InProcess, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="thelca.roles.replay")
    started = time.monotonic()
    lines = write_log(in_process.log, 200_000, every_refusal=100)
    print(f"wrote 200,000 lines ({in_process.log.stat().st_size >> 20} MiB) in "
          f"{time.monotonic() - started:.1f}s")
    until = orjson.loads(lines[2_000])["time"]
    wanted = [line for line in lines
              if (event := orjson.loads(line))["type"] == "Item created"
              and event["time"] <= until]  # one format, one offset: text order is time order
    subscriber = Subscriber(amqp_url, in_process.names.prefix)
    try:
        asked = time.monotonic()
        # All at once: asked one by one, each publish waiting for its confirm, the victim's
        # request could reach the queue only after the flood's first two ended (this thread
        # waits for the GIL while the consumer's thread reads the log for them).
        *flood, victim = subscriber.ask_at_once(
            *[({"types": ["Nothing"]}, "flooder", f"flood-{n}") for n in range(16)],
            ({"until": until, "types": ["Item created"]}, "victim", "victim"))
        print(f"requests queued after {time.monotonic() - asked:.2f}s")
        replays = subscriber.collect(*flood, victim, timeout=300)
    finally:
        subscriber.close()
    assert [body for _, body in replays[victim].events] == wanted  # as a full scan finds
    assert replays[victim].end == {"status": 200, "count": len(wanted)}
    assert all(replays[f].end == {"status": 200, "count": 0} for f in flood)

    arrivals, times = subscriber.arrivals, subscriber.arrived_at
    ends = [c for c, end in arrivals if end]
    first_event = arrivals.index((victim, False))
    flood_ended_before_first = sum(1 for c, end in arrivals[:first_event] if end)
    flood_ended_before_end = ends.index(victim)
    print(f"victim: first event after {times[first_event] - asked:.2f}s, its end marker "
          f"after {times[arrivals.index((victim, True))] - asked:.2f}s; flood: "
          + ", ".join(f"{times[arrivals.index((f, True))] - asked:.2f}s" for f in flood))
    print(f"flood requests ended before the victim's first event: "
          f"{flood_ended_before_first}, before its end: {flood_ended_before_end}")
    # Served from the start, beside the flood's first two (2 streams per user at once):
    # before, it waited in the queue (prefetch 4) until 13 of the flood's requests ended,
    # each of which read the whole log.
    assert flood_ended_before_first == 0

    read = lines_read(caplog.text)
    flood_read = sorted(read[f] for f in flood)
    print(f"lines read: by the flood's requests {flood_read}, by the victim {read[victim]}")
    # The log was read about once for the whole flood: the index the first two built as
    # they read lets every later request skip every chunk.
    assert sum(flood_read) <= 2 * len(lines)
    assert flood_read.count(0) >= len(flood) - 2


def lines_read(log_text: str) -> dict[str, int]:
    """Lines each request read, by correlation id, from the replay consumer's log."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(
        r"request '?([^'\s]+)'?: \d+ events sent in \S+ \((\d+) lines read", log_text)}


def test_two_streams_per_user_at_once_the_rest_wait_and_too_many_get_429(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    log = tmp_path / "events.log"
    lines = write_log(log, 6_000, every_refusal=100)
    names = Names(prefix)
    consumer = ReplayConsumer(amqp_url, names.replay, ReplayRole(log, StandInAuthority(), names),
                              replay_topology(names), streams=4, waiting_per_user=1)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    subscriber = Subscriber(amqp_url, prefix)
    try:
        wait_for_consumers(amqp_url, names.replay, [])
        whole = [subscriber.ask({}, token="heavy", correlation_id=f"whole-{n}")
                 for n in range(4)]
        small = subscriber.ask({"types": ["Access refused"]}, token="light",
                               correlation_id="small")
        replays = subscriber.collect(*whole, small, timeout=300)
    finally:
        subscriber.close()
        consumer.stop()
        thread.join(timeout=30)
        delete_prefix(amqp_url, prefix)
    # Two streamed at once, one waiting, and the fourth refused at once.
    for served in whole[:3]:
        assert [body for _, body in replays[served].events] == lines
        assert replays[served].end == {"status": 200, "count": 6_000}
    refused = replays[whole[3]]
    assert refused.events == [] and refused.end is not None
    assert refused.end["status"] == 429
    assert "too many replay requests from this user" in refused.end["error"]
    arrivals = subscriber.arrivals
    first_of_third = arrivals.index((whole[2], False))
    assert any(arrivals.index((w, True)) < first_of_third for w in whole[:2])
    # The other user's request went beside them and ended long before them.
    ended = [c for c, end in arrivals if end]
    assert ended.index(small) < min(ended.index(w) for w in whole[:3])
    assert replays[small].end == {"status": 200, "count": 60}


def test_a_request_with_no_log_yet_gets_an_empty_replay(in_process: InProcess,
                                                        amqp_url: str) -> None:
    subscriber = Subscriber(amqp_url, in_process.names.prefix)
    try:
        replay = subscriber.replay({})
    finally:
        subscriber.close()
    assert replay.events == [] and replay.end == {"status": 200, "count": 0}


def test_a_replay_reads_the_segments_then_the_live_file(in_process: InProcess,
                                                       amqp_url: str) -> None:
    lines = write_log(in_process.log, 30)
    segment_1, segment_2 = (in_process.log.with_name(f"events.log.00000{n}") for n in (1, 2))
    segment_1.write_bytes(b"".join(line + b"\n" for line in lines[:10]))
    segment_2.write_bytes(b"".join(line + b"\n" for line in lines[10:25]))
    in_process.log.write_bytes(b"".join(line + b"\n" for line in lines[25:]))
    subscriber = Subscriber(amqp_url, in_process.names.prefix)
    try:
        replay = subscriber.replay({})
    finally:
        subscriber.close()
    assert [body for _, body in replay.events] == lines
    assert replay.end == {"status": 200, "count": 30}


# ---------------------------------------------------------------- a crash mid-stream


def test_a_replay_consumer_killed_mid_stream_starts_the_stream_again(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    """The request is acked only after its end marker is confirmed: killed before that,
    it is delivered again and streamed from the beginning; the subscriber drops the
    duplicates by event id."""
    lines = write_log(tmp_path / "events.log", 20_000)
    env = system_env(amqp_url, prefix, tmp_path)
    for running in _running_system(amqp_url, prefix, tmp_path, env=env, roles=("replay",)):
        subscriber = Subscriber(amqp_url, prefix)
        try:
            subscriber.ask({}, correlation_id="long")
            received: list[bytes] = []
            for method, _, body in subscriber.channel.consume(
                    subscriber.queue, inactivity_timeout=30):
                assert method is not None and body is not None, "the replay did not start"
                subscriber.channel.basic_ack(int(method.delivery_tag or 0))
                received.append(body)
                if len(received) == 2000:
                    break
            subscriber.channel.cancel()
            running.processes["replay"].send_signal(signal.SIGKILL)
            running.processes.pop("replay").wait()
            running.start("replay")
            rest = subscriber.collect("long", timeout=120)["long"]
        finally:
            subscriber.close()
        assert rest.end == {"status": 200, "count": 20_000}
        everything = received + [body for _, body in rest.events]
        unique = list(dict.fromkeys(everything))  # first sighting of each, in order
        assert unique == lines
        assert len(everything) > len(lines)  # the restart sent the beginning again


class UnavailableTwice(StandInAuthority):
    """An identity provider that does not answer the first two replay requests' checks."""

    def __init__(self) -> None:
        self.misses = 2

    def check_read_events(self, principal: Principal) -> str:
        if self.misses:
            self.misses -= 1
            raise AuthorityUnavailable("the key set cannot be fetched (test)")
        return principal.user_id


def test_a_replay_asked_while_the_authority_is_down_is_served_once_it_answers(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    log = tmp_path / "events.log"
    write_log(log, 3)
    settings = Settings(amqp_url=amqp_url, prefix=prefix, event_log=str(log),
                        authority="test-only")
    authority = UnavailableTwice()
    role = build_replay(settings, authority=authority)
    thread = threading.Thread(target=role.run, daemon=True)
    thread.start()
    subscriber = Subscriber(amqp_url, prefix)
    try:
        wait_for_consumers(amqp_url, settings.names.replay, [])
        correlation_id = subscriber.ask({})
        replay = subscriber.collect(correlation_id, timeout=30)[correlation_id]
        assert replay.end == {"status": 200, "count": 3}
        assert authority.misses == 0
        assert queue_depth(amqp_url, settings.names.replay) == 0  # acked, not dead-lettered
    finally:
        subscriber.close()
        role.stop()
        thread.join(timeout=30)
        delete_prefix(amqp_url, prefix)
