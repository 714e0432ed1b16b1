"""Links and search through the real worker, with a client written with plain pika.

Every row of the contract's link and search tables (docs/contract.md, v1.1), in
the order the rules are checked, against real `thelca worker` and `thelca
logger` processes: the reply, and the event the log received. The 403 rows
need real scopes: they run against the jwt Authority. The same commands
through the client library are in tests/integration/test_client_links.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import JwtSystem, RunningSystem
from tests.integration.plain import PlainClient, PlainReply, next_message, watch
from thelca_client.contract import Names

pytestmark = pytest.mark.broker

JSON = dict[str, Any]


@pytest.fixture(scope="module")
def client(amqp_url: str, shared_system: RunningSystem) -> Iterator[PlainClient]:
    plain = PlainClient(amqp_url, shared_system.prefix)
    yield plain
    plain.close()


def ok(reply: PlainReply) -> JSON:
    assert reply.status == 200, reply.body
    return reply.body


def new_item(client: PlainClient, **properties: Any) -> str:
    body = ok(client.send({"command": "create", "item": {"properties": properties}}))
    item_id: str = body["item"]["id"]
    return item_id


def new_link(client: PlainClient, source: str, target: str, **properties: Any) -> JSON:
    body = ok(client.send({"command": "create_link", "link": {
        "source": source, "target": target, "properties": properties}}))
    link: JSON = body["link"]
    return link


def refused(client: PlainClient, body: JSON, status: int, error: str,
            message_id: str | None = None) -> PlainReply:
    reply = client.send(body, message_id=message_id)
    assert reply.status == status, reply.body
    assert error in reply.body["error"], reply.body
    assert set(reply.body) == {"status", "error"}
    assert reply.properties.headers == {"status": status}
    return reply


# ---------------------------------------------------------------- 200s and events


def test_create_read_update_delete_a_link_and_the_events_they_log(
    shared_system: RunningSystem, client: PlainClient
) -> None:
    story, epic, bug = (new_item(client, type=kind) for kind in ("STORY", "EPIC", "BUG"))
    create_id = str(uuid.uuid4())
    created = ok(client.send({"command": "create_link", "link": {
        "source": story, "target": epic, "properties": {"type": "IMPLEMENTS"},
        "colour": "ignored"}}, message_id=create_id))
    link = created["link"]
    assert set(created) == {"status", "link", "version"} and created["version"] == 1
    assert set(link) == {"id", "created_at", "created_by", "source", "target", "properties"}
    assert uuid.UUID(link["id"]).version == 4
    assert (link["source"], link["target"], link["properties"], link["created_by"]) == (
        story, epic, {"type": "IMPLEMENTS"}, "a-test-only-id-abcd")
    (event,) = shared_system.events_for(create_id)
    assert (event["type"], event["value"], event["version"], event["user"]) == (
        "Link created", link, 1, "a-test-only-id-abcd")

    read_id = str(uuid.uuid4())
    assert ok(client.send({"command": "read_link", "id": link["id"]}, message_id=read_id)) == {
        "status": 200, "link": link, "version": 1}
    (event,) = shared_system.events_for(read_id)
    assert (event["type"], event["value"], event["version"]) == ("Link read", link["id"], 1)

    moved = {**link, "target": bug, "properties": {"type": "BLOCKS"}, "extra": True}
    update_id = str(uuid.uuid4())
    updated = ok(client.send({"command": "update_link", "id": link["id"], "link": moved,
                              "expected_version": 1}, message_id=update_id))
    assert updated == {"status": 200, "version": 2, "link": {
        **link, "target": bug, "properties": {"type": "BLOCKS"}}}
    (event,) = shared_system.events_for(update_id)
    assert (event["type"], event["value"], event["version"]) == (
        "Link updated", updated["link"], 2)

    delete_id = str(uuid.uuid4())
    deleted = ok(client.send({"command": "delete_link", "id": link["id"],
                              "expected_version": 2}, message_id=delete_id))
    assert deleted == updated  # the link and its version as they were
    (event,) = shared_system.events_for(delete_id)
    assert (event["type"], event["value"], event["version"]) == (
        "Link deleted", link["id"], 2)

    # A deleted link is gone; the items are not.
    for body in ({"command": "read_link", "id": link["id"]},
                 {"command": "update_link", "id": link["id"], "link": updated["link"]},
                 {"command": "delete_link", "id": link["id"]}):
        refused(client, body, 404, f"no link with id {link['id']}")
    for item_id in (story, epic, bug):
        ok(client.send({"command": "read", "id": item_id}))


def test_a_link_command_sent_again_gets_its_first_reply_and_logs_once(
    shared_system: RunningSystem, client: PlainClient
) -> None:
    a, b = new_item(client), new_item(client)
    body = {"command": "create_link", "link": {"source": a, "target": b}}
    message_id = str(uuid.uuid4())
    first = ok(client.send(body, message_id=message_id))
    assert ok(client.send(body, message_id=message_id)) == first
    search = ok(client.send({"command": "search_links", "source": a}))
    assert [link["id"] for link in search["links"]] == [first["link"]["id"]]
    delete = {"command": "delete_link", "id": first["link"]["id"]}
    delete_id = str(uuid.uuid4())
    gone = ok(client.send(delete, message_id=delete_id))
    assert ok(client.send(delete, message_id=delete_id)) == gone  # not a 404: remembered
    ok(client.send({"command": "create", "item": {}}, message_id=str(uuid.uuid4())))
    lines = shared_system.wait_for_log(lambda ls: sum(
        line.get("command_id") == delete_id for line in ls) >= 1)
    assert sum(line.get("command_id") == message_id for line in lines) == 1
    assert sum(line.get("command_id") == delete_id for line in lines) == 1


# ---------------------------------------------------------------- the link table, in order


def test_link_rows_in_the_contracts_order(client: PlainClient) -> None:
    a, b = new_item(client), new_item(client)
    link = new_link(client, a, b)
    whole = {"command": "update_link", "id": link["id"]}
    rows: list[tuple[str, JSON, str]] = [
        # shape: 400 before anything else, naming the field
        ("a field of the wrong type", {"command": "create_link", "link": {"source": 5}},
         "link.source must be a string, not a number"),
        ("link not an object", {"command": "create_link", "link": [a, b]},
         "link must be an object, not an array"),
        ("update without link", {"command": "update_link", "id": "nobody"},
         "link is missing"),
        ("expected_version not an integer", {"command": "delete_link", "id": "nobody",
                                             "expected_version": "1"},
         "expected_version must be an integer"),
        # 400: server fields on create, before the ends are looked at
        ("create with id", {"command": "create_link", "link": {"id": "mine"}},
         "id cannot be set externally"),
        ("create with created_at", {"command": "create_link", "link": {
            "created_at": link["created_at"], "source": a, "target": b}},
         "created_at cannot be set externally"),
        ("create with created_by", {"command": "create_link", "link": {
            "created_by": "me", "source": a, "target": a}},
         "created_by cannot be set externally"),
        # 404 before the rows after it
        ("read of no link", {"command": "read_link", "id": a}, f"no link with id {a}"),
        ("update of no link", {"command": "update_link", "id": "nobody",
                               "link": {"id": "other"}, "expected_version": 9},
         "no link with id nobody"),
        ("delete of no link", {"command": "delete_link", "id": "nobody",
                               "expected_version": 9}, "no link with id nobody"),
        # 400: fields that cannot change
        ("update without id", {**whole, "link": {**link, "id": None}}, "id cannot be modified"),
        ("update of another id", {**whole, "link": {**link, "id": a}}, "id cannot be modified"),
        ("update of created_at", {**whole, "link": {**link, "created_at": "2020"}},
         "created_at cannot be modified"),
        ("update of created_by", {**whole, "link": {**link, "created_by": "x", "source": None}},
         "created_by cannot be modified"),
        # 400: source and target
        ("create without ends", {"command": "create_link"}, "source and target must be set"),
        ("create without target", {"command": "create_link", "link": {"source": a}},
         "source and target must be set"),
        ("update without source", {**whole, "link": {**link, "source": None}},
         "source and target must be set"),
        ("create with equal ends", {"command": "create_link", "link": {
            "source": a, "target": a}}, "source and target must be different"),
        ("update to equal ends", {**whole, "link": {**link, "target": a}},
         "source and target must be different"),
        ("source no item", {"command": "create_link", "link": {
            "source": "ghost", "target": b}}, "source must be a valid item id"),
        ("target no item", {"command": "create_link", "link": {
            "source": a, "target": link["id"]}}, "target must be a valid item id"),
        ("update to no item", {**whole, "link": {**link, "target": "ghost"}},
         "target must be a valid item id"),
    ]
    for what, body, error in rows:
        status = 404 if error.startswith("no link") else 400
        reply = client.send(body)
        assert reply.status == status, (what, reply.body)
        assert error in reply.body["error"], (what, reply.body)
    # 409, after all of those: the update and the delete at a stale version
    refused(client, {**whole, "link": link, "expected_version": 2}, 409,
            f"expected_version is 2 but link {link['id']} is at version 1")
    refused(client, {"command": "delete_link", "id": link["id"], "expected_version": 0}, 409,
            "is at version 1")
    assert ok(client.send({"command": "read_link", "id": link["id"]}))["link"] == link


# ---------------------------------------------------------------- the search table


def test_search_items_in_creation_order_paged_with_next(client: PlainClient) -> None:
    tag = uuid.uuid4().hex  # this test's own items, on a worker other tests use too
    made = [new_item(client, tag=tag, type="STORY" if n % 3 else "BUG", n=n) for n in range(7)]
    stories = [item_id for n, item_id in enumerate(made) if n % 3]
    page = ok(client.send({"command": "search_items", "where": {"tag": tag, "type": "STORY"}}))
    assert [item["id"] for item in page["items"]] == stories and page["next"] is None
    assert set(page) == {"status", "items", "next"}
    assert set(page["items"][0]) == {"id", "created_at", "created_by", "properties"}
    found, after = [], None
    while True:
        body: JSON = {"command": "search_items", "where": {"tag": tag}, "limit": 3}
        if after is not None:
            body["after"] = after
        page = ok(client.send(body))
        found += [item["id"] for item in page["items"]]
        after = page["next"]
        if after is None:
            break
        assert after == page["items"][-1]["id"] and len(page["items"]) == 3
    assert found == made
    exact = ok(client.send({"command": "search_items", "where": {"tag": tag}, "limit": 7}))
    assert len(exact["items"]) == 7 and exact["next"] is None  # nothing follows: null
    everything = ok(client.send({"command": "search_items", "where": {}, "after": made[0],
                                 "limit": 1000}))
    assert [i["id"] for i in everything["items"] if i["id"] in made] == made[1:]
    assert ok(client.send({"command": "search_items", "where": {"tag": tag, "n": 1.0}})
              )["items"][0]["id"] == made[1]
    assert ok(client.send({"command": "search_items", "where": {"tag": tag, "n": True}})
              )["items"] == []


def test_search_links_by_source_target_either(client: PlainClient) -> None:
    a, b, c = new_item(client), new_item(client), new_item(client)
    ab, ca, bc = new_link(client, a, b), new_link(client, c, a), new_link(client, b, c)

    def ids(**query: Any) -> list[str]:
        page = ok(client.send({"command": "search_links", **query}))
        assert set(page) == {"status", "links", "next"}
        return [link["id"] for link in page["links"]]

    assert ids(source=a) == [ab["id"]]
    assert ids(target=a) == [ca["id"]]
    assert ids(either=a) == [ab["id"], ca["id"]]
    assert ids(either=b, limit=1) == [ab["id"]]
    assert ids(either=b, after=ab["id"]) == [bc["id"]]
    assert ids(source="no such item") == []  # 200, empty, as in the original
    page = ok(client.send({"command": "search_links", "either": c, "limit": 1}))
    assert page["next"] == ca["id"] and page["links"] == [ca]  # bare links, no version


def test_search_rows_that_are_400(client: PlainClient) -> None:
    a = new_item(client)
    rows: list[tuple[JSON, str]] = [
        ({"command": "search_items", "where": ["type", "STORY"]}, "where must be an object"),
        ({"command": "search_items", "where": "type=STORY"}, "where must be an object"),
        ({"command": "search_items", "limit": 0}, "limit must be from 1 to 1000, not 0"),
        ({"command": "search_items", "limit": 1001}, "limit must be from 1 to 1000"),
        ({"command": "search_items", "limit": "5"}, "limit must be an integer"),
        ({"command": "search_items", "after": "ghost"}, "after: no item has the id ghost"),
        ({"command": "search_links", "source": a, "after": a}, f"no link has the id {a}"),
        ({"command": "search_links"}, "exactly one of source, target, either"),
        ({"command": "search_links", "source": a, "either": a},
         "exactly one of source, target, either"),
        ({"command": "search_links", "source": a, "limit": 5000}, "limit must be from 1"),
    ]
    for body, error in rows:
        refused(client, body, 400, error)


def test_searches_are_audited_each_time_and_not_remembered(
    shared_system: RunningSystem, client: PlainClient
) -> None:
    tag = uuid.uuid4().hex
    first = new_item(client, tag=tag)
    message_id = str(uuid.uuid4())
    body = {"command": "search_items", "where": {"tag": tag}}
    assert ok(client.send(body, message_id=message_id))["items"][0]["id"] == first
    second = new_item(client, tag=tag)
    again = ok(client.send(body, message_id=message_id))  # answered afresh, like a read
    assert [item["id"] for item in again["items"]] == [first, second]
    link_search = str(uuid.uuid4())
    ok(client.send({"command": "search_links", "target": first}, message_id=link_search))
    events = shared_system.events_for(message_id)
    assert events[0]["type"] == "Item search" and events[0]["value"] == [first]
    assert events[0]["query"] == {"where": {"tag": tag}, "limit": 100, "after": None}
    (event,) = shared_system.events_for(link_search)
    assert (event["type"], event["value"], event["query"]["target"]) == (
        "Link search", [], first)


# ---------------------------------------------------------------- 403, with the jwt Authority


@pytest.fixture(scope="module")
def jwt_client(amqp_url: str, shared_jwt_system: JwtSystem) -> Iterator[PlainClient]:
    plain = PlainClient(amqp_url, shared_jwt_system.prefix)
    yield plain
    plain.close()


def test_link_and_search_scopes_and_ownership_are_403_and_audited(
    shared_jwt_system: JwtSystem, jwt_client: PlainClient
) -> None:
    idp = shared_jwt_system.idp

    def send(body: JSON, sub: str, scope: str) -> tuple[PlainReply, str]:
        token = idp.token(sub, scope)
        shared_jwt_system.sent_tokens.append(token)
        message_id = str(uuid.uuid4())
        return jwt_client.send(body, token=token, message_id=message_id), message_id

    items = [send({"command": "create", "item": {}}, "bob", "items:write")[0].body["item"]["id"]
             for _ in range(2)]
    created, _ = send({"command": "create_link", "link": {"source": items[0],
                                                          "target": items[1]}},
                      "bob", "items:write")
    assert created.status == 200, created.body
    link = created.body["link"]
    update = {"command": "update_link", "id": link["id"],
              "link": {**link, "properties": {"type": "BLOCKS"}}}
    delete = {"command": "delete_link", "id": link["id"]}
    rows = [
        ("create without items:write", "carol", "items:read",
         {"command": "create_link", "link": {"source": items[0], "target": items[1]}},
         "items:write scope"),
        ("read without items:read", "carol", "items:write",
         {"command": "read_link", "id": link["id"]}, "items:read scope"),
        ("update without items:write", "bob", "items:read", update, "items:write scope"),
        ("delete without items:write", "bob", "items:read items:admin", delete,
         "items:write scope"),
        ("update of another's link", "carol", "items:read items:write", update,
         "items:admin"),
        ("delete of another's link", "carol", "items:write", delete, "items:admin"),
        ("search items without items:read", "carol", "items:write",
         {"command": "search_items", "where": {}}, "items:read scope"),
        ("search links without items:read", "carol", "items:write items:admin",
         {"command": "search_links", "either": items[0]}, "items:read scope"),
    ]
    for what, sub, scope, body, reason in rows:
        reply, message_id = send(body, sub, scope)
        assert reply.status == 403, (what, reply.body)
        assert reason in reply.body["error"], (what, reply.body)
        (event,) = shared_jwt_system.events_for(message_id)
        assert event["type"] == "Access refused" and event["user"] == sub, what
        expected = {"command": body["command"], "status": 403}
        if "id" in body:
            expected["id"] = body["id"]
        assert event["value"] == expected, what
    # and what the rules allow
    allowed = [("carol", "items:read", {"command": "read_link", "id": link["id"]}),
               ("carol", "items:read", {"command": "search_links", "source": items[0]}),
               ("carol", "items:read", {"command": "search_items", "where": {}}),
               ("dave", "items:write items:admin", update),
               ("bob", "items:write", {**delete, "expected_version": 2})]
    for sub, scope, body in allowed:
        reply, _ = send(body, sub, scope)
        assert reply.status == 200, (sub, body, reply.body)
    assert reply.body["link"]["created_by"] == "bob" and reply.body["version"] == 2


# ---------------------------------------------------------------- 500, as for items


def test_an_unexpected_failure_on_a_link_is_a_500_and_a_dead_letter(
    amqp_url: str, worker: Names
) -> None:
    client = PlainClient(amqp_url, worker.prefix)
    try:
        a, b = new_item(client), new_item(client)
        channel, _ = watch(client, worker.dead)
        message_id = str(uuid.uuid4())
        body = {"command": "create_link",
                "link": {"source": a, "target": b, "properties": {"explode": True}}}
        reply = client.send(body, message_id=message_id)
        assert reply.status == 500 and "error id" in reply.body["error"]
        properties, dead = next_message(channel, worker.dead)
        assert dead == body and properties.message_id == message_id
        assert "Authorization" not in dict(properties.headers or {})
        # nothing was made, and the worker goes on
        assert ok(client.send({"command": "search_links", "source": a}))["links"] == []
        new_link(client, a, b)
    finally:
        client.close()
