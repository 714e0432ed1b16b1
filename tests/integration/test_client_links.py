"""Links and search through the client library (Client and AsyncClient) against the real
worker: typed results, the same error classes, paging. The wire rules row by row are in
tests/integration/test_links.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from tests.integration.conftest import RunningSystem
from thelca_client import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    ItemPage,
    LinkPage,
    LinkReply,
    NotFound,
)

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def client(amqp_url: str, shared_system: RunningSystem) -> Iterator[Client]:
    with Client(amqp_url, prefix=shared_system.prefix, token="abcd") as made:
        yield made


def test_a_link_s_life_through_the_client(client: Client) -> None:
    story = client.create({"type": "STORY"}).item["id"]
    epic = client.create({"type": "EPIC"}).item["id"]
    bug = client.create({"type": "BUG"}).item["id"]
    created = client.create_link(story, epic, {"type": "IMPLEMENTS"})
    assert isinstance(created, LinkReply) and created.ok
    link, version = created.link, created.version  # typed: a dict and an int, never None
    assert (link["source"], link["target"], link["properties"], version) == (
        story, epic, {"type": "IMPLEMENTS"}, 1)
    assert client.read_link(link["id"]).link == link
    moved = client.update_link(link["id"], {**link, "target": bug}, expected_version=1)
    assert (moved.link["target"], moved.version) == (bug, 2)
    with pytest.raises(Conflict, match="is at version 2"):
        client.update_link(link["id"], link, expected_version=1)
    with pytest.raises(Conflict):
        client.delete_link(link["id"], expected_version=1)
    deleted = client.delete_link(link["id"], expected_version=2)
    assert (deleted.link, deleted.version) == (moved.link, 2)
    with pytest.raises(NotFound, match=f"no link with id {link['id']}") as gone:
        client.read_link(link["id"])
    assert gone.value.status == 404
    with pytest.raises(NotFound):
        client.delete_link(link["id"])


def test_the_link_rules_raise_bad_request(client: Client) -> None:
    a = client.create().item["id"]
    for source, target, error in ((a, a, "source and target must be different"),
                                  ("ghost", a, "source must be a valid item id"),
                                  (a, "ghost", "target must be a valid item id")):
        with pytest.raises(BadRequest, match=error):
            client.create_link(source, target)


def test_search_items_pages_through_everything_that_matches(client: Client) -> None:
    tag = uuid.uuid4().hex
    made = [client.create({"tag": tag, "n": n}).item["id"] for n in range(5)]
    client.create({"tag": "other"})
    seen: list[str] = []
    page = client.search_items({"tag": tag}, limit=2)
    while True:
        assert isinstance(page, ItemPage)
        seen += [item["id"] for item in page.items]
        if page.next is None:
            break
        page = client.search_items({"tag": tag}, limit=2, after=page.next)
    assert seen == made
    assert client.search_items({"tag": tag, "n": 3}).items[0]["id"] == made[3]
    with pytest.raises(BadRequest, match="limit must be from 1 to 1000"):
        client.search_items({"tag": tag}, limit=0)
    with pytest.raises(BadRequest, match="after: no item has the id ghost"):
        client.search_items(after="ghost")


def test_search_links_takes_exactly_one_end(client: Client) -> None:
    a, b = client.create().item["id"], client.create().item["id"]
    out = client.create_link(a, b).link
    back = client.create_link(b, a).link
    page = client.search_links(either=a)
    assert isinstance(page, LinkPage)
    assert (page.links, page.next) == ([out, back], None)
    assert client.search_links(source=a).links == [out]
    assert client.search_links(target=a, limit=1).links == [back]
    first = client.search_links(either=b, limit=1)
    assert first.next == out["id"]
    assert client.search_links(either=b, after=first.next).links == [back]
    with pytest.raises(ValueError, match="exactly one of source, target, either"):
        client.search_links(source=a, target=b)
    with pytest.raises(ValueError, match="exactly one"):
        client.search_links()


def test_the_async_client_has_the_same_link_and_search_commands(
    amqp_url: str, shared_system: RunningSystem
) -> None:
    async def scenario() -> None:
        async with AsyncClient(amqp_url, prefix=shared_system.prefix, token="abcd") as client:
            tag = uuid.uuid4().hex
            a, b = [(await client.create({"tag": tag})).item["id"] for _ in range(2)]
            link = (await client.create_link(a, b, {"type": "BLOCKS"})).link
            assert (await client.read_link(link["id"])).link == link
            updated = await client.update_link(link["id"], {**link, "properties": {}})
            assert updated.version == 2
            found = await client.search_items({"tag": tag})
            assert [item["id"] for item in found.items] == [a, b] and found.next is None
            assert (await client.search_links(target=b)).links == [updated.link]
            assert (await client.delete_link(link["id"], expected_version=2)).version == 2
            with pytest.raises(NotFound):
                await client.read_link(link["id"])

    asyncio.run(scenario())
