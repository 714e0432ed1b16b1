"""Three worker processes on one PostgreSQL schema keep every guarantee under load.

`thelca worker --processes 3` and a logger run on a prefix and a schema of
their own. Several producers at once send creates, updates of the SAME few
items (blind ones, and ones with the expected_version they just read), reads,
bursts of fire-and-forget updates, and pairs of identical commands (same
message_id) sent by two producers at the same moment; one worker process is
SIGKILLed halfway (its supervisor starts it again, and it republishes the
outbox that the other two are still publishing). Then:

- every create made exactly one item; every update that was answered 200, or
  sent without a reply, moved its item's version by exactly one, so each
  item's version is 1 + its accepted updates; a 409 changed nothing;
- every command's event is in the log exactly once, and each item's updates
  in the log carry the versions 2..N, each once (no lost update);
- the two replies to a duplicated message_id are identical, with one effect;
- nothing answered 500, nothing was dead-lettered, and any event left in the
  outbox is one the log has already (removing it waits for a confirm);
- a store restored from the log equals the live one.

Run alone with `pytest tests/integration/test_many_workers.py -s` to see the figures.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    RunningSystem,
    delete_prefix,
    queue_counts,
    run_workers,
    system_env,
    wait_for_count,
)
from tests.postgres import terminate
from thelca.restore import restore
from thelca.stores.memory import MemoryStore
from thelca.stores.postgres import PostgresStore
from thelca_client import Client, Reply
from thelca_client.contract import encode_command

pytestmark = [pytest.mark.broker, pytest.mark.postgres]

WORKERS = 3
HOT = 4  # the few items everybody updates
PRODUCERS = 6
STEPS = 120  # synchronous commands per producer
BURST = 50  # fire-and-forget blind updates per producer, sent first
DUPLICATES = 40  # message_ids sent by two producers at the same moment
TIMEOUT = 60.0  # per call: a SIGKILLed worker's commands are redelivered to another


@dataclass
class Tally:
    """What the producers sent and what came back, per message_id."""

    creates: set[str] = field(default_factory=set)
    updates: dict[str, str] = field(default_factory=dict)  # message_id -> item id
    replies: dict[str, Reply] = field(default_factory=dict)
    unanswered: set[str] = field(default_factory=set)  # fire-and-forget: no reply
    reads: set[str] = field(default_factory=set)
    duplicates: dict[str, list[Reply]] = field(default_factory=dict)
    sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, message_id: str, reply: Reply | None) -> None:
        with self.lock:
            self.sent += 1
            if reply is None:
                self.unanswered.add(message_id)
            elif message_id in self.duplicates:
                self.duplicates[message_id].append(reply)
            else:
                self.replies[message_id] = reply

    def accepted(self, message_id: str) -> bool:
        if message_id in self.unanswered:
            return True
        replies = self.duplicates.get(message_id) or [self.replies[message_id]]
        return replies[0].status == 200


@pytest.fixture
def three_workers(amqp_url: str, prefix: str, tmp_path: Path,
                  pg_store_url: str) -> Iterator[RunningSystem]:
    yield from run_workers(amqp_url, prefix, tmp_path, pg_store_url, WORKERS,
                           THELCA_PREFETCH="50")


def test_three_workers_on_one_database_keep_every_guarantee(
    three_workers: RunningSystem, pg_store_url: str
) -> None:
    system = three_workers
    with Client(system.amqp_url, prefix=system.prefix, token="abcd") as client:
        hot = [dict(client.create({"hot": n}).item or {}) for n in range(HOT)]
    tally = Tally()
    duplicates = _duplicate_plan(hot)
    tally.duplicates = {message_id: [] for message_id, _ in duplicates}
    halfway = threading.Event()
    threads = [threading.Thread(target=_producer, args=(system, hot, tally, n, halfway))
               for n in range(PRODUCERS)]
    pair = threading.Barrier(2)
    threads += [threading.Thread(target=_duplicator, args=(system, duplicates, tally, pair))
                for _ in range(2)]
    for thread in threads:
        thread.start()
    halfway.wait(timeout=300)
    killed = _kill_one_worker(system)
    for thread in threads:
        thread.join(timeout=600)
    assert not any(thread.is_alive() for thread in threads), "a producer did not finish"
    # The killed worker's supervisor has started it again: it republished the outbox.
    wait_for_count(system, system.names.commands, WORKERS)

    effects = tally.creates | {m for m in tally.updates if tally.accepted(m)}
    lines = system.wait_for_log(
        lambda ls: effects | tally.reads <= {line.get("command_id") for line in ls},
        timeout=120)
    assert system.stop("logger") == 0
    assert system.stop("worker") == 0
    output = system.output()
    store = PostgresStore(pg_store_url)
    try:
        live = {stored.item.id: stored for stored in store.items()}
        pending = store.pending_outbox()
    finally:
        store.close()
    restored = MemoryStore()
    report = restore(system.event_log, restored)

    figures = _check(tally, hot, lines, live)
    refused = sum(1 for r in tally.replies.values() if r.status == 409)
    races = output.count("lost a race")
    deadlocks = output.count("a deadlock with another worker's batch")
    republished = sum(int(n) for n in re.findall(r"republishing (\d+) unconfirmed", output))
    print(f"\nthree workers on PostgreSQL: commands sent={tally.sent} (creates "
          f"{len(tally.creates)}, updates {len(tally.updates)} of {HOT} items, reads "
          f"{len(tally.reads)}, fire-and-forget {len(tally.unanswered)}, message_ids sent "
          f"twice at once {len(duplicates)}), one worker SIGKILLed (pid {killed}), events "
          f"republished from the outbox at starts={republished}, "
          f"conflicts resolved: 409s={refused}, message_id races retried={races}, "
          f"deadlocked batches retried={deadlocks}, "
          f"lost: {figures['lost']}, duplicated: {figures['duplicated']}, "
          f"versions: {figures['versions']}, dead-lettered: {_depth(system)}, "
          f"outbox left: {len(pending)}, restore: {report.summary()}")
    assert figures["lost"] == 0 and figures["duplicated"] == 0
    assert _depth(system) == 0
    # Confirmed but not yet removed when its worker was killed: published again at the
    # next start and dropped by the logger. Never one that is missing from the log.
    assert {event.event_id for event in pending} <= {line["id"] for line in lines}
    assert not report.problems, report.problems[:5]
    assert {s.item.id: s for s in restored.items()} == live


def _check(tally: Tally, hot: list[dict[str, Any]], lines: list[dict[str, Any]],
           live: dict[str, Any]) -> dict[str, Any]:
    """Every guarantee, asserted; returns the figures for the closing line."""
    assert all(r.status in (200, 409) for r in tally.replies.values()), \
        Counter(r.status for r in tally.replies.values())
    by_command = Counter(line.get("command_id") for line in lines)
    assert Counter(line["id"] for line in lines).most_common(1)[0][1] == 1, "an event twice"
    tags = Counter(s.item.properties.get("tag") for s in live.values())
    lost = [m for m in tally.creates if tags[m] == 0]
    lost += [m for m in tally.updates if tally.accepted(m) and by_command[m] == 0]
    duplicated = [m for m in tally.creates if tags[m] > 1]
    duplicated += [str(m) for m, n in by_command.items() if n > 1]
    refused_with_effect = [m for m in tally.updates if not tally.accepted(m) and by_command[m]]
    assert not refused_with_effect, "a 409 changed something"
    for replies in tally.duplicates.values():
        assert len(replies) == 2 and replies[0] == replies[1], replies
    versions = {}
    for item in hot:
        accepted = sum(1 for m, i in tally.updates.items() if i == item["id"] and
                       tally.accepted(m))
        logged = sorted(int(line["version"]) for line in lines
                        if line["type"] == "Item updated" and line["value"]["id"] == item["id"])
        assert logged == list(range(2, 2 + accepted)), "an update lost or applied twice"
        stored = live[item["id"]]
        assert stored.version == 1 + accepted
        last = next(line for line in lines if line["type"] == "Item updated"
                    and line["value"]["id"] == item["id"] and line["version"] == stored.version)
        assert last["value"] == stored.item.to_json()
        versions[item["properties"]["hot"]] = stored.version
    return {"lost": len(lost), "duplicated": len(duplicated), "versions": versions}


def test_a_worker_whose_database_connection_is_killed_retries_and_answers(
    amqp_url: str, prefix: str, tmp_path: Path, pg_store_url: str, pg_url: str
) -> None:
    """The database drops the connection: the batch is retried, never answered 500."""
    name = f"thelca-test-{uuid.uuid4().hex[:8]}"
    env = system_env(amqp_url, prefix, tmp_path,
                     THELCA_STORE=f"{pg_store_url}&application_name={name}")
    system = RunningSystem(amqp_url, prefix, tmp_path, env)
    try:
        system.start("worker")
        wait_for_count(system, system.names.commands, 1)
        with Client(amqp_url, prefix=prefix, token="abcd", timeout=TIMEOUT) as client:
            created = client.create({"n": 1})
            assert terminate(pg_url, name) == 1
            updated = client.update(str((created.item or {})["id"]),
                                    {**(created.item or {}), "properties": {"n": 2}})
            assert updated.status == 200 and updated.version == 2
            assert client.create({"n": 3}).status == 200
        assert system.stop("worker") == 0
    finally:
        for role in list(system.processes):
            system.stop(role)
        delete_prefix(amqp_url, prefix)
    output = system.output()
    assert "the connection to PostgreSQL" in output and "was lost" in output
    assert "is retried in" in output


# ------------------------------------------------------------ producers


def _producer(system: RunningSystem, hot: list[dict[str, Any]], tally: Tally, number: int,
              halfway: threading.Event) -> None:
    rng = random.Random(number)
    with Client(system.amqp_url, prefix=system.prefix, token="abcd", timeout=TIMEOUT,
                connection_name=f"many-workers producer {number}") as client:
        for n in range(BURST):  # big batches on every worker at once: cross-batch locks
            target = rng.choice(hot)
            body = encode_command("update", id=target["id"],
                                  item={**target, "properties": {"burst": [number, n]}})
            message_id = f"burst-{number}-{n}-{uuid.uuid4().hex[:6]}"
            with tally.lock:
                tally.updates[message_id] = target["id"]
            client.publish(body, message_id=message_id)
            tally.record(message_id, None)
        for step in range(STEPS):
            if number == 0 and step == STEPS // 2:
                halfway.set()
            _one_step(client, rng, hot, tally, f"p{number}-{step}-{uuid.uuid4().hex[:6]}")


def _one_step(client: Client, rng: random.Random, hot: list[dict[str, Any]], tally: Tally,
              message_id: str) -> None:
    kind = rng.choices(["create", "blind", "versioned", "read"], [2, 4, 3, 1])[0]
    target = rng.choice(hot)
    if kind == "create":
        with tally.lock:
            tally.creates.add(message_id)
        reply: Reply = client.create({"tag": message_id}, message_id=message_id)
    elif kind == "read":
        with tally.lock:
            tally.reads.add(message_id)
        reply = client.read(target["id"], message_id=message_id)
    else:
        expected = None
        if kind == "versioned":
            expected = client.read(target["id"]).version  # not counted: a read of our own
        with tally.lock:
            tally.updates[message_id] = target["id"]
        body = encode_command("update", id=target["id"], expected_version=expected,
                              item={**target, "properties": {"by": message_id}})
        reply = client.send(body, message_id=message_id, raise_for_status=False)
    tally.record(message_id, reply)


def _duplicate_plan(hot: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
    plan = []
    for n in range(DUPLICATES):
        message_id = f"twice-{n}-{uuid.uuid4().hex[:6]}"
        target = hot[n % len(hot)]
        if n % 4 == 0:
            body = encode_command("create", item={"properties": {"tag": message_id}})
        else:
            body = encode_command("update", id=target["id"],
                                  item={**target, "properties": {"twice": message_id}})
        plan.append((message_id, body))
    return plan


def _duplicator(system: RunningSystem, plan: list[tuple[str, bytes]], tally: Tally,
                pair: threading.Barrier) -> None:
    """One of two threads that send each planned command at the same moment."""
    with Client(system.amqp_url, prefix=system.prefix, token="abcd", timeout=TIMEOUT,
                connection_name="many-workers duplicator") as client:
        for message_id, body in plan:
            _note_duplicate(tally, message_id, body)
            pair.wait(timeout=TIMEOUT)
            reply = client.send(body, message_id=message_id, raise_for_status=False)
            tally.record(message_id, reply)


def _note_duplicate(tally: Tally, message_id: str, body: bytes) -> None:
    command = json.loads(body)
    with tally.lock:
        if command["command"] == "create":
            tally.creates.add(message_id)
        else:
            tally.updates[message_id] = command["id"]


# ------------------------------------------------------------ processes and queues


def _kill_one_worker(system: RunningSystem) -> int:
    """SIGKILL one child of the `thelca worker --processes 3` supervisor; its pid."""
    supervisor = system.processes["worker"].pid
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    assert len(children) == WORKERS, children
    victim = int(random.choice(children))
    os.kill(victim, signal.SIGKILL)
    return victim


def _depth(system: RunningSystem) -> int:
    return queue_counts(system.amqp_url, system.names.dead)[0]
