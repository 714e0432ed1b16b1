"""The ItemService against the contract's rules, with a MemoryStore and fakes.

The Authority, the clock and the id generator are small fakes written here
(no mocks), so that every check of the contract's order can be provoked.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from thelca.authority import TestOnlyAuthority
from thelca.authority.base import Authority, Principal
from thelca.domain import model
from thelca.domain.model import Item, Link, Origin, StoredItem
from thelca.domain.service import ItemService, Result
from thelca.errors import (
    CommandRefused,
    Conflict,
    Forbidden,
    InvalidCommand,
    ItemNotFound,
    NotAuthenticated,
)
from thelca.stores.base import StoreTransaction
from thelca.stores.memory import MemoryStore
from thelca_client.contract import ITEM_CREATED, ITEM_READ, ITEM_UPDATED, JSON

CREATED = "2020-02-18T16:37:09.654917+00:00"
LATER = "2020-02-18T16:40:00.000001+00:00"
UNKNOWN_ID = "0badc0de-0000-4000-8000-00000000dead"


class _AnyUUID:
    """Equal to any string that is a UUID: event ids are opaque to the contract."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, str):
            return False
        try:
            return str(uuid.UUID(other)) == other
        except ValueError:
            return False

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "<any UUID string>"


ANY_UUID: Any = _AnyUUID()


# ---------------------------------------------------------------- fakes


@dataclass
class FakeAuthority:
    """An Authority that maps principal `x` to user `user:x` and refuses on request."""

    name: str = "fake"
    refuse_create: set[str] = field(default_factory=set)
    refuse_read: set[str] = field(default_factory=set)
    refuse_update: set[str] = field(default_factory=set)
    refuse_links: set[str] = field(default_factory=set)  # every link command and search
    calls: list[str] = field(default_factory=list)

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise NotAuthenticated("no token")
        return Principal(token)

    def check_create_item(self, principal: Principal, dictionary: JSON) -> str:
        return self._check("create", self.refuse_create, principal)

    def check_read_item(self, principal: Principal, item: Item) -> str:
        return self._check("read", self.refuse_read, principal)

    def check_update_item(self, principal: Principal, current: Item, proposed: Item) -> str:
        return self._check("update", self.refuse_update, principal)

    def check_read_events(self, principal: Principal) -> str:
        return self._check("events", set(), principal)

    def check_create_link(self, principal: Principal, dictionary: JSON) -> str:
        return self._check("create link", self.refuse_links, principal)

    def check_read_link(self, principal: Principal, link: Link) -> str:
        return self._check("read link", self.refuse_links, principal)

    def check_update_link(self, principal: Principal, current: Link, proposed: Link) -> str:
        return self._check("update link", self.refuse_links, principal)

    def check_delete_link(self, principal: Principal, link: Link) -> str:
        return self._check("delete link", self.refuse_links, principal)

    def check_search_items(self, principal: Principal, where: JSON) -> str:
        return self._check("search items", self.refuse_links, principal)

    def check_search_links(self, principal: Principal, query: JSON) -> str:
        return self._check("search links", self.refuse_links, principal)

    def _check(self, what: str, refused: set[str], principal: Principal) -> str:
        self.calls.append(what)
        if principal.user_id in refused:
            raise Forbidden(f"{principal.user_id} may not {what} this item")
        return f"user:{principal.user_id}"


class FixedClock:
    def __init__(self, now: str = CREATED) -> None:
        self.now = now

    def __call__(self) -> str:
        return self.now


class SequentialIds:
    """UUID4-shaped ids 00000000-0000-4000-8000-000000000001, ...002, ..."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> str:
        self.count += 1
        return f"00000000-0000-4000-8000-{self.count:012d}"


ALICE = Principal("alice")
MALLORY = Principal("mallory")
FIRST_ID = "00000000-0000-4000-8000-000000000001"

Operation = Callable[[StoreTransaction], Result]


def origin(command_id: str, seed: str | None = None) -> Origin:
    """The origin of a command: the role derives the seed from the delivery (a redelivery
    has the same one); here it is the command_id's own unless a test gives another."""
    return Origin(command_id, seed if seed is not None else f"seed-of-{command_id}")


