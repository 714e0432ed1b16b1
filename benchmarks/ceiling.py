"""The ceiling: the contract's work on pika's asynchronous connection, with no guarantee at all.

The same work as thelca's worker for a command (read the token, parse and
check the command as the contract says, make the reply and the event, publish
both), done on a SelectConnection with orjson, items kept in a dict, and none
of the guarantees: a transient classic queue consumed with auto-ack, no
publisher confirms, no store, no idempotency, no outbox; its logger appends
events without fsync. Nothing here survives a crash: it is the higher
reference, what Python and pika can do at best on this machine, of which the
pipeline benchmark reports thelca's share.

Run as `python ceiling.py worker PREFIX` or `python ceiling.py logger PREFIX FILE`;
each stops on SIGINT.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

import orjson
import pika

URL = os.environ.get("THELCA_AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
MAX_BODY = 1 << 20
FIXED = ("id", "created_at", "created_by")
FLUSH_EVERY = 0.01  # seconds between the logger's flushes (no fsync)


class Refused(Exception):
    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status, self.error = status, error


class Items:
    """Items and their versions in a dict, and the contract's checks on each command."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[dict[str, Any], int]] = {}

    def apply(self, user: str, command: dict[str, Any]) -> tuple[dict[str, Any], int, str, Any]:
        """The item, its version, the event's type and value; Refused when a check fails."""
        name = command.get("command")
        if name == "create":
            return self.create(user, command)
        if name in ("read", "update"):
            item_id = command.get("id")
            if not isinstance(item_id, str):
                raise Refused(400, "id must be a string")
            if item_id not in self.items:
                raise Refused(404, f"no item with id {item_id}")
            if name == "read":
                item, version = self.items[item_id]
                return item, version, "Item read", item_id
            return self.update(item_id, command)
        raise Refused(400, "unknown or missing command")

    def create(self, user: str, command: dict[str, Any]) -> tuple[dict[str, Any], int, str, Any]:
        sent = command.get("item") or {}
        if not isinstance(sent, dict):
            raise Refused(400, "item must be an object")
        for key in FIXED:
            if key in sent:
                raise Refused(400, f"{key} cannot be set externally")
        item: dict[str, Any] = {
            "id": str(uuid.uuid4()), "created_at": datetime.now(UTC).isoformat(),
            "created_by": user, "properties": properties_of(sent)}
        self.items[item["id"]] = (item, 1)
        return item, 1, "Item created", item

    def update(self, item_id: str, command: dict[str, Any]) -> tuple[dict[str, Any], int, str, Any]:
        stored, version = self.items[item_id]
        sent = command.get("item")
        if not isinstance(sent, dict):
            raise Refused(400, "item must be an object")
        if sent.get("id") != item_id:
            raise Refused(400, "id cannot be modified")
        for key in FIXED[1:]:
            if sent.get(key) != stored[key]:
                raise Refused(400, f"{key} cannot be modified")
        expected = command.get("expected_version")
        if expected is not None and expected != version:
            raise Refused(409, f"expected version {expected}, the item is at {version}")
        item = {**stored, "properties": properties_of(sent)}
        self.items[item_id] = (item, version + 1)
        return item, version + 1, "Item updated", item


def properties_of(sent: dict[str, Any]) -> dict[str, Any]:
    properties = sent.get("properties") or {}
    if not isinstance(properties, dict):
        raise Refused(400, "properties must be an object")
    return properties


def user_of(headers: dict[str, Any] | None) -> str:
    """The test-only Authority's user for the Bearer token; Refused(401) without one."""
    found = {str(k).lower(): v for k, v in (headers or {}).items()}.get("authorization")
    if isinstance(found, bytes):
        found = found.decode(errors="replace")
    if not isinstance(found, str) or not found.startswith("Bearer ") or len(found) == 7:
        raise Refused(401, "no Bearer token")
    return f"a-test-only-id-{found[7:]}"


