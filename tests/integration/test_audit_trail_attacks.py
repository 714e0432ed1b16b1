"""Issue 10, the worker's side, tried as an attacker would.

The attacker is a broker user created here with exactly the README's client
permissions (`'^$' '^amq\\.default$' '^$'`): it may publish to the default
exchange, so to any queue by name, and nothing else. Against the real worker,
logger and replay consumer (jwt Authority) it tries to:

- have a reply written into thelca: a command or a replay request whose
  reply_to is the log's queue, the commands queue or the dead letters;
- act without a trace under a reused message_id: reads of other items,
  forged tokens;
- pass another command off as a redelivery of a remembered one;
- start a line in a process's own log with a property holding a line break.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pika
import pytest

from tests.idp import Idp
from tests.integration.conftest import JwtSystem, run_prepared, system_env
from thelca.devkeys import KeyPair
from thelca.stores.sqlite import SQLiteStore
from thelca_client.contract import DEAD_REASON_HEADER, Names

pytestmark = pytest.mark.broker

CLIENT_PERMISSIONS = ("^$", r"^amq\.default$", "^$")  # the README's thelca-client line
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
EVENT_TYPES = {"Item created", "Item read", "Item updated", "Access refused"}
DIFFERENT_COMMAND = "message_id already used for a different command"


# ---------------------------------------------------------------- the system and the attacker


@pytest.fixture(scope="module")
def system(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JwtSystem]:
    """Worker, logger and replay consumer as real processes, with the jwt Authority."""
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    directory = tmp_path_factory.mktemp(prefix)
    idp = Idp.create(directory / "idp")
    running = JwtSystem(amqp_url, prefix, directory,
                        system_env(amqp_url, prefix, directory, **idp.env()), idp=idp)
    yield from run_prepared(running, ("worker", "logger", "replay"))


@pytest.fixture(scope="module")
def attacker_url(amqp_url: str, system: JwtSystem) -> Iterator[str]:
    """A broker user of this module's own with the client permissions, deleted afterwards."""
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("this test creates a broker user with rabbitmqctl: run it on the broker's "
                    "machine, as root")
    name, password = f"{system.prefix}-attacker", "p" + secrets.token_hex(16)
    broker = urlparse(amqp_url)
    _rabbitmqctl("add_user", name, password)
    try:
        _rabbitmqctl("set_permissions", "-p", "/", name, *CLIENT_PERMISSIONS)
        yield f"amqp://{name}:{password}@{broker.hostname}:{broker.port or 5672}/%2F"
    finally:
        subprocess.run(["rabbitmqctl", "delete_user", name], capture_output=True, timeout=60,
                       check=False)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