@dataclass
class World:
    store: MemoryStore
    authority: FakeAuthority
    clock: FixedClock
    ids: SequentialIds
    service: ItemService

    # operations, to run in a transaction

    def creating(
        self, body: JSON, principal: Principal = ALICE, command_id: str = "cmd-1",
        seed: str | None = None,
    ) -> Operation:
        return lambda tx: self.service.create(tx, principal, body, origin(command_id, seed))

    def reading(
        self, item_id: str, principal: Principal = ALICE, command_id: str = "cmd-r",
        seed: str | None = None,
    ) -> Operation:
        return lambda tx: self.service.read(tx, principal, item_id, origin(command_id, seed))

    def updating(
        self, item_id: str, body: JSON, principal: Principal = ALICE,
        expected_version: int | None = None, command_id: str = "cmd-u",
    ) -> Operation:
        return lambda tx: self.service.update(
            tx, principal, item_id, body, expected_version=expected_version,
            origin=origin(command_id))

    # running them

    def run(self, operation: Operation) -> Result:
        with self.store.transaction() as tx:
            return operation(tx)

    def refused(
        self, error: type[CommandRefused], match: str | None, operation: Operation
    ) -> CommandRefused:
        """Run operation and expect a refusal; the transaction commits whatever it left."""
        with self.store.transaction() as tx, pytest.raises(error, match=match) as caught:
            operation(tx)
        assert type(caught.value) is error
        return caught.value

    def create(self, properties: JSON | None = None) -> StoredItem:
        body: JSON = {} if properties is None else {"properties": properties}
        return self.run(self.creating(body, command_id="cmd-create")).stored

    def stored(self, item_id: str) -> StoredItem | None:
        with self.store.transaction() as tx:
            return tx.get_item(item_id)


def make_world() -> World:
    authority = FakeAuthority()
    typed: Authority = authority  # the fake implements the Authority protocol
    clock, ids = FixedClock(), SequentialIds()
    return World(MemoryStore(), authority, clock, ids, ItemService(typed, clock, ids))


@pytest.fixture
def world() -> World:
    return make_world()


def whole(stored: StoredItem, **changes: Any) -> JSON:
    """The whole item as a client sends it back in an update."""
    body = stored.item.to_json()
    body.update(changes)
    return body


# ---------------------------------------------------------------- create


def test_create_stores_the_item_and_returns_it_at_version_1(world: World) -> None:
    result = world.run(world.creating({"properties": {"type": "STORY"}}))
    expected = Item(FIRST_ID, CREATED, "user:alice", {"type": "STORY"})
    assert result.stored == StoredItem(expected, 1)
    assert world.stored(expected.id) == StoredItem(expected, 1)
    assert world.store.count_items() == 1


def test_create_records_the_user_the_authority_returned(world: World) -> None:
    stored = world.create({"type": "STORY"})
    assert stored.item.created_by == "user:alice"  # not the principal's own "alice"
    assert world.authority.calls == ["create"]


@pytest.mark.parametrize("body", [{}, {"properties": None}, {"properties": {}}])
def test_create_without_properties_stores_an_empty_object(world: World, body: JSON) -> None:
    result = world.run(world.creating(body))
    assert result.stored.item.properties == {}
    assert result.event.value["properties"] == {}
    stored = world.stored(result.stored.item.id)
    assert stored is not None
    assert stored.item.properties == {}


def test_create_ignores_extra_fields(world: World) -> None:
    body: JSON = {"properties": {"type": "STORY"}, "colour": "red", "version": 7, "links": []}
    result = world.run(world.creating(body))
    assert result.stored.item.to_json() == {
        "id": FIRST_ID,
        "created_at": CREATED,
        "created_by": "user:alice",
        "properties": {"type": "STORY"},
    }
    assert result.stored.version == 1
    assert set(result.event.value) == {"id", "created_at", "created_by", "properties"}


@pytest.mark.parametrize("name", ["id", "created_at", "created_by"])
@pytest.mark.parametrize("value", ["something", "", "5f73f540-c125-435d-8a5e-6fea05672b7a"])
def test_create_with_a_server_field_is_refused(world: World, name: str, value: str) -> None:
    body: JSON = {"properties": {"type": "STORY"}, name: value}
    world.refused(InvalidCommand, f"^{name} cannot be set externally$", world.creating(body))
    assert world.store.count_items() == 0
    assert world.ids.count == 0


def test_create_names_id_first_when_all_server_fields_are_set(world: World) -> None:
    body: JSON = {"created_by": "x", "created_at": "y", "id": "z"}
    world.refused(InvalidCommand, "^id cannot be set externally$", world.creating(body))


def test_create_400_comes_before_403(world: World) -> None:
    world.authority.refuse_create.add("mallory")
    world.refused(
        InvalidCommand, "id cannot be set externally", world.creating({"id": "mine"}, MALLORY)
    )
    assert world.authority.calls == []
    assert world.store.count_items() == 0


