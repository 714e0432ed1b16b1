"""The command role: every command has a handler, what it remembers, NUL in user ids and
message_ids.

The role runs here on a memory store (and PostgreSQL, for NUL) with the
test-only Authority; the same role against the real broker is tested in
tests/integration.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from prometheus_client import REGISTRY

from thelca.authority.base import Principal
from thelca.authority.test_only import TestOnlyAuthority
from thelca.errors import NotAuthenticated
from thelca.roles.commands import CommandRole
from thelca.roles.fingerprints import fingerprint
from thelca.roles.handlers import HANDLERS
from thelca.roles.messages import Incoming, Outgoing
from thelca.roles.outbox import OUTBOX_REMOVAL
from thelca.roles.records import DIFFERENT_COMMAND
from thelca.roles.refusals import NUL_MESSAGE_ID
from thelca.stores import ItemStore
from thelca.stores.base import ProcessedCommand
from thelca.stores.memory import MemoryStore
from thelca.stores.postgres import PostgresStore
from thelca.stores.sqlite import SQLiteStore
from thelca_client.contract import (
    COMMAND_TYPES,
    DEAD_REASON_HEADER,
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


def _counted(command: str, status: str) -> float:
    return REGISTRY.get_sample_value("thelca_commands_total",
                                     {"command": command, "status": status}) or 0.0


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


def test_confirmed_events_leave_the_outbox_a_hundred_at_a_time_or_at_the_tidy() -> None:
    store = MemoryStore()
    role = CommandRole(store, TestOnlyAuthority(), NAMES, max_body=1 << 20)
    for n in range(OUTBOX_REMOVAL):  # one at a time, each event confirmed after its batch
        _send(role, encode_command("create", item={}), f"m-{n}")
    assert len(store.pending_outbox()) == OUTBOX_REMOVAL  # no batch of one removed any
    _send(role, encode_command("create", item={}), "m-last")  # this batch removes them all
    [left] = store.pending_outbox()
    with store.transaction() as tx:
        last = tx.get_processed("m-last")
    assert last is not None and left.event_id == last.event_id
    role.tidy()  # traffic stopped: the rest goes
    assert store.pending_outbox() == []


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
    pg_store: PostgresStore, message_id: str | None
) -> None:
    role = CommandRole(pg_store, TestOnlyAuthority(), NAMES, max_body=1 << 20)
    (reply,) = _answer(role, encode_command("create", item={}), message_id, "a\x00b")
    refused = decode_reply(reply.body)
    assert refused.status == 400 and refused.error is not None and "NUL" in refused.error
    assert pg_store.count_items() == 0
    with pg_store.transaction() as tx:  # not remembered: there is nothing to keep it under
        assert tx.get_processed("m-nul-user") is None


def test_a_user_id_with_nul_is_served_by_a_store_that_keeps_nul() -> None:
    store = MemoryStore()
    role = CommandRole(store, TestOnlyAuthority(), NAMES, max_body=1 << 20)
    reply, event = _answer(role, encode_command("create", item={}), "m-nul-user", "a\x00b")
    assert decode_reply(reply.body).status == 200
    assert event.exchange == NAMES.events
    assert store.count_items() == 1


# ---------------------------------------------------------------- NUL in message_ids


class WatchedStore(PostgresStore):
    """The PostgreSQL store, noting each transaction the role opens (deferred or not): a
    batch redone with savepoints is a second one, not deferred."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.opened: list[bool] = []

    def transaction(self, *, deferred: bool = False) -> Any:
        self.opened.append(deferred)
        return super().transaction(deferred=deferred)