class Attacker:
    """Publishes anything to any queue by name through the default exchange, as the client
    permissions allow, and takes replies by direct reply-to."""

    def __init__(self, url: str, names: Names) -> None:
        self.names = names
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.replies: dict[str, dict[str, Any]] = {}
        self.channel.basic_consume(DIRECT_REPLY_TO, self._on_reply, auto_ack=True)

    def _on_reply(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self.replies[str(properties.correlation_id)] = json.loads(body)

    def publish(self, queue: str, body: bytes, *, token: str | None, reply_to: str | None,
                message_id: str | None = None, correlation_id: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        self.channel.basic_publish("", queue, body, pika.BasicProperties(
            reply_to=reply_to, message_id=message_id, correlation_id=correlation_id,
            headers=headers, delivery_mode=2), mandatory=True)

    def command(self, body: bytes | dict[str, Any], token: str, message_id: str,
                timeout: float = 30) -> dict[str, Any]:
        """Send a command with direct reply-to; its reply."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        correlation_id = str(uuid.uuid4())
        self.publish(self.names.commands, raw, token=token, reply_to=DIRECT_REPLY_TO,
                     message_id=message_id, correlation_id=correlation_id)
        deadline = time.monotonic() + timeout
        while correlation_id not in self.replies:
            assert time.monotonic() < deadline, f"no reply to {message_id}"
            self.connection.process_data_events(time_limit=0.1)
        return self.replies.pop(correlation_id)

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


@pytest.fixture
def attacker(attacker_url: str, system: JwtSystem) -> Iterator[Attacker]:
    client = Attacker(attacker_url, system.names)
    try:
        yield client
    finally:
        client.close()


# ---------------------------------------------------------------- what the system shows


def dead_letters_of(system: JwtSystem, wanted: str, timeout: float = 30) -> list[
        tuple[pika.BasicProperties, bytes]]:
    """The dead letters whose message_id or correlation_id is `wanted` (waiting for the
    first); every letter read is removed, so each test sees only its own."""
    found: list[tuple[pika.BasicProperties, bytes]] = []
    connection = pika.BlockingConnection(pika.URLParameters(system.amqp_url))
    try:
        channel = connection.channel()
        deadline = time.monotonic() + timeout
        while True:
            method, properties, body = channel.basic_get(system.names.dead, auto_ack=True)
            if method is None:
                if found or time.monotonic() > deadline:
                    return found
                time.sleep(0.1)
                continue
            assert properties is not None and body is not None
            if wanted in (properties.message_id, properties.correlation_id):
                found.append((properties, body))
    finally:
        connection.close()


def after_a_sentinel(system: JwtSystem, attacker: Attacker) -> list[dict[str, Any]]:
    """Send an honest create and return the log once its event is in it: whatever an
    attack made the worker publish before it (a reply, a command) is logged by then."""
    message_id = f"sentinel-{uuid.uuid4()}"
    reply = attacker.command({"command": "create"}, system.idp.token(), message_id)
    assert reply["status"] == 200
    lines = system.wait_for_log(
        lambda ls: any(line.get("command_id") == message_id for line in ls), timeout=30)
    assert any(line.get("command_id") == message_id for line in lines), "no sentinel event"
    return lines


def count_items(system: JwtSystem) -> int:
    reader = SQLiteStore(system.store_path, writer=False)
    try:
        return reader.count_items()
    finally:
        reader.close()


def assert_only_events(lines: list[dict[str, Any]]) -> None:
    """Every line of the log is an event: no reply, no end marker, no command."""
    strangers = [line for line in lines if line.get("type") not in EVENT_TYPES
                 or "status" in line]
    assert not strangers, strangers[:3]


def assert_dead_lettered_without_token(
    letters: list[tuple[pika.BasicProperties, bytes]], sent: bytes, reply_to: str, token: str,
) -> None:
    (properties, body), = letters  # the one letter: no reply went to the dead queue either
    assert body == sent
    headers = properties.headers or {}
    assert not {name for name in headers if name.lower() == "authorization"}
    assert token not in json.dumps(headers, default=str)
    reason = str(headers[DEAD_REASON_HEADER])
    assert "reply_to names thelca's own queue" in reason and reply_to in reason
    assert properties.reply_to is None  # a retry of it cannot publish there either


# ---------------------------------------------------------------- replies go to clients


@pytest.mark.parametrize("target", ["events_log", "commands", "dead"])
def test_a_command_whose_reply_to_is_thelca_s_own_queue_is_not_executed(
    system: JwtSystem, attacker: Attacker, target: str
) -> None:
    after_a_sentinel(system, attacker)  # the log has events that a hijack could copy
    reply_to = getattr(system.names, target)
    before, items = system.log_lines(), count_items(system)
    message_id, token = f"hijack-{uuid.uuid4()}", system.idp.token()
    sent = b'{"command": "create", "item": {}}'
    attacker.publish(system.names.commands, sent, token=token, reply_to=reply_to,
                     message_id=message_id)

    letters = dead_letters_of(system, message_id)
    lines = after_a_sentinel(system, attacker)
    assert_dead_lettered_without_token(letters + dead_letters_of(system, message_id, 0),
                                       sent, reply_to, token)
    new = lines[len(before):]
    assert [line["type"] for line in new] == ["Item created"]  # the sentinel's, only
    assert new[0]["command_id"].startswith("sentinel-")
    assert count_items(system) == items + 1  # the hijacked create was not executed
    assert_only_events(lines)
    assert f"{message_id}" in system.output()  # the worker's warning names it


@pytest.mark.parametrize("target", ["events_log", "commands", "dead"])
def test_a_replay_request_whose_reply_to_is_thelca_s_own_queue_is_not_answered(
    system: JwtSystem, attacker: Attacker, target: str
) -> None:
    after_a_sentinel(system, attacker)
    reply_to = getattr(system.names, target)
    before, items = system.log_lines(), count_items(system)
    correlation_id = f"hijack-{uuid.uuid4()}"
    token = system.idp.token(scope="items:read items:write events:read")
    attacker.publish(system.names.replay, b"{}", token=token, reply_to=reply_to,
                     correlation_id=correlation_id)

    letters = dead_letters_of(system, correlation_id)
    lines = after_a_sentinel(system, attacker)
    assert_dead_lettered_without_token(letters + dead_letters_of(system, correlation_id, 0),
                                       b"{}", reply_to, token)
    new = lines[len(before):]
    assert [line["type"] for line in new] == ["Item created"]  # no copied events, no 401s
    assert count_items(system) == items + 1
    assert_only_events(lines)


# ---------------------------------------------------------------- every action leaves its line


def test_five_reads_of_five_items_under_one_message_id_are_five_lines(
    system: JwtSystem, attacker: Attacker
) -> None:
    token = system.idp.token()
    ids = [attacker.command({"command": "create"}, token, str(uuid.uuid4()))["item"]["id"]
           for _ in range(5)]
    reused = f"reused-{uuid.uuid4()}"
    for item_id in ids:
        reply = attacker.command({"command": "read", "id": item_id}, token, reused)
        assert (reply["status"], reply["item"]["id"]) == (200, item_id)
    lines = system.wait_for_log(
        lambda ls: len([x for x in ls if x.get("command_id") == reused]) >= 5, timeout=30)
    reads = [line for line in lines if line.get("command_id") == reused]
    assert sorted(line["value"] for line in reads) == sorted(ids)
    assert {line["type"] for line in reads} == {"Item read"}
    assert len({line["id"] for line in reads}) == 5


def test_thirty_forged_tokens_under_one_message_id_are_thirty_lines(
    system: JwtSystem, attacker: Attacker
) -> None:
    stranger = KeyPair.generate("RS256", kid=system.idp.keys[0].kid)  # a known kid, not its key
    reused = f"probe-{uuid.uuid4()}"
    forged = [stranger.mint(system.idp.claims()) for _ in range(30)]  # each its own jti
    for token in forged:
        assert attacker.command({"command": "create"}, token, reused)["status"] == 401
    lines = system.wait_for_log(
        lambda ls: len([x for x in ls if x.get("command_id") == reused]) >= 30, timeout=30)
    refused = [line for line in lines if line.get("command_id") == reused]
    assert len(refused) == 30 and len({line["id"] for line in refused}) == 30
    assert {(line["type"], line["user"]) for line in refused} == {("Access refused", None)}
    text = system.event_log.read_text() + system.output()
    assert not [token for token in forged if token.split(".")[2] in text]


def test_another_create_under_a_used_message_id_is_409_and_creates_nothing(
    system: JwtSystem, attacker: Attacker
) -> None:
    token, message_id = system.idp.token(), f"used-{uuid.uuid4()}"
    first = attacker.command({"command": "create", "item": {"properties": {"n": 1}}}, token,
                             message_id)
    assert first["status"] == 200
    items = count_items(system)
    for other in ({"command": "create", "item": {"properties": {"n": 2}}},
                  {"command": "read", "id": first["item"]["id"]}):
        assert attacker.command(other, token, message_id) == {
            "status": 409, "error": DIFFERENT_COMMAND}
    lines = after_a_sentinel(system, attacker)
    assert count_items(system) == items + 1  # the sentinel's
    assert [line["type"] for line in lines if line.get("command_id") == message_id] == [
        "Item created"]


def test_the_same_create_sent_again_gets_its_first_reply_and_one_event(
    system: JwtSystem, attacker: Attacker
) -> None:
    token, message_id = system.idp.token(), f"again-{uuid.uuid4()}"
    body = b'{"command": "create", "item": {"properties": {"a": 1, "b": [1, 2]}}}'
    first = attacker.command(body, token, message_id)
    assert first["status"] == 200
    items = count_items(system)
    assert attacker.command(body, token, message_id) == first  # byte for byte
    reordered = b'{"item":{"properties":{"b":[1,2],"a":1}},\n "command":"create"}'
    assert attacker.command(reordered, token, message_id) == first
    assert attacker.command(reordered, system.idp.token(), message_id) == first  # new token
    lines = after_a_sentinel(system, attacker)
    assert count_items(system) == items + 1
    assert [line["type"] for line in lines if line.get("command_id") == message_id] == [
        "Item created"]


# ---------------------------------------------------------------- a process's own log


def test_a_property_with_a_line_break_starts_no_line_in_any_process_log(
    system: JwtSystem, attacker: Attacker
) -> None:
    forged = "2026-01-01 00:00:00,000 WARNING thelca: FORGED"
    for breaks in ("\n", "\r\n", "\u2028", "\u0085"):
        property_ = f"x{breaks}{forged}"
        attacker.publish(system.names.replay, b"{}", token="not-a-jwt", reply_to=DIRECT_REPLY_TO,
                         correlation_id=property_)
        attacker.publish(system.names.commands, b"{}", token="not-a-jwt",
                         reply_to=system.names.events_log, message_id=property_)
        attacker.publish(system.names.replay, b"{}", token="not-a-jwt",
                         reply_to=system.names.commands, correlation_id=property_)
        dead_letters_of(system, property_)
    after_a_sentinel(system, attacker)
    for role in ("worker", "logger", "replay"):
        text = (system.directory / f"{role}.out").read_text(errors="replace")
        starts = [line for line in text.splitlines() if line.startswith(forged)]
        assert not starts, (role, starts)
    replay_log = (system.directory / "replay.out").read_text()
    assert "FORGED" in replay_log  # it was logged, escaped, on the line it belongs to
    assert not [line for line in replay_log.split("\n") if "FORGED" in line
                and not line.startswith("20")], replay_log[-2000:]
