"""One message must never stop a consumer: hostile messages against the real processes.

The worker, the logger and the replay consumer run as subprocesses. Each row
is sent as a broker user with exactly the README's client permissions (write
on `amq.default` only: any queue by name through the default exchange), with
frames built byte by byte where pika would refuse to encode them
(tests/rawframes.py). After every row an honest client's create
and read, and a replay request, must be answered within a few seconds; no
consumer may have lost its connection; and no honest client's token may be in
`<prefix>.dead`. Each row prints what it got (`pytest -s` shows the lines).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import pika
import pytest

from tests import rawframes as raw
from tests.integration.conftest import (
    BrokerUser,
    RunningSystem,
    rabbitmqctl,
    readme_commands,
    run_prepared,
    system_env,
)
from thelca_client.contract import DIRECT_REPLY_TO, Names

pytestmark = pytest.mark.broker

MADE_UP_REPLY_TO = "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxMjM0NTY3OAAAAAAAAAAA.AAAAAAAA"
GARBAGE_REPLY_TO = "amq.rabbitmq.reply-to.a.b"  # two parts, neither a real address
BEYOND_INT64 = 2**63  # pika: OverflowError
PAST_YEAR_9999 = 253_402_300_800 + 1  # 10000-01-01T00:00:01Z; pika: ValueError
ANSWER_WITHIN = 5.0  # seconds: "within a few seconds"
HONEST = "honest"  # every honest client's token starts so; none may reach the dead letters


# ---------------------------------------------------------------- broker users and clients


@pytest.fixture(scope="module")
def client_user(amqp_url: str) -> Iterator[BrokerUser]:
    """A broker user with exactly the permissions the README gives a client."""
    (permissions,) = [line for line in readme_commands()
                      if line[1] == "set_permissions" and line[4] == "thelca-client"]
    name, password = f"hostile-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    broker = urlparse(amqp_url)
    rabbitmqctl("add_user", name, password)
    try:
        rabbitmqctl("set_permissions", "-p", "/", name, *permissions[5:8])
        yield BrokerUser(name, f"amqp://{name}:{password}@{broker.hostname}:"
                         f"{broker.port or 5672}/%2F", password)
    finally:
        subprocess.run(["rabbitmqctl", "delete_user", name], capture_output=True, timeout=60,
                       check=False)


@dataclass
class Received:
    """A message a client got back."""

    properties: pika.BasicProperties
    body: bytes

    @property
    def status(self) -> int:
        return int(json.loads(self.body)["status"])


class Sender:
    """A client connection as a broker user: publishes raw properties, takes replies by direct
    reply-to and keeps them by correlation_id."""

    def __init__(self, url: str, names: Names) -> None:
        self.names = names
        self.connection = pika.BlockingConnection(_without_heartbeats(url))
        self.channel = self.connection.channel()
        self.received: dict[str, list[Received]] = {}
        self.channel.basic_consume(DIRECT_REPLY_TO, self._on_message, auto_ack=True)

    def _on_message(self, channel: Any, method: Any, properties: pika.BasicProperties,
                    body: bytes) -> None:
        self.received.setdefault(str(properties.correlation_id), []).append(
            Received(properties, body))

    def publish(self, queue: str, body: bytes, properties: pika.BasicProperties) -> None:
        self.channel.basic_publish("", queue, body, properties)

    def wait(self, correlation_id: str, done: Callable[[list[Received]], bool],
             timeout: float = ANSWER_WITHIN) -> list[Received]:
        deadline = time.monotonic() + timeout
        while not done(self.received.get(correlation_id, [])):
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing complete for {correlation_id} within {timeout}s")
            self.connection.process_data_events(time_limit=0.05)
        return self.received.pop(correlation_id)

    def linger(self, seconds: float) -> None:
        """Take whatever comes for a while (to see that nothing does)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.connection.process_data_events(time_limit=0.05)

    def call(self, body: dict[str, Any], token: str) -> Received:
        """An honest command; its reply."""
        message_id = str(uuid.uuid4())
        self.publish(self.names.commands, json.dumps(body).encode(), pika.BasicProperties(
            message_id=message_id, reply_to=DIRECT_REPLY_TO, delivery_mode=2,
            headers={"Authorization": f"Bearer {token}"}))
        return self.wait(message_id, bool)[0]

    def replay(self, token: str) -> Received:
        """An honest replay request (created items only); its end marker."""
        correlation_id = str(uuid.uuid4())
        self.publish(self.names.replay, b'{"types": ["Item created"]}', pika.BasicProperties(
            correlation_id=correlation_id, reply_to=DIRECT_REPLY_TO,
            headers={"Authorization": f"Bearer {token}"}))
        return self.wait(correlation_id, _ended)[-1]

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


