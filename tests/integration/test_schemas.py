"""The machine-readable contract is valid, and true of the real messages.

docs/asyncapi.yaml and docs/schemas/*.json must be valid (JSON Schema draft
2020-12, the official AsyncAPI parser, every $ref) and agree with
docs/contract.md and the code's topology. Then real messages, captured from a
running worker and logger through a plain pika client, must match them: every
reply status the test-only Authority can give, every event on the fanout
exchange, every line of the event log, the dead letters of the worker, the
logger and the broker, and the logger's checkpoints. Bodies the worker
refuses with 400 must be invalid per the command schema, and bodies it
accepts valid.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin
from urllib.request import url2pathname

import pika
import pytest
from jsonschema import Draft202012Validator

from tests.integration.conftest import RunningSystem, run_system, wait_for_consumers
from tests.integration.contract_schemas import (
    ASYNCAPI,
    CONTRACT,
    SCHEMAS,
    Captured,
    assert_message,
    assert_valid,
    errors,
    event_message_name,
    load_asyncapi,
    refs,
    run_official_parser,
    schema_files,
    schema_uri,
)
from tests.integration.plain import PlainClient, watch
from thelca.amqp.topology import thelca_topology
from thelca.audit.checkpoints import checkpoints_path
from thelca_client import commands
from thelca_client.contract import LINK_ENDS, Names, encode_command, encode_replay_request

pytestmark = pytest.mark.broker

COMMAND = schema_uri("command.json")
EVENT = schema_uri("event.json")


# ================================================================ the documents themselves


@pytest.mark.parametrize("path", schema_files(), ids=lambda p: p.name)
def test_every_schema_is_a_valid_draft_2020_12_schema(path: Path) -> None:
    schema = json.loads(path.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    for example in schema.get("examples", []):
        assert_valid(path.as_uri(), example, f"an example of {path.name}")


def test_there_is_one_schema_file_per_kind_of_message() -> None:
    assert {p.name for p in schema_files()} == {
        "command.json", "item.json", "link.json", "reply.json", "event.json",
        "replay-request.json", "replay-end.json", "dead-letter-headers.json", "checkpoint.json",
    }


def test_the_asyncapi_document_is_asyncapi_3_and_every_ref_resolves() -> None:
    document = load_asyncapi()
    assert document["asyncapi"] == "3.0.0"
    checked = _check_refs(ASYNCAPI, document)
    for path in schema_files():
        checked += _check_refs(path, json.loads(path.read_text()))
    # Every schema file is used by the AsyncAPI document, so there is one copy of each.
    used = {urljoin(ASYNCAPI.as_uri(), ref).split("#")[0] for ref in refs(document)}
    for path in schema_files():
        if path.name not in ("item.json", "link.json"):  # reached through reply and event
            assert path.as_uri() in used, f"docs/asyncapi.yaml does not use {path.name}"
    assert checked > 90  # 67 in asyncapi.yaml, 30 in the schemas: none went unseen


def _check_refs(path: Path, document: Any) -> int:
    count = 0
    for ref in refs(document):
        target_uri = urljoin(path.as_uri(), ref)
        file_uri, _, pointer = target_uri.partition("#")
        target = Path(url2pathname(file_uri.removeprefix("file://")))
        assert target.is_file(), f"{path.name}: $ref {ref} names a file that does not exist"
        contents = document if target == path else _load(target)
        _resolve_pointer(contents, pointer, f"{path.name}: $ref {ref}")
        count += 1
    return count


def _load(path: Path) -> Any:
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return load_asyncapi()


def _resolve_pointer(document: Any, pointer: str, what: str) -> Any:
    node = document
    for raw in unquote(pointer).split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list):
            node = node[int(part)]
        else:
            assert isinstance(node, dict) and part in node, f"{what}: no {part!r} there"
            node = node[part]
    return node


def test_the_official_asyncapi_parser_accepts_the_document() -> None:
    """@asyncapi/parser validates against the official AsyncAPI 3.0.0 JSON Schema and more."""
    result = run_official_parser()
    assert result.returncode == 0, (
        f"the AsyncAPI parser refused docs/asyncapi.yaml:\n{result.stdout}{result.stderr}")
    assert '{"parsed":"3.0.0"}' in result.stdout


def _contract_section(title: str) -> str:
    text = CONTRACT.read_text()
    start = text.index(f"### {title}\n")
    end = text.find("\n##", start + 1)
    return text[start:end if end != -1 else None]


def _table_rows(section: str) -> list[list[str]]:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| ")]
    return rows[2:]  # without the heading row and the --- row


def _channels_by_address() -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for channel in load_asyncapi()["channels"].values():
        if channel.get("address"):
            found.setdefault(channel["address"], []).append(channel)
    return found


def test_every_broker_object_of_the_contract_is_a_channel_of_its_kind() -> None:
    channels = _channels_by_address()
    rows = _table_rows(_contract_section("Broker objects"))
    assert len(rows) == 5
    for name_cell, kind, *_ in rows:
        address = name_cell.strip("`").replace("<prefix>", "{prefix}")
        assert address in channels, f"{name_cell} of docs/contract.md is not in asyncapi.yaml"
        bindings = [c["bindings"]["amqp"] for c in channels[address]]
        for binding in bindings:
            assert binding["is"] in ("queue", "routingKey")
            part = binding["queue"] if binding["is"] == "queue" else binding["exchange"]
            assert part["name"] == address and part["durable"] is True, address
        if "queue" in kind:
            assert any(b["is"] == "queue" for b in bindings), f"{address} is a queue"
        if "fanout exchange" in kind:
            assert any(b["is"] == "routingKey" and b["exchange"]["type"] == "fanout"
                       for b in bindings), f"{address} is a fanout exchange"
        if "bound to" in kind:
            bound_to = re.search(r"bound to `([^`]+)`", kind)
            assert bound_to is not None
            assert any(b.get("x-bound-to") == bound_to.group(1).replace("<prefix>", "{prefix}")
                       for b in bindings), f"{address} is bound to {bound_to.group(1)}"


def test_the_queue_arguments_are_the_contract_s_and_the_code_s() -> None:
    channels = _channels_by_address()
    code = {queue.name.replace("PREFIX", "{prefix}"): queue
            for queue in thelca_topology(Names("PREFIX")).queues}
    rows = _table_rows(_contract_section("Queue arguments"))
    assert len(rows) == 4
    for name_cell, arguments_cell in rows:
        address = name_cell.strip("`").replace("<prefix>", "{prefix}")
        documented: dict[str, Any] = {}
        for key, text in re.findall(r"`(x-[a-z-]+): ([^`]+)`", arguments_cell):
            value = text.replace("<prefix>", "{prefix}")
            documented[key] = int(value) if value.isdigit() else value
        (binding,) = [c["bindings"]["amqp"] for c in channels[address]
                      if c["bindings"]["amqp"]["is"] == "queue"]
        assert binding["x-queue-arguments"] == documented, address
        in_code = {k: v.replace("PREFIX", "{prefix}") if isinstance(v, str) else v
                   for k, v in code[address].arguments.items()}
        assert in_code == documented, f"the code declares {address} otherwise"
        bound = code[address].bind_to
        assert binding.get("x-bound-to") == (bound.replace("PREFIX", "{prefix}") if bound
                                             else None)


def _json_examples(section: str) -> list[Any]:
    """The indented code blocks of a contract section that are JSON (whole, or line by line)."""
    blocks = re.findall(r"(?:^ {4}.*\n)+", section, flags=re.MULTILINE)
    found: list[Any] = []
    for block in blocks:
        try:
            found.append(json.loads(block))
            continue
        except json.JSONDecodeError:
            pass
        for line in block.splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # an example with a placeholder such as {...}
    return found


@pytest.mark.parametrize(("section", "schema", "at_least"), [
    ("Command message", "command.json", 2),
    ("Item", "item.json", 1),
    ("Reply", "reply.json", 1),
    ("Replay request", "replay-request.json", 1),
    ("Checkpoints", "checkpoint.json", 1),
])
def test_the_examples_of_docs_contract_md_match_the_schemas(
    section: str, schema: str, at_least: int
) -> None:
    examples = _json_examples(_contract_section(section))
    assert len(examples) >= at_least
    for example in examples:
        assert_valid(schema_uri(schema), example, f"an example of {section}")


def test_the_asyncapi_message_examples_match_their_message() -> None:
    for name, message in load_asyncapi()["components"]["messages"].items():
        for example in message.get("examples", []):
            if "payload" in example:
                assert_valid(f"{ASYNCAPI.as_uri()}#/components/messages/{name}/payload",
                             example["payload"], f"the example of {name}")
            if "headers" in example:
                assert_valid(f"{ASYNCAPI.as_uri()}#/components/messages/{name}/headers",
                             example["headers"], f"the example of {name}")


def test_the_client_library_encodes_what_the_schemas_describe() -> None:
    item_id = str(uuid.uuid4())
    item = {"id": item_id, "created_at": "2020-02-18T16:37:09.654917+00:00",
            "created_by": "a-test-only-id-abcd", "properties": {"type": "BUG"}}
    link_id, target = str(uuid.uuid4()), str(uuid.uuid4())
    link: dict[str, Any] = {"id": link_id, "created_at": item["created_at"], "created_by": "x",
                            "source": item_id, "target": target, "properties": {}}
    for body in (encode_command("create", item={"properties": {"type": "STORY"}}),
                 encode_command("read", id=item_id),
                 encode_command("update", id=item_id, item=item, expected_version=3),
                 commands.create_link_body(item_id, target, {"type": "BLOCKS"}),
                 commands.read_link_body(link_id),
                 commands.update_link_body(link_id, link, 2),
                 commands.update_link_body(link_id, link, None),
                 commands.delete_link_body(link_id, 2),
                 commands.delete_link_body(link_id, None),
                 commands.search_items_body({"type": "STORY"}, limit=1000, after=item_id),
                 commands.search_items_body(),
                 *(commands.search_links_body(end, item_id, limit=1, after=link_id)
                   for end in LINK_ENDS)):
        assert_valid(COMMAND, json.loads(body), body.decode())
    for body in (encode_replay_request(),
                 encode_replay_request(since="2020-02-18T00:00:00+00:00",
                                       until="2020-02-19T00:00:00+00:00",
                                       types=["Item created", "Server started"])):
        assert_valid(schema_uri("replay-request.json"), json.loads(body), body.decode())


# ================================================================ real messages


class CapturingClient(PlainClient):
    """The plain pika client, keeping every reply exactly as it came."""

    def __init__(self, amqp_url: str, prefix: str) -> None:
        self.raw: dict[str | None, Captured] = {}
        super().__init__(amqp_url, prefix)

    def _on_reply(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self.raw[properties.correlation_id] = Captured.of(properties, body)
        super()._on_reply(channel, method, properties, body)

    def reply(self, body: bytes | dict[str, Any], status: int, **options: Any) -> Captured:
        """Send a command and return its reply, which must have this status."""
        message_id = options.setdefault("message_id", str(uuid.uuid4()))
        answer = self.send(body, **options)
        assert answer.status == status, answer.body
        return self.raw.pop(answer.properties.correlation_id or message_id)

    def reply_to_raw(self, body: bytes, properties: pika.BasicProperties) -> Captured:
        """Publish with exactly these properties (reply_to: direct reply-to); wait for the reply."""
        properties.reply_to = "amq.rabbitmq.reply-to"
        self.channel.basic_publish("", self.queue, body, properties, mandatory=True)
        key = properties.correlation_id  # None when the command has no correlation_id
        deadline = time.monotonic() + 10
        while key not in self.raw:
            assert time.monotonic() < deadline, "no reply"
            self.connection.process_data_events(time_limit=0.1)
        self._replies.pop(key, None)  # type: ignore[arg-type]
        return self.raw.pop(key)


def consume_until(
    channel: Any, queue: str, done: Any, timeout: float = 15
) -> list[Captured]:
    """Every message of queue, until done(messages) or the timeout."""
    messages: list[Captured] = []
    deadline = time.monotonic() + timeout
    for method, properties, body in channel.consume(queue, inactivity_timeout=0.5):
        if method is not None and properties is not None and body is not None:
            channel.basic_ack(method.delivery_tag)
            messages.append(Captured.of(properties, body))
        if done(messages) or time.monotonic() > deadline:
            break
    channel.cancel()
    return messages


def get_one(amqp_url: str, queue: str, timeout: float = 15) -> Captured:
    """The next message of a queue, taken (acked)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is not None and properties is not None and body is not None:
                return Captured.of(properties, body)
            time.sleep(0.1)
    finally:
        connection.close()
    raise AssertionError(f"nothing arrived in {queue} within {timeout}s")