def test_create_refused_by_the_authority_stores_nothing(world: World) -> None:
    world.authority.refuse_create.add("mallory")
    world.refused(
        Forbidden, "mallory may not create", world.creating({"properties": {"a": 1}}, MALLORY)
    )
    assert world.store.count_items() == 0
    world.create({"a": 1})  # alice still may
    assert world.store.count_items() == 1


def test_the_created_event_has_exactly_the_contract_shape(world: World) -> None:
    result = world.run(world.creating({"properties": {"type": "STORY"}}, command_id="cmd-1"))
    assert result.event.to_json() == {
        "time": CREATED,
        "type": ITEM_CREATED,
        "user": "user:alice",
        "value": {
            "id": FIRST_ID,
            "created_at": CREATED,
            "created_by": "user:alice",
            "properties": {"type": "STORY"},
        },
        "id": ANY_UUID,
        "version": 1,
        "command_id": "cmd-1",
    }
    assert result.event.type == "Item created"
    assert result.event.value == result.stored.item.to_json()
    uuid.UUID(result.event.id)


def _event_ids(command_id: str) -> tuple[str, str, str]:
    """The events of a create, a read and an update, run in a fresh world (a redelivery)."""
    w = make_world()
    created = w.run(w.creating({"properties": {"a": 1}}, command_id=f"{command_id}-c"))
    read = w.run(w.reading(created.stored.item.id, command_id=f"{command_id}-r"))
    body = whole(created.stored, properties={"a": 2})
    updated = w.run(w.updating(created.stored.item.id, body, command_id=f"{command_id}-u"))
    return created.event.id, read.event.id, updated.event.id


def test_the_event_id_is_stable_across_redelivery_and_differs_per_command() -> None:
    first = _event_ids("cmd-1")
    assert _event_ids("cmd-1") == first
    assert all(event_id == ANY_UUID for event_id in first)
    assert len(set(first)) == 3
    others = {event_id for n in range(2, 30) for event_id in _event_ids(f"cmd-{n}")}
    assert len(others) == 3 * 28
    assert not others & set(first)


def test_an_item_event_and_an_access_refused_event_of_one_command_id_differ(
    world: World,
) -> None:
    """A 401 is not remembered, so a client may retry the same message_id with a good token.

    The first attempt logged an "Access refused" event; the retry's "Item created"
    must have another event id, or the logger and subscribers drop it as a duplicate.
    """
    refused = model.access_refused(
        "create", None, 401, user=None, time=CREATED, origin=origin("cmd-1")
    )
    created = world.run(world.creating({}, command_id="cmd-1")).event
    assert refused.type != created.type
    assert refused.id != created.id


def test_the_default_clock_and_ids_follow_the_contract() -> None:
    service = ItemService(FakeAuthority())
    with MemoryStore().transaction() as tx:
        stored = service.create(tx, ALICE, {}, origin("cmd-1")).stored
    assert uuid.UUID(stored.item.id).version == 4
    assert str(uuid.UUID(stored.item.id)) == stored.item.id
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", stored.item.created_at
    )


# ---------------------------------------------------------------- read


def test_read_of_an_unknown_id_names_the_id(world: World) -> None:
    world.refused(ItemNotFound, UNKNOWN_ID, world.reading(UNKNOWN_ID))


def test_read_404_comes_before_403(world: World) -> None:
    world.authority.refuse_read.add("mallory")
    world.refused(ItemNotFound, UNKNOWN_ID, world.reading(UNKNOWN_ID, MALLORY))
    assert world.authority.calls == []


def test_read_refused_by_the_authority(world: World) -> None:
    stored = world.create({"a": 1})
    world.authority.refuse_read.add("mallory")
    world.refused(Forbidden, "mallory may not read", world.reading(stored.item.id, MALLORY))


def test_read_returns_the_item_and_does_not_change_the_version(world: World) -> None:
    stored = world.create({"a": 1})
    world.run(world.updating(stored.item.id, whole(stored, properties={"a": 2})))
    world.clock.now = LATER
    for _ in range(3):
        result = world.run(world.reading(stored.item.id))
        assert result.stored.version == 2
        assert result.stored.item.properties == {"a": 2}
    assert world.stored(stored.item.id) == result.stored


def test_the_read_event_has_the_id_as_value(world: World) -> None:
    stored = world.create({"a": 1})
    world.clock.now = LATER
    world.authority.calls.clear()
    result = world.run(world.reading(stored.item.id, command_id="cmd-r"))
    assert result.event.to_json() == {
        "time": LATER,
        "type": ITEM_READ,
        "user": "user:alice",
        "value": stored.item.id,
        "id": ANY_UUID,
        "version": 1,
        "command_id": "cmd-r",
    }
    assert world.authority.calls == ["read"]
    again = world.run(world.reading(stored.item.id, command_id="cmd-r"))
    assert again.event.id == result.event.id  # a redelivered read keeps its event id


