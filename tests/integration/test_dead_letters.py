"""`thelca dead list` and `thelca dead retry` as an operator runs them, against the real broker.

A 500 comes from the stand-in Authority of conftest, which breaks on
`"explode": true`; the real worker's test-only Authority does not, so the same
command succeeds once it is retried there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pika
import pytest

from tests.integration.conftest import (
    RunningSystem,
    queue_depth,
    stand_in_worker,
    system_env,
    wait_for_consumers,
)
from tests.integration.plain import PlainClient
from thelca_client.contract import Names

pytestmark = pytest.mark.broker

EXPLODE = {"command": "create", "item": {"properties": {"explode": True}}}
SECRET = "sekrit-123"


def thelca(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "thelca", *args], env=env, text=True,
                          capture_output=True, timeout=60, check=False)


def dead_list(env: dict[str, str]) -> dict[str, Any]:
    result = thelca(env, "dead", "list", "--json")
    assert result.returncode == 0, result.stderr
    listed: dict[str, Any] = json.loads(result.stdout)
    return listed


def wait_until_ready(amqp_url: str, queue: str, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while queue_depth(amqp_url, queue) != count:
        assert time.monotonic() < deadline, f"{queue} never held {count} message(s)"
        time.sleep(0.05)


def explode(amqp_url: str, names: Names, *, token: str = "abcd") -> str:
    """Send a command that fails with 500, and wait until it is in the dead queue."""
    before = queue_depth(amqp_url, names.dead)
    client = PlainClient(amqp_url, names.prefix)
    try:
        message_id = str(uuid.uuid4())
        assert client.send(EXPLODE, token=token, message_id=message_id).status == 500
    finally:
        client.close()
    wait_until_ready(amqp_url, names.dead, before + 1)
    return message_id


@pytest.fixture
def env(amqp_url: str, prefix: str, tmp_path: Path) -> dict[str, str]:
    return system_env(amqp_url, prefix, tmp_path)


# ---------------------------------------------------------------- list


def test_a_500_shows_in_dead_list_with_its_reason_and_no_token(
    amqp_url: str, worker: Names, env: dict[str, str]
) -> None:
    message_id = explode(amqp_url, worker, token="secret-token-123")
    table = thelca(env, "dead", "list")
    assert table.returncode == 0, table.stderr
    assert f"{worker.dead}: 1 message(s)" in table.stdout
    assert message_id in table.stdout
    assert "exception (error id" in table.stdout and "[worker]" in table.stdout
    assert "token   absent" in table.stdout
    (listed,) = dead_list(env)["messages"]
    assert listed["message_id"] == message_id
    assert listed["reason"].startswith("exception (error id")
    assert listed["user"] == "a-test-only-id-secret-token-123"
    assert listed["token"] == "absent"
    assert json.loads(listed["body"]) == EXPLODE
    assert "Bearer" not in table.stdout + json.dumps(listed)


def test_the_worker_s_dead_letter_keeps_none_of_the_bookkeeping_a_client_wrote(
    amqp_url: str, worker: Names, env: dict[str, str]
) -> None:
    client = PlainClient(amqp_url, worker.prefix)
    message_id = str(uuid.uuid4())
    forged = {"Authorization": "Bearer carol", "x-thelca-user": "alice",
              "x-thelca-reason": "forged", "x-thelca-retry-of": "alice", "x-keep": "kept",
              "x-death": [{"reason": "expired", "queue": worker.commands, "count": 1}],
              "x-first-death-queue": worker.commands}
    try:
        assert client.send(EXPLODE, headers=forged, message_id=message_id).status == 500
    finally:
        client.close()
    wait_until_ready(amqp_url, worker.dead, 1)
    (letter,) = dead_list(env)["messages"]
    assert letter["dead_lettered_by"] == "worker" and letter["deaths"] == []
    assert letter["user"] == letter["sender"]["user"] == "a-test-only-id-carol"
    assert letter["reason"].startswith("exception (error id")
    assert "x-thelca-retry-of" not in letter["headers"] and "x-death" not in letter["headers"]
    assert letter["headers"]["x-keep"] == "kept"


def test_listing_twice_leaves_the_queue_as_it_was(
    amqp_url: str, worker: Names, env: dict[str, str]
) -> None:
    ids = [explode(amqp_url, worker) for _ in range(3)]
    first, second = dead_list(env), dead_list(env)
    assert first == second
    assert first["count"] == 3
    assert [m["message_id"] for m in first["messages"]] == ids
    assert [m["position"] for m in first["messages"]] == [1, 2, 3]
    limited = thelca(env, "dead", "list", "--limit", "1")
    assert "3 message(s); showing the first 1" in limited.stdout
    assert ids[0] in limited.stdout and ids[1] not in limited.stdout
    assert dead_list(env) == first
    assert queue_depth(amqp_url, worker.dead) == 3


def test_the_table_truncates_the_body_and_json_keeps_it_whole(
    amqp_url: str, worker: Names, env: dict[str, str]
) -> None:
    client = PlainClient(amqp_url, worker.prefix)
    body = {"command": "create", "item": {"properties": {"explode": True, "pad": "x" * 300}}}
    try:
        assert client.send(body).status == 500
    finally:
        client.close()
    wait_until_ready(amqp_url, worker.dead, 1)
    table = thelca(env, "dead", "list").stdout
    assert "x" * 300 not in table and "..." in table
    assert json.loads(dead_list(env)["messages"][0]["body"]) == body


# ---------------------------------------------------------------- retry


def test_retry_as_operator_runs_the_command_again_and_the_event_names_both_users(
    amqp_url: str, system: RunningSystem, tmp_path: Path
) -> None:
    names = system.names
    system.stop("worker")
    with stand_in_worker(amqp_url, system.prefix, tmp_path):
        client = PlainClient(amqp_url, system.prefix)
        message_id = str(uuid.uuid4())
        assert client.send(EXPLODE, token="alice", message_id=message_id).status == 500
        wait_until_ready(amqp_url, names.dead, 1)
    system.start("worker")
    wait_for_consumers(amqp_url, names.commands, [system.processes["worker"]])

    mine = thelca(system.env, "dead", "retry", "--message-id", message_id, "--token", "abcd")
    assert mine.returncode == 1  # a token without --as-operator is not used
    assert "it is not used" in mine.stdout and f"skipped  {message_id}: no token" in mine.stdout
    assert thelca(system.env, "dead", "retry", "--all", "--as-operator").returncode == 2

    result = thelca(system.env, "dead", "retry", "--message-id", message_id, "--as-operator",
                    "--token", "abcd")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (f"retried  {message_id}: as the user of the operator's token (sent by "
            "a-test-only-id-alice)") in result.stdout
    assert "the letter's sender as retry_of" in result.stdout
    assert "abcd" not in result.stdout.replace("a-test-only-id-abcd", "")
    assert queue_depth(amqp_url, names.dead) == 0

    reply = wait_for_reply(client, message_id)  # reply_to came back from x-thelca-reply-to
    client.close()
    assert reply.status == 200
    marker = json.loads(thelca(system.env, "publish", "create", "--token", "abcd",
                               "--no-wait").stdout)["message_id"]
    system.events_for(marker)  # one logger, in order: every earlier event is in the log
    (created,) = system.events_for(message_id)
    assert created["type"] == "Item created"
    assert created["value"]["properties"] == {"explode": True}
    assert created["user"] == "a-test-only-id-abcd"  # authorised as the operator
    assert created["retry_of"] == "a-test-only-id-alice"  # and whose letter it was
    assert "retry_of" not in system.events_for(marker)[0]


def test_a_client_s_own_retry_of_header_is_information_never_a_right(
    amqp_url: str, system: RunningSystem
) -> None:
    client = PlainClient(amqp_url, system.prefix)
    sent = {}
    try:
        for what, value in (("text", "alice"), ("unprintable", "al\nice"), ("bytes", b"x")):
            sent[what] = str(uuid.uuid4())
            reply = client.send({"command": "create", "item": {"properties": {}}},
                                headers={"Authorization": "Bearer mallory",
                                         "x-thelca-retry-of": value}, message_id=sent[what])
            assert reply.status == 200
            assert reply.body["item"]["created_by"] == "a-test-only-id-mallory"
    finally:
        client.close()
    (said,) = system.events_for(sent["text"])
    assert said["user"] == "a-test-only-id-mallory" and said["retry_of"] == "alice"
    for what in ("unprintable", "bytes"):
        assert "retry_of" not in system.events_for(sent[what])[0]


def wait_for_reply(client: PlainClient, correlation_id: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while correlation_id not in client._replies:
        assert time.monotonic() < deadline, "the retried command's reply never came"
        client.connection.process_data_events(time_limit=0.1)
    return client._replies.pop(correlation_id)


def test_retry_without_any_token_leaves_the_message_and_exits_1(
    amqp_url: str, worker: Names, env: dict[str, str]
) -> None:
    message_id = explode(amqp_url, worker)
    result = thelca(env, "dead", "retry", "--message-id", message_id)
    assert result.returncode == 1
    assert f"skipped  {message_id}: no token" in result.stdout
    assert "retried 0, not retried 1" in result.stdout
    assert [m["message_id"] for m in dead_list(env)["messages"]] == [message_id]


def test_retry_of_an_unknown_message_id_exits_1_and_touches_nothing(
    amqp_url: str, worker: Names, env: dict[str, str]
) -> None:
    message_id = explode(amqp_url, worker)
    before = dead_list(env)
    result = thelca(env, "dead", "retry", "--message-id", "no-such-id", "--token", "abcd")
    assert result.returncode == 1
    assert "not found no-such-id" in result.stdout
    assert dead_list(env) == before
    assert before["messages"][0]["message_id"] == message_id


def test_retry_all_of_a_command_that_fails_again_ends_and_leaves_it_dead(
    amqp_url: str, worker: Names, env: dict[str, str]
) -> None:
    ids = [explode(amqp_url, worker) for _ in range(2)]
    result = thelca(env, "dead", "retry", "--all", "--as-operator", "--token", "abcd")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "retried 2, not retried 0" in result.stdout
    wait_until_ready(amqp_url, worker.dead, 2)  # the stand-in broke on them again
    assert sorted(m["message_id"] for m in dead_list(env)["messages"]) == sorted(ids)


# ---------------------------------------------------------------- dead-lettered by the broker


def poison_past_the_delivery_limit(amqp_url: str, names: Names) -> str:
    """Publish a command with a token and refuse it until the broker dead-letters it."""
    message_id = str(uuid.uuid4())
    before = queue_depth(amqp_url, names.dead)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", names.commands, json.dumps(EXPLODE).encode(),
                              pika.BasicProperties(
                                  message_id=message_id, correlation_id="corr-1",
                                  reply_to="somebody.replies", delivery_mode=2,
                                  headers={"Authorization": f"Bearer {SECRET}", "x-keep": 1}),
                              mandatory=True)
        refusals = 0
        while True:
            method, _, _ = channel.basic_get(names.commands, auto_ack=False)
            if method is None:
                break
            # basic_reject, not basic_nack: from RabbitMQ 4.3 a requeueing nack no longer
            # counts towards the delivery limit; a reject does, on every version.
            channel.basic_reject(int(method.delivery_tag or 0), requeue=True)
            refusals += 1
        assert refusals == 21  # x-delivery-limit 20: the 21st refusal dead-letters it
    finally:
        connection.close()
    wait_until_ready(amqp_url, names.dead, before + 1)
    return message_id


def test_the_broker_s_dead_letter_shows_x_death_and_never_the_token(
    amqp_url: str, topology: Names, env: dict[str, str]
) -> None:
    message_id = poison_past_the_delivery_limit(amqp_url, topology)
    table = thelca(env, "dead", "list")
    assert table.returncode == 0, table.stderr
    assert f"delivery_limit (queue {topology.commands}, count 1) [broker]" in table.stdout
    assert "token   present" in table.stdout
    listed = dead_list(env)
    (message,) = listed["messages"]
    assert message["message_id"] == message_id
    assert message["dead_lettered_by"] == "broker"
    assert message["deaths"] == [{"reason": "delivery_limit", "queue": topology.commands,
                                  "count": 1}]
    assert message["token"] == "present"
    assert SECRET not in table.stdout + table.stderr + json.dumps(listed)


def test_retry_of_the_broker_s_dead_letter_keeps_its_own_token(
    amqp_url: str, topology: Names, env: dict[str, str]
) -> None:
    message_id = poison_past_the_delivery_limit(amqp_url, topology)
    result = thelca(env, "dead", "retry", "--message-id", message_id)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"retried  {message_id}: with its own token" in result.stdout
    assert SECRET not in result.stdout + result.stderr
    assert queue_depth(amqp_url, topology.dead) == 0
    properties, body = take_one(amqp_url, topology.commands)
    assert json.loads(body) == EXPLODE
    assert properties.message_id == message_id
    assert properties.correlation_id == "corr-1"
    assert properties.reply_to == "somebody.replies"
    headers = dict(properties.headers or {})
    assert headers["Authorization"] == f"Bearer {SECRET}"
    assert headers["x-keep"] == 1
    assert not [h for h in headers if h.startswith(("x-death", "x-first-death", "x-thelca"))]
    assert headers.get("x-delivery-count", 0) == 0  # a fresh start towards the limit


def test_as_operator_a_letter_that_carries_its_own_token_still_runs_with_it(
    amqp_url: str, topology: Names, env: dict[str, str]
) -> None:
    poison_past_the_delivery_limit(amqp_url, topology)
    result = thelca({**env, "THELCA_TOKEN": "operator"}, "dead", "retry", "--all",
                    "--as-operator")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "with its own token" in result.stdout
    properties, _ = take_one(amqp_url, topology.commands)
    headers = dict(properties.headers or {})
    assert [h for h in headers if h.lower() == "authorization"] == ["Authorization"]
    assert headers["Authorization"] == f"Bearer {SECRET}"
    assert "x-thelca-retry-of" not in headers  # it runs as its sender: nothing to record


def take_one(amqp_url: str, queue: str) -> tuple[pika.BasicProperties, bytes]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        method, properties, body = connection.channel().basic_get(queue, auto_ack=True)
        assert method is not None and properties is not None and body is not None
        return properties, body
    finally:
        connection.close()


def test_retry_skips_what_is_not_a_command(
    amqp_url: str, topology: Names, env: dict[str, str]
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(topology.dead, "", b"[1, 2]", pika.BasicProperties(
            message_id="an-event", headers={"x-thelca-reason": "logger: not an object"}))
    finally:
        connection.close()
    wait_until_ready(amqp_url, topology.dead, 1)
    result = thelca(env, "dead", "retry", "--all", "--as-operator", "--token", "abcd")
    assert result.returncode == 1
    assert "skipped  an-event: not a command" in result.stdout
    assert queue_depth(amqp_url, topology.dead) == 1
    assert queue_depth(amqp_url, topology.commands) == 0


# ---------------------------------------------------------------- no broker, no queue


def test_no_broker_or_no_queue_exits_3(env: dict[str, str]) -> None:
    nowhere = {**env, "THELCA_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2F"}
    assert thelca(nowhere, "dead", "list").returncode == 3
    retry = thelca(nowhere, "dead", "retry", "--all", "--as-operator", "--token", "abcd")
    assert retry.returncode == 3
    assert "no broker answered" in retry.stderr
    missing = thelca(env, "dead", "list")  # nothing was ever declared for this prefix
    assert missing.returncode == 3
    assert f"no queue {env['THELCA_PREFIX']}.dead" in missing.stderr


@pytest.mark.parametrize("verb", ["list", "retry"])
def test_help_says_who_the_retried_command_runs_as(verb: str) -> None:
    result = subprocess.run([sys.executable, "-m", "thelca", "dead", verb, "--help"],
                            text=True, capture_output=True, timeout=30, check=False)
    assert result.returncode == 0
    assert "usage: thelca dead" in result.stdout
    if verb == "retry":
        text = " ".join(result.stdout.split())
        assert "runs as that token's user" in text and "--as-operator" in text
        assert "not known for certain" in text