def check_reply(reply: Captured, status: int, correlation_id: str | None) -> None:
    assert_message("reply", reply)
    assert reply.json()["status"] == status
    assert reply.headers["status"] == status, "the header status is the body's status"
    assert reply.properties.get("correlation_id") == correlation_id


def check_event(event: Captured) -> None:
    body = event.json()
    assert_message(event_message_name(event.properties["type"]), event)
    assert event.properties["type"] == body["type"], "the AMQP type is the event's type"
    assert event.properties["message_id"] == body["id"], "the AMQP message_id is the event id"


@pytest.fixture
def client(system: RunningSystem) -> Iterator[CapturingClient]:
    plain = CapturingClient(system.amqp_url, system.prefix)
    yield plain
    plain.close()


def test_real_replies_events_and_log_lines_match_the_asyncapi_messages(
    system: RunningSystem, client: CapturingClient
) -> None:
    events_channel, events_queue = watch(client, system.names.events)
    replies: list[tuple[Captured, int, str]] = []  # reply, status, its correlation_id
    expect_events: set[str] = set()  # command ids whose command produces an event

    def send(body: bytes | dict[str, Any], status: int, *, event: bool = False,
             **options: Any) -> dict[str, Any]:
        message_id = options.setdefault("message_id", str(uuid.uuid4()))
        reply = client.reply(body, status, **options)
        replies.append((reply, status, options.get("correlation_id") or message_id))
        if event:
            expect_events.add(message_id)
        return dict(reply.json())

    created = send({"command": "create", "item": {"properties": {"type": "STORY"},
                                                  "colour": "ignored"}}, 200, event=True)
    item, item_id = created["item"], created["item"]["id"]
    send({"command": "create"}, 200, event=True)
    send({"command": "create", "item": {"properties": None}}, 200, event=True)
    send({"command": "read", "id": item_id}, 200, event=True)
    send({"command": "update", "id": item_id, "expected_version": 1,
          "item": {**item, "properties": {"type": "BUG"}}}, 200, event=True)
    send({"command": "update", "id": item_id, "item": {**item, "properties": None}}, 200,
         event=True)
    # Every refusal the test-only Authority can give, in the contract's order.
    send(b'{"command": "create", "x": "' + b"a" * (1 << 20) + b'"}', 413)
    send({"command": "create"}, 401, headers={}, event=True)
    send({"command": "read", "id": item_id}, 401, token="BAAD", event=True)
    send({"command": "read", "id": item_id}, 401, headers={"Authorization": "Basic YTpi"},
         event=True)
    send(b"not json", 400)
    send(b"[]", 400)
    send({"command": "delete", "id": item_id}, 400)
    send({"command": "read", "id": 5}, 400)
    send({"command": "create", "item": {"id": "mine"}}, 400)
    send({"command": "update", "id": item_id, "item": {**item, "id": "other"}}, 400)
    send({"command": "update", "id": item_id, "item": {**item, "created_by": "me"}}, 400)
    send({"command": "read", "id": "no-such-id"}, 404)
    send({"command": "update", "id": "no-such-id", "item": item}, 404)
    send({"command": "update", "id": item_id, "item": item, "expected_version": 1}, 409)
    reused = str(uuid.uuid4())
    first = send({"command": "create"}, 200, message_id=reused, event=True)
    assert send({"command": "create"}, 200, message_id=reused) == first
    send({"command": "create"}, 409, message_id=reused, token="someone-else")
    send({"command": "read", "id": item_id}, 200, correlation_id="my-correlation",
         event=True)
    # Fire-and-forget, and commands without message_id (with a correlation_id, and with none).
    expect_events.add(client.publish({"command": "create"}))
    for correlation_id in ("no-message-id", None):
        reply = client.reply_to_raw(
            b'{"command": "create"}',
            pika.BasicProperties(correlation_id=correlation_id, delivery_mode=2,
                                 content_type="application/json",
                                 headers={"Authorization": "Bearer abcd"}))
        check_reply(reply, 200, correlation_id)

    for reply, status, correlation_id in replies:
        check_reply(reply, status, correlation_id)

    def all_arrived(messages: list[Captured]) -> bool:
        ids = {m.json().get("command_id") for m in messages}
        generated = [i for i in ids if str(i).startswith("generated-")]
        return expect_events <= ids and len(generated) >= 2

    events = consume_until(events_channel, events_queue, all_arrived)
    assert all_arrived(events), "not every expected event was published"
    for event in events:
        check_event(event)
    types = {(e.json()["type"], e.json()["user"] is None) for e in events}
    assert types == {("Item created", False), ("Item updated", False), ("Item read", False),
                     ("Access refused", True)}

    event_ids = {e.json()["id"] for e in events}
    lines = system.wait_for_log(lambda ls: event_ids <= {line.get("id") for line in ls})
    assert event_ids <= {line.get("id") for line in lines}, "not every event reached the log"
    for number, line in enumerate(lines, 1):
        assert_valid(EVENT, line, f"line {number} of the event log")


