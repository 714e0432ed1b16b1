"""Hostile input: each row gets a clear 4xx, and the worker goes on serving.

After every row a normal command must still be answered, so a row that
crashed or wedged the worker fails here rather than somewhere later.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import RunningSystem
from tests.integration.plain import PlainClient

pytestmark = pytest.mark.broker

BEARER = {"Authorization": "Bearer abcd"}


def _nested(depth: int) -> bytes:
    return b'{"command": "create", "item": {"properties": {"a": ' + b"[" * depth + \
        b"]" * depth + b"}}}"


# (label, body, headers, expected status, words the error must contain)
ROWS: list[tuple[str, bytes, dict[str, Any], int, str]] = [
    ("over the size limit", b'{"command": "create", "x": "' + b"a" * (1 << 20) + b'"}',
     BEARER, 413, "limit"),
    ("empty body", b"", BEARER, 400, "not a JSON string"),
    ("not JSON", b"\x00\x01binary", BEARER, 400, "not a JSON string"),
    ("invalid UTF-8", b'{"command": "create", "item": {"properties": {"a": "\xff"}}}',
     BEARER, 400, "not a JSON string"),
    ("lone surrogate", b'{"command": "create", "item": {"properties": {"a": "\\ud800"}}}',
     BEARER, 400, "not a JSON string"),
    ("NaN", b'{"command": "create", "item": {"properties": {"a": NaN}}}', BEARER, 400,
     "not a JSON string"),
    ("infinite number", b'{"command": "create", "item": {"properties": {"a": 1e999}}}',
     BEARER, 400, "not a JSON string"),
    ("deeply nested body", b"[" * 200_000 + b"]" * 200_000, BEARER, 400, "not a JSON string"),
    ("deeply nested properties", _nested(100), BEARER, 400, "deeper than"),
    ("trailing garbage", b'{"command": "read", "id": "x"} trailing', BEARER, 400,
     "not a JSON string"),
    ("array", b"[]", BEARER, 400, "JSON object"),
    ("null", b"null", BEARER, 400, "JSON object"),
    ("number", b"12", BEARER, 400, "JSON object"),
    ("unknown command", b'{"command": "delete", "id": "x"}', BEARER, 400, "command"),
    ("command of wrong type", b'{"command": ["create"]}', BEARER, 400, "command"),
    ("id of wrong type", b'{"command": "read", "id": {"$ne": null}}', BEARER, 400, "id"),
    ("item of wrong type", b'{"command": "create", "item": "x"}', BEARER, 400, "item"),
    ("properties of wrong type", b'{"command": "create", "item": {"properties": [1]}}',
     BEARER, 400, "properties"),
    ("created_by of wrong type", b'{"command": "create", "item": {"created_by": 5}}',
     BEARER, 400, "created_by"),
    ("expected_version as float", b'{"command": "update", "id": "x", "item": {}, '
     b'"expected_version": 1.5}', BEARER, 400, "expected_version"),
    ("expected_version absurd", b'{"command": "update", "id": "x", "item": {}, '
     b'"expected_version": 100000000000000000000000000000}', BEARER, 400, "expected_version"),
    ("no headers", b'{"command": "create"}', {}, 401, "no Authorization"),
    ("two Authorization headers", b'{"command": "create"}',
     {"Authorization": "Bearer abcd", "authorization": "Bearer efgh"}, 401, "more than one"),
    ("Authorization not a string", b'{"command": "create"}', {"Authorization": 42}, 401,
     "not a string"),
    ("Authorization a table", b'{"command": "create"}', {"Authorization": {"a": "b"}}, 401,
     "not a string"),
    ("Basic scheme", b'{"command": "create"}', {"Authorization": "Basic YTpi"}, 401, "Bearer"),
    ("Bearer without token", b'{"command": "create"}', {"Authorization": "Bearer"}, 401,
     "empty"),
]


@pytest.fixture(scope="module")
def client(shared_system: RunningSystem) -> Iterator[PlainClient]:
    plain = PlainClient(shared_system.amqp_url, shared_system.prefix)
    yield plain
    plain.close()


@pytest.mark.parametrize(("label", "body", "headers", "status", "words"), ROWS,
                         ids=[row[0] for row in ROWS])
def test_hostile_input_gets_a_clear_4xx_and_the_worker_goes_on(
    client: PlainClient, label: str, body: bytes, headers: dict[str, Any], status: int,
    words: str,
) -> None:
    reply = client.send(body, headers=headers)
    assert reply.status == status, reply.body
    assert words in reply.body["error"]
    assert reply.properties.headers == {"status": status}
    healthy = client.send({"command": "create", "item": {"properties": {"after": label}}})
    assert healthy.status == 200


def test_a_huge_integer_is_kept_as_a_number_not_a_crash(client: PlainClient) -> None:
    body = b'{"command": "create", "item": {"properties": {"n": 123456789012345678901234567890}}}'
    reply = client.send(body)
    assert reply.status == 200
    assert isinstance(reply.body["item"]["properties"]["n"], int | float)


def test_strings_with_nul_and_unicode_round_trip(client: PlainClient) -> None:
    properties = {"nul": "a\u0000b", "emoji": "\U0001f600", "rtl": "\u202eabc", "": "empty key"}
    created = client.send({"command": "create", "item": {"properties": properties}})
    assert created.status == 200
    read = client.send({"command": "read", "id": created.body["item"]["id"]})
    assert read.body["item"]["properties"] == properties


def test_a_message_id_reused_for_another_command_is_409_not_the_first_reply(
    client: PlainClient,
) -> None:
    """As payment APIs treat a reused idempotency key: the record is not another
    command's answer, and the other command is not run either."""
    message_id = str(uuid.uuid4())
    first = client.send({"command": "create"}, message_id=message_id)
    other = client.send({"command": "update", "id": first.body["item"]["id"], "item": {}},
                        message_id=message_id)
    assert other.body == {"status": 409,
                          "error": "message_id already used for a different command"}
    again = client.send({"command": "read", "id": first.body["item"]["id"]})
    assert again.body["version"] == 1


def test_duplicate_json_keys_take_the_last_value(client: PlainClient) -> None:
    reply = client.send(b'{"command": "read", "command": "create"}')
    assert reply.status == 200  # as every JSON parser in the field does: last wins
    assert json.dumps(reply.body["item"]["properties"]) == "{}"
