"""The wire contract's encoding rules: publisher/thelca_client/contract.py."""

from __future__ import annotations

from typing import Any, get_args

import orjson
import pytest

from thelca_client.contract import (
    COMMAND_TYPES,
    COMMANDS,
    JSON,
    MAX_JSON_DEPTH,
    SEARCH_LIMIT,
    Command,
    CommandName,
    ContractError,
    CreateItem,
    CreateLink,
    DeleteLink,
    Event,
    Names,
    ReadItem,
    ReadLink,
    Reply,
    SearchItems,
    SearchLinks,
    Unauthenticated,
    UpdateItem,
    UpdateLink,
    authorization_headers,
    bearer_token,
    decode_command,
    decode_event,
    decode_reply,
    dumps,
    encode,
    encode_command,
    encode_event,
    encode_reply,
    json_depth_ok,
)

NOT_JSON = "The data is not a JSON string"
ITEM: JSON = {
    "id": "5f73f540-c125-435d-8a5e-6fea05672b7a",
    "created_at": "2020-02-18T16:37:09.654917+00:00",
    "created_by": "a-test-only-id-abcd",
    "properties": {"type": "STORY"},
}


def nested_object(levels: int) -> dict[str, Any]:
    """An object `levels` deep: 1 is {}, 2 is {"a": {}}, ..."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def command_body(**fields: Any) -> bytes:
    return orjson.dumps(fields)


# ---------------------------------------------------------------- decode_command: 400s


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"{",
        b'{"command": "create",}',
        b"{'command': 'create'}",
        b"[" * 100_000,
        b'{"a":' * 100_000,
        b'{"command": "read", "id": "\xff\xfe"}',
        b"\xef\xbb\xbf\xff",
        b'{"command": "read", "id": "\\ud800"}',
        b'{"command": "create", "item": {"properties": {"x": NaN}}}',
        b'{"command": "create", "item": {"properties": {"x": Infinity}}}',
        b'{"command": "create", "item": {"properties": {"x": -Infinity}}}',
        b'{"command": "create", "item": {"properties": {"x": 1e400}}}',
        b'{"command": "read", "id": "x"} trailing',
    ],
    ids=[
        "empty", "text", "truncated", "trailing-comma", "single-quotes", "deep-arrays",
        "deep-objects", "invalid-utf8", "invalid-utf8-only", "lone-surrogate", "nan",
        "infinity", "minus-infinity", "overflow", "trailing-text",
    ],
)
def test_a_body_that_is_not_json_is_refused(body: bytes) -> None:
    with pytest.raises(ContractError) as refused:
        decode_command(body)
    assert str(refused.value) == NOT_JSON
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"[]", "an array"),
        (b'["create"]', "an array"),
        (b'"create"', "a string"),
        (b"42", "a number"),
        (b"4.2", "a number"),
        (b"true", "a boolean"),
        (b"null", "null"),
    ],
)
def test_a_body_that_is_not_an_object_is_refused(body: bytes, named: str) -> None:
    with pytest.raises(ContractError) as refused:
        decode_command(body)
    assert str(refused.value) == f"body must be a JSON object, not {named}"
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        # command
        ({}, "command is missing"),
        ({"command": None}, "command is missing"),
        ({"id": "x"}, "command is missing"),
        ({"command": "delete"}, "command must be one of create, read, update, create_link, "
         "read_link, update_link, delete_link, search_items, search_links, not 'delete'"),
        ({"command": "Create"}, "command must be one of"),
        ({"command": ""}, "command must be one of"),
        ({"command": 1}, "command must be one of"),
        ({"command": ["create"]}, "command must be one of"),
        ({"command": {"name": "create"}}, "command must be one of"),
        ({"command": True}, "command must be one of"),
        # id
        ({"command": "read"}, "id is missing"),
        ({"command": "read", "id": None}, "id is missing"),
        ({"command": "update", "item": ITEM}, "id is missing"),
        ({"command": "read", "id": 1234}, "id must be a string, not a number"),
        ({"command": "read", "id": 12.5}, "id must be a string, not a number"),
        ({"command": "read", "id": True}, "id must be a string, not a boolean"),
        ({"command": "read", "id": ["x"]}, "id must be a string, not an array"),
        ({"command": "update", "id": {"id": "x"}, "item": ITEM},
         "id must be a string, not an object"),
        # item
        ({"command": "create", "item": []}, "item must be an object, not an array"),
        ({"command": "create", "item": "x"}, "item must be an object, not a string"),
        ({"command": "create", "item": 3}, "item must be an object, not a number"),
        ({"command": "create", "item": False}, "item must be an object, not a boolean"),
        ({"command": "update", "id": "x", "item": [ITEM]}, "item must be an object, not an array"),
        ({"command": "update", "id": "x"}, "item is missing"),
        ({"command": "update", "id": "x", "item": None}, "item is missing"),
        ({"command": "update", "id": "x", "expected_version": 1}, "item is missing"),
        # item.properties
        ({"command": "create", "item": {"properties": []}},
         "item.properties must be an object, not an array"),
        ({"command": "create", "item": {"properties": "STORY"}},
         "item.properties must be an object, not a string"),
        ({"command": "create", "item": {"properties": 1}},
         "item.properties must be an object, not a number"),
        ({"command": "create", "item": {"properties": True}},
         "item.properties must be an object, not a boolean"),
        ({"command": "update", "id": "x", "item": {**ITEM, "properties": ["type"]}},
         "item.properties must be an object, not an array"),
        ({"command": "create", "item": {"properties": nested_object(MAX_JSON_DEPTH + 1)}},
         f"item.properties nests deeper than {MAX_JSON_DEPTH} levels"),
        ({"command": "create", "item": {"properties": nested_object(200)}},
         "item.properties nests deeper than"),
        # item's server fields
        ({"command": "update", "id": "x", "item": {**ITEM, "id": 5}},
         "item.id must be a string, not a number"),
        ({"command": "update", "id": "x", "item": {**ITEM, "created_at": 1582043829}},
         "item.created_at must be a string, not a number"),
        ({"command": "update", "id": "x", "item": {**ITEM, "created_by": ["a"]}},
         "item.created_by must be a string, not an array"),
        ({"command": "create", "item": {"id": {"x": 1}}}, "item.id must be a string"),
        # expected_version
        ({"command": "update", "id": "x", "item": ITEM, "expected_version": "3"},
         "expected_version must be an integer, not a string"),
        ({"command": "update", "id": "x", "item": ITEM, "expected_version": 3.0},
         "expected_version must be an integer, not a number"),
        ({"command": "update", "id": "x", "item": ITEM, "expected_version": 3.5},
         "expected_version must be an integer, not a number"),
        ({"command": "update", "id": "x", "item": ITEM, "expected_version": True},
         "expected_version must be an integer, not a boolean"),
        ({"command": "update", "id": "x", "item": ITEM, "expected_version": False},
         "expected_version must be an integer, not a boolean"),
        ({"command": "update", "id": "x", "item": ITEM, "expected_version": [3]},
         "expected_version must be an integer, not an array"),
        ({"command": "update", "id": "x", "item": ITEM, "expected_version": {"v": 3}},
         "expected_version must be an integer, not an object"),
    ],
)
def test_a_field_of_the_wrong_kind_is_refused_by_name(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ContractError) as refused:
        decode_command(command_body(**fields))
    assert message in str(refused.value)
    assert refused.value.status == 400
    assert not isinstance(refused.value, Unauthenticated)


LINK: JSON = {"id": "l1", "created_at": ITEM["created_at"], "created_by": ITEM["created_by"],
              "source": "a", "target": "b", "properties": {"type": "BLOCKS"}}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        # the link commands' ids
        ({"command": "read_link"}, "id is missing: read_link needs the link's id"),
        ({"command": "update_link", "link": LINK}, "id is missing: update_link needs the link's"),
        ({"command": "delete_link"}, "id is missing: delete_link needs the link's id"),
        ({"command": "read_link", "id": 5}, "id must be a string, not a number"),
        ({"command": "delete_link", "id": ["l1"]}, "id must be a string, not an array"),
        # link
        ({"command": "create_link", "link": []}, "link must be an object, not an array"),
        ({"command": "create_link", "link": "l1"}, "link must be an object, not a string"),
        ({"command": "update_link", "id": "l1"}, "link is missing: update_link needs the whole"),
        ({"command": "update_link", "id": "l1", "link": None}, "link is missing"),
        ({"command": "update_link", "id": "l1", "link": True},
         "link must be an object, not a boolean"),
        ({"command": "create_link", "link": {"properties": []}},
         "link.properties must be an object, not an array"),
        ({"command": "create_link", "link": {"properties": nested_object(MAX_JSON_DEPTH + 1)}},
         f"link.properties nests deeper than {MAX_JSON_DEPTH} levels"),
        ({"command": "create_link", "link": {"source": 5, "target": "b"}},
         "link.source must be a string, not a number"),
        ({"command": "create_link", "link": {"source": "a", "target": ["b"]}},
         "link.target must be a string, not an array"),
        ({"command": "update_link", "id": "l1", "link": {**LINK, "id": 1}},
         "link.id must be a string, not a number"),
        ({"command": "update_link", "id": "l1", "link": {**LINK, "created_at": True}},
         "link.created_at must be a string, not a boolean"),
        ({"command": "update_link", "id": "l1", "link": {**LINK, "created_by": {}}},
         "link.created_by must be a string, not an object"),
        # expected_version
        ({"command": "update_link", "id": "l1", "link": LINK, "expected_version": "2"},
         "expected_version must be an integer, not a string"),
        ({"command": "delete_link", "id": "l1", "expected_version": 2.0},
         "expected_version must be an integer, not a number"),
        ({"command": "delete_link", "id": "l1", "expected_version": True},
         "expected_version must be an integer, not a boolean"),
        # search_items
        ({"command": "search_items", "where": []}, "where must be an object, not an array"),
        ({"command": "search_items", "where": "type=STORY"},
         "where must be an object, not a string"),
        ({"command": "search_items", "where": 1}, "where must be an object, not a number"),
        ({"command": "search_items", "where": nested_object(MAX_JSON_DEPTH + 1)},
         f"where nests deeper than {MAX_JSON_DEPTH} levels"),
        ({"command": "search_items", "limit": 0}, "limit must be from 1 to 1000, not 0"),
        ({"command": "search_items", "limit": -1}, "limit must be from 1 to 1000, not -1"),
        ({"command": "search_items", "limit": 1001}, "limit must be from 1 to 1000, not 1001"),
        ({"command": "search_items", "limit": 10.0}, "limit must be an integer, not a number"),
        ({"command": "search_items", "limit": "10"}, "limit must be an integer, not a string"),
        ({"command": "search_items", "limit": True}, "limit must be an integer, not a boolean"),
        ({"command": "search_items", "after": 3}, "after must be a string (an id), not a number"),
        ({"command": "search_items", "after": ["x"]}, "after must be a string (an id), not an"),
        # search_links: exactly one of source, target, either
        ({"command": "search_links"},
         "search_links needs exactly one of source, target, either (an item id), not 0"),
        ({"command": "search_links", "source": None}, "exactly one of source, target, either"),
        ({"command": "search_links", "source": "a", "target": "b"},
         "exactly one of source, target, either (an item id), not 2"),
        ({"command": "search_links", "source": "a", "target": "b", "either": "c"},
         "exactly one of source, target, either (an item id), not 3"),
        ({"command": "search_links", "source": 5}, "source must be a string, not a number"),
        ({"command": "search_links", "target": True}, "target must be a string, not a boolean"),
        ({"command": "search_links", "either": {}}, "either must be a string, not an object"),
        ({"command": "search_links", "either": "a", "limit": 1001},
         "limit must be from 1 to 1000, not 1001"),
        ({"command": "search_links", "either": "a", "after": 1},
         "after must be a string (an id), not a number"),
    ],
)
def test_a_link_or_search_field_of_the_wrong_kind_is_refused_by_name(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ContractError) as refused:
        decode_command(command_body(**fields))
    assert message in str(refused.value)
    assert refused.value.status == 400
    assert not isinstance(refused.value, Unauthenticated)


def test_properties_deeper_than_an_encoder_can_write_are_refused() -> None:
    """orjson reads 1000 levels but writes fewer than 255: refuse them on the way in."""
    body = b'{"command": "create", "item": {"properties": ' + b'{"a": ' * 1000 + b"1"
    body += b"}" * 1000 + b"}}"
    with pytest.raises(ContractError, match=r"item\.properties nests deeper than"):
        decode_command(body)


def test_the_depth_limit_is_exact() -> None:
    assert json_depth_ok(nested_object(MAX_JSON_DEPTH))
    assert not json_depth_ok(nested_object(MAX_JSON_DEPTH + 1))
    assert json_depth_ok([[[]]], limit=3)
    assert not json_depth_ok([[[1]]], limit=3)
    assert json_depth_ok(None)
    deepest_allowed = command_body(
        command="create", item={"properties": nested_object(MAX_JSON_DEPTH)}
    )
    assert decode_command(deepest_allowed) == CreateItem(
        {"properties": nested_object(MAX_JSON_DEPTH)})


def test_the_depth_check_does_not_recurse() -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    assert not json_depth_ok({"a": deep})


# ---------------------------------------------------------------- decode_command: accepted


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"command": "create", "item": {"properties": {"type": "STORY"}}}',
         CreateItem({"properties": {"type": "STORY"}})),
        (b'{"command": "create"}', CreateItem({})),
        (b'{"command": "create", "item": null}', CreateItem({})),
        (b'{"command": "create", "item": {"properties": null}}',
         CreateItem({"properties": None})),
        (b'{"command": "create", "item": {}, "id": 5, "expected_version": "x"}',
         CreateItem({})),
        (b'{"command": "read", "id": "1234"}', ReadItem("1234")),
        (b'{"command": "read", "id": "", "item": 5}', ReadItem("")),
        (b'{"command": "update", "id": "x", "item": {"id": "x"}, "expected_version": 3}',
         UpdateItem("x", {"id": "x"}, expected_version=3)),
        (b'{"command": "update", "id": "x", "item": {}, "expected_version": null}',
         UpdateItem("x", {}, expected_version=None)),
        (b'{"command": "update", "id": "x", "item": {}, "expected_version": 0}',
         UpdateItem("x", {}, expected_version=0)),
        (b' \n{"command": "read", "id": "\\u00fc\xc3\xbc"}\n ', ReadItem("\u00fc\u00fc")),
        # links: fields the command does not use are ignored, as for items
        (b'{"command": "create_link", "link": {"source": "a", "target": "b"}, "id": 5}',
         CreateLink({"source": "a", "target": "b"})),
        (b'{"command": "create_link"}', CreateLink({})),
        (b'{"command": "create_link", "link": {"source": null, "extra": [1]}}',
         CreateLink({"source": None, "extra": [1]})),
        (b'{"command": "read_link", "id": "l1", "link": 5}', ReadLink("l1")),
        (b'{"command": "update_link", "id": "l1", "link": {"id": "l1"}, "expected_version": 2}',
         UpdateLink("l1", {"id": "l1"}, expected_version=2)),
        (b'{"command": "delete_link", "id": "l1"}', DeleteLink("l1")),
        (b'{"command": "delete_link", "id": "l1", "expected_version": null}', DeleteLink("l1")),
        (b'{"command": "delete_link", "id": "l1", "expected_version": 4}', DeleteLink("l1", 4)),
        # search: where defaults to {} (every item), limit to 100
        (b'{"command": "search_items"}', SearchItems({}, SEARCH_LIMIT, None)),
        (b'{"command": "search_items", "where": null, "limit": null, "after": null}',
         SearchItems({}, 100, None)),
        (b'{"command": "search_items", "where": {"type": "STORY", "n": [1, {"a": null}]}, '
         b'"limit": 1000, "after": "x"}',
         SearchItems({"type": "STORY", "n": [1, {"a": None}]}, 1000, "x")),
        (b'{"command": "search_items", "limit": 1}', SearchItems({}, 1)),
        (b'{"command": "search_links", "source": "a"}', SearchLinks("source", "a")),
        (b'{"command": "search_links", "target": "b", "source": null, "limit": 7}',
         SearchLinks("target", "b", 7)),
        (b'{"command": "search_links", "either": "", "after": "l1"}',
         SearchLinks("either", "", after="l1")),
    ],
)
def test_valid_commands_decode(body: bytes, expected: Command) -> None:
    decoded = decode_command(body)
    assert decoded == expected
    assert type(decoded) is type(expected)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (encode_command("create", item={"properties": {"type": "STORY", "ü": [1, {"x": None}]}}),
         CreateItem({"properties": {"type": "STORY", "ü": [1, {"x": None}]}})),
        (encode_command("read", id="5f73f540-c125-435d-8a5e-6fea05672b7a"),
         ReadItem("5f73f540-c125-435d-8a5e-6fea05672b7a")),
        (encode_command("update", id=ITEM["id"], item=ITEM), UpdateItem(ITEM["id"], ITEM)),
        (encode_command("update", id=ITEM["id"], item=ITEM, expected_version=3),
         UpdateItem(ITEM["id"], ITEM, expected_version=3)),
    ],
)
def test_encode_command_round_trips(body: bytes, expected: Command) -> None:
    assert decode_command(body) == expected
    assert orjson.loads(body)["command"] == expected.name


@pytest.mark.parametrize("command", [
    CreateItem({"properties": {"type": "STORY"}}),
    ReadItem("x"),
    UpdateItem("x", ITEM, expected_version=2),
    UpdateItem("x", ITEM),
    CreateLink({"source": "a", "target": "b", "properties": {"type": "BLOCKS"}}),
    ReadLink("l1"),
    UpdateLink("l1", LINK, expected_version=3),
    UpdateLink("l1", LINK),
    DeleteLink("l1"),
    DeleteLink("l1", expected_version=2),
    SearchItems({"type": "STORY"}, limit=10, after="x"),
    SearchItems(),
    SearchLinks("source", "a"),
    SearchLinks("either", "a", limit=1000, after="l1"),
])
def test_every_command_encodes_to_a_body_that_decodes_to_it(command: Command) -> None:
    body = encode(command)
    assert decode_command(body) == command
    assert orjson.loads(body)["command"] == command.name


def test_every_command_name_has_one_shape_named_after_it() -> None:
    assert COMMANDS == get_args(CommandName) == (
        "create", "read", "update", "create_link", "read_link", "update_link", "delete_link",
        "search_items", "search_links")
    assert {name: kind.name for name, kind in COMMAND_TYPES.items()} == {
        name: name for name in COMMANDS}
    assert len(set(COMMAND_TYPES.values())) == len(COMMANDS)


def test_encode_command_without_fields() -> None:
    assert encode_command("create") == b'{"command":"create"}'


# ---------------------------------------------------------------- bearer_token


SECRET = "s3cr3t-T0ken.with~chars"


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {SECRET}"},
        {"authorization": f"Bearer {SECRET}"},
        {"AUTHORIZATION": f"Bearer {SECRET}"},
        {"AuThOrIzAtIoN": f"Bearer {SECRET}"},
        {"Authorization": f"bearer {SECRET}"},
        {"Authorization": f"BEARER {SECRET}"},
        {"Authorization": f"  Bearer   {SECRET}  "},
        {"Authorization": f"Bearer {SECRET}".encode()},
        {"Authorization": f"Bearer {SECRET}", "x-other": "Bearer nope", "status": 200},
        authorization_headers(SECRET),
    ],
)
def test_bearer_token_is_found(headers: dict[str, Any]) -> None:
    assert bearer_token(headers) == SECRET


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        (None, "no Authorization header"),
        ({}, "no Authorization header"),
        ({"X-Authorization": f"Bearer {SECRET}"}, "no Authorization header"),
        ({"Authorisation": f"Bearer {SECRET}"}, "no Authorization header"),
        ({"Authorization": SECRET}, "Bearer scheme"),
        ({"Authorization": f"Basic {SECRET}"}, "Bearer scheme"),
        ({"Authorization": f"Token {SECRET}"}, "Bearer scheme"),
        ({"Authorization": f"Bearer{SECRET}"}, "Bearer scheme"),
        ({"Authorization": f"Bearer\t{SECRET}"}, "Bearer scheme"),
        ({"Authorization": ""}, "Bearer scheme"),
        ({"Authorization": "Bearer"}, "empty"),
        ({"Authorization": "Bearer "}, "empty"),
        ({"Authorization": "bearer    "}, "empty"),
        ({"Authorization": b"Bearer "}, "empty"),
        ({"Authorization": b"Bearer \xff" + SECRET.encode()}, "not UTF-8"),
        ({"Authorization": None}, "not a string"),
        ({"Authorization": 42}, "not a string"),
        ({"Authorization": [f"Bearer {SECRET}"]}, "not a string"),
        ({"Authorization": f"Bearer {SECRET}", "authorization": f"Bearer {SECRET}"},
         "more than one"),
        ({"Authorization": f"Bearer {SECRET}", "AUTHORIZATION": "Bearer other"},
         "more than one"),
    ],
)
def test_bearer_token_refusals_are_401_and_never_show_the_token(
    headers: dict[str, Any] | None, why: str
) -> None:
    with pytest.raises(Unauthenticated) as refused:
        bearer_token(headers)
    error = refused.value
    assert why in str(error)
    assert error.status == 401
    assert isinstance(error, ContractError)
    for text in (str(error), repr(error), repr(error.args)):
        assert SECRET not in text
        assert "s3cr3t" not in text


def test_authorization_headers_are_what_an_http_client_sends() -> None:
    assert authorization_headers("abcd") == {"Authorization": "Bearer abcd"}


# ---------------------------------------------------------------- Names


def test_default_names() -> None:
    names = Names()
    assert names.prefix == "thelca"
    assert names.commands == "thelca.commands"
    assert names.events == "thelca.events"
    assert names.events_log == "thelca.events.log"
    assert names.dead == "thelca.dead"
    assert names.replay == "thelca.replay"


@pytest.mark.parametrize("prefix", ["run-1", "a", "t.e_s:t-9", "A" * 201])
def test_names_under_a_prefix(prefix: str) -> None:
    names = Names(prefix)
    assert [names.commands, names.events, names.events_log, names.dead, names.replay] == [
        f"{prefix}.commands", f"{prefix}.events", f"{prefix}.events.log",
        f"{prefix}.dead", f"{prefix}.replay",
    ]


@pytest.mark.parametrize(
    "prefix", ["", ".thelca", "-x", "a b", "a/b", "thelca\n", "ünï", "amq\x00", "A" * 202]
)
def test_an_invalid_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="invalid prefix"):
        Names(prefix)


# ---------------------------------------------------------------- replies


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, item=ITEM, version=1),
        Reply(200, item={**ITEM, "properties": {"ü": ["漢字", None, 1.5, {"x": []}]}}, version=7),
        Reply(404, error="no item with id 1234"),
        Reply(400, error="The data is not a JSON string"),
        Reply(200, extra={"count": 3}),
        Reply(500, error="see id 42 in the worker's log", extra={"trace": "abc"}),
    ],
)
def test_replies_round_trip(reply: Reply) -> None:
    body = encode_reply(reply)
    assert b"\n" not in body
    assert decode_reply(body) == reply


def test_reply_bodies_are_the_contracts() -> None:
    assert orjson.loads(encode_reply(Reply(200, item=ITEM, version=1))) == {
        "status": 200, "item": ITEM, "version": 1,
    }
    assert orjson.loads(encode_reply(Reply(404, error="no item with id 1234"))) == {
        "status": 404, "error": "no item with id 1234",
    }
    assert Reply(200).ok
    assert not Reply(404).ok
    assert decode_reply(b'{"status": 404, "error": "no item with id 1234"}') == Reply(
        404, error="no item with id 1234"
    )


@pytest.mark.parametrize(
    "body", [b"nope", b"[]", b"{}", b'{"status": "200"}', b'{"status": null}', b'{"status": 2.0}']
)
def test_a_reply_without_an_integer_status_is_refused(body: bytes) -> None:
    with pytest.raises(ContractError):
        decode_reply(body)


# ---------------------------------------------------------------- events


@pytest.mark.parametrize(
    "event",
    [
        Event("2020-02-18T16:37:09.654949+00:00", "Item created", "a-test-only-id-abcd", ITEM,
              "7309abea-4f7f-5c5b-9444-b1b66e1ca334",
              extra={"version": 1, "command_id": "m-1"}),
        Event("2020-02-18T16:37:09.654949+00:00", "Item read", "u", ITEM["id"], "e2",
              extra={"version": 4, "command_id": "m-2"}),
        Event("2020-02-18T16:37:09.654949+00:00", "Access refused", None,
              {"command": "update", "id": "x", "status": 401}, "e3"),
        Event("t", "Item updated", "u", {**ITEM, "properties": {"text": "line\nbreak ü"}}, "e4"),
    ],
)
def test_events_round_trip(event: Event) -> None:
    body = encode_event(event)
    assert b"\n" not in body
    assert decode_event(orjson.loads(body)) == event


def test_the_event_body_is_the_contracts() -> None:
    event = Event("2020-02-18T16:37:09.654949+00:00", "Item created", "a-test-only-id-abcd",
                  ITEM, "e1", extra={"version": 1})
    assert orjson.loads(encode_event(event)) == {
        "time": "2020-02-18T16:37:09.654949+00:00",
        "type": "Item created",
        "user": "a-test-only-id-abcd",
        "value": ITEM,
        "id": "e1",
        "version": 1,
    }


def test_events_of_the_original_server_decode() -> None:
    line = {"time": "2020-02-18T16:37:09.654949+00:00", "type": "Server started",
            "user": None, "value": None}
    event = decode_event(line)
    assert event == Event("2020-02-18T16:37:09.654949+00:00", "Server started", None, None, "")
    legacy_item = {"time": "t", "type": "Item created", "user": "u",
                   "value": {**ITEM, "properties": None}}
    assert decode_event(legacy_item).value["properties"] is None


def test_dumps_is_compact_utf8_on_one_line() -> None:
    body = dumps({"a": "x\ny\r\u2028", "ü": [1, 2]})
    assert b"\n" not in body
    assert b"\r" not in body
    assert b": " not in body
    assert b", " not in body
    assert orjson.loads(body) == {"a": "x\ny\r\u2028", "ü": [1, 2]}
    assert "ü".encode() in body