def test_real_link_and_search_replies_events_and_log_lines_match_the_asyncapi_messages(
    system: RunningSystem, client: CapturingClient
) -> None:
    events_channel, events_queue = watch(client, system.names.events)
    sent: list[str] = []  # message ids whose command produces an event

    def send(body: dict[str, Any], status: int, event: bool = True) -> dict[str, Any]:
        message_id = str(uuid.uuid4())
        reply = client.reply(body, status, message_id=message_id)
        check_reply(reply, status, message_id)
        if event:
            sent.append(message_id)
        return dict(reply.json())

    a, b, c = (send({"command": "create", "item": {"properties": {"type": kind}}},
                    200)["item"]["id"] for kind in ("STORY", "EPIC", "BUG"))
    link = send({"command": "create_link", "link": {"source": a, "target": b,
                                                    "properties": {"type": "IMPLEMENTS"}}},
                200)["link"]
    send({"command": "create_link", "link": {"source": c, "target": a}}, 200)
    send({"command": "read_link", "id": link["id"]}, 200)
    updated = send({"command": "update_link", "id": link["id"], "expected_version": 1,
                    "link": {**link, "target": c, "properties": None}}, 200)["link"]
    send({"command": "search_items", "where": {"type": "STORY"}}, 200)
    page = send({"command": "search_items", "where": {}, "limit": 1}, 200)
    assert page["next"] == page["items"][0]["id"]
    send({"command": "search_links", "either": a}, 200)
    send({"command": "search_links", "target": "no such item"}, 200)
    send({"command": "delete_link", "id": link["id"], "expected_version": 2}, 200)
    # the refusals the link and search tables add
    for body, status in (
        ({"command": "create_link", "link": {"id": "mine"}}, 400),
        ({"command": "create_link", "link": {"source": a}}, 400),
        ({"command": "create_link", "link": {"source": a, "target": a}}, 400),
        ({"command": "create_link", "link": {"source": a, "target": "ghost"}}, 400),
        ({"command": "update_link", "id": updated["id"], "link": updated}, 404),
        ({"command": "read_link", "id": link["id"]}, 404),
        ({"command": "search_items", "where": []}, 400),
        ({"command": "search_items", "after": "ghost"}, 400),
        ({"command": "search_links", "source": a, "target": b}, 400),
    ):
        send(body, status, event=False)

    events = consume_until(events_channel, events_queue, lambda ms: set(sent) <= {
        m.json().get("command_id") for m in ms})
    for event in events:
        check_event(event)
    types = {e.json()["type"] for e in events}
    assert types == {"Item created", "Link created", "Link read", "Link updated",
                     "Item search", "Link search", "Link deleted"}
    event_ids = {e.json()["id"] for e in events}
    lines = system.wait_for_log(lambda ls: event_ids <= {line.get("id") for line in ls})
    assert event_ids <= {line.get("id") for line in lines}, "not every event reached the log"
    for number, line in enumerate(lines, 1):
        assert_valid(EVENT, line, f"line {number} of the event log")


