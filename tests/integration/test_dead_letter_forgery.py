"""Forged and hostile dead letters: `thelca dead` never runs one with the operator's rights.

Anyone who may publish to the default exchange (the README's client
permissions) may publish straight into `<prefix>.dead`, or have the broker
dead-letter a command of their choosing (an expiration of 1 ms), with any
headers and any bytes in its properties. The operator's tools must survive all
of it, show it escaped, say who sent each letter and how sure that is, and
run a letter with the operator's token only when told so.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from tests.integration.conftest import (
    BrokerUser,
    JwtSystem,
    queue_depth,
    readme_users,
    run_system,
    stand_in_worker,
    system_env,
    wait_for_consumers,
)
from tests.integration.plain import PlainClient
from tests.integration.test_dead_letters import EXPLODE, take_one, wait_until_ready
from thelca_client.contract import Names

pytestmark = pytest.mark.broker

FORGED_HEADERS = {"x-thelca-reason": "exception (error id 0123456789ab)",
                  "x-thelca-user": "alice", "x-thelca-reply-to": "nobody.listens"}


def thelca(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "thelca", *args], env=env, text=True,
                          capture_output=True, timeout=60, check=False)


def listed(env: dict[str, str], *args: str) -> dict[str, dict[str, Any]]:
    """`dead list --json`, by message_id."""
    result = thelca(env, "dead", "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return {m["message_id"]: m for m in json.loads(result.stdout)["messages"]}


def publish(url: str, exchange: str, routing_key: str, body: bytes,
            properties: pika.BasicProperties) -> None:
    """One confirmed publish, as the user of `url`."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(exchange, routing_key, body, properties)
    finally:
        connection.close()


def expire_into_the_dead_queue(url: str, names: Names, body: bytes,
                               properties: pika.BasicProperties) -> None:
    """Have the broker itself dead-letter a command: an expiration of 1 ms, nobody consuming."""
    before = queue_depth(_guest(url), names.dead)
    properties.expiration = "1"
    publish(url, "", names.commands, body, properties)
    wait_until_ready(_guest(url), names.dead, before + 1)


def _guest(url: str) -> str:
    return "amqp://guest:guest@" + url.split("@", 1)[1]


# ---------------------------------------------------------------- the attack


@pytest.fixture
def client(amqp_url: str, jwt_system: JwtSystem) -> Iterator[PlainClient]:
    plain = PlainClient(amqp_url, jwt_system.prefix)
    yield plain
    plain.close()


