"""The floor: the least pika code that honours the contract's happy path.

One BlockingConnection consumer that parses the command, checks the token as
the test-only Authority does, keeps items in a dict, replies, publishes the
event (no confirms, no persistence) and acks; and a logger that appends and
fsyncs once per batch. thelca's figures are compared against this, measured
in the same run on the same machine.

Run as `python floor.py worker PREFIX` or `python floor.py logger PREFIX FILE`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pika

URL = os.environ.get("THELCA_AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")


def declare(channel: Any, prefix: str) -> None:
    channel.queue_declare(f"{prefix}.commands")
    channel.exchange_declare(f"{prefix}.events", exchange_type="fanout")
    channel.queue_declare(f"{prefix}.events.log")
    channel.queue_bind(f"{prefix}.events.log", f"{prefix}.events")


def worker(prefix: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    declare(channel, prefix)
    channel.basic_qos(prefetch_count=200)
    items: dict[str, dict[str, Any]] = {}
    events = f"{prefix}.events"

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        command: dict[str, Any] = orjson.loads(body)
        token = (properties.headers or {}).get("Authorization", "")[7:]
        user = f"a-test-only-id-{token}"
        now = datetime.now(UTC).isoformat()
        name = command["command"]
        item_id = str(command.get("id"))
        if name == "create":
            item_id = str(uuid.uuid4())
            item: dict[str, Any] = {
                "id": item_id, "created_at": now, "created_by": user,
                "properties": command.get("item", {}).get("properties") or {}}
            items[item_id] = item
            kind, value = "Item created", item
        elif name == "read":
            item = items[item_id]
            kind, value = "Item read", item["id"]
        else:
            item = {**items[item_id], "properties": command["item"]["properties"]}
            items[item_id] = item
            kind, value = "Item updated", item
        reply = orjson.dumps({"status": 200, "item": item, "version": 1})
        if properties.reply_to:
            ch.basic_publish("", properties.reply_to, reply, pika.BasicProperties(
                correlation_id=properties.correlation_id, headers={"status": 200}))
        event = orjson.dumps({"time": now, "type": kind, "user": user, "value": value,
                              "id": str(uuid.uuid4())})
        ch.basic_publish(events, "", event, pika.BasicProperties(type=kind))
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(f"{prefix}.commands", on_message)
    with contextlib.suppress(KeyboardInterrupt):
        channel.start_consuming()


def logger(prefix: str, path: str,
           declared_by: Callable[[Any, str], None] | None = None) -> None:
    """Append each batch of events, fsync, ack; `declared_by` declares the queues (the
    guarded floor's logger is this one on quorum queues)."""
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    (declared_by or declare)(channel, prefix)
    channel.basic_qos(prefetch_count=200)
    batch: list[int] = []
    out = open(path, "ab")  # noqa: SIM115 - open for the process's life

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        out.write(body + b"\n")
        batch.append(method.delivery_tag)

    channel.basic_consume(f"{prefix}.events.log", on_message)
    try:
        while True:
            connection.process_data_events(time_limit=None)
            if batch:
                out.flush()
                os.fsync(out.fileno())
                channel.basic_ack(batch[-1], multiple=True)
                batch.clear()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(sys.argv[2])
    else:
        logger(sys.argv[2], sys.argv[3])