def test_a_403_its_event_a_500_and_its_dead_letter_match_the_asyncapi_messages(
    amqp_url: str, worker: Names
) -> None:
    """The in-process worker's stand-in Authority refuses mallory and breaks on explode."""
    client = CapturingClient(amqp_url, worker.prefix)
    try:
        events_channel, events_queue = watch(client, worker.events)
        item = client.reply({"command": "create"}, 200).json()["item"]
        refused_id = str(uuid.uuid4())
        refused = client.reply({"command": "update", "id": item["id"], "item": item}, 403,
                               token="mallory", message_id=refused_id)
        check_reply(refused, 403, refused_id)
        poison_id = str(uuid.uuid4())
        poison = {"command": "create", "item": {"properties": {"explode": True}}}
        failed = client.reply(poison, 500, message_id=poison_id, correlation_id="corr-500")
        check_reply(failed, 500, "corr-500")

        events = consume_until(events_channel, events_queue,
                               lambda ms: any(m.json()["command_id"] == refused_id for m in ms))
        for event in events:
            check_event(event)
        (access,) = [e.json() for e in events if e.json()["command_id"] == refused_id]
        assert access["type"] == "Access refused"
        assert access["user"] == "a-test-only-id-mallory"
        assert access["value"] == {"command": "update", "id": item["id"], "status": 403}
    finally:
        client.close()

    dead = get_one(amqp_url, worker.dead)
    assert_message("deadLetter", dead, json_body=False)
    assert dead.json() == poison
    assert dead.properties["message_id"] == poison_id
    assert dead.properties["correlation_id"] == "corr-500"
    assert dead.headers["x-thelca-user"] == "a-test-only-id-abcd"
    assert dead.headers["x-thelca-reply-to"].startswith("amq.rabbitmq.reply-to")
    assert failed.json()["error"].split()[-1] in dead.headers["x-thelca-reason"]


