"""The LinkService and SearchService against the contract's rules, with a MemoryStore and fakes.

Every row of the contract's link table, in its order, and the search rules; the
same rules through the real worker are in tests/integration/test_links.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from tests.unit.test_service import (
    ALICE,
    ANY_UUID,
    MALLORY,
    FakeAuthority,
    FixedClock,
    SequentialIds,
    origin,
)
from thelca.domain.links import LinkResult
from thelca.domain.model import Item, Link, StoredLink
from thelca.domain.search import Page
from thelca.domain.service import ItemService
from thelca.errors import CommandRefused, Conflict, Forbidden, InvalidCommand, ItemNotFound
from thelca.stores.base import StoreTransaction
from thelca.stores.memory import MemoryStore
from thelca_client.contract import JSON, SearchItems, SearchLinks

CREATED = "2020-02-18T16:37:09.654917+00:00"
A, B, C = "item-a", "item-b", "item-c"
LINK_ID = "00000000-0000-4000-8000-000000000001"
T = TypeVar("T")


@dataclass
class World:
    """A memory store holding items A, B and C, and the service over it."""

    store: MemoryStore
    authority: FakeAuthority
    service: ItemService

    def run(self, operation: Callable[[StoreTransaction], T]) -> T:
        with self.store.transaction() as tx:
            return operation(tx)

    def refused(self, error: type[CommandRefused], match: str,
                operation: Callable[[StoreTransaction], Any]) -> None:
        with self.store.transaction() as tx, pytest.raises(error, match=match) as caught:
            operation(tx)
        assert type(caught.value) is error

    def create(self, body: JSON, principal: Any = ALICE) -> LinkResult:
        return self.run(lambda tx: self.service.links.create(tx, principal, body, origin("cmd-c")))

    def update(self, link_id: str, body: JSON, principal: Any = ALICE,
               expected_version: int | None = None) -> Callable[[StoreTransaction], LinkResult]:
        return lambda tx: self.service.links.update(
            tx, principal, link_id, body, expected_version=expected_version, origin=origin("cmd-u"))

    def delete(self, link_id: str, principal: Any = ALICE,
               expected_version: int | None = None) -> Callable[[StoreTransaction], LinkResult]:
        return lambda tx: self.service.links.delete(
            tx, principal, link_id, expected_version=expected_version, origin=origin("cmd-d"))

    def stored(self, link_id: str) -> StoredLink | None:
        with self.store.transaction() as tx:
            return tx.get_link(link_id)


@pytest.fixture
def world() -> World:
    store = MemoryStore()
    with store.transaction() as tx:
        for n, item_id in enumerate((A, B, C)):
            tx.add_item(Item(item_id, f"2020-02-18T16:37:0{n}.000000+00:00", "someone",
                             {"type": "STORY" if item_id != C else "BUG", "n": n}))
    authority = FakeAuthority()
    return World(store, authority, ItemService(authority, FixedClock(), SequentialIds()))


def whole(stored: StoredLink, **changes: Any) -> JSON:
    return {**stored.link.to_json(), **changes}


# ---------------------------------------------------------------- create


def test_create_stores_the_link_and_its_event_at_version_1(world: World) -> None:
    result = world.create({"source": A, "target": B, "properties": {"type": "BLOCKS"},
                           "colour": "ignored"})
    expected = Link(LINK_ID, CREATED, "user:alice", A, B, {"type": "BLOCKS"})
    assert result.stored == StoredLink(expected, 1)
    assert world.stored(LINK_ID) == StoredLink(expected, 1)
    assert result.event.to_json() == {
        "time": CREATED, "type": "Link created", "user": "user:alice",
        "value": expected.to_json(), "id": ANY_UUID, "version": 1, "command_id": "cmd-c"}


@pytest.mark.parametrize("properties", [None, {}])
def test_create_without_properties_stores_an_empty_object(
    world: World, properties: JSON | None
) -> None:
    assert world.create({"source": A, "target": B, "properties": properties}
                        ).stored.link.properties == {}


@pytest.mark.parametrize(("body", "why"), [
    ({"id": "x", "source": A, "target": B}, "^id cannot be set externally$"),
    ({"created_at": "x", "source": A, "target": B}, "^created_at cannot be set externally$"),
    ({"created_by": "x", "source": A, "target": B}, "^created_by cannot be set externally$"),
    ({"id": "x", "created_by": "y"}, "^id cannot be set externally$"),  # before the ends
    ({}, "^source and target must be set$"),
    ({"source": A}, "^source and target must be set$"),
    ({"target": B}, "^source and target must be set$"),
    ({"source": None, "target": B}, "^source and target must be set$"),
    ({"source": A, "target": A}, "^source and target must be different$"),
    ({"source": "ghost", "target": "ghost"}, "^source and target must be different$"),
    ({"source": "ghost", "target": B}, "^source must be a valid item id$"),
    ({"source": "", "target": B}, "^source must be a valid item id$"),
    ({"source": A, "target": "ghost"}, "^target must be a valid item id$"),
    ({"source": "ghost", "target": "ghost2"}, "^source must be a valid item id$"),
])
def test_create_refusals_in_the_contracts_order(world: World, body: JSON, why: str) -> None:
    world.authority.refuse_links.add("mallory")  # a 400 comes before the 403
    world.refused(InvalidCommand, why,
                  lambda tx: world.service.links.create(tx, MALLORY, body, origin("cmd")))
    assert world.store.count_links() == 0
    assert world.authority.calls == []


def test_create_refused_by_the_authority_stores_nothing(world: World) -> None:
    world.authority.refuse_links.add("mallory")
    world.refused(Forbidden, "mallory may not create link", lambda tx: world.service.links.create(
        tx, MALLORY, {"source": A, "target": B}, origin("cmd")))
    assert world.store.count_links() == 0


def test_a_link_id_is_no_item_id(world: World) -> None:
    first = world.create({"source": A, "target": B}).stored
    body = {"source": A, "target": first.link.id}
    world.refused(InvalidCommand, "^target must be a valid item id$", lambda tx: (
        world.service.links.create(tx, ALICE, body, origin("cmd"))))


# ---------------------------------------------------------------- read, update, delete


def test_read_returns_the_link_and_a_link_read_event(world: World) -> None:
    created = world.create({"source": A, "target": B}).stored
    result = world.run(lambda tx: world.service.links.read(tx, ALICE, LINK_ID, origin("cmd-r")))
    assert result.stored == created
    assert (result.event.type, result.event.value, result.event.extra["version"]) == (
        "Link read", LINK_ID, 1)


@pytest.mark.parametrize("operation", ["read", "update", "delete"])
def test_an_unknown_link_is_404_before_anything_else(world: World, operation: str) -> None:
    world.authority.refuse_links.add("mallory")
    world.create({"source": A, "target": B})
    run: dict[str, Callable[[StoreTransaction], Any]] = {
        "read": lambda tx: world.service.links.read(tx, MALLORY, A, origin("cmd")),  # an item's id
        "update": world.update("ghost", {"id": "x"}, MALLORY, expected_version=7),
        "delete": world.delete("ghost", MALLORY, expected_version=7),
    }
    world.refused(ItemNotFound, "^no link with id (item-a|ghost)$", run[operation])


def test_update_changes_ends_and_properties_and_bumps_the_version(world: World) -> None:
    created = world.create({"source": A, "target": B, "properties": {"type": "BLOCKS"}}).stored
    body = whole(created, source=C, target=A, properties={"type": "RELATES TO"}, extra=1)
    result = world.run(world.update(LINK_ID, body, expected_version=1))
    expected = Link(LINK_ID, CREATED, "user:alice", C, A, {"type": "RELATES TO"})
    assert result.stored == StoredLink(expected, 2)
    assert world.stored(LINK_ID) == StoredLink(expected, 2)
    assert (result.event.type, result.event.value, result.event.extra["version"]) == (
        "Link updated", expected.to_json(), 2)


@pytest.mark.parametrize(("changes", "why"), [
    ({"id": None}, "^id cannot be modified$"),
    ({"id": "other"}, "^id cannot be modified$"),
    ({"created_at": None}, "^created_at cannot be modified$"),
    ({"created_at": "2021-01-01T00:00:00+00:00"}, "^created_at cannot be modified$"),
    ({"created_by": "someone else"}, "^created_by cannot be modified$"),
    ({"id": "other", "source": None}, "^id cannot be modified$"),  # before the ends
    ({"source": None}, "^source and target must be set$"),
    ({"target": None}, "^source and target must be set$"),
    ({"target": A}, "^source and target must be different$"),
    ({"source": "ghost"}, "^source must be a valid item id$"),
    ({"target": "ghost"}, "^target must be a valid item id$"),
])
def test_update_refusals_in_the_contracts_order(
    world: World, changes: JSON, why: str
) -> None:
    created = world.create({"source": A, "target": B}).stored
    world.authority.refuse_links.add("mallory")
    world.refused(InvalidCommand, why,
                  world.update(LINK_ID, whole(created, **changes), MALLORY, expected_version=9))
    assert world.stored(LINK_ID) == created


def test_update_403_comes_before_409_and_409_changes_nothing(world: World) -> None:
    created = world.create({"source": A, "target": B}).stored
    world.authority.refuse_links.add("mallory")
    world.refused(Forbidden, "mallory may not update link",
                  world.update(LINK_ID, whole(created), MALLORY, expected_version=9))
    world.refused(Conflict, f"^expected_version is 9 but link {LINK_ID} is at version 1$",
                  world.update(LINK_ID, whole(created, properties={"n": 1}),
                               expected_version=9))
    assert world.stored(LINK_ID) == created


def test_delete_removes_the_link_and_answers_it_as_it_was(world: World) -> None:
    created = world.create({"source": A, "target": B}).stored
    updated = world.run(world.update(LINK_ID, whole(created, properties={"n": 2}))).stored
    result = world.run(world.delete(LINK_ID, expected_version=2))
    assert result.stored == updated
    assert (result.event.type, result.event.value, result.event.extra["version"]) == (
        "Link deleted", LINK_ID, 2)
    assert world.stored(LINK_ID) is None
    # gone: read, update and delete of its id are 404
    world.refused(ItemNotFound, "no link with id", lambda tx: world.service.links.read(
        tx, ALICE, LINK_ID, origin("cmd")))
    world.refused(ItemNotFound, "no link with id", world.update(LINK_ID, whole(updated)))
    world.refused(ItemNotFound, "no link with id", world.delete(LINK_ID))
    # and the items are all still there
    assert world.store.count_items() == 3


def test_delete_403_then_409_then_done(world: World) -> None:
    world.create({"source": A, "target": B})
    world.authority.refuse_links.add("mallory")
    world.refused(Forbidden, "mallory may not delete link",
                  world.delete(LINK_ID, MALLORY, expected_version=5))
    world.refused(Conflict, "expected_version is 5 but link .* is at version 1",
                  world.delete(LINK_ID, expected_version=5))
    assert world.stored(LINK_ID) is not None
    world.run(world.delete(LINK_ID, expected_version=1))
    assert world.stored(LINK_ID) is None


# ---------------------------------------------------------------- search


def search_items(world: World, principal: Any = ALICE, **query: Any) -> Page:
    return world.run(lambda tx: world.service.search.search_items(
        tx, principal, SearchItems(**query), origin("cmd-s")))


def search_links(world: World, end: Any, item_id: str, principal: Any = ALICE,
                 **query: Any) -> Page:
    return world.run(lambda tx: world.service.search.search_links(
        tx, principal, SearchLinks(end, item_id, **query), origin("cmd-s")))


def test_search_items_answers_bare_items_in_creation_order_and_audits_their_ids(
    world: World,
) -> None:
    page = search_items(world, where={"type": "STORY"})
    assert [item["id"] for item in page.results] == [A, B]
    assert page.results[0] == {"id": A, "created_at": "2020-02-18T16:37:00.000000+00:00",
                               "created_by": "someone", "properties": {"type": "STORY", "n": 0}}
    assert page.next is None
    assert page.event.to_json() == {
        "time": CREATED, "type": "Item search", "user": "user:alice", "value": [A, B],
        "id": ANY_UUID, "next": None, "command_id": "cmd-s",
        "query": {"where": {"type": "STORY"}, "limit": 100, "after": None}}


def test_search_items_pages_with_next(world: World) -> None:
    first = search_items(world, limit=2)
    assert [item["id"] for item in first.results] == [A, B] and first.next == B
    second = search_items(world, limit=2, after=first.next)
    assert [item["id"] for item in second.results] == [C] and second.next is None
    assert search_items(world, limit=1, after=C).results == []
    assert search_items(world, where={"type": "TASK"}).results == []


def test_search_after_an_unknown_id_is_400_before_403(world: World) -> None:
    world.authority.refuse_links.add("mallory")
    search = world.service.search
    world.refused(InvalidCommand, "^after: no item has the id ghost$", lambda tx: (
        search.search_items(tx, MALLORY, SearchItems(after="ghost"), origin("cmd"))))
    world.refused(InvalidCommand, "^after: no link has the id ghost$", lambda tx: (
        search.search_links(tx, MALLORY, SearchLinks("source", A, after="ghost"), origin("cmd"))))
    world.refused(Forbidden, "mallory may not search items", lambda tx: (
        search.search_items(tx, MALLORY, SearchItems(), origin("cmd"))))
    world.refused(Forbidden, "mallory may not search links", lambda tx: (
        search.search_links(tx, MALLORY, SearchLinks("either", A), origin("cmd"))))


def test_search_links_finds_by_source_target_or_either(world: World) -> None:
    ab = world.create({"source": A, "target": B}).stored.link.id
    ca = world.create({"source": C, "target": A}).stored.link.id
    assert [link["id"] for link in search_links(world, "source", A).results] == [ab]
    assert [link["id"] for link in search_links(world, "target", A).results] == [ca]
    page = search_links(world, "either", A, limit=1)
    assert [link["id"] for link in page.results] == [ab] and page.next == ab
    assert [link["id"] for link in search_links(world, "either", A, after=ab).results] == [ca]
    assert search_links(world, "either", "no such item").results == []
    event = search_links(world, "either", A).event
    assert (event.type, event.value, event.extra["query"]) == (
        "Link search", [ab, ca], {"either": A, "limit": 100, "after": None})
    assert search_links(world, "source", A).results[0] == {
        "id": ab, "created_at": CREATED, "created_by": "user:alice", "source": A, "target": B,
        "properties": {}}
