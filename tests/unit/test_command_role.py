"""The command role: every command has a handler, what it remembers, NUL in user ids.

The role runs here on a memory store (and PostgreSQL, for NUL) with the
test-only Authority; the same role against the real broker is tested in
tests/integration.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from thelca.authority.test_only import TestOnlyAuthority
from thelca.roles.commands import CommandRole
from thelca.roles.handlers import HANDLERS
from thelca.roles.messages import Incoming, Outgoing
from thelca.stores.memory import MemoryStore
from thelca.stores.postgres import PostgresStore
from thelca_client.contract import (
    COMMAND_TYPES,
    Names,
    authorization_headers,
    decode_reply,
    encode_command,
)

NAMES = Names("role-test")


def test_every_command_of_the_contract_has_a_handler_and_nothing_else_has() -> None:
    assert set(HANDLERS) == set(COMMAND_TYPES.values())


def test_reads_are_answered_afresh_and_writes_are_remembered() -> None:
    assert {kind.name: handler.remembered for kind, handler in HANDLERS.items()} == {
        "create": True, "read": False, "update": True,
        "create_link": True, "read_link": False, "update_link": True, "delete_link": True,
        "search_items": False, "search_links": False}


def _send(role: CommandRole, body: bytes, message_id: str) -> dict[str, Any]:
    message = Incoming(body, message_id=message_id, reply_to="replies",
                       headers=authorization_headers("alice"))
    (reply, *events) = role.handle([message])
    assert reply.routing_key == "replies"
    role.confirmed(events)
    return decode_reply(reply.body).to_json()


def test_a_create_sent_again_under_its_message_id_gets_the_first_reply() -> None:
    store = MemoryStore()
    role = CommandRole(store, TestOnlyAuthority(), NAMES, max_body=1 << 20)
    body = encode_command("create", item={"properties": {"n": 1}})
    first = _send(role, body, "m-create")
    assert _send(role, body, "m-create") == first
    assert store.count_items() == 1


def test_a_read_sent_again_under_its_message_id_sees_the_item_as_it_is_now() -> None:
    store = MemoryStore()
    role = CommandRole(store, TestOnlyAuthority(), NAMES, max_body=1 << 20)
    created = _send(role, encode_command("create", item={}), "m-create")
    item = created["item"]
    read = encode_command("read", id=item["id"])
    assert _send(role, read, "m-read")["version"] == 1
    updated = _send(role, encode_command("update", id=item["id"], item=item), "m-update")
    assert updated["version"] == 2
    assert _send(role, read, "m-read")["version"] == 2
    with store.transaction() as tx:
        assert tx.get_processed("m-read") is None
        assert tx.get_processed("m-update") is not None


def test_a_body_that_cannot_be_decoded_is_refused_and_remembered() -> None:
    store = MemoryStore()
    role = CommandRole(store, TestOnlyAuthority(), NAMES, max_body=1 << 20)
    refused = _send(role, orjson.dumps({"command": "delete"}), "m-bad")
    assert refused["status"] == 400
    with store.transaction() as tx:
        assert tx.get_processed("m-bad") is not None


# ---------------------------------------------------------------- NUL in user ids


def _answer(role: CommandRole, body: bytes, message_id: str | None, token: str) -> list[Outgoing]:
    return role.handle([Incoming(body, message_id=message_id, reply_to="replies",
                                 headers=authorization_headers(token))])


@pytest.mark.postgres
@pytest.mark.parametrize("message_id", [None, "m-nul-user"])
def test_a_user_id_with_nul_is_refused_with_400_on_postgresql(
    pg_store_url: str, message_id: str | None
) -> None:
    store = PostgresStore(pg_store_url)
    try:
        role = CommandRole(store, TestOnlyAuthority(), NAMES, max_body=1 << 20)
        (reply,) = _answer(role, encode_command("create", item={}), message_id, "a\x00b")
        refused = decode_reply(reply.body)
        assert refused.status == 400 and refused.error is not None and "NUL" in refused.error
        assert store.count_items() == 0
        with store.transaction() as tx:  # not remembered: there is nothing to keep it under
            assert tx.get_processed("m-nul-user") is None
    finally:
        store.close()


def test_a_user_id_with_nul_is_served_by_a_store_that_keeps_nul() -> None:
    store = MemoryStore()
    role = CommandRole(store, TestOnlyAuthority(), NAMES, max_body=1 << 20)
    reply, event = _answer(role, encode_command("create", item={}), "m-nul-user", "a\x00b")
    assert decode_reply(reply.body).status == 200
    assert event.exchange == NAMES.events
    assert store.count_items() == 1


@pytest.mark.postgres
def test_a_message_id_with_nul_is_a_500_and_a_dead_letter_on_postgresql(
    pg_store_url: str,
) -> None:
    """As the README says: the command cannot be recorded, so it is not applied either."""
    store = PostgresStore(pg_store_url)
    try:
        role = CommandRole(store, TestOnlyAuthority(), NAMES, max_body=1 << 20)
        reply, dead = _answer(role, encode_command("create", item={}), "m\x00", "alice")
        assert decode_reply(reply.body).status == 500
        assert dead.exchange == NAMES.dead
        assert store.count_items() == 0
        created = _send(role, encode_command("create", item={}), "m-create")
        # a read is not recorded, so its message_id need not be kept: it is served
        reply, event = _answer(role, encode_command("read", id=created["item"]["id"]), "m\x00",
                               "alice")
        assert decode_reply(reply.body).status == 200
        assert event.exchange == NAMES.events
    finally:
        store.close()