def test_the_logger_s_dead_letter_matches_the_asyncapi_message(system: RunningSystem) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(system.amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(system.names.events, "", b"[1, 2, 3]",
                              pika.BasicProperties(message_id="not-an-event", delivery_mode=2))
    finally:
        connection.close()
    dead = get_one(system.amqp_url, system.names.dead)
    assert_message("deadLetter", dead, json_body=False)
    assert dead.body == b"[1, 2, 3]"
    assert dead.headers["x-thelca-reason"].startswith("logger:")


def test_a_real_checkpoint_matches_the_asyncapi_message_and_is_the_line_of_the_file(
    system: RunningSystem, client: CapturingClient,
) -> None:
    channel = client.connection.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, system.names.checkpoints)
    client.reply({"command": "create"}, 200)
    system.wait_for_log(lambda lines: len(lines) == 1)
    assert system.stop("logger") == 0  # its last checkpoint, published and confirmed
    method, properties, body = channel.basic_get(queue, auto_ack=True)
    assert method is not None and properties is not None and body is not None
    checkpoint = Captured.of(properties, body)
    assert_message("checkpoint", checkpoint)
    assert checkpoint.json()["lines"] == 1 and checkpoint.json()["sig"] is None  # no key
    lines = checkpoints_path(system.event_log).read_bytes().splitlines()
    assert body == lines[-1]


