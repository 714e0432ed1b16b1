"""A batch runs first without savepoints; when one command fails there, it runs again with them.

The command role's first run of a batch holds its writes back (on
PostgreSQL: a handful of round trips for the whole batch). A command that
fails in it would have rolled back its own savepoint, so the whole batch is
rolled back and run again, a savepoint per command: the outcome is the one
the savepoints always gave — the failing command costs itself alone (a 500
and a dead letter), each neighbour is applied once, with exactly one reply
and one event, and nothing is counted twice. On every store, with real ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client import REGISTRY

from thelca.authority.test_only import TestOnlyAuthority
from thelca.domain.service import ItemService
from thelca.roles.commands import CommandRole
from thelca.roles.messages import Incoming, Outgoing
from thelca.stores import ItemStore
from thelca.stores.memory import MemoryStore
from thelca.stores.postgres import PostgresStore
from thelca.stores.sqlite import SQLiteStore
from thelca_client.contract import Names, authorization_headers, encode_command

NAMES = Names("batches")
STORES = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ItemStore]:
    kinds: dict[str, Callable[[], ItemStore]] = {
        "memory": MemoryStore,
        "sqlite": lambda: SQLiteStore(str(tmp_path / "thelca.db")),
        "postgres": lambda: PostgresStore(request.getfixturevalue("pg_store_url")),
    }
    opened = kinds[request.param]()
    try:
        yield opened
    finally:
        opened.close()


def message(body: bytes, message_id: str) -> Incoming:
    return Incoming(body, message_id=message_id, correlation_id=message_id, reply_to="client",
                    headers=authorization_headers("alice"))


def statuses(out: list[Outgoing]) -> dict[str, int]:
    return {str(m.correlation_id): orjson.loads(m.body)["status"]
            for m in out if not m.exchange}


def counted(command: str, status: str) -> float:
    return REGISTRY.get_sample_value("thelca_commands_total",
                                     {"command": command, "status": status}) or 0.0


def test_a_failing_command_costs_itself_alone_and_its_neighbours_apply_once(
    store: ItemStore,
) -> None:
    """Every create gets the same item id: the second can never be stored (ConcurrentUpdate,
    three tries, then a 500), and the batch around it goes through."""
    role = CommandRole(store, TestOnlyAuthority(), NAMES, max_body=1 << 20,
                       service=ItemService(TestOnlyAuthority(), new_id=lambda: "the-one-id"))
    created = role.handle([message(encode_command("create", item={}), "m-first")])
    role.confirmed([m for m in created if m.exchange])
    item = orjson.loads(created[0].body)["item"]
    update = encode_command("update", id="the-one-id", item={**item, "properties": {"n": 2}})
    before = (counted("create", "500"), counted("update", "200"))

    out = role.handle([message(update, "m-update"),
                       message(encode_command("create", item={}), "m-again"),
                       message(encode_command("read", id="the-one-id"), "m-read")])

    assert statuses(out) == {"m-update": 200, "m-again": 500, "m-read": 200}
    events = [orjson.loads(m.body) for m in out if m.exchange == NAMES.events]
    assert [(e["type"], e["command_id"]) for e in events] == [
        ("Item updated", "m-update"), ("Item read", "m-read")]
    assert len({e["id"] for e in events}) == 2
    (dead,) = [m for m in out if m.exchange == NAMES.dead]
    assert dead.message_id == "m-again" or dead.correlation_id == "m-again"
    read = orjson.loads(next(m.body for m in out if m.correlation_id == "m-read"))
    assert read["version"] == 2  # the update before it, applied once
    assert (counted("create", "500"), counted("update", "200")) == (before[0] + 1,
                                                                      before[1] + 1)
    with store.transaction() as tx:
        assert tx.get_processed("m-update") is not None
        assert tx.get_processed("m-again") is None
        stored = tx.get_item("the-one-id")
    assert stored is not None and stored.version == 2
    role.tidy()  # the confirmed create's event leaves the outbox (a batch keeps it for now)
    assert [e.event_id for e in store.pending_outbox()] == [events[0]["id"]]  # reads: none


@pytest.mark.postgres
def test_a_message_id_postgresql_cannot_keep_fails_only_its_command(
    pg_store: PostgresStore,
) -> None:
    """The record of a message_id with NUL is refused when the held writes are sent, after
    the whole batch ran: the batch runs again and only that command is a 500."""
    role = CommandRole(pg_store, TestOnlyAuthority(), NAMES, max_body=1 << 20)
    create = encode_command("create", item={"properties": {"type": "STORY"}})
    out = role.handle([message(create, "m-1"), message(create, "m-\x00"),
                       message(create, "m-3")])
    assert statuses(out) == {"m-1": 200, "m-\x00": 500, "m-3": 200}
    events = [orjson.loads(m.body) for m in out if m.exchange == NAMES.events]
    assert sorted(e["command_id"] for e in events) == ["m-1", "m-3"]
    assert pg_store.count_items() == 2
    assert len(pg_store.pending_outbox()) == 2
    # each is answered from its record when it comes again, and nothing is applied twice
    again = role.handle([message(create, "m-1"), message(create, "m-3")])
    assert [orjson.loads(m.body) for m in again if not m.exchange] == [
        orjson.loads(m.body) for m in out if not m.exchange
        and m.correlation_id in ("m-1", "m-3")]
    assert pg_store.count_items() == 2


def test_a_message_id_twice_in_one_batch_is_applied_once(store: ItemStore) -> None:
    role = CommandRole(store, TestOnlyAuthority(), NAMES, max_body=1 << 20)
    create = encode_command("create", item={})
    out = role.handle([message(create, "m-twice"), message(create, "m-twice")])
    replies = [m.body for m in out if not m.exchange]
    assert len(replies) == 2 and replies[0] == replies[1]
    assert store.count_items() == 1
    assert len({m.message_id for m in out if m.exchange == NAMES.events}) == 1