def _backend_pids(url: str, application_name: str) -> list[int]:
    """The server's processes serving that application_name: a replaced connection is a
    new one."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                            (application_name,)).fetchall()
    return sorted(row[0] for row in rows)


def _by_correlation(out: list[Outgoing]) -> dict[str, dict[str, Any]]:
    return {str(m.correlation_id): orjson.loads(m.body) for m in out if not m.exchange}


@pytest.mark.postgres
def test_a_recorded_command_with_a_nul_message_id_is_a_400_up_front_on_postgresql(
    pg_url: str, pg_store_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """PostgreSQL cannot record the message_id, so the command is refused before it is
    served: not found when the batch's held writes are sent, which cost a second run of
    the batch and a new connection. Reads and searches, which are not recorded, are
    served; a read whose body does not decode is recorded (its refusal is), so refused."""
    name = f"thelca-nul-{uuid.uuid4().hex[:8]}"
    url = f"{pg_store_url}&application_name={name}"
    store = WatchedStore(url)
    try:
        role = CommandRole(store, TestOnlyAuthority(), NAMES, max_body=1 << 20)
        first = _send(role, encode_command("create", item={}), "m-first")["item"]
        item_id = first["id"]
        pids = _backend_pids(pg_url, name)
        assert len(pids) == 1
        del store.opened[:]
        before = _counted("create", "400")
        create = encode_command("create", item={"properties": {"n": 1}})
        update = encode_command("update", id=item_id, item={**first, "properties": {"n": 2}})
        batch = [("ok-1", create, "m-1"), ("create", create, "m\x00"),
                 ("update", update, "u\x00"),
                 ("bad-read", b'{"command": "read", "id": 5}', "b\x00"),
                 ("read", encode_command("read", id=item_id), "r\x00"),
                 ("search", orjson.dumps({"command": "search_items", "where": {"n": 1}}), "s\x00"),
                 ("ok-3", create, "m-3")]
        caplog.set_level(logging.WARNING)
        out = role.handle([Incoming(body, message_id=message_id, correlation_id=key,
                                    reply_to="replies", headers=authorization_headers("alice"))
                           for key, body, message_id in batch])

        replies = _by_correlation(out)
        assert {key: reply["status"] for key, reply in replies.items()} == {
            "ok-1": 200, "create": 400, "update": 400, "bad-read": 400, "read": 200,
            "search": 200, "ok-3": 200}
        assert {replies[key]["error"] for key in ("create", "update", "bad-read")} == {
            NUL_MESSAGE_ID}
        assert "NUL" in NUL_MESSAGE_ID and "message_id" in NUL_MESSAGE_ID
        assert [m for m in out if m.exchange == NAMES.dead] == []  # nothing dead-lettered
        events = [orjson.loads(m.body) for m in out if m.exchange == NAMES.events]
        assert sorted(e["command_id"] for e in events) == ["m-1", "m-3", "r\x00", "s\x00"]
        assert store.opened == [True]  # one deferred run: the batch was not redone
        assert _backend_pids(pg_url, name) == pids  # and its connection was kept
        assert _counted("create", "400") == before + 1
        assert store.count_items() == 3
        with store.transaction() as tx:
            assert tx.get_processed("m-1") is not None and tx.get_processed("m-3") is not None
            item = tx.get_item(item_id)
        assert item is not None and item.version == 1  # the update was not applied
        # the log shows the id escaped, never with the NUL itself
        refused = [r.getMessage() for r in caplog.records if NUL_MESSAGE_ID in r.getMessage()]
        assert len(refused) == 3 and not any("\x00" in line for line in refused)
        assert "'m\\x00'" in refused[0]
        # sent again, it is refused again: nothing was recorded under it
        (reply,) = _answer(role, create, "m\x00", "alice")
        assert decode_reply(reply.body).status == 400
        # with no reply_to, nothing at all goes out: like the other 400s, no dead letter
        assert role.handle([Incoming(create, message_id="m\x00",
                                     headers=authorization_headers("alice"))]) == []
        assert _counted("create", "400") == before + 3
        assert store.count_items() == 3
    finally:
        store.close()


@pytest.mark.postgres
def test_a_refused_token_with_a_nul_message_id_is_still_a_401_with_its_event_on_postgresql(
    pg_store: PostgresStore,
) -> None:
    """The message_id is looked at once the token is accepted: a refused token is audited
    (401, Access refused) whatever the message_id, as on every store."""
    role = CommandRole(pg_store, RefusesForgeries(), NAMES, max_body=1 << 20)
    reply, event = _answer(role, encode_command("create", item={}), "m\x00", "forged-1")
    assert decode_reply(reply.body).status == 401
    assert event.exchange == NAMES.events
    refused = orjson.loads(event.body)
    assert (refused["type"], refused["command_id"]) == ("Access refused", "m\x00")
    (accepted,) = _answer(role, encode_command("create", item={}), "m\x00", "alice")
    assert decode_reply(accepted.body).status == 400  # the same id with a good token


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_nul_message_id_is_recorded_and_answered_by_a_store_that_keeps_nul(
    kind: str, tmp_path: Path,
) -> None:
    store: ItemStore = MemoryStore() if kind == "memory" else SQLiteStore(
        str(tmp_path / "thelca.db"))
    try:
        role = CommandRole(store, TestOnlyAuthority(), NAMES, max_body=1 << 20)
        body = encode_command("create", item={})
        first = _send(role, body, "m\x00")
        assert first["status"] == 200
        with store.transaction() as tx:
            record = tx.get_processed("m\x00")
        assert record is not None and record.message_id == "m\x00"
        assert _send(role, body, "m\x00") == first  # answered from its record
        assert store.count_items() == 1
    finally:
        store.close()


# ---------------------------------------------------------------- replies go to clients


@pytest.mark.parametrize("reply_to", [NAMES.events_log, NAMES.commands, NAMES.dead,
                                      NAMES.replay, f"{NAMES.prefix}.events"])
def test_a_reply_to_of_thelca_is_not_executed_but_dead_lettered_without_its_token(
    reply_to: str,
) -> None:
    store = MemoryStore()
    role = CommandRole(store, TestOnlyAuthority(), NAMES, max_body=1 << 20)
    message = Incoming(encode_command("create", item={}), message_id="m-hijack",
                       reply_to=reply_to, headers=authorization_headers("alice"))
    (letter,) = role.handle([message])
    assert (letter.exchange, letter.routing_key) == (NAMES.dead, "")
    assert letter.headers is not None
    assert not {k for k in letter.headers if k.lower() == "authorization"}
    assert reply_to in letter.headers[DEAD_REASON_HEADER]
    assert letter.body == message.body and letter.message_id == "m-hijack"
    assert store.count_items() == 0
    with store.transaction() as tx:  # not remembered: a later honest send is served
        assert tx.get_processed("m-hijack") is None


def test_a_body_over_the_limit_with_a_reply_to_of_thelca_gets_no_413_there() -> None:
    role = CommandRole(MemoryStore(), TestOnlyAuthority(), NAMES, max_body=10)
    (letter,) = role.handle([Incoming(b"x" * 100, message_id="m", reply_to=NAMES.commands)])
    assert letter.exchange == NAMES.dead


# ---------------------------------------------------------------- every action leaves its line


def _outcome(role: CommandRole, body: bytes, message_id: str, token: str) -> tuple[int, str]:
    """The reply's status and the id of the event published with it."""
    reply, *events = _answer(role, body, message_id, token)
    role.confirmed(events)
    (event,) = [e for e in events if e.exchange == NAMES.events]
    assert event.message_id is not None
    return decode_reply(reply.body).status, event.message_id