def test_events_of_one_command_id_with_other_seeds_have_ids_of_their_own(world: World) -> None:
    """A message_id reused with another body or token: the role gives another seed, and
    each delivery's event keeps its own line in the log, under the same command_id."""
    stored = [world.create({"n": n}) for n in range(5)]
    reads = [world.run(world.reading(s.item.id, command_id="reused", seed=f"delivery-{n}"))
             for n, s in enumerate(stored)]
    assert len({r.event.id for r in reads}) == 5
    assert {r.event.extra["command_id"] for r in reads} == {"reused"}
    refusals = {model.access_refused("read", None, 401, user=None, time=CREATED,
                                     origin=origin("reused", f"token-{n}")).id
                for n in range(30)}
    assert len(refusals) == 30
    again = world.run(world.reading(stored[0].item.id, command_id="reused", seed="delivery-0"))
    assert again.event.id == reads[0].event.id


# ---------------------------------------------------------------- update


def test_update_replaces_the_properties_and_bumps_the_version(world: World) -> None:
    stored = world.create({"type": "STORY", "old": True})
    world.clock.now = LATER
    body = whole(stored, properties={"type": "EPIC"}, extra="ignored", version=99)
    result = world.run(world.updating(stored.item.id, body, command_id="cmd-u"))
    expected = Item(stored.item.id, CREATED, "user:alice", {"type": "EPIC"})
    assert result.stored == StoredItem(expected, 2)
    assert world.stored(stored.item.id) == StoredItem(expected, 2)
    assert result.event.to_json() == {
        "time": LATER,
        "type": ITEM_UPDATED,
        "user": "user:alice",
        "value": expected.to_json(),
        "id": ANY_UUID,
        "version": 2,
        "command_id": "cmd-u",
    }
    again = world.run(world.updating(
        stored.item.id, whole(result.stored, properties={"n": 3}), expected_version=2,
        command_id="cmd-u2",
    ))
    assert again.stored.version == 3
    assert again.event.value == again.stored.item.to_json()


def test_the_updated_event_user_is_the_updater_not_the_creator(world: World) -> None:
    stored = world.create({"a": 1})
    result = world.run(world.updating(stored.item.id, whole(stored), Principal("bob")))
    assert result.event.user == "user:bob"
    assert result.stored.item.created_by == "user:alice"


@pytest.mark.parametrize("properties", [None, "missing"])
def test_update_without_properties_stores_an_empty_object(
    world: World, properties: str | None
) -> None:
    stored = world.create({"a": 1})
    body = whole(stored)
    if properties == "missing":
        del body["properties"]
    else:
        body["properties"] = None
    result = world.run(world.updating(stored.item.id, body))
    assert result.stored == StoredItem(Item(stored.item.id, CREATED, "user:alice", {}), 2)


def test_update_of_an_unknown_id_names_the_id(world: World) -> None:
    body: JSON = {"id": UNKNOWN_ID, "created_at": CREATED, "created_by": "user:alice"}
    world.refused(ItemNotFound, UNKNOWN_ID, world.updating(UNKNOWN_ID, body))
    assert world.store.count_items() == 0


@pytest.mark.parametrize(
    "body",
    [{}, {"id": "another"}, {"id": UNKNOWN_ID, "created_at": "changed"},
     {"id": UNKNOWN_ID, "created_by": "someone else"}],
    ids=["empty", "other-id", "created_at", "created_by"],
)
def test_update_404_comes_before_the_400s_and_403_and_409(world: World, body: JSON) -> None:
    world.authority.refuse_update.add("mallory")
    world.refused(
        ItemNotFound, UNKNOWN_ID, world.updating(UNKNOWN_ID, body, MALLORY, expected_version=42)
    )
    assert world.authority.calls == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": None}, "id cannot be modified"),
        ({"id": "5f73f540-c125-435d-8a5e-6fea05672b7a"}, "id cannot be modified"),
        ({"id": ""}, "id cannot be modified"),
        ({"created_at": None}, "created_at cannot be modified"),
        ({"created_at": LATER}, "created_at cannot be modified"),
        ({"created_by": None}, "created_by cannot be modified"),
        ({"created_by": "user:mallory"}, "created_by cannot be modified"),
        ({"created_at": LATER, "created_by": "x"}, "created_at cannot be modified"),
        ({"id": "x", "created_at": LATER, "created_by": "x"}, "id cannot be modified"),
    ],
)
def test_update_may_not_change_the_server_fields(
    world: World, change: JSON, message: str
) -> None:
    stored = world.create({"a": 1})
    body = whole(stored, properties={"a": 2})
    for name, value in change.items():
        if value is None:
            del body[name]  # missing counts as a change
        else:
            body[name] = value
    world.authority.calls.clear()
    world.refused(InvalidCommand, f"^{message}$", world.updating(stored.item.id, body))
    assert world.stored(stored.item.id) == stored
    assert world.authority.calls == []


