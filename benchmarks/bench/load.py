"""The load generator: commands over the contract, a bounded window, replies by direct reply-to."""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pika

URL = os.environ.get("THELCA_AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
HEADERS = {"Authorization": "Bearer bench"}
KEPT_ITEMS = 10_000  # items remembered for the mix's reads and updates


@dataclass
class Run:
    commands: int
    seconds: float
    latencies: list[float]
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.commands / self.seconds

    def percentile(self, share: float) -> float:
        """The latency below which `share` of the commands' replies came, in ms."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000


def pooled(runs: list[Run]) -> Run:
    """Several runs as one: their commands, time, latencies and statuses added up."""
    statuses: dict[int, int] = {}
    for run in runs:
        for status, count in run.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    return Run(sum(r.commands for r in runs), sum(r.seconds for r in runs),
               [x for r in runs for x in r.latencies], statuses)


class Load:
    """Publishes commands to `<prefix>.commands` with at most `window` awaiting their reply.

    One connection per Load: open one per run, since an idle BlockingConnection
    does not answer heartbeats. `items` collects the items of the replies, for
    the mix; pass the same list to the next Load on the same system.
    """

    def __init__(self, prefix: str, items: list[dict[str, Any]] | None = None) -> None:
        self.queue = f"{prefix}.commands"
        self.connection = pika.BlockingConnection(pika.URLParameters(URL))
        self.channel = self.connection.channel()
        self.channel.basic_consume("amq.rabbitmq.reply-to", self._on_reply, auto_ack=True)
        self.pending: dict[str, float] = {}
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.items: list[dict[str, Any]] = [] if items is None else items

    def _on_reply(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        started = self.pending.pop(properties.correlation_id)
        self.latencies.append(time.perf_counter() - started)
        reply = orjson.loads(body)
        self.statuses[reply["status"]] = self.statuses.get(reply["status"], 0) + 1
        if reply.get("item") and len(self.items) < KEPT_ITEMS:
            self.items.append(reply["item"])

    def run(self, count: int, window: int, body: Callable[[], bytes],
            on_progress: Callable[[int], None] | None = None) -> Run:
        self.latencies, self.statuses = [], {}
        sent = 0
        started = time.perf_counter()
        while sent < count or self.pending:
            while sent < count and len(self.pending) < window:
                correlation_id = uuid.uuid4().hex
                self.pending[correlation_id] = time.perf_counter()
                self.channel.basic_publish("", self.queue, body(), pika.BasicProperties(
                    reply_to="amq.rabbitmq.reply-to", correlation_id=correlation_id,
                    message_id=correlation_id, headers=HEADERS, delivery_mode=2))
                sent += 1
                if on_progress is not None and sent % 1000 == 0:
                    on_progress(sent)
            self.connection.process_data_events(time_limit=None)
        return Run(count, time.perf_counter() - started, self.latencies, self.statuses)

    def close(self) -> None:
        self.connection.close()


def creates() -> bytes:
    return orjson.dumps({"command": "create", "item": {"properties": {"type": "STORY"}}})


def mix(load: Load) -> Callable[[], bytes]:
    """1 create : 1 read : 2 updates, reads and updates on items created before."""
    rng = random.Random(1)
    step = [0]

    def body() -> bytes:
        step[0] += 1
        kind = step[0] % 4
        if kind == 0 or not load.items:
            return creates()
        item = rng.choice(load.items)
        if kind == 1:
            return orjson.dumps({"command": "read", "id": item["id"]})
        return orjson.dumps({"command": "update", "id": item["id"],
                             "item": {**item, "properties": {"n": step[0]}}})

    return body


def run_once(prefix: str, count: int, window: int, kind: str,
             items: list[dict[str, Any]] | None = None) -> Run:
    """One run of `count` commands of `kind` (creates or mix) on a connection of its own."""
    load = Load(prefix, items)
    try:
        return load.run(count, window, creates if kind == "creates" else mix(load))
    finally:
        load.close()