def test_reads_of_five_items_under_one_message_id_are_five_events() -> None:
    role = CommandRole(MemoryStore(), TestOnlyAuthority(), NAMES, max_body=1 << 20)
    ids = [_send(role, encode_command("create", item={}), f"m-c{n}")["item"]["id"]
           for n in range(5)]
    reads = [_outcome(role, encode_command("read", id=item_id), "m-reused", "alice")
             for item_id in ids]
    assert [status for status, _ in reads] == [200] * 5
    assert len({event_id for _, event_id in reads}) == 5
    # the very same read delivered again: the same event id, which the logger drops
    assert _outcome(role, encode_command("read", id=ids[0]), "m-reused", "alice") == reads[0]


class RefusesForgeries(TestOnlyAuthority):
    """The test-only Authority, except that every token starting with `forged` is refused."""

    def authenticate(self, token: str | None) -> Principal:
        if token and token.startswith("forged"):
            raise NotAuthenticated("the token was refused")
        return super().authenticate(token)


def test_thirty_refused_tokens_under_one_message_id_are_thirty_events() -> None:
    role = CommandRole(MemoryStore(), RefusesForgeries(), NAMES, max_body=1 << 20)
    body = encode_command("create", item={})
    refused = [_outcome(role, body, "m-probe", f"forged-{n}") for n in range(30)]
    assert {status for status, _ in refused} == {401}
    assert len({event_id for _, event_id in refused}) == 30
    assert _outcome(role, body, "m-probe", "forged-0") == refused[0]