def test_the_broker_s_dead_letter_matches_the_asyncapi_message(
    amqp_url: str, topology: Names
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", topology.commands, b'{"command": "create"}',
                              pika.BasicProperties(message_id="poison", delivery_mode=2,
                                                   headers={"Authorization": "Bearer abcd"}),
                              mandatory=True)
        refusals = 0
        while (method := channel.basic_get(topology.commands, auto_ack=False)[0]) is not None:
            # A reject counts towards the quorum queue's delivery limit on every version.
            channel.basic_reject(int(method.delivery_tag or 0), requeue=True)
            refusals += 1
        assert refusals == 21  # x-delivery-limit 20
    finally:
        connection.close()
    dead = get_one(amqp_url, topology.dead)
    assert_message("deadLetter", dead, json_body=False)
    assert "x-thelca-reason" not in dead.headers
    assert dead.headers["Authorization"] == "Bearer abcd"  # documented: restrict the queue


# ================================================================ the command schema agrees


# Bodies the worker accepts (200) must be valid; ITEM and ID stand for a real item.
ACCEPTED: list[tuple[str, Any]] = [
    ("create, no item", {"command": "create"}),
    ("create, item null", {"command": "create", "item": None}),
    ("create, properties null", {"command": "create", "item": {"properties": None}}),
    ("create, server fields null",
     {"command": "create", "item": {"id": None, "created_at": None, "created_by": None}}),
    ("create, other fields", {"command": "create", "item": {"colour": 1}, "extra": True}),
    ("read, other fields ignored",
     {"command": "read", "id": "ID", "item": "anything", "expected_version": "x"}),
    ("update", {"command": "update", "id": "ID", "item": "ITEM"}),
    ("update, expected_version null",
     {"command": "update", "id": "ID", "item": "ITEM", "expected_version": None}),
    ("update, properties null", {"command": "update", "id": "ID", "item": "ITEM_NO_PROPERTIES"}),
    ("create_link", {"command": "create_link", "link": {"source": "ID", "target": "ID2"}}),
    ("create_link, other fields",
     {"command": "create_link", "link": {"source": "ID2", "target": "ID", "colour": 1,
                                         "properties": None, "id": None}, "extra": 1}),
    ("read_link", {"command": "read_link", "id": "LINK_ID", "link": "ignored"}),
    ("update_link", {"command": "update_link", "id": "LINK_ID", "link": "LINK"}),
    ("update_link, expected_version null",
     {"command": "update_link", "id": "LINK_ID", "link": "LINK", "expected_version": None}),
    ("search_items", {"command": "search_items"}),
    ("search_items, all fields",
     {"command": "search_items", "where": {"n": [1]}, "limit": 1000, "after": "ID"}),
    ("search_items, nulls", {"command": "search_items", "where": None, "limit": None,
                             "after": None}),
    ("search_links by source", {"command": "search_links", "source": "ID", "limit": 1}),
    ("search_links by target, others null",
     {"command": "search_links", "target": "ID", "source": None, "either": None}),
    ("search_links by either, after a link",
     {"command": "search_links", "either": "ID", "after": "LINK_ID"}),
    ("delete_link", {"command": "delete_link", "id": "DOOMED_ID", "expected_version": None}),
]