def test_mallory_s_forged_letters_never_run_as_the_operator(
    amqp_url: str, jwt_system: JwtSystem, client: PlainClient
) -> None:
    idp, names = jwt_system.idp, jwt_system.names
    created = client.send({"command": "create", "item": {"properties": {"owner": "alice"}}},
                          token=idp.token("alice"))
    item = created.body["item"]
    update = {"command": "update", "id": item["id"],
              "item": {**item, "properties": {"owner": "mallory"}}}
    mallory = idp.token("mallory", "items:read items:write")
    refused = client.send(update, token=mallory)
    assert refused.status == 403 and "items:admin" in refused.body["error"]

    body = json.dumps(update).encode()
    straight, expired, with_own_token = (f"{what}-{uuid.uuid4()}" for what in
                                         ("straight", "expired", "own-token"))
    # 1. Straight into the dead queue, with the worker's headers forged.
    publish(amqp_url, "", names.dead, body,
            pika.BasicProperties(message_id=straight, headers=dict(FORGED_HEADERS)))
    # 2. and 3. Dead-lettered by the broker itself, without a token and with her own.
    jwt_system.stop("worker")
    expire_into_the_dead_queue(amqp_url, names, body, pika.BasicProperties(
        message_id=expired, headers=dict(FORGED_HEADERS)))
    expire_into_the_dead_queue(amqp_url, names, body, pika.BasicProperties(
        message_id=with_own_token,
        headers={**FORGED_HEADERS, "Authorization": f"Bearer {mallory}"}))
    jwt_system.start("worker")
    wait_for_consumers(amqp_url, names.commands, [jwt_system.processes["worker"]])

    letters = listed(jwt_system.env)
    assert letters[straight]["dead_lettered_by"] == "nobody"
    assert letters[straight]["exchange"] == ""
    assert letters[straight]["reason"] is None  # the forged reason is only a header
    assert letters[straight]["sender"]["known"] == "claimed"
    assert letters[expired]["dead_lettered_by"] == "broker"
    assert letters[expired]["deaths"][0] == {"reason": "expired", "queue": names.commands,
                                             "count": 1}
    assert letters[expired]["sender"] == {
        "user": "alice", "known": "claimed",
        "why": "x-thelca-user could be written by anyone: dead-lettered by the broker "
               "(x-death): the worker never saw it"}
    assert letters[with_own_token]["sender"]["known"] == "token"
    table = thelca(jwt_system.env, "dead", "list").stdout
    assert "the default exchange (published straight into the queue)" in table
    assert "sender  alice [claimed: x-thelca-user could be written by anyone" in table

    # The documented operator's command, with an admin token, told to act as the operator.
    operator = idp.token("operator", "items:read items:write items:admin")
    result = thelca({**jwt_system.env, "THELCA_TOKEN": operator}, "dead", "retry", "--all",
                    "--as-operator")
    print(result.stdout)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"skipped  {straight}: not dead-lettered by the worker or the broker" in result.stdout
    assert f"skipped  {expired}: no token and its sender is not known for certain" \
        in result.stdout
    assert f"retried  {with_own_token}: with its own token" in result.stdout
    assert "retried 1, not retried 2" in result.stdout
    assert operator not in result.stdout + result.stderr

    # Her own token got her own answer: 403, audited as hers; the item is alice's still.
    (audit,) = jwt_system.events_for(with_own_token)
    assert audit["type"] == "Access refused" and audit["user"] == "mallory"
    read = client.send({"command": "read", "id": item["id"]}, token=idp.token("alice"))
    assert read.body["item"]["properties"] == {"owner": "alice"}
    assert read.body["version"] == 1
    assert not [e for e in jwt_system.log_lines() if e["type"] == "Item updated"]
    assert set(listed(jwt_system.env)) == {straight, expired}

    # Named, and told so, the operator may run the broker's letter: retry_of says unknown.
    named = thelca({**jwt_system.env, "THELCA_TOKEN": operator}, "dead", "retry",
                   "--message-id", expired, straight, "--as-operator")
    assert f"retried  {expired}: as the user of the operator's token (sent by unknown)" \
        in named.stdout
    assert f"skipped  {straight}: not dead-lettered" in named.stdout
    (updated,) = jwt_system.events_for(expired)
    assert updated["type"] == "Item updated"
    assert updated["user"] == "operator" and updated["retry_of"] is None


def test_a_command_not_run_for_its_reply_to_is_never_sent_back(
    amqp_url: str, worker: Names, tmp_path: Path
) -> None:
    env = system_env(amqp_url, worker.prefix, tmp_path)
    hijack = f"hijack-{uuid.uuid4()}"
    publish(amqp_url, "", worker.commands, json.dumps(EXPLODE).encode(), pika.BasicProperties(
        message_id=hijack, reply_to=worker.events_log, headers={"Authorization": "Bearer a"}))
    wait_until_ready(amqp_url, worker.dead, 1)
    assert listed(env)[hijack]["dead_lettered_by"] == "worker"
    result = thelca(env, "dead", "retry", "--message-id", hijack, "--as-operator", "--token",
                    "operator")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"skipped  {hijack}: its reply_to names one of thelca's own queues" in result.stdout
    assert queue_depth(amqp_url, worker.dead) == 1


# ---------------------------------------------------------------- per-role broker users


@pytest.fixture
def users(amqp_url: str, prefix: str) -> Iterator[dict[str, BrokerUser]]:
    with readme_users(amqp_url, prefix) as made:
        yield made