def test_an_event_id_depends_on_the_deployment_key_not_on_the_token_alone() -> None:
    body = encode_command("create", item={})
    first = CommandRole(MemoryStore(), TestOnlyAuthority(), NAMES, max_body=1 << 20)
    other = CommandRole(MemoryStore(), TestOnlyAuthority(), NAMES, max_body=1 << 20)
    assert _outcome(first, body, "m", "BAAD")[1] != _outcome(other, body, "m", "BAAD")[1]
    shared = MemoryStore()
    one = CommandRole(shared, TestOnlyAuthority(), NAMES, max_body=1 << 20)
    two = CommandRole(shared, TestOnlyAuthority(), NAMES, max_body=1 << 20)
    assert _outcome(one, body, "m", "BAAD") == _outcome(two, body, "m", "BAAD")


def test_a_different_command_under_a_used_message_id_is_409_and_changes_nothing() -> None:
    store = MemoryStore()
    role = CommandRole(store, TestOnlyAuthority(), NAMES, max_body=1 << 20)
    first = _send(role, b'{"command": "create", "item": {"properties": {"a": 1, "b": 2}}}', "m")
    for other in (encode_command("create", item={"properties": {"a": 2}}),
                  encode_command("read", id=first["item"]["id"]),
                  b"not json"):
        reply, *events = _answer(role, other, "m", "alice")
        assert decode_reply(reply.body).to_json() == {"status": 409, "error": DIFFERENT_COMMAND}
        assert events == []
    assert store.count_items() == 1
    # the same JSON value, keys reordered and spaced otherwise: a redelivery
    again = b' {"item" : {"properties": {"b": 2, "a": 1}}, "command": "create"}\n'
    assert _send(role, again, "m") == first
    # another user under it: refused as before, whatever the body
    (reply,) = _answer(role, again, "m", "bob")
    refused = decode_reply(reply.body)
    assert refused.status == 409 and "another user" in (refused.error or "")


def test_a_record_kept_by_the_previous_release_is_answered_as_before() -> None:
    store = MemoryStore()
    with store.transaction() as tx:  # no fingerprint: the previous release kept none
        tx.add_processed(ProcessedCommand("m-old", "a-test-only-id-alice",
                                          b'{"status": 200, "version": 1}', None))
    role = CommandRole(store, TestOnlyAuthority(), NAMES, max_body=1 << 20)
    assert _send(role, encode_command("create", item={"properties": {"x": 1}}), "m-old") == {
        "status": 200, "version": 1}
    assert store.count_items() == 0


def test_a_refusal_after_authentication_is_remembered_with_its_fingerprint() -> None:
    store = MemoryStore()
    role = CommandRole(store, TestOnlyAuthority(), NAMES, max_body=1 << 20)
    stale = encode_command("update", id="no-such-item", item={"id": "no-such-item"})
    assert _send(role, stale, "m-404")["status"] == 404
    with store.transaction() as tx:
        record = tx.get_processed("m-404")
    assert record is not None and record.fingerprint == fingerprint(stale)
    assert _send(role, encode_command("create", item={}), "m-404") == {
        "status": 409, "error": DIFFERENT_COMMAND}


def test_a_message_id_with_a_line_break_cannot_start_a_line_in_the_worker_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    role = CommandRole(MemoryStore(), TestOnlyAuthority(), NAMES, max_body=1 << 20)
    forged = "m\n2026-01-01 00:00:00,000 INFO thelca: forged\u2028\x85"
    caplog.set_level(logging.DEBUG)
    role.handle([Incoming(b"{}", message_id=forged, reply_to=NAMES.events_log)])
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.splitlines() == [message]
    assert "'m\\n2026-01-01 00:00:00,000 INFO thelca: forged\\u2028\\x85'" in message