# Bodies the worker refuses with 400 must be invalid.
REFUSED: list[tuple[str, Any]] = [
    ("not an object", ["command", "create"]),
    ("no command", {"id": "ID"}),
    ("command null", {"command": None}),
    ("unknown command", {"command": "delete", "id": "ID"}),
    ("command not a string", {"command": ["create"]}),
    ("read without id", {"command": "read"}),
    ("read, id null", {"command": "read", "id": None}),
    ("read, id not a string", {"command": "read", "id": 5}),
    ("read, id an object", {"command": "read", "id": {"$ne": None}}),
    ("create, item not an object", {"command": "create", "item": "x"}),
    ("create, properties an array", {"command": "create", "item": {"properties": [1]}}),
    ("create with id", {"command": "create", "item": {"id": "mine"}}),
    ("create with created_at",
     {"command": "create", "item": {"created_at": "2020-02-18T16:37:09.654917+00:00"}}),
    ("create with created_by", {"command": "create", "item": {"created_by": "me"}}),
    ("create, created_by a number", {"command": "create", "item": {"created_by": 5}}),
    ("update without item", {"command": "update", "id": "ID"}),
    ("update, item null", {"command": "update", "id": "ID", "item": None}),
    ("update, item a string", {"command": "update", "id": "ID", "item": "x"}),
    ("update without id", {"command": "update", "item": "ITEM"}),
    ("update, item.id a number", {"command": "update", "id": "ID", "item": {"id": 5}}),
    ("update, item without id", {"command": "update", "id": "ID", "item": {"properties": {}}}),
    ("update, expected_version a string",
     {"command": "update", "id": "ID", "item": "ITEM", "expected_version": "1"}),
    ("update, expected_version a fraction",
     {"command": "update", "id": "ID", "item": "ITEM", "expected_version": 1.5}),
    ("update, expected_version a boolean",
     {"command": "update", "id": "ID", "item": "ITEM", "expected_version": True}),
    ("update, expected_version beyond 64 bits",
     {"command": "update", "id": "ID", "item": "ITEM", "expected_version": 10**29}),
    ("create_link, link an array", {"command": "create_link", "link": ["ID", "ID2"]}),
    ("create_link, source a number", {"command": "create_link", "link": {"source": 5}}),
    ("create_link with id", {"command": "create_link", "link": {"id": "mine"}}),
    ("create_link with created_by",
     {"command": "create_link", "link": {"created_by": "me", "source": "ID", "target": "ID2"}}),
    ("create_link, properties a string",
     {"command": "create_link", "link": {"properties": "BLOCKS"}}),
    ("read_link without id", {"command": "read_link"}),
    ("delete_link, id a number", {"command": "delete_link", "id": 5}),
    ("delete_link, expected_version a string",
     {"command": "delete_link", "id": "LINK_ID", "expected_version": "1"}),
    ("update_link without link", {"command": "update_link", "id": "LINK_ID"}),
    ("update_link, link without id",
     {"command": "update_link", "id": "LINK_ID", "link": {"source": "ID"}}),
    ("update_link, target an object",
     {"command": "update_link", "id": "LINK_ID", "link": {"id": "x", "created_at": "y",
                                                         "created_by": "z", "target": {}}}),
    ("search_items, where an array", {"command": "search_items", "where": ["n"]}),
    ("search_items, where a string", {"command": "search_items", "where": "n=1"}),
    ("search_items, limit 0", {"command": "search_items", "limit": 0}),
    ("search_items, limit 1001", {"command": "search_items", "limit": 1001}),
    ("search_items, limit a string", {"command": "search_items", "limit": "5"}),
    ("search_items, limit a boolean", {"command": "search_items", "limit": True}),
    ("search_items, after a number", {"command": "search_items", "after": 5}),
    ("search_links, no end", {"command": "search_links"}),
    ("search_links, every end null",
     {"command": "search_links", "source": None, "target": None, "either": None}),
    ("search_links, two ends", {"command": "search_links", "source": "ID", "target": "ID2"}),
    ("search_links, three ends",
     {"command": "search_links", "source": "ID", "target": "ID", "either": "ID"}),
    ("search_links, source a number", {"command": "search_links", "source": 5}),
    ("search_links, limit -1", {"command": "search_links", "either": "ID", "limit": -1}),
]

# 400s no JSON Schema can express; command.json's description names each.
BEYOND_A_SCHEMA: list[tuple[str, bytes, str]] = [
    ("item.id differs from id",
     b'{"command": "update", "id": "ID", "item": ITEM_OTHER_ID}', "must equal its id"),
    ("created_at changed",
     b'{"command": "update", "id": "ID", "item": ITEM_OTHER_TIME}', "created_at and created_by"),
    ("expected_version 1.0",
     b'{"command": "update", "id": "ID", "item": ITEM, "expected_version": 1.0}', "3.0"),
    ("properties 100 levels deep",
     b'{"command": "create", "item": {"properties": {"a": ' + b"[" * 100 + b"]" * 100 + b"}}}",
     "64 levels"),
    ("a link from an item to itself",
     b'{"command": "create_link", "link": {"source": "ID", "target": "ID"}}', "different"),
    ("a link to no item",
     b'{"command": "create_link", "link": {"source": "ID", "target": "ghost"}}',
     "the ids of items"),
    ("a search after no item", b'{"command": "search_items", "after": "ghost"}',
     "a search's after must be the id of an item"),
    ("where 100 levels deep",
     b'{"command": "search_items", "where": {"a": ' + b"[" * 100 + b"]" * 100 + b"}}",
     "where nested deeper than 64 levels"),
]