def _without_heartbeats(url: str) -> pika.URLParameters:
    """A test client idles between rows; without heartbeats the broker never drops it."""
    params = pika.URLParameters(url)
    params.heartbeat = 0
    return params


def _ended(messages: list[Received]) -> bool:
    return bool(messages) and bool((messages[-1].properties.headers or {}).get("x-replay-end"))


# ---------------------------------------------------------------- the system under attack


@pytest.fixture(scope="module")
def attacked(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    """Worker, logger and replay consumer as processes, on a prefix of their own."""
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    directory = tmp_path_factory.mktemp(prefix)
    yield from run_prepared(
        RunningSystem(amqp_url, prefix, directory, system_env(amqp_url, prefix, directory)),
        ("worker", "logger", "replay"))


@pytest.fixture(scope="module")
def honest(attacked: RunningSystem, client_user: BrokerUser) -> Iterator[Sender]:
    sender = Sender(client_user.url, attacked.names)
    yield sender
    sender.close()


@pytest.fixture(scope="module")
def victim(attacked: RunningSystem) -> Iterator[tuple[pika.BlockingConnection, str]]:
    """Another client, with an exclusive queue of its own (as a replay subscriber has)."""
    connection = pika.BlockingConnection(_without_heartbeats(attacked.amqp_url))
    queue = connection.channel().queue_declare("", exclusive=True).method.queue
    yield connection, queue
    connection.close()


def dead_letters(system: RunningSystem) -> list[tuple[pika.BasicProperties, bytes]]:
    """Every message of `<prefix>.dead`, all left in place (taken without ack, then returned)."""
    connection = pika.BlockingConnection(pika.URLParameters(system.amqp_url))
    try:
        channel = connection.channel()
        count = channel.queue_declare(system.names.dead, passive=True).method.message_count
        letters = []
        for _ in range(count):
            method, properties, body = channel.basic_get(system.names.dead, auto_ack=False)
            if method is None or properties is None or body is None:
                break
            letters.append((properties, body))
        return letters
    finally:
        connection.close()


def dead_letter_of(system: RunningSystem, message_id: str) -> pika.BasicProperties:
    deadline = time.monotonic() + ANSWER_WITHIN
    while True:
        for properties, _ in dead_letters(system):
            if properties.message_id == message_id:
                return properties
        if time.monotonic() > deadline:
            raise AssertionError(f"{message_id} is not in the dead letters")
        time.sleep(0.1)


def wait_for_line(system: RunningSystem, words: str) -> None:
    deadline = time.monotonic() + ANSWER_WITHIN
    while words not in system.output():
        if time.monotonic() > deadline:
            raise AssertionError(f"no line saying {words!r} in the processes' output")
        time.sleep(0.1)


# ---------------------------------------------------------------- the rows


@dataclass(frozen=True)
class Row:
    """One hostile message: where it goes, what it carries, and what it must get."""

    label: str
    queue: str  # commands, log, replay or dead
    fields: tuple[raw.Field, ...] = ()  # headers, written byte by byte
    message_id: bytes | None = None  # None: a fresh valid one
    correlation_id: bytes | None = None  # None: a fresh valid one
    reply_to: str | bytes | None = DIRECT_REPLY_TO
    kind: bytes | None = None  # the `type` property
    token: bool = True  # an Authorization header (the attacker's own token)
    body: bytes = b'{"command": "create", "item": {"properties": {"row": "hostile"}}}'
    expect: str = "200"  # see check()
    extra: dict[str, Any] = field(default_factory=dict)


PLACES: list[tuple[str, Callable[[int], raw.Field]]] = [
    ("at top level", lambda seconds: (b"x-when", raw.timestamp(seconds))),
    ("in an array", lambda seconds: (b"x-list", raw.array(raw.text(b"a"),
                                                           raw.timestamp(seconds)))),
    ("in a nested table", lambda seconds: (b"x-table", raw.nested(
        (b"inner", raw.nested((b"when", raw.timestamp(seconds))))))),
]
STAMPS = [("2^63", BEYOND_INT64), ("past year 9999", PAST_YEAR_9999)]
NOT_AN_EVENT = b"hostile: not an event"
CREATE_HONEST = b'{"command": "create", "item": {"properties": {"honest": true}}}'
OVERSIZED = (*((f"x-h{n:03d}".encode(), raw.text(b"v" * 20)) for n in range(300)),
             (b"x-big", raw.text(b"b" * 100_000)))  # ~110 KB, under frame_max (128 KiB)
DEEP = ((b"x-deep", raw.deep(2000, raw.text(b"bottom"))),)

ROWS: list[Row] = [
    # -- the commands queue
    Row("message_id not UTF-8, no token", "commands", message_id=b"\xff\xfe-poison",
        token=False, expect="400 message_id"),
    Row("message_id not UTF-8, no reply_to", "commands", message_id=b"\xff\xfe-poison",
        reply_to=None, expect="dead message_id"),
    Row("correlation_id not UTF-8", "commands", correlation_id=b"\xff\xfe-corr",
        expect="400 correlation_id"),
    Row("reply_to not UTF-8", "commands", reply_to=b"\xff\xfe-queue", expect="dead reply_to"),
    Row("type not UTF-8", "commands", kind=b"\xff\xfe"),
    Row("header name not UTF-8", "commands", fields=((b"\xff\xfe", raw.text(b"v")),)),
    Row("header string not UTF-8", "commands", fields=((b"x-s", raw.text(b"\xff\xfe")),)),
    Row("made-up direct reply-to name", "commands", reply_to=MADE_UP_REPLY_TO,
        expect="effect, no reply"),
    Row("direct reply-to name of two garbage parts", "commands", reply_to=GARBAGE_REPLY_TO,
        expect="effect, no reply"),
    Row("reply_to naming another client's exclusive queue", "commands", reply_to="victim",
        expect="stray reply"),
    *(Row(f"timestamp {stamp} {place}", "commands", fields=(make(seconds),))
      for stamp, seconds in STAMPS for place, make in PLACES),
    Row("timestamp 2^63 as the Authorization header", "commands", token=False,
        fields=((b"Authorization", raw.timestamp(BEYOND_INT64)),), expect="401"),
    Row("headers nested 2,000 tables deep", "commands", fields=DEEP),
    Row("oversized headers (110 KB)", "commands", fields=OVERSIZED),
    # -- the event log's queue, published to straight through the default exchange
    *(Row(f"timestamp {stamp} {place}", "log", fields=(make(seconds),), body=NOT_AN_EVENT,
          reply_to=None, token=False, expect="dead by the logger")
      for stamp, seconds in STAMPS for place, make in PLACES),
    Row("message_id not UTF-8", "log", message_id=b"\xff\xfe-poison", body=NOT_AN_EVENT,
        reply_to=None, token=False, expect="dead by the logger"),
    Row("headers nested 2,000 tables deep", "log", fields=DEEP, body=NOT_AN_EVENT,
        reply_to=None, token=False, expect="dead by the logger"),
    # -- the replay queue
    *(Row(f"timestamp {stamp} {place}", "replay", fields=(make(seconds),), body=b"{}",
          expect="replay 200")
      for stamp, seconds in STAMPS for place, make in PLACES),
    Row("message_id not UTF-8", "replay", message_id=b"\xff\xfe-poison", body=b"{}",
        expect="replay 400 message_id"),
    Row("correlation_id not UTF-8", "replay", correlation_id=b"\xff\xfe-corr", body=b"{}",
        expect="replay 400 correlation_id"),
    Row("reply_to not UTF-8", "replay", reply_to=b"\xff\xfe-queue", body=b"{}",
        expect="replay dropped"),
    Row("made-up direct reply-to name", "replay", reply_to=MADE_UP_REPLY_TO, body=b"{}",
        expect="replay abandoned"),
    Row("headers nested 2,000 tables deep", "replay", fields=DEEP, body=b"{}",
        expect="replay 200"),
    # -- the dead letters, planted through the default exchange
    Row("timestamp 2^63 at top level", "dead", fields=(PLACES[0][1](BEYOND_INT64),),
        reply_to=None, token=False, expect="listed"),
    Row("headers nested 2,000 tables deep", "dead", fields=DEEP, reply_to=None, token=False,
        expect="listed"),
]


@dataclass
class Sent:
    """A row as it went out: the ids to find what it got."""

    row: Row
    message_id: str  # as the worker shows an id that is not UTF-8 (\\xff)
    correlation_id: str
    victim_queue: str | None = None


def _shown(value: bytes) -> str:
    return value.decode("utf-8", errors="backslashreplace")


def send(row: Row, system: RunningSystem, attacker: Sender, victim_queue: str) -> Sent:
    fields = row.fields
    if row.token:
        fields = ((b"Authorization", raw.text(b"Bearer hostile-attacker")), *fields)
    unique = uuid.uuid4().hex.encode()  # rows share their hostile ids; each send is its own
    message_id = row.message_id + b"-" + unique if row.message_id else unique
    correlation_id = (row.correlation_id + b"-" + unique if row.correlation_id
                      else b"c-" + unique)
    reply_to = victim_queue if row.reply_to == "victim" else row.reply_to
    properties = raw.RawProperties(
        raw.table(*fields) if fields else None, message_id=message_id,
        correlation_id=correlation_id, reply_to=reply_to, type=row.kind, delivery_mode=2)
    names = system.names
    queue = {"commands": names.commands, "log": names.events_log, "replay": names.replay,
             "dead": names.dead}[row.queue]
    attacker.publish(queue, row.body, properties)
    return Sent(row, _shown(message_id), _shown(correlation_id),
                victim_queue if row.reply_to == "victim" else None)


def check(sent: Sent, system: RunningSystem, attacker: Sender,
          victim: pika.BlockingConnection) -> str:
    """What the row got, asserted; returned as words for the row's line."""
    expect = sent.row.expect
    if expect[:3] in ("200", "400", "401"):
        reply = attacker.wait(sent.correlation_id, bool)[0]
        assert reply.status == int(expect[:3]), reply.body
        words = expect[4:]
        assert not words or words in json.loads(reply.body)["error"], reply.body
        if reply.status == 200:
            return "answered 200, served as usual (the item created)"
        return f"answered {reply.body.decode()}"
    if expect.startswith("dead"):
        properties = dead_letter_of(system, sent.message_id)
        headers = properties.headers or {}
        reason = str(headers.get("x-thelca-reason"))
        assert not any(str(k).lower() == "authorization" for k in headers)
        if expect == "dead by the logger":
            assert reason.startswith("logger:"), reason
        else:
            assert expect[5:] in reason, reason
        return f"dead-lettered once, without a token ({reason})"
    if expect == "effect, no reply":
        return check_effect(sent, system, attacker)
    if expect == "stray reply":
        return check_stray(sent, victim)
    if expect.startswith("replay"):
        return check_replay(sent, system, attacker)
    if expect == "listed":
        listing = subprocess.run([sys.executable, "-m", "thelca", "dead", "list", "--json"],
                                 capture_output=True, text=True, env=system.env, timeout=60,
                                 check=False)
        assert listing.returncode == 0, listing.stderr
        assert sent.message_id in listing.stdout
        return "listed by `thelca dead list` (exit 0), the header shown as a string"
    raise AssertionError(f"no check for {expect!r}")


def check_effect(sent: Sent, system: RunningSystem, attacker: Sender) -> str:
    (event,) = system.events_for(sent.message_id, timeout=ANSWER_WITHIN)
    assert event["type"] == "Item created"
    wait_for_line(system, f"a message to {sent.row.reply_to!r} cannot be delivered")
    attacker.linger(0.5)
    assert sent.correlation_id not in attacker.received
    assert all(p.message_id != sent.message_id for p, _ in dead_letters(system))
    return ("took effect (Item created logged), not dead-lettered; the reply alone was "
            "dropped when the broker closed the reply connection over it")


def check_stray(sent: Sent, victim: pika.BlockingConnection) -> str:
    assert sent.victim_queue is not None
    channel = victim.channel()
    deadline = time.monotonic() + ANSWER_WITHIN
    while True:
        method, properties, body = channel.basic_get(sent.victim_queue, auto_ack=True)
        if method is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert method is not None and properties is not None and body is not None
    assert properties.correlation_id == sent.correlation_id
    channel.close()
    return (f"answered {json.loads(body)['status']} into the other client's queue (the "
            "broker lets anyone publish to a queue by name); that client drops a reply it "
            "never asked for")


def check_replay(sent: Sent, system: RunningSystem, attacker: Sender) -> str:
    expect = sent.row.expect
    if expect == "replay dropped":
        wait_for_line(system, "replay: a request was refused: the reply_to property is not "
                      "UTF-8")
        return "not answered (nowhere to answer), acked, one line in the consumer's log"
    if expect == "replay abandoned":
        wait_for_line(system, f"replay request {sent.correlation_id!r} is abandoned")
        return ("abandoned and acked: the broker closed the reply connection over its "
                "reply_to; the other requests went on")
    messages = attacker.wait(sent.correlation_id, _ended)
    end = messages[-1]
    assert end.status == int(expect.split()[1]), end.body
    words = expect.split(maxsplit=2)[2:]
    assert not words or words[0] in json.loads(end.body)["error"], end.body
    return f"{len(messages) - 1} events, then the end marker {end.body.decode()}"


# ---------------------------------------------------------------- after every row


def disconnections(system: RunningSystem) -> list[str]:
    """Lines saying a consumer lost its own connection (not the reply connection)."""
    return [line for line in system.output().splitlines() if ": disconnected:" in line]


def assert_still_serving(system: RunningSystem, honest: Sender) -> str:
    token = f"{HONEST}-{uuid.uuid4().hex[:8]}"
    created = honest.call({"command": "create", "item": {"properties": {"after": "row"}}},
                          token)
    assert created.status == 200, created.body
    item_id = json.loads(created.body)["item"]["id"]
    read = honest.call({"command": "read", "id": item_id}, token)
    assert read.status == 200, read.body
    end = honest.replay(token)
    assert end.status == 200, end.body
    for role, process in system.processes.items():
        assert process.poll() is None, f"the {role} exited"
    assert disconnections(system) == []
    for properties, body in dead_letters(system):
        assert HONEST.encode() not in body
        assert HONEST not in json.dumps({str(k): str(v) for k, v in
                                         (properties.headers or {}).items()})
    return "then an honest create and read answered 200, a replay 200"


@pytest.mark.parametrize("row", ROWS, ids=[f"{row.queue}: {row.label}" for row in ROWS])
def test_one_message_never_stops_a_consumer(
    row: Row, attacked: RunningSystem, client_user: BrokerUser, honest: Sender,
    victim: tuple[pika.BlockingConnection, str],
) -> None:
    system = attacked
    attacker = Sender(client_user.url, system.names)
    try:
        sent = send(row, system, attacker, victim[1])
        honestly = assert_still_serving(system, honest)  # right behind the row
        outcome = check(sent, system, attacker, victim[0])
    finally:
        attacker.close()
    print(f"\n{row.queue}: {row.label}: {outcome}; {honestly}", end="")


def test_a_reply_the_broker_chokes_on_costs_only_that_reply_in_a_batch_of_honest_ones(
    attacked: RunningSystem, client_user: BrokerUser, honest: Sender,
) -> None:
    """The poisoned reply and twenty honest ones in flight together on the reply connection:
    every honest command is answered, the poisoned one took effect and is not dead."""
    attacker = Sender(client_user.url, attacked.names)
    token = f"{HONEST}-{uuid.uuid4().hex[:8]}"
    message_ids = [str(uuid.uuid4()) for _ in range(20)]

    def publish_honestly(some: list[str]) -> None:
        for message_id in some:
            honest.publish(attacked.names.commands, CREATE_HONEST, pika.BasicProperties(
                message_id=message_id, reply_to=DIRECT_REPLY_TO,
                headers={"Authorization": f"Bearer {token}"}))

    try:
        # Published together, without waiting: they are handled in one batch or two, and
        # their replies are in flight with the poisoned one.
        publish_honestly(message_ids[:10])
        poisoned = send(Row("made-up reply-to in a batch", "commands",
                            reply_to=MADE_UP_REPLY_TO, expect="effect, no reply"),
                        attacked, attacker, "")
        publish_honestly(message_ids[10:])
        statuses = [honest.wait(message_id, bool)[0].status for message_id in message_ids]
        outcome = check_effect(poisoned, attacked, attacker)
    finally:
        attacker.close()
    assert statuses == [200] * 20
    assert disconnections(attacked) == []
    print(f"\n20 honest creates sent with a made-up reply-to among them: {statuses.count(200)} "
          f"answered 200; the poisoned one {outcome}", end="")


def test_the_rows_left_no_trace_of_a_lost_connection(attacked: RunningSystem) -> None:
    """Run last: across every row, no consumer lost the connection it consumes on."""
    assert disconnections(attacked) == []
    assert not [line for line in attacked.output().splitlines() if "Traceback" in line]
