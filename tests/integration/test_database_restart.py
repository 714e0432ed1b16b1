"""Restarting PostgreSQL under three workers loses no command and applies none twice.

`thelca worker --processes 3` and a logger run on a prefix and a schema of
their own. Six clients send 1,500 creates, one at a time each; when 40 % are
answered, the machine's PostgreSQL is restarted for real (`pg_ctlcluster ...
restart`: every connection goes, and for a moment nothing accepts one). The
workers hold the batches that failed and try them again; a batch whose commit
reached the database before it went is answered from its processed-command
records.

Then: every create answered 200, once in the store and once in the log, nothing
dead-lettered, the outbox empty. The longest pause between two replies is
printed beside the restart's own length (the target is the restart plus 2 s),
not asserted: speed is not a test's business here.

It restarts the machine's PostgreSQL, which every other PostgreSQL test uses:
it belongs to the fault suite, run alone with
`pytest tests/integration/test_database_restart.py -m faults -s`.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from tests.integration.conftest import RunningSystem, queue_counts, run_workers
from thelca.stores.postgres import PostgresStore
from thelca_client import Client, ThelcaClientError
from thelca_client.contract import encode_command

pytestmark = [pytest.mark.broker, pytest.mark.postgres, pytest.mark.faults,
              pytest.mark.timeout(900)]

WORKERS = 3
CLIENTS = 6
CREATES = 1500
RESTART_AT = 0.4  # share of the creates answered when PostgreSQL is restarted
CALL_TIMEOUT = 30.0  # seconds a client waits for a reply: longer than a restart
GIVE_UP = 180.0
BACK_TIMEOUT = 120.0  # seconds PostgreSQL may take to accept connections again
TOKEN = "abcd"


@dataclass
class Tally:
    """What the clients sent and what came back, shared by their threads."""

    tags: dict[str, str] = field(default_factory=dict)  # message_id -> tag
    statuses: dict[str, int] = field(default_factory=dict)
    answered_at: list[float] = field(default_factory=list)
    resends: Counter[str] = field(default_factory=Counter)
    unanswered: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client(number: int, system: RunningSystem, count: int, tally: Tally) -> None:
    with Client(system.amqp_url, prefix=system.prefix, token=TOKEN,
                timeout=CALL_TIMEOUT) as client:
        for step in range(count):
            message_id = f"pg-{number}-{step}-{uuid.uuid4().hex[:6]}"
            tag = f"tag-{number}-{step}"
            with tally.lock:
                tally.tags[message_id] = tag
            body = encode_command("create", item={"properties": {"tag": tag}})
            began = time.monotonic()
            while True:
                try:
                    reply = client.send(body, message_id=message_id, raise_for_status=False)
                except ThelcaClientError as error:  # sent again, with the same message_id
                    with tally.lock:
                        tally.resends[type(error).__name__] += 1
                    if time.monotonic() - began < GIVE_UP:
                        continue
                    with tally.lock:
                        tally.unanswered.append(message_id)
                    break
                with tally.lock:
                    tally.statuses[message_id] = reply.status
                    tally.answered_at.append(time.monotonic())
                break


@dataclass
class Restart:
    """When PostgreSQL was told to restart, when pg_ctlcluster returned, and when it
    accepted a connection again."""

    began: float = 0.0
    returned: float = 0.0
    back: float = 0.0

    @property
    def seconds(self) -> float:
        return self.back - self.began


def _restart_postgres(url: str) -> Restart:
    version = sorted(os.listdir("/etc/postgresql"))[0]
    restart = Restart(began=time.monotonic())
    try:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main",
                        "restart"], check=True, capture_output=True, timeout=BACK_TIMEOUT)
        restart.returned = time.monotonic()
    finally:
        restart.back = _wait_for_postgres(url, version)
    return restart


def _wait_for_postgres(url: str, version: str) -> float:
    """When PostgreSQL accepted a connection; started again if the restart left it down."""
    deadline = time.monotonic() + BACK_TIMEOUT
    started = False
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return time.monotonic()
        except psycopg.Error:
            if time.monotonic() > deadline and not started:
                subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main",
                                "start"], check=False, timeout=BACK_TIMEOUT)
                started, deadline = True, time.monotonic() + BACK_TIMEOUT
            elif time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@pytest.fixture
def three_workers(amqp_url: str, prefix: str, tmp_path: Path,
                  pg_store_url: str) -> Iterator[RunningSystem]:
    yield from run_workers(amqp_url, prefix, tmp_path, pg_store_url, WORKERS,
                           THELCA_PREFETCH="50", THELCA_LOG_LEVEL="INFO")


def test_a_database_restart_loses_no_command_and_applies_none_twice(
    three_workers: RunningSystem, pg_url: str, pg_store_url: str
) -> None:
    system = three_workers
    tally = Tally()
    share = CREATES // CLIENTS
    clients = [threading.Thread(target=_client, args=(n, system, share, tally), daemon=True)
               for n in range(CLIENTS)]
    for thread in clients:
        thread.start()
    while len(tally.statuses) < RESTART_AT * CREATES and any(t.is_alive() for t in clients):
        time.sleep(0.005)
    answered_before = len(tally.statuses)
    restart = _restart_postgres(pg_url)
    for thread in clients:
        thread.join(timeout=GIVE_UP + 60)
    assert not any(t.is_alive() for t in clients), "a client is stuck"

    lines = system.wait_for_log(
        lambda ls: set(tally.statuses) <= {line.get("command_id") for line in ls}, timeout=120)
    _wait_for_empty_outbox(pg_store_url)
    stopped = {role: system.stop(role) for role in ("logger", "worker")}
    output = system.output()
    store = PostgresStore(pg_store_url)
    try:
        by_tag = Counter(str(s.item.properties.get("tag")) for s in store.items())
        outbox = len(store.pending_outbox())
    finally:
        store.close()

    statuses = Counter(tally.statuses.values())
    lost = [m for m, tag in tally.tags.items() if by_tag[tag] == 0]
    doubled = [m for m, tag in tally.tags.items() if by_tag[tag] > 1]
    events = Counter(line.get("command_id") for line in lines)
    lost_events = [m for m in tally.tags if events[m] == 0]
    doubled_events = [m for m in tally.tags if events[m] > 1]
    dead = queue_counts(system.amqp_url, system.names.dead)[0]
    pause = _longest_pause(tally.answered_at, restart.began)

    print(
        f"\ndatabase restart under {WORKERS} workers: PostgreSQL restarted after "
        f"{answered_before} of {CREATES} creates answered; pg_ctlcluster took "
        f"{restart.returned - restart.began:.1f}s, connections accepted again after "
        f"{restart.seconds:.1f}s; answered {len(tally.statuses)} "
        f"({', '.join(f'{s}: {n}' for s, n in sorted(statuses.items()))}), unanswered "
        f"{len(tally.unanswered)}, client re-sends {sum(tally.resends.values())} "
        f"{dict(tally.resends)}; longest pause between replies {pause:.2f}s (target "
        f"<= {restart.seconds + 2:.1f}s: the restart + 2 s); lost {len(lost)}, duplicated "
        f"{len(doubled)}, events lost {len(lost_events)}, events duplicated "
        f"{len(doubled_events)}; dead-lettered {dead}; outbox left {outbox}; batches "
        f"retried {output.count('is retried in')}, stuck batches "
        f"{output.count('stuck batch:')}; workers exited {stopped['worker']}"
    )
    assert stopped == {"logger": 0, "worker": 0}, output[-3000:]
    assert not tally.unanswered, tally.unanswered[:10]
    assert statuses == Counter({200: CREATES}), statuses
    assert not lost and not doubled, (lost[:10], doubled[:10])
    assert not lost_events and not doubled_events, (lost_events[:10], doubled_events[:10])
    assert dead == 0
    assert outbox == 0


def _wait_for_empty_outbox(store_url: str) -> None:
    deadline = time.monotonic() + 120
    store = PostgresStore(store_url)
    try:
        while store.pending_outbox():
            assert time.monotonic() < deadline, "the outbox did not drain"
            time.sleep(0.2)
    finally:
        store.close()


def _longest_pause(answered_at: list[float], restarted_at: float) -> float:
    """The longest gap between two replies, from the last one before the restart on."""
    times = sorted(answered_at)
    last_before = max((t for t in times if t < restarted_at), default=restarted_at)
    after = [t for t in times if t >= last_before]
    return max((b - a for a, b in itertools.pairwise(after)), default=0.0)