def test_with_per_role_users_only_the_worker_s_user_id_vouches_for_the_sender(
    amqp_url: str, prefix: str, tmp_path: Path, users: dict[str, BrokerUser]
) -> None:
    names = Names(prefix)
    alice = str(uuid.uuid4())
    with stand_in_worker(users["worker"].url, prefix, tmp_path):
        sender = PlainClient(users["client"].url, prefix)
        try:
            assert sender.send(EXPLODE, token="alice", message_id=alice).status == 500
        finally:
            sender.close()
        wait_until_ready(amqp_url, names.dead, 1)
    # A client cannot write to the dead-letter exchange; a broker user that may (here the
    # logger's, which dead-letters events) is not the worker, and its user_id says so.
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        publish(users["client"].url, names.dead, "", b"{}", pika.BasicProperties())
    forged = f"forged-{uuid.uuid4()}"
    publish(users["logger"].url, names.dead, "", json.dumps(EXPLODE).encode(),
            pika.BasicProperties(message_id=forged, user_id=users["logger"].name,
                                 headers={**FORGED_HEADERS,
                                          "x-thelca-user": "a-test-only-id-alice"}))

    operator = system_env(users["operator"].url, prefix, tmp_path,
                          THELCA_WORKER_BROKER_USER=users["worker"].name)
    checked = listed(operator)
    assert checked[alice]["user_id"] == users["worker"].name
    assert checked[alice]["sender"]["user"] == "a-test-only-id-alice"
    assert checked[alice]["sender"]["known"] == "certain"
    assert checked[forged]["dead_lettered_by"] == "unknown"
    assert checked[forged]["sender"]["known"] == "claimed"
    unchecked = listed({k: v for k, v in operator.items() if k != "THELCA_WORKER_BROKER_USER"})
    assert unchecked[forged]["sender"]["known"] == "likely"  # why --worker-user matters

    (tmp_path / "system").mkdir()
    with run_system(amqp_url, prefix, tmp_path / "system") as system:
        result = thelca({**operator, "THELCA_TOKEN": "operator"}, "dead", "retry", "--all",
                        "--as-operator")
        print(result.stdout)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"retried  {alice}: as the user of the operator's token (sent by " \
            "a-test-only-id-alice)" in result.stdout
        assert f"skipped  {forged}: not dead-lettered" in result.stdout
        (event,) = system.events_for(alice)
        assert event["user"] == "a-test-only-id-operator"
        assert event["retry_of"] == "a-test-only-id-alice"
        assert set(listed(operator)) == {forged}


# ---------------------------------------------------------------- letters of any bytes


ODD_HEADERS: dict[Any, Any] = {
    b"\xff-key": b"\xfe\xff",
    "escape": "\x1b[31mred\nnext line",
    "nested": {"deep": [1, b"\xff", None, True, Decimal("1.5"),
                        datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)]},
    "big": 2**62,
    "none": None,
}


def odd_properties(message_id: bytes, **headers: Any) -> pika.BasicProperties:
    """Properties that are not UTF-8: pika writes bytes as they are (its stubs say str)."""
    raw: dict[str, Any] = {"message_id": message_id, "correlation_id": b"\xc3(",
                           "reply_to": b"\xff.reply", "type": b"\xfe", "app_id": b"\xff"}
    return pika.BasicProperties(content_type="application/json",
                                headers={**ODD_HEADERS, **headers}, **raw)