def test_update_400_comes_before_403_and_409(world: World) -> None:
    stored = world.create({"a": 1})
    world.authority.refuse_update.add("mallory")
    world.authority.calls.clear()
    body = whole(stored, created_by="user:mallory")
    world.refused(
        InvalidCommand, "created_by cannot be modified",
        world.updating(stored.item.id, body, MALLORY, expected_version=42),
    )
    assert world.authority.calls == []


def test_update_refused_by_the_authority(world: World) -> None:
    stored = world.create({"a": 1})
    world.authority.refuse_update.add("mallory")
    body = whole(stored, properties={"a": 2})
    world.refused(
        Forbidden, "mallory may not update", world.updating(stored.item.id, body, MALLORY)
    )
    assert world.stored(stored.item.id) == stored


def test_update_403_comes_before_409(world: World) -> None:
    stored = world.create({"a": 1})
    world.authority.refuse_update.add("mallory")
    body = whole(stored, properties={"a": 2})
    world.refused(
        Forbidden, "mallory may not update",
        world.updating(stored.item.id, body, MALLORY, expected_version=42),
    )
    assert world.stored(stored.item.id) == stored


@pytest.mark.parametrize("expected_version", [0, 1, 3, 7, -1])
def test_update_with_a_stale_expected_version_names_both_versions(
    world: World, expected_version: int
) -> None:
    stored = world.create({"a": 1})
    updated = world.run(world.updating(stored.item.id, whole(stored, properties={"a": 2})))
    assert updated.stored.version == 2
    body = whole(updated.stored, properties={"a": 3})
    error = world.refused(
        Conflict, None,
        world.updating(stored.item.id, body, expected_version=expected_version),
    )
    message = str(error)
    assert re.search(rf"(?<![\w-]){expected_version}(?![\w-])", message), message
    assert re.search(r"(?<![\w-])2(?![\w-])", message), message
    assert error.status == 409
    assert world.stored(stored.item.id) == updated.stored


def test_update_with_the_current_expected_version_succeeds(world: World) -> None:
    stored = world.create({"a": 1})
    body = whole(stored, properties={"a": 2})
    result = world.run(world.updating(stored.item.id, body, expected_version=1))
    assert result.stored.version == 2
    assert result.event.extra["version"] == 2


def test_refusals_carry_the_contract_status() -> None:
    assert InvalidCommand.status == 400
    assert NotAuthenticated.status == 401
    assert Forbidden.status == 403
    assert ItemNotFound.status == 404
    assert Conflict.status == 409


# ---------------------------------------------------------------- TestOnlyAuthority


@pytest.mark.parametrize("token", [None, "", "BAAD"])
def test_the_test_only_authority_refuses_no_token_and_baad(token: str | None) -> None:
    authority: Authority = TestOnlyAuthority()
    with pytest.raises(NotAuthenticated) as refused:
        authority.authenticate(token)
    assert refused.value.status == 401
    if token:
        assert token not in str(refused.value)


@pytest.mark.parametrize("token", ["abcd", "baad", "BAAD2", "x y"])
def test_the_test_only_authority_accepts_any_other_token(token: str) -> None:
    authority: Authority = TestOnlyAuthority()
    principal = authority.authenticate(token)
    assert principal.user_id == f"a-test-only-id-{token}"
    item = Item("i", CREATED, "someone", {})
    user = principal.user_id
    assert authority.check_create_item(principal, {}) == user
    assert authority.check_read_item(principal, item) == user
    assert authority.check_update_item(principal, item, item) == user
    assert authority.check_read_events(principal) == user
    assert authority.name == "test-only"


def test_the_test_only_authority_with_the_service() -> None:
    authority = TestOnlyAuthority()
    service = ItemService(authority, FixedClock(), SequentialIds())
    with MemoryStore().transaction() as tx:
        result = service.create(tx, authority.authenticate("abcd"), {}, origin("cmd-1"))
    assert result.stored.item.created_by == "a-test-only-id-abcd"
    assert result.event.user == "a-test-only-id-abcd"