def handle(items: Items, properties: Any, body: bytes) -> tuple[int, bytes, str, bytes | None]:
    """The reply's status and body, the event's type and the event (None when there is none)."""
    user: str | None = None
    try:
        if len(body) > MAX_BODY:
            raise Refused(413, f"the body is larger than {MAX_BODY} bytes")
        user = user_of(properties.headers)
        try:
            command = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise Refused(400, "The data is not a JSON string") from None
        if not isinstance(command, dict):
            raise Refused(400, "the command must be a JSON object")
        item, version, kind, value = items.apply(user, command)
    except Refused as refused:
        reply = orjson.dumps({"status": refused.status, "error": refused.error})
        if refused.status != 401:
            return refused.status, reply, "", None
        refusal = event("Access refused", None, {"status": 401}, 0, properties.message_id)
        return 401, reply, "Access refused", refusal
    reply = orjson.dumps({"status": 200, "item": item, "version": version})
    return 200, reply, kind, event(kind, user, value, version, properties.message_id)


def event(kind: str, user: str | None, value: Any, version: int, command_id: str | None) -> bytes:
    return orjson.dumps({"time": datetime.now(UTC).isoformat(), "type": kind, "user": user,
                         "value": value, "id": str(uuid.uuid4()), "version": version,
                         "command_id": command_id})


# ---------------------------------------------------------------- on the wire


def declare(channel: Any, prefix: str, done: Callable[[], None]) -> None:
    """The floor's objects, one after the other (each waits for the broker's answer)."""
    steps: list[Callable[[Callable[[Any], None]], None]] = [
        lambda then: channel.queue_declare(f"{prefix}.commands", callback=then),
        lambda then: channel.exchange_declare(f"{prefix}.events", exchange_type="fanout",
                                              callback=then),
        lambda then: channel.queue_declare(f"{prefix}.events.log", callback=then),
        lambda then: channel.queue_bind(f"{prefix}.events.log", f"{prefix}.events",
                                        callback=then),
    ]

    def step(index: int) -> None:
        if index == len(steps):
            done()
        else:
            steps[index](lambda _frame: step(index + 1))

    step(0)


def serve(on_channel: Callable[[Any], None]) -> None:
    """Open a SelectConnection and a channel, hand the channel over, run until SIGINT."""
    connection = pika.SelectConnection(
        pika.URLParameters(URL),
        on_open_callback=lambda opened: opened.channel(on_open_callback=on_channel))
    with contextlib.suppress(KeyboardInterrupt):
        connection.ioloop.start()


def worker(prefix: str) -> None:
    items = Items()
    events = f"{prefix}.events"

    def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        status, reply, kind, event_body = handle(items, properties, body)
        if properties.reply_to:
            channel.basic_publish("", properties.reply_to, reply, pika.BasicProperties(
                correlation_id=properties.correlation_id or properties.message_id,
                content_type="application/json", headers={"status": status}))
        if event_body is not None:
            channel.basic_publish(events, "", event_body, pika.BasicProperties(
                type=kind, content_type="application/json"))

    def on_channel(channel: Any) -> None:
        declare(channel, prefix, lambda: channel.basic_consume(
            f"{prefix}.commands", on_message, auto_ack=True))

    serve(on_channel)


def logger(prefix: str, path: str) -> None:
    out: IO[bytes] = open(path, "ab")  # noqa: SIM115 - open for the process's life

    def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        out.write(body + b"\n")

    def flush(connection: Any) -> None:
        out.flush()
        connection.ioloop.call_later(FLUSH_EVERY, lambda: flush(connection))

    def on_channel(channel: Any) -> None:
        flush(channel.connection)
        declare(channel, prefix, lambda: channel.basic_consume(
            f"{prefix}.events.log", on_message, auto_ack=True))

    serve(on_channel)


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(sys.argv[2])
    else:
        logger(sys.argv[2], sys.argv[3])