def _fill(body: Any, item: dict[str, Any], others: dict[str, Any] | None = None) -> Any:
    """body with ID and ITEM replaced by a real item's id and the item, and any other
    placeholder by its value in others (ID2, LINK, LINK_ID, DOOMED_ID)."""
    others = others or {}
    if body == "ID":
        return item["id"]
    if body == "ITEM":
        return item
    if body == "ITEM_NO_PROPERTIES":
        return {**item, "properties": None}
    if isinstance(body, str) and body in others:
        return others[body]
    if isinstance(body, dict):
        return {k: _fill(v, item, others) for k, v in body.items()}
    if isinstance(body, list):
        return [_fill(v, item, others) for v in body]
    return body


def test_the_command_schema_accepts_what_the_worker_accepts_and_refuses_its_400s(
    client: CapturingClient,
) -> None:
    item = client.reply({"command": "create"}, 200).json()["item"]
    other = client.reply({"command": "create"}, 200).json()["item"]
    link = client.reply({"command": "create_link", "link": {
        "source": item["id"], "target": other["id"]}}, 200).json()["link"]
    doomed = client.reply({"command": "create_link", "link": {
        "source": other["id"], "target": item["id"]}}, 200).json()["link"]
    others = {"ID2": other["id"], "LINK": link, "LINK_ID": link["id"], "DOOMED_ID": doomed["id"]}
    wrong: list[str] = []
    for label, template in ACCEPTED:
        body = _fill(template, item, others)
        status = client.send(body).status
        found = errors(COMMAND, body)
        if status != 200 or found:
            wrong.append(f"{label}: worker {status}, schema says {found or 'valid'}")
    for label, template in REFUSED:
        body = _fill(template, item, others)
        status = client.send(body).status
        if status != 400 or not errors(COMMAND, body):
            wrong.append(f"{label}: worker {status}, schema says "
                         f"{errors(COMMAND, body) or 'valid'}")
    assert not wrong, "\n".join(wrong)


def test_the_400s_beyond_a_schema_are_named_in_the_command_schema(
    client: CapturingClient,
) -> None:
    item = client.reply({"command": "create"}, 200).json()["item"]
    description = json.loads((SCHEMAS / "command.json").read_text())["description"]
    replacements = {
        b'"ID"': json.dumps(item["id"]).encode(),
        b"ITEM_OTHER_ID": json.dumps({**item, "id": str(uuid.uuid4())}).encode(),
        b"ITEM_OTHER_TIME": json.dumps(
            {**item, "created_at": "2020-02-18T16:37:09.654917+00:00"}).encode(),
        b"ITEM": json.dumps(item).encode(),
    }
    for label, template, words in BEYOND_A_SCHEMA:
        body = template
        for placeholder, value in replacements.items():
            body = body.replace(placeholder, value)
        assert client.send(body).status == 400, label
        assert errors(COMMAND, json.loads(body)) == [], f"{label}: the schema cannot say so"
        assert words in description, f"command.json does not say: {label}"


def _replay(amqp_url: str, prefix: str, body: bytes, token: str) -> list[Captured]:
    """Ask the replay consumer; everything that comes back, up to the end marker."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.basic_publish("", f"{prefix}.replay", body, pika.BasicProperties(
            reply_to=queue, correlation_id="schema-replay", content_type="application/json",
            headers={"Authorization": f"Bearer {token}"}))
        return consume_until(channel, queue,
                             lambda ms: bool(ms) and "x-replay-end" in ms[-1].headers)
    finally:
        connection.close()


def test_real_replayed_events_and_end_markers_match_the_asyncapi_messages(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    with run_system(amqp_url, prefix, tmp_path) as system:
        system.start("replay")
        wait_for_consumers(amqp_url, f"{prefix}.replay", [system.processes["replay"]])
        client = PlainClient(amqp_url, prefix)
        try:
            created = client.send({"command": "create", "item": {"properties": {}}})
            client.send({"command": "read", "id": created.body["item"]["id"]})
            client.send({"command": "create"}, token="BAAD")
        finally:
            client.close()
        system.wait_for_log(lambda lines: len(lines) >= 3)
        streamed = _replay(amqp_url, prefix, b"{}", "abcd")
        refused = _replay(amqp_url, prefix, b'{"types": "not a list"}', "abcd")
    *events, end = streamed
    assert len(events) == 3
    for event in events:
        assert_message("replayedEvent", event)
    assert_message("replayEnd", end)
    assert end.json() == {"status": 200, "count": 3}
    (refusal,) = refused
    assert_message("replayEnd", refusal)
    assert refusal.json()["status"] == 400