def test_the_dead_tools_survive_letters_of_any_bytes_and_show_them_escaped(
    amqp_url: str, topology: Names, tmp_path: Path
) -> None:
    env = system_env(amqp_url, topology.prefix, tmp_path)
    command = json.dumps({"command": "create", "item": {"properties": {}}}).encode()
    # Straight into the queue, through the dead-letter exchange, and by the broker.
    publish(amqp_url, "", topology.dead, b"\xff\xfe not json",
            odd_properties(b"\xff\xfe-poison", **{"x-thelca-user": b"\xffmallory\x1b[2J"}))
    publish(amqp_url, topology.dead, "", command,
            odd_properties(b"\xff\xfe-retry", **FORGED_HEADERS))
    expire_into_the_dead_queue(amqp_url, topology, command, odd_properties(
        b"\xfe-expired", Authorization="Bearer sekrit-odd-token"))
    wait_until_ready(amqp_url, topology.dead, 3)

    table = thelca(env, "dead", "list")
    assert table.returncode == 0, table.stderr
    print(table.stdout)
    assert "\x1b" not in table.stdout and "Traceback" not in table.stderr
    assert r"message_id \xff\xfe-poison  correlation_id \xc3(" in table.stdout
    assert r"\\xffmallory\x1b[2J" in table.stdout or r"\xffmallory\x1b[2J" in table.stdout
    letters = listed(env)
    assert set(letters) == {r"\xff\xfe-poison", r"\xff\xfe-retry", r"\xfe-expired"}
    poison = letters[r"\xff\xfe-poison"]
    assert poison["body"] == r"\xff\xfe not json"
    assert poison["reply_to"] == r"\xff.reply"
    assert poison["headers"][r"\xff-key"] == r"\xfe\xff"
    assert poison["headers"]["nested"] == {
        "deep": [1, r"\xff", None, True, "1.5", "2024-01-02T03:04:05+00:00"]}
    assert poison["headers"]["big"] == 2**62 and poison["headers"]["none"] is None
    assert poison["user"] == r"\xffmallory" + "\x1b[2J"
    expired = letters[r"\xfe-expired"]
    assert expired["token"] == "present" and "Authorization" not in expired["headers"]
    assert "sekrit-odd-token" not in table.stdout + json.dumps(letters)

    retried = thelca(env, "dead", "retry", "--all", "--as-operator", "--token", "operator")
    print(retried.stdout)
    assert retried.returncode == 1, retried.stdout + retried.stderr
    assert "Traceback" not in retried.stderr and "\x1b" not in retried.stdout
    assert r"skipped  \xff\xfe-poison: not dead-lettered" in retried.stdout
    assert r"retried  \xff\xfe-retry: as the user of the operator's token (sent by alice)" \
        in retried.stdout
    assert r"retried  \xfe-expired: with its own token" in retried.stdout
    sent: dict[Any, Any] = {}  # pika hands ids that are not UTF-8 over as bytes
    for _ in range(2):
        properties, body = take_one(amqp_url, topology.commands)
        sent[properties.message_id] = properties
        assert body == command
    # The raw ids go back as they came, with the odd headers; the bookkeeping does not.
    assert set(sent) == {b"\xff\xfe-retry", b"\xfe-expired"}
    as_operator = sent[b"\xff\xfe-retry"]
    assert as_operator.correlation_id == b"\xc3("
    assert as_operator.reply_to == "nobody.listens"  # the worker-style x-thelca-reply-to
    headers: dict[Any, Any] = dict(as_operator.headers or {})
    assert headers["Authorization"] == "Bearer operator"
    assert headers["x-thelca-retry-of"] == "alice"
    assert headers[b"\xff-key"] == b"\xfe\xff" and headers["big"] == 2**62
    assert not [h for h in headers if isinstance(h, str) and h.startswith(
        ("x-death", "x-first-death", "x-thelca-reason", "x-thelca-user"))]
    own = dict(sent[b"\xfe-expired"].headers or {})
    assert own["Authorization"] == "Bearer sekrit-odd-token"
    assert sent[b"\xfe-expired"].reply_to == b"\xff.reply"

    named = thelca(env, "dead", "retry", "--message-id", r"\xff\xfe-poison")
    assert named.returncode == 1 and "Traceback" not in named.stderr
    assert r"skipped  \xff\xfe-poison: not dead-lettered" in named.stdout
    assert queue_depth(amqp_url, topology.dead) == 1
